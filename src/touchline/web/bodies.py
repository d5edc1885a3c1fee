"""A guard on request bodies, before any route or FastAPI parses them.

:class:`BodyGuardMiddleware` refuses, with the API's ``{code, message}``:

* a body over :data:`MAX_REQUEST_BYTES` with ``413 payload_too_large`` — by
  its ``Content-Length`` before a byte is read, else as soon as the bytes
  streamed past the limit (a chunked upload is never held whole);
* a JSON body (``application/json`` or ``*+json``, not compressed) nested
  deeper than :data:`~touchline.nesting.MAX_JSON_DEPTH` with
  ``400 nested_too_deep``, so that neither FastAPI's parser nor the code
  walking the document afterwards can run out of stack.

Routes with limits of their own keep them: they are all smaller than this
one (ingest 500 KB, callbacks 64 KB, forms 16 KB, promo imports 4 MB). The
Segment routes (``/v1/``) are passed through untouched: they read the body
themselves, after gzip inflation, and apply the same depth check to any
Content-Type (browsers post ``text/plain``).
"""

from __future__ import annotations

import json

from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from touchline.errors import NestedTooDeep, PayloadTooLarge, TouchlineError
from touchline.nesting import check_depth

#: Largest request body any route accepts; above the largest route limit (4 MB promo imports).
MAX_REQUEST_BYTES = 5 * 1024 * 1024
#: Paths whose routes read and check their own bodies (the Segment tracking API).
SELF_CHECKED = ("/v1/",)
#: Bodies larger than this are depth-checked off the event loop (4 MB costs about 0.1 s).
INLINE_CHECK_BYTES = 64 * 1024
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


class BodyGuardMiddleware:
    """ASGI middleware enforcing :data:`MAX_REQUEST_BYTES` and the JSON depth limit."""

    def __init__(self, app: ASGIApp, *, limit: int = MAX_REQUEST_BYTES) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["method"] not in _BODY_METHODS
            or str(scope["path"]).startswith(SELF_CHECKED)
        ):
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        try:
            body = await self._read(receive, declared=headers.get("content-length"))
            if _is_json(headers) and body:
                text = body.decode("utf-8", errors="replace")
                if len(body) > INLINE_CHECK_BYTES:
                    await run_in_threadpool(check_depth, text)
                else:
                    check_depth(text)
        except (PayloadTooLarge, NestedTooDeep) as exc:
            await _answer(send, exc)
            return
        await self.app(scope, _replay(body, receive), send)

    async def _read(self, receive: Receive, *, declared: str | None) -> bytes:
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            raise PayloadTooLarge(
                f"the body is {declared} bytes; the limit is {self.limit // 1024} KB"
            )
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break  # the client went away; the route sees an empty body
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                raise PayloadTooLarge(f"the body is over the {self.limit // 1024} KB limit")
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)


def _is_json(headers: dict[str, str]) -> bool:
    if headers.get("content-encoding", "identity").strip().lower() not in ("", "identity"):
        return False
    media = headers.get("content-type", "").split(";", 1)[0].strip().lower()
    return media == "application/json" or media.endswith("+json")


def _replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that hands the app the body already read, then defers to the client."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def _answer(send: Send, exc: TouchlineError) -> None:
    body = json.dumps({"code": exc.code, "message": exc.message}, separators=(",", ":")).encode()
    await send(
        {
            "type": "http.response.start",
            "status": exc.status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


__all__ = ["MAX_REQUEST_BYTES", "BodyGuardMiddleware"]
