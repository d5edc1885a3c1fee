"""The admin API for reports over the stored events.

* ``POST /admin/v1/reports/funnel`` — a funnel: customers reaching each step
  of a sequence of events within a window, optionally split by whether they
  were in a journey; JSON, or CSV with ``?format=csv``.

Semantics are those of :mod:`touchline.measure.funnels`. Bad input answers
``400 invalid_input`` (``invalid_condition`` for a step's ``where``); an
unknown ``split_by_journey`` answers ``404 not_found``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Request, Response
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
from touchline.web.api.admin import Workspace

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


@router.post("/funnel", response_model=None)
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
            )

    report = await run_in_threadpool(run)
    if format == "csv":
        return Response(
            report.to_csv(),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": 'attachment; filename="funnel.csv"'},
        )
    return report.as_dict()
