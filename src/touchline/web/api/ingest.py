"""Segment-compatible tracking endpoints: ``POST /v1/{identify,track,...}``.

Routes: ``/v1/identify``, ``/v1/track``, ``/v1/page``, ``/v1/screen``,
``/v1/group``, ``/v1/alias``, ``/v1/batch``; the analytics.js short forms
``/v1/i``, ``/v1/t``, ``/v1/p``, ``/v1/s``, ``/v1/g``, ``/v1/a``, ``/v1/b``;
and ``/v1/import`` (a batch). Each answers ``200 {"success": true}`` like
Segment, or an error ``{code, message}``.

The body is read here, not by FastAPI, so that:

* any Content-Type is accepted — browsers send ``text/plain`` to avoid a CORS
  preflight;
* the size limit applies before anything is parsed: at most
  :data:`~touchline.ingest.segment.MAX_BATCH_BYTES` on the wire, and the same
  once a ``Content-Encoding: gzip`` body is inflated — inflation stops at the
  limit, so a gzip bomb costs nothing (per-event limits then apply as parsed);
* the write key can come from HTTP Basic (key as user name, empty password —
  what Segment's SDKs send), ``Authorization: Bearer <key>``, or the body's
  ``writeKey``. The header wins. Admin tokens are accepted too.

Decoding, authentication, parsing and storing run in the threadpool: the
store is synchronous SQLAlchemy and a 500 KB JSON body is worth keeping off
the event loop.
"""

from __future__ import annotations

import base64
import binascii
import zlib
from datetime import datetime

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from touchline.errors import AuthError, InputError, PayloadTooLarge
from touchline.ingest.segment import MAX_BATCH_BYTES, decode_body, parse_payload, write_key_of
from touchline.store.ingest import IngestResult, ingest
from touchline.store.workspaces import authenticate
from touchline.web.openapi import segment_body

router = APIRouter()

# Endpoint kind -> analytics.js short path.
SHORT_FORMS = {
    "identify": "i",
    "track": "t",
    "page": "p",
    "screen": "s",
    "group": "g",
    "alias": "a",
    "batch": "b",
}
# Largest body read off the wire, and largest body after gzip inflation.
MAX_BODY_BYTES = MAX_BATCH_BYTES


def _endpoint(kind: str):  # type: ignore[no-untyped-def]
    async def receive(request: Request) -> JSONResponse:
        return await receive_events(request, kind=kind)

    receive.__name__ = f"receive_{kind}"
    receive.__doc__ = f"Accept Segment {kind} messages."
    return receive


for _kind, _short in SHORT_FORMS.items():
    for _path in (f"/v1/{_kind}", f"/v1/{_short}"):
        router.add_api_route(
            _path,
            _endpoint(_kind),
            methods=["POST"],
            name=f"{_kind}:{_path}",
            openapi_extra=segment_body(_kind),
        )
router.add_api_route(
    "/v1/import",
    _endpoint("batch"),
    methods=["POST"],
    name="import",
    openapi_extra=segment_body("batch"),
)


async def receive_events(request: Request, *, kind: str) -> JSONResponse:
    """Read, authenticate, validate and store one request's messages."""
    state = request.app.state
    received_at: datetime = state.clock.now()
    raw = await read_body(request, limit=MAX_BODY_BYTES)
    header_key = key_from_authorization(request.headers.get("authorization"))
    encoding = request.headers.get("content-encoding")

    def work() -> IngestResult:
        body = inflate(raw, encoding=encoding, limit=MAX_BODY_BYTES)
        payload = decode_body(body, kind=kind)
        key = header_key or write_key_of(payload)
        workspace_id = authenticate(state.engine, key, kind="write", cache=state.key_cache)
        events = parse_payload(payload, kind=kind, received_at=received_at)
        return ingest(state.engine, workspace_id, events, now=received_at)

    result = await run_in_threadpool(work)
    state.metrics.count_events(kind, accepted=result.accepted, duplicates=result.duplicates)
    return JSONResponse({"success": True})


async def read_body(request: Request, *, limit: int) -> bytes:
    """The raw request body, refusing (without reading it all) one over ``limit``."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"the body is {declared} bytes; the limit is {limit // 1024} KB")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"the body is over the {limit // 1024} KB limit")
        chunks.append(chunk)
    return b"".join(chunks)


def inflate(body: bytes, *, encoding: str | None, limit: int) -> bytes:
    """``body`` decoded per its Content-Encoding; inflation stops past ``limit``."""
    name = (encoding or "identity").strip().lower()
    if name in ("", "identity"):
        return body
    if name not in ("gzip", "x-gzip"):
        raise InputError(f"unsupported Content-Encoding {encoding!r}; use gzip or none")
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = inflater.decompress(body, limit + 1)
    except zlib.error:
        raise InputError("the body is not valid gzip") from None
    if len(out) > limit:
        raise PayloadTooLarge(f"the body is over the {limit // 1024} KB limit once decompressed")
    if not inflater.eof:
        raise InputError("the gzip body is truncated")
    return out


def key_from_authorization(header: str | None) -> str | None:
    """The key in an ``Authorization`` header: Basic user name or Bearer token."""
    if not header:
        return None
    scheme, _, credentials = header.strip().partition(" ")
    credentials = credentials.strip()
    if scheme.lower() == "bearer":
        return credentials or None
    if scheme.lower() != "basic":
        raise AuthError("use HTTP Basic authentication with the write key as the user name")
    try:
        decoded = base64.b64decode(credentials, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise AuthError("malformed Basic credentials") from None
    return decoded.partition(":")[0] or None
