"""The operator queue: take the next call, see who the customer is, record how it went.

A thin page over :mod:`touchline.store.tasks`, which owns the rules: one
operator holds a claim, a stale claim may be taken over, only the holder
closes, ``call_back`` opens a follow-up task. The operator's name in the
queue is their console email. A call-back time is typed in the workspace's
time zone.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from fastapi import APIRouter
from sqlalchemy import select
from starlette.requests import Request
from starlette.responses import Response

from touchline.errors import InputError
from touchline.journeys.localtime import zone
from touchline.store.db import transaction
from touchline.store.tables import workspaces
from touchline.store.tasks import (
    CALL_BACK,
    CLAIMED,
    OUTCOMES,
    claim_next,
    claim_task,
    close_task,
    get_task,
    list_tasks,
)
from touchline.web.console.base import (
    PREFIX,
    engine_of,
    field,
    guard,
    now_of,
    page,
    read_form,
    redirect,
    run,
)

router = APIRouter()

#: Tasks listed per group on the queue page.
QUEUE_LIMIT = 100
OUTCOME_LABELS = {
    "reached": "Reached",
    "sold": "Sold",
    "call_back": "Call back",
    "no_answer": "No answer",
    "refused": "Refused",
    "wrong_number": "Wrong number",
}


def _zone(conn: Any, workspace_id: str) -> ZoneInfo:
    name = conn.execute(
        select(workspaces.c.timezone).where(workspaces.c.id == workspace_id)
    ).scalar()
    return zone(name or "UTC")


@router.get("/queue")
async def queue_page(request: Request) -> Response:
    session = await guard(request, "queue")
    ws = session.user.workspace_id
    me = session.user.email
    now = now_of(request)

    def work() -> dict[str, Any]:
        with engine_of(request).connect() as conn:
            return {
                "mine": list_tasks(conn, ws, status=CLAIMED, assignee=me, limit=QUEUE_LIMIT),
                "due": list_tasks(conn, ws, status="open", due_before=now, limit=QUEUE_LIMIT),
                "later": [
                    t
                    for t in list_tasks(conn, ws, status="open", limit=QUEUE_LIMIT)
                    if t["due_at"] > now.isoformat()
                ],
            }

    data = await run(work)
    return page(
        request,
        "queue.html",
        session=session,
        section="queue",
        title="Operator queue",
        **data,
    )


@router.post("/queue/next")
async def take_next(request: Request) -> Response:
    session = await guard(request, "queue")
    await read_form(request, session)
    now = now_of(request)

    def work() -> dict[str, Any] | None:
        with transaction(engine_of(request)) as conn:
            return claim_next(conn, session.user.workspace_id, operator=session.user.email, now=now)

    task = await run(work)
    if task is None:
        return redirect(f"{PREFIX}/queue", notice="no_task")
    return redirect(f"{PREFIX}/queue/{task['id']}", notice="claimed")


@router.get("/queue/{task_id}")
async def task_page(request: Request, task_id: int) -> Response:
    session = await guard(request, "queue")
    ws = session.user.workspace_id

    def work() -> tuple[dict[str, Any], str]:
        with engine_of(request).connect() as conn:
            return get_task(conn, ws, task_id), _zone(conn, ws).key

    task, tz = await run(work)
    return page(
        request,
        "task.html",
        session=session,
        section="queue",
        title=f"Task {task_id}",
        task=task,
        mine=task["status"] == CLAIMED and task["assignee"] == session.user.email,
        outcomes=[(o, OUTCOME_LABELS.get(o, o)) for o in OUTCOMES],
        timezone=tz,
    )


@router.post("/queue/{task_id}/claim")
async def claim(request: Request, task_id: int) -> Response:
    session = await guard(request, "queue")
    await read_form(request, session)
    now = now_of(request)

    def work() -> None:
        with transaction(engine_of(request)) as conn:
            claim_task(
                conn, session.user.workspace_id, task_id, operator=session.user.email, now=now
            )

    await run(work)
    return redirect(f"{PREFIX}/queue/{task_id}", notice="claimed")


@router.post("/queue/{task_id}/close")
async def close(request: Request, task_id: int) -> Response:
    session = await guard(request, "queue")
    form = await read_form(request, session)
    ws = session.user.workspace_id
    outcome = field(form, "outcome")[:32]
    note = field(form, "note").strip()[:4000] or None
    when = field(form, "call_back_at").strip()
    now = now_of(request)

    def work() -> None:
        with transaction(engine_of(request)) as conn:
            call_back_at = None
            if outcome == CALL_BACK:
                if not when:
                    raise InputError("choose when to call back")
                try:
                    local = datetime.fromisoformat(when)
                except ValueError:
                    raise InputError("the call-back time is not a date and time") from None
                if local.tzinfo is None:
                    local = local.replace(tzinfo=_zone(conn, ws))
                call_back_at = local
            close_task(
                conn,
                ws,
                task_id,
                operator=session.user.email,
                outcome=outcome,
                note=note,
                call_back_at=call_back_at,
                now=now,
            )

    await run(work)
    return redirect(f"{PREFIX}/queue", notice="closed")
