"""The inbox: messages the capture channel kept instead of sending, readable as sent.

Where a workspace (or the server) sends a channel to ``capture``, the
dispatcher records the rendered message on its outbox row as for any send,
with a ``capture:`` provider id. The inbox lists those rows, newest first.

An email is shown in a sandboxed ``iframe`` (``srcdoc``: no scripts, an
origin of its own). Its open pixel is taken out before showing it, so
reading a message here never counts as the customer opening it; its links
still point at the click tracker, and the sandbox keeps them from opening.
"""

from __future__ import annotations

import re
from typing import Any

from fastapi import APIRouter
from sqlalchemy import select
from starlette.requests import Request
from starlette.responses import Response

from touchline.errors import NotFound
from touchline.store.tables import journeys, outbox, profiles
from touchline.web.console.base import engine_of, guard, page, run
from touchline.web.console.message_templates import PREVIEW_CSP

router = APIRouter()

#: Messages listed on the inbox page.
INBOX_LIMIT = 200
CAPTURED = "capture:%"
#: An ``<img>`` whose source is touchline's open pixel (``/t/o/<token>.gif``).
_PIXEL = re.compile(r"<img\b[^>]*\bsrc\s*=\s*[\"'][^\"']*/t/o/[^\"']*[\"'][^>]*>", re.IGNORECASE)


def without_pixel(html: str) -> str:
    """The email's HTML minus the open pixel, so reading it here records no open."""
    return _PIXEL.sub("", html)


def _columns() -> list[Any]:
    return [
        outbox.c.id,
        outbox.c.channel,
        outbox.c.template,
        outbox.c.address,
        outbox.c.sent_at,
        outbox.c.rendered,
        outbox.c.step_id,
        outbox.c.profile_id,
        journeys.c.key.label("journey"),
        profiles.c.user_id,
    ]


def _query(workspace_id: str) -> Any:
    return (
        select(*_columns())
        .select_from(
            outbox.outerjoin(journeys, journeys.c.id == outbox.c.journey_id).outerjoin(
                profiles, profiles.c.id == outbox.c.profile_id
            )
        )
        .where(
            outbox.c.workspace_id == workspace_id,
            outbox.c.status == "sent",
            outbox.c.provider_id.like(CAPTURED),
        )
    )


@router.get("/inbox")
async def inbox_page(request: Request) -> Response:
    session = await guard(request, "inbox")
    ws = session.user.workspace_id
    channel = request.query_params.get("channel", "")[:64]

    def work() -> list[Any]:
        query = _query(ws)
        if channel:
            query = query.where(outbox.c.channel == channel)
        with engine_of(request).connect() as conn:
            return list(conn.execute(query.order_by(outbox.c.id.desc()).limit(INBOX_LIMIT)))

    rows = await run(work)
    return page(
        request,
        "inbox.html",
        session=session,
        section="inbox",
        title="Inbox",
        messages=rows,
        channel=channel,
    )


@router.get("/inbox/{message_id}")
async def message_page(request: Request, message_id: int) -> Response:
    session = await guard(request, "inbox")
    ws = session.user.workspace_id

    def work() -> Any:
        with engine_of(request).connect() as conn:
            return conn.execute(_query(ws).where(outbox.c.id == message_id)).first()

    row = await run(work)
    if row is None:
        raise NotFound(f"no captured message {message_id} in this workspace")
    rendered = dict(row.rendered or {})
    html = rendered.get("html")
    return page(
        request,
        "message.html",
        session=session,
        section="inbox",
        title=f"Message {message_id}",
        message=row,
        subject=rendered.get("subject"),
        text=rendered.get("text"),
        html=without_pixel(html) if isinstance(html, str) else None,
        headers={"Content-Security-Policy": PREVIEW_CSP},
    )
