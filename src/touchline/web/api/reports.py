"""The admin API for reports over the stored events and the daily rollups.

* ``POST /admin/v1/reports/funnel`` — a funnel: customers reaching each step
  of a sequence of events within a window, optionally split by whether they
  were in a journey; JSON, or CSV with ``?format=csv``.
* ``GET /admin/v1/reports/messages`` — message figures and rates grouped by
  journey, step, variant, channel and/or day.
* ``GET /admin/v1/reports/journeys`` — entries, goal conversions, revenue and
  each journey's uplift over its holdout.
* ``GET /admin/v1/reports/journeys/{key}/variants`` — the variants of a split
  compared on one metric, and the winner if there is one.

Funnel semantics are those of :mod:`touchline.measure.funnels`, the others'
those of :mod:`touchline.measure.reports`. Bad input answers ``400
invalid_input`` (``invalid_condition`` for a funnel step's ``where``); an
unknown journey or step answers ``404 not_found``.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from touchline.journeys.conditions import MAX_LENGTH
from touchline.measure.funnels import (
    MAX_EVENT_NAME,
    MAX_STEPS,
    FunnelReport,
    build_funnel,
    compute_funnel,
    resolve_period,
)
from touchline.measure.reports import (
    JourneyReport,
    Report,
    journey_summary,
    parse_by,
    report,
    resolve_days,
    variant_report,
)
from touchline.web.api.admin import Workspace
from touchline.web.openapi import JSON_OR_CSV

router = APIRouter(prefix="/admin/v1/reports", tags=["reports"])


class StepIn(BaseModel):
    """One funnel step: an event name and an optional condition on the event."""

    model_config = ConfigDict(extra="forbid")

    event: Annotated[str, Field(min_length=1, max_length=MAX_EVENT_NAME)]
    where: Annotated[str, Field(max_length=MAX_LENGTH)] | None = None


class FunnelRequest(BaseModel):
    """A funnel to measure; times are ISO-8601 (naive ones are UTC)."""

    model_config = ConfigDict(extra="forbid")

    steps: Annotated[list[StepIn], Field(min_length=2, max_length=MAX_STEPS)]
    window: Annotated[str, Field(min_length=1, max_length=32)]
    since: datetime | None = None
    until: datetime | None = None
    split_by_journey: Annotated[str, Field(min_length=1, max_length=64)] | None = None
    split_by_segment: Annotated[str, Field(min_length=1, max_length=64)] | None = None


@router.post("/funnel", response_model=None, responses=JSON_OR_CSV)
async def funnel_report(
    request: Request,
    body: FunnelRequest,
    workspace: Workspace,
    format: Literal["json", "csv"] = "json",
) -> dict[str, Any] | Response:
    """Customers reaching each step, conversion and median time between steps.

    ``until`` defaults to now and ``since`` to 30 days before ``until``.
    """
    funnel = build_funnel([(s.event, s.where) for s in body.steps], window=body.window)
    since, until = resolve_period(body.since, body.until, now=request.app.state.clock.now())

    def run() -> FunnelReport:
        with request.app.state.engine.connect() as conn:
            return compute_funnel(
                conn,
                workspace,
                funnel,
                since=since,
                until=until,
                split_by_journey=body.split_by_journey,
                split_by_segment=body.split_by_segment,
            )

    report = await run_in_threadpool(run)
    if format == "csv":
        return Response(
            report.to_csv(),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": 'attachment; filename="funnel.csv"'},
        )
    return report.as_dict()


Format = Literal["json", "csv"]
Day = Annotated[date | None, Query(description="a UTC day, YYYY-MM-DD; included")]


def _days(request: Request, since: date | None, until: date | None) -> tuple[date, date]:
    """The period asked for; ``until`` defaults to today (UTC), ``since`` to 30 days up to it."""
    return resolve_days(since, until, today=request.app.state.clock.now().date())


async def _answer(
    request: Request, work: Callable[[Any], Report], *, fmt: Format, filename: str
) -> dict[str, Any] | Response:
    """Run ``work(conn)`` on a read connection off the event loop; JSON or CSV of the result."""

    def run() -> Report:
        with request.app.state.engine.connect() as conn:
            return work(conn)

    found = await run_in_threadpool(run)
    if fmt == "csv":
        return Response(
            found.table().to_csv(),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": f'attachment; filename="{filename}"'},
        )
    return found.as_dict()


@router.get("/messages", response_model=None, responses=JSON_OR_CSV)
async def messages_report(
    request: Request,
    workspace: Workspace,
    since: Day = None,
    until: Day = None,
    by: Annotated[str, Query(max_length=100)] = "",
    format: Format = "json",
) -> dict[str, Any] | Response:
    """Message counters and rates over UTC days, one row per group of ``by``."""
    start, end = _days(request, since, until)
    groups = parse_by(by)
    return await _answer(
        request,
        lambda conn: report(conn, workspace, since=start, until=end, by=groups),
        fmt=format,
        filename="messages.csv",
    )


@router.get("/journeys", response_model=None, responses=JSON_OR_CSV)
async def journeys_report(
    request: Request,
    workspace: Workspace,
    since: Day = None,
    until: Day = None,
    format: Format = "json",
) -> dict[str, Any] | Response:
    """Every journey: entries, goal conversions, revenue and uplift over its holdout."""
    start, end = _days(request, since, until)
    return await _answer(
        request,
        lambda conn: JourneyReport(
            start, end, journey_summary(conn, workspace, since=start, until=end)
        ),
        fmt=format,
        filename="journeys.csv",
    )


@router.get("/journeys/{key}/variants", response_model=None, responses=JSON_OR_CSV)
async def variants_report(
    request: Request,
    workspace: Workspace,
    key: str,
    step: Annotated[str, Query(min_length=1, max_length=64)],
    metric: Literal["conversion", "click", "open", "revenue"] = "conversion",
    min_sample: Annotated[int | None, Query(ge=1, le=100_000_000)] = None,
    since: Day = None,
    until: Day = None,
    format: Format = "json",
) -> dict[str, Any] | Response:
    """The variants of split ``step`` compared on ``metric``; a winner only when it is clear."""
    start, end = _days(request, since, until)
    return await _answer(
        request,
        lambda conn: variant_report(
            conn,
            workspace,
            key,
            step,
            metric=metric,
            since=start,
            until=end,
            min_sample=min_sample,
        ),
        fmt=format,
        filename="variants.csv",
    )
