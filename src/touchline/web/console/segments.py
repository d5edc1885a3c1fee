"""Segment pages: definitions, sizes over time, and a sample of members.

Read-only: segments are defined in files and kept current by the audience
code. A segment's size over the last days is worked back from today's
member count and the ``segment_changes`` log (who entered and left when).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from fastapi import APIRouter
from sqlalchemy import func, select
from starlette.requests import Request
from starlette.responses import Response

from touchline.errors import NotFound
from touchline.store.tables import profiles, segment_changes, segment_members, segments
from touchline.web.console.base import engine_of, guard, markup, now_of, page, run
from touchline.web.console.charts import Series, line_chart

router = APIRouter()

#: Days of size history drawn on a segment's page.
HISTORY_DAYS = 30
#: Changes read to draw the history; a segment churning more a month shows the recent part.
MAX_CHANGES = 200_000
SAMPLE = 20


@router.get("/segments")
async def segment_list(request: Request) -> Response:
    session = await guard(request, "segments")
    ws = session.user.workspace_id

    def work() -> list[Any]:
        size = (
            select(func.count())
            .where(segment_members.c.segment_id == segments.c.id)
            .scalar_subquery()
            .label("size")
        )
        with engine_of(request).connect() as conn:
            return list(
                conn.execute(
                    select(
                        segments.c.key,
                        segments.c.name,
                        segments.c.status,
                        segments.c.built_at,
                        size,
                    )
                    .where(segments.c.workspace_id == ws, segments.c.status != "archived")
                    .order_by(segments.c.key)
                )
            )

    rows = await run(work)
    return page(
        request,
        "segments.html",
        session=session,
        section="segments",
        title="Segments",
        segments=rows,
    )


@router.get("/segments/{key}")
async def segment_page(request: Request, key: str) -> Response:
    session = await guard(request, "segments")
    ws = session.user.workspace_id
    today = now_of(request).date()
    since = today - timedelta(days=HISTORY_DAYS - 1)

    def work() -> dict[str, Any]:
        with engine_of(request).connect() as conn:
            seg = conn.execute(
                select(segments).where(segments.c.workspace_id == ws, segments.c.key == key)
            ).first()
            if seg is None:
                raise NotFound(f"no segment {key!r} in this workspace")
            size = conn.execute(
                select(func.count()).where(segment_members.c.segment_id == seg.id)
            ).scalar_one()
            changes = conn.execute(
                select(segment_changes.c.change, segment_changes.c.at)
                .where(
                    segment_changes.c.segment_id == seg.id,
                    segment_changes.c.workspace_id == ws,
                    segment_changes.c.at >= now_of(request) - timedelta(days=HISTORY_DAYS),
                )
                .order_by(segment_changes.c.at.desc())
                .limit(MAX_CHANGES)
            ).all()
            sample = list(
                conn.execute(
                    select(
                        profiles.c.id,
                        profiles.c.user_id,
                        profiles.c.email,
                        segment_members.c.entered_at,
                    )
                    .join(profiles, profiles.c.id == segment_members.c.profile_id)
                    .where(segment_members.c.segment_id == seg.id, profiles.c.workspace_id == ws)
                    .order_by(segment_members.c.entered_at.desc())
                    .limit(SAMPLE)
                )
            )
        return {
            "segment": seg,
            "size": size,
            "history": sizes(size, changes, since, today),
            "sample": sample,
        }

    data = await run(work)
    days = [since + timedelta(days=i) for i in range(HISTORY_DAYS)]
    history = [Series("Members", [float(data["history"][d]) for d in days])]
    chart = line_chart(
        [d.strftime("%m-%d") for d in days], history, title="Members at the end of each day"
    )
    return page(
        request,
        "segment.html",
        session=session,
        section="segments",
        title=data["segment"].name,
        chart=markup(chart),
        **data,
    )


def sizes(now_size: int, changes: list[Any], since: Any, today: Any) -> dict[Any, int]:
    """Members at the end of each day from ``since`` to ``today``, worked back from now."""
    net_by_day: dict[Any, int] = {}
    for change, at in changes:
        net_by_day[at.date()] = net_by_day.get(at.date(), 0) + (1 if change == "entered" else -1)
    out: dict[Any, int] = {}
    size = now_size
    day = today
    while day >= since:
        out[day] = max(size, 0)
        size -= net_by_day.get(day, 0)  # the end of the day before
        day -= timedelta(days=1)
    return out
