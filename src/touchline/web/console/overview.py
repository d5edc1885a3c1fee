"""The overview: the workspace's key figures over time and its best journeys.

Everything comes from the report rollups (:mod:`touchline.measure.reports`),
never from raw events, so the page costs the same for any volume.
"""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from touchline.measure.reports import journey_summary, report
from touchline.web.console.base import engine_of, guard, markup, now_of, page, run
from touchline.web.console.charts import Series, legend, line_chart, stacked_bars

router = APIRouter()

#: Periods offered, in days; anything else falls back to the default.
PERIODS = (7, 30, 90)
DEFAULT_PERIOD = 30
#: Journeys listed under "top journeys".
TOP_JOURNEYS = 8


def _days(since: date, until: date) -> list[date]:
    return [since + timedelta(days=i) for i in range((until - since).days + 1)]


def overview_data(conn: Any, workspace_id: str, *, since: date, until: date) -> dict[str, Any]:
    """Totals, daily series and the top journeys of ``[since, until]`` (UTC days)."""
    days = _days(since, until)
    labels = [d.strftime("%m-%d") for d in days]
    total = report(conn, workspace_id, since=since, until=until, by=()).records()
    totals = total[0] if total else {}
    by_day = {
        r["day"]: r
        for r in report(conn, workspace_id, since=since, until=until, by=("day",)).records()
    }
    by_channel: dict[str, dict[str, float]] = {}
    for r in report(conn, workspace_id, since=since, until=until, by=("day", "channel")).records():
        by_channel.setdefault(r["channel"] or "-", {})[r["day"]] = r["sent"]

    def series(name: str, key: str) -> Series:
        return Series(name, [_number(by_day.get(d.isoformat(), {}).get(key)) for d in days])

    channels = [
        Series(name, [values.get(d.isoformat(), 0) for d in days])
        for name, values in sorted(by_channel.items())
    ]
    rates = [series("Open rate", "open_rate"), series("CTR", "ctr")]
    conversions = [series("Attributed orders", "attributed")]
    revenue = [series("Revenue", "revenue")]
    unsubscribes = [series("Unsubscribes", "unsubscribed")]
    journeys = journey_summary(conn, workspace_id, since=since, until=until)
    top = sorted(journeys, key=lambda j: (-float(j.revenue), -j.converted, -j.entered, j.key))
    return {
        "totals": totals,
        "charts": [
            _chart(
                "Messages by channel",
                stacked_bars(labels, channels, title="Messages by channel"),
                channels,
            ),
            _chart(
                "Open rate and CTR",
                line_chart(labels, rates, title="Open rate and CTR", unit="%"),
                rates,
            ),
            _chart(
                "Conversions",
                line_chart(labels, conversions, title="Attributed orders"),
                conversions,
            ),
            _chart("Revenue", line_chart(labels, revenue, title="Attributed revenue"), revenue),
            _chart(
                "Unsubscribes", line_chart(labels, unsubscribes, title="Unsubscribes"), unsubscribes
            ),
        ],
        "journeys": [j for j in top if j.entered or j.holdout_entered][:TOP_JOURNEYS],
    }


def _chart(title: str, svg: str, series: list[Series]) -> dict[str, Any]:
    return {"title": title, "svg": markup(svg), "legend": legend(series)}


def _number(value: Any) -> float | None:
    return None if value is None else float(value)


@router.get("/overview")
async def overview(request: Request) -> Response:
    session = await guard(request, "overview")
    try:
        period = int(request.query_params.get("days", DEFAULT_PERIOD))
    except ValueError:
        period = DEFAULT_PERIOD
    if period not in PERIODS:
        period = DEFAULT_PERIOD
    until = now_of(request).date()
    since = until - timedelta(days=period - 1)

    def work() -> dict[str, Any]:
        with engine_of(request).connect() as conn:
            return overview_data(conn, session.user.workspace_id, since=since, until=until)

    data = await run(work)
    return page(
        request,
        "overview.html",
        session=session,
        section="overview",
        title="Overview",
        period=period,
        periods=PERIODS,
        since=since,
        until=until,
        **data,
    )
