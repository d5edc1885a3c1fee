"""Tracking routes: the open pixel, email click links and SMS short links.

* ``GET /t/o/{token}.gif`` answers a 1×1 transparent GIF and records an
  ``opened`` row. The image is answered whatever the token says: a mail
  whose pixel no longer verifies (its workspace replaced the link secret)
  must not show a broken image; such a fetch is just not recorded.
* ``GET /t/c/{token}`` records a ``clicked`` row and redirects (302) to the
  destination signed into the token. A token touchline did not sign answers
  400 ``bad_link`` and redirects nowhere: this is no open redirect.
* ``GET /s/{code}`` does the same for an SMS short link; an unknown code
  answers 404.

Recording never costs the customer the page: if the store fails to write
the row, the failure is logged and the redirect (or image) is answered all
the same. What is recorded, and which fetches count as a machine's, is
:mod:`touchline.measure.engagement` and :mod:`touchline.measure.machines`.
"""

from __future__ import annotations

import logging
import re
import struct
from datetime import datetime

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response
from sqlalchemy import Engine, select
from starlette.concurrency import run_in_threadpool

from touchline.errors import InputError, NotFound
from touchline.measure.engagement import Hit, record_hit
from touchline.measure.machines import HitKind
from touchline.measure.tokens import (
    BAD_LINK,
    TrackClaims,
    TrackKind,
    read_track_token,
    track_workspace,
)
from touchline.measure.tracking import ShortLink, resolve_short_link
from touchline.store.db import run_in_transaction
from touchline.store.tables import workspaces

log = logging.getLogger("touchline.web.track")

router = APIRouter(include_in_schema=False)


def _transparent_gif() -> bytes:
    """The smallest common 1×1 transparent GIF89a (43 bytes), built field by field."""
    header = b"GIF89a" + struct.pack("<HHBBB", 1, 1, 0x80, 0, 0)  # 1×1, 2-colour table
    palette = b"\x00\x00\x00" + b"\xff\xff\xff"
    transparency = b"\x21\xf9\x04\x01\x00\x00\x00\x00"  # colour 0 is transparent
    image = b"\x2c" + struct.pack("<HHHHB", 0, 0, 1, 1, 0)
    pixels = b"\x02\x02\x44\x01\x00"  # LZW: min code size 2, one block: clear, 0, end
    return header + palette + transparency + image + pixels + b"\x3b"


#: The open pixel's body.
PIXEL_GIF = _transparent_gif()
#: A pixel or redirect is per recipient and per fetch: never cached, never indexed.
NO_STORE = {"Cache-Control": "no-store", "X-Robots-Tag": "noindex, nofollow"}
_HTTP = re.compile(r"(?i)https?://")


@router.get("/t/o/{token}.gif")
async def open_pixel(request: Request, token: str) -> Response:
    """The open pixel: always the GIF; an ``opened`` row when the token verifies."""
    at = request.app.state.clock.now()
    try:
        claims = await run_in_threadpool(_verify, request.app.state.engine, token, "open")
    except Exception as exc:  # noqa: BLE001 - the image is answered whatever happens
        log.info("open pixel not recorded: %s", getattr(exc, "message", exc))
    else:
        await _record(request, claims, kind="opened", at=at, url=None)
    return Response(PIXEL_GIF, media_type="image/gif", headers=NO_STORE)


@router.get("/t/c/{token}")
async def click(request: Request, token: str) -> Response:
    """A tracked email link: record the click, redirect to the signed destination."""
    at = request.app.state.clock.now()
    claims = await run_in_threadpool(_verify, request.app.state.engine, token, "click")
    assert claims.url is not None  # read_track_token guarantees it for a click
    await _record(request, claims, kind="clicked", at=at, url=claims.url)
    return RedirectResponse(claims.url, status_code=302, headers=NO_STORE)


@router.get("/s/{code}")
async def short_link(request: Request, code: str) -> Response:
    """An SMS short link: record the click, redirect to the stored destination."""
    at = request.app.state.clock.now()
    engine: Engine = request.app.state.engine
    link = await run_in_threadpool(_resolve, engine, code)
    if link is None or not _HTTP.match(link.url):
        raise NotFound("no such link")
    claims = TrackClaims(
        kind="click", workspace_id=link.workspace_id, outbox_id=link.outbox_id, url=link.url
    )
    await _record(request, claims, kind="clicked", at=at, url=link.url)
    return RedirectResponse(link.url, status_code=302, headers=NO_STORE)


def _verify(engine: Engine, token: str, kind: TrackKind) -> TrackClaims:
    """The token's claims, checked against its workspace's link key (never made here)."""
    workspace_id = track_workspace(token)
    with engine.connect() as conn:
        stored = conn.execute(
            select(workspaces.c.link_secret).where(workspaces.c.id == workspace_id)
        ).scalar_one_or_none()
    if stored is None:
        raise InputError("this link is not valid", code=BAD_LINK)
    return read_track_token(bytes.fromhex(stored), token, kind=kind)


def _resolve(engine: Engine, code: str) -> ShortLink | None:
    with engine.connect() as conn:
        return resolve_short_link(conn, code)


async def _record(
    request: Request, claims: TrackClaims, *, kind: HitKind, at: datetime, url: str | None
) -> None:
    """Write the hit; a failure is logged, never raised (the customer still gets through)."""
    hit = Hit(
        kind=kind,
        workspace_id=claims.workspace_id,
        outbox_id=claims.outbox_id,
        at=at,
        url=url,
        ip=request.client.host if request.client else None,
        user_agent=request.headers.get("user-agent"),
    )
    engine: Engine = request.app.state.engine
    try:
        await run_in_threadpool(run_in_transaction, engine, lambda conn: record_hit(conn, hit))
    except Exception:  # noqa: BLE001 - recording must never cost the redirect
        log.exception("%s of message %s not recorded", hit.kind, hit.outbox_id)
