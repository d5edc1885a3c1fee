"""The operator queue in the admin API: list, claim and close call tasks.

Operators identify themselves by name in each claim and close; the admin
token decides the workspace. Conflicts (a task another operator holds, a
closed task) answer ``409`` with a stable code: ``task_taken``,
``task_closed`` or ``task_not_claimed``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query, Request
from pydantic import BaseModel, Field
from sqlalchemy import Engine
from starlette.concurrency import run_in_threadpool

from touchline.store.db import run_in_transaction
from touchline.store.tasks import (
    MAX_LIST_LIMIT,
    MAX_NOTE_CHARS,
    MAX_OPERATOR_CHARS,
    claim_next,
    claim_task,
    close_task,
    get_task,
    list_tasks,
)
from touchline.web.api.admin import Workspace

router = APIRouter(prefix="/admin/v1/tasks", tags=["tasks"])

Operator = Annotated[str, Field(min_length=1, max_length=MAX_OPERATOR_CHARS)]
# A task id as a column holds it: a larger number is refused (400), not sent to the driver.
TaskId = Annotated[int, Path(ge=1, le=2**63 - 1)]


class ClaimRequest(BaseModel):
    """Who takes the task, e.g. ``{"operator": "olga"}``."""

    operator: Operator


class CloseRequest(BaseModel):
    """How the call went; ``call_back_at`` (ISO 8601 with an offset) only for ``call_back``."""

    operator: Operator
    outcome: Annotated[str, Field(min_length=1, max_length=32)]
    note: Annotated[str | None, Field(max_length=MAX_NOTE_CHARS)] = None
    call_back_at: datetime | None = None


def _engine(request: Request) -> Engine:
    return request.app.state.engine  # type: ignore[no-any-return]


@router.get("")
async def tasks_index(
    request: Request,
    workspace: Workspace,
    status: Literal["open", "claimed", "closed"] | None = None,
    assignee: Annotated[str | None, Query(max_length=MAX_OPERATOR_CHARS)] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIST_LIMIT)] = 100,
) -> dict[str, Any]:
    """Tasks, most urgent first (priority, then due time)."""

    def run() -> list[dict[str, Any]]:
        with _engine(request).connect() as conn:
            return list_tasks(conn, workspace, status=status, assignee=assignee, limit=limit)

    return {"tasks": await run_in_threadpool(run)}


@router.post("/claim-next")
async def claim_next_task(
    request: Request, body: ClaimRequest, workspace: Workspace
) -> dict[str, Any]:
    """Claim the most urgent due task; ``{"task": null}`` when the queue is empty."""
    now = request.app.state.clock.now()

    def run() -> dict[str, Any] | None:
        return run_in_transaction(
            _engine(request),
            lambda conn: claim_next(conn, workspace, operator=body.operator, now=now),
        )

    return {"task": await run_in_threadpool(run)}


@router.get("/{task_id:int}")
async def task_detail(request: Request, task_id: TaskId, workspace: Workspace) -> dict[str, Any]:
    """One task with the customer's traits, recent events, journey and earlier tasks."""

    def run() -> dict[str, Any]:
        with _engine(request).connect() as conn:
            return get_task(conn, workspace, task_id)

    return await run_in_threadpool(run)


@router.post("/{task_id:int}/claim")
async def claim(
    request: Request, task_id: TaskId, body: ClaimRequest, workspace: Workspace
) -> dict[str, Any]:
    """Take one task; ``409 task_taken`` while another operator holds it."""
    now = request.app.state.clock.now()

    def run() -> dict[str, Any]:
        return run_in_transaction(
            _engine(request),
            lambda conn: claim_task(conn, workspace, task_id, operator=body.operator, now=now),
        )

    return await run_in_threadpool(run)


@router.post("/{task_id:int}/close")
async def close(
    request: Request, task_id: TaskId, body: CloseRequest, workspace: Workspace
) -> dict[str, Any]:
    """Record the outcome; the customer gets a ``Call Completed`` event journeys can react to."""
    now = request.app.state.clock.now()

    def run() -> dict[str, Any]:
        return run_in_transaction(
            _engine(request),
            lambda conn: close_task(
                conn,
                workspace,
                task_id,
                operator=body.operator,
                outcome=body.outcome,
                note=body.note,
                call_back_at=body.call_back_at,
                now=now,
            ),
        )

    return await run_in_threadpool(run)
