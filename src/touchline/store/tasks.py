"""Operator tasks: calls a journey asks a person to make, and what came of them.

A journey's ``send`` step on the ``call`` channel opens a task (see
:mod:`touchline.messaging.channels.callcentre`). Operators then work the queue:

* ``open`` → ``claimed`` by :func:`claim_task` (a chosen task) or
  :func:`claim_next` (the most urgent due task). A claim is held by one
  operator; another gets :class:`Conflict` ``task_taken``. A claim older than
  :data:`CLAIM_TIMEOUT` is stale and may be taken over, so a task is never
  stuck behind an operator who left. Claiming a task one already holds renews
  the claim.
* ``claimed`` → ``closed`` by :func:`close_task`, only by the operator holding
  the claim, with an outcome from :data:`OUTCOMES`. ``call_back`` opens a new
  task due at ``call_back_at`` that refers to this one (``previous_id``).

Closing records a ``Call Completed`` track event for the customer, stored
exactly as the ingest API stores events, in the same transaction as the close,
so journeys can ``wait_for`` it and branch on ``event.properties.outcome``.
Its ``messageId`` is ``task:<id>:closed``: a close that is retried emits it
once, and a retried close with the same operator and outcome answers as the
first did instead of failing.

Every function takes the caller's connection; writes expect a transaction
(:func:`touchline.store.db.transaction`), reads a plain connection.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, and_, or_, select, update

from touchline.errors import Conflict, InputError, NotFound, StoreError
from touchline.ingest.segment import IncomingEvent
from touchline.store.db import insert_ignore
from touchline.store.ingest import get_profile, ingest_events, list_events
from touchline.store.tables import instances, journeys, profiles, tasks

OPEN, CLAIMED, CLOSED = "open", "claimed", "closed"
STATUSES = (OPEN, CLAIMED, CLOSED)
# What an operator may record after a call; journeys branch on these names.
OUTCOMES = ("reached", "no_answer", "call_back", "sold", "refused", "wrong_number")
CALL_BACK = "call_back"
# The event closing a task records for the customer.
CALL_COMPLETED = "Call Completed"
# A claim this old is abandoned (the operator left or their client crashed);
# another operator may take the task over.
CLAIM_TIMEOUT = timedelta(minutes=30)
# How many of the customer's latest events and earlier tasks a task shows.
RECENT_EVENTS = 20
RECENT_TASKS = 20
# Most tasks one list call returns.
MAX_LIST_LIMIT = 500
# Widths of the columns these values go into.
MAX_REASON_CHARS = 200
MAX_OPERATOR_CHARS = 200
# A note is what an operator types after a call; longer is a paste gone wrong.
MAX_NOTE_CHARS = 4000
# The priority column is a SMALLINT.
MIN_PRIORITY, MAX_PRIORITY = -32768, 32767


def create_task(
    conn: Connection,
    workspace_id: str,
    *,
    idempotency_key: str,
    profile_id: int,
    reason: str,
    script: str,
    due_at: datetime,
    now: datetime,
    priority: int = 0,
    journey_id: int | None = None,
    instance_id: int | None = None,
    step_id: str | None = None,
    previous_id: int | None = None,
) -> int:
    """Open a task and return its id; an existing task with ``idempotency_key`` is returned instead.

    The key makes creation safe to repeat: a message sent again after a crash,
    or a ``call_back`` close retried, finds the task it made the first time.
    """
    if not reason or len(reason) > MAX_REASON_CHARS:
        raise InputError(f"a task reason must be 1 to {MAX_REASON_CHARS} characters")
    if not MIN_PRIORITY <= priority <= MAX_PRIORITY:
        raise InputError(f"priority must be between {MIN_PRIORITY} and {MAX_PRIORITY}")
    insert_ignore(
        conn,
        tasks,
        {
            "workspace_id": workspace_id,
            "idempotency_key": idempotency_key,
            "profile_id": profile_id,
            "journey_id": journey_id,
            "instance_id": instance_id,
            "step_id": step_id,
            "previous_id": previous_id,
            "reason": reason,
            "script": script,
            "priority": priority,
            "due_at": due_at,
            "status": OPEN,
            "assignee": None,
            "claimed_at": None,
            "outcome": None,
            "note": None,
            "call_back_at": None,
            "closed_at": None,
            "created_at": now,
        },
        key=["idempotency_key"],
    )
    task_id: int = conn.execute(
        select(tasks.c.id).where(tasks.c.idempotency_key == idempotency_key)
    ).scalar_one()
    return task_id


def list_tasks(
    conn: Connection,
    workspace_id: str,
    *,
    status: str | None = None,
    assignee: str | None = None,
    limit: int = 100,
    due_before: datetime | None = None,
) -> list[dict[str, Any]]:
    """The workspace's tasks, most urgent first: priority high to low, then earliest due.

    ``status`` is the stored status (a stale claim is still ``claimed``; see
    ``claim_expires_at``). ``limit`` is 1..:data:`MAX_LIST_LIMIT`.
    """
    if status is not None and status not in STATUSES:
        raise InputError(f"status must be one of {', '.join(STATUSES)}")
    if not 1 <= limit <= MAX_LIST_LIMIT:
        raise InputError(f"limit must be between 1 and {MAX_LIST_LIMIT}")
    query = _with_names(select(*_columns())).where(tasks.c.workspace_id == workspace_id)
    if status is not None:
        query = query.where(tasks.c.status == status)
    if assignee is not None:
        query = query.where(tasks.c.assignee == assignee)
    if due_before is not None:
        query = query.where(tasks.c.due_at <= due_before)
    query = query.order_by(tasks.c.priority.desc(), tasks.c.due_at, tasks.c.id).limit(limit)
    return [_task_data(row) for row in conn.execute(query)]


def get_task(conn: Connection, workspace_id: str, task_id: int) -> dict[str, Any]:
    """One task with what an operator needs for the call.

    Adds ``customer`` (the profile with traits and identities, following
    merges), ``events`` (the customer's :data:`RECENT_EVENTS` latest),
    ``journey`` (the journey and the customer's place in it, or ``None``) and
    ``history`` (the customer's other tasks, newest first). Raises
    :class:`NotFound` for an unknown id or another workspace's task.
    """
    row = _row(conn, workspace_id, task_id)
    data = _task_data(row)
    customer = get_profile(conn, workspace_id, f"#{row.profile_id}")
    data["customer"] = customer
    data["events"] = list_events(conn, workspace_id, profile_id=customer["id"], limit=RECENT_EVENTS)
    data["journey"] = _journey_context(conn, row)
    history = _with_names(select(*_columns())).where(
        tasks.c.workspace_id == workspace_id,
        tasks.c.profile_id.in_({row.profile_id, customer["id"]}),
        tasks.c.id != task_id,
    )
    data["history"] = [
        _task_data(r) for r in conn.execute(history.order_by(tasks.c.id.desc()).limit(RECENT_TASKS))
    ]
    return data


def claim_task(
    conn: Connection, workspace_id: str, task_id: int, *, operator: str, now: datetime
) -> dict[str, Any]:
    """Give the task to ``operator``: it must be open, stale, or already theirs.

    Raises :class:`Conflict` ``task_taken`` when another operator holds a live
    claim, ``task_closed`` when the task is closed, :class:`NotFound` when it
    is not in the workspace.
    """
    _check_operator(operator)
    claimable = or_(
        tasks.c.status == OPEN,
        and_(
            tasks.c.status == CLAIMED,
            or_(tasks.c.assignee == operator, tasks.c.claimed_at <= now - CLAIM_TIMEOUT),
        ),
    )
    claimed = conn.execute(
        update(tasks)
        .where(tasks.c.workspace_id == workspace_id, tasks.c.id == task_id, claimable)
        .values(status=CLAIMED, assignee=operator, claimed_at=now)
    ).rowcount
    if not claimed:
        row = _row(conn, workspace_id, task_id)
        if row.status == CLOSED:
            raise Conflict(f"task {task_id} is already closed", code="task_closed")
        raise Conflict(f"task {task_id} is claimed by {row.assignee}", code="task_taken")
    return _task_data(_row(conn, workspace_id, task_id))


def claim_next(
    conn: Connection, workspace_id: str, *, operator: str, now: datetime
) -> dict[str, Any] | None:
    """Claim the most urgent task due by ``now`` for ``operator``; ``None`` when there is none.

    Open tasks and stale claims are candidates. On PostgreSQL the pick skips
    rows other transactions are claiming, so operators asking at once get
    different tasks without waiting on each other; SQLite has one writer.
    """
    _check_operator(operator)
    available = or_(
        tasks.c.status == OPEN,
        and_(tasks.c.status == CLAIMED, tasks.c.claimed_at <= now - CLAIM_TIMEOUT),
    )
    pick = (
        select(tasks.c.id)
        .where(tasks.c.workspace_id == workspace_id, tasks.c.due_at <= now, available)
        .order_by(tasks.c.priority.desc(), tasks.c.due_at, tasks.c.id)
        .limit(1)
    )
    if conn.dialect.name == "postgresql":
        pick = pick.with_for_update(skip_locked=True)
    task_id = conn.execute(pick).scalar()
    if task_id is None:
        return None
    conn.execute(
        update(tasks)
        .where(tasks.c.id == task_id, available)
        .values(status=CLAIMED, assignee=operator, claimed_at=now)
    )
    return _task_data(_row(conn, workspace_id, task_id))


def close_task(
    conn: Connection,
    workspace_id: str,
    task_id: int,
    *,
    operator: str,
    outcome: str,
    note: str | None = None,
    call_back_at: datetime | None = None,
    now: datetime,
) -> dict[str, Any]:
    """Record how the call went and emit ``Call Completed`` for the customer.

    Only the operator holding the claim may close (``task_taken`` for
    another operator, ``task_not_claimed`` for an open task). ``outcome`` is
    one of :data:`OUTCOMES`; ``call_back`` needs a future ``call_back_at`` and
    opens a follow-up task due then. A closed task closed again by the same
    operator with the same outcome answers as before (a retry); anything else
    on a closed task is ``task_closed``. Returns the task, with
    ``follow_up_id`` for a call back.
    """
    _check_operator(operator)
    _check_outcome(outcome, call_back_at=call_back_at)
    if note is not None and len(note) > MAX_NOTE_CHARS:
        raise InputError(f"note must be at most {MAX_NOTE_CHARS} characters")
    locked = _row_query(workspace_id, task_id)
    row = conn.execute(locked.with_for_update(of=tasks)).first()
    if row is None:
        raise NotFound(f"no task {task_id} in this workspace")
    if row.status == CLOSED:
        if row.assignee == operator and row.outcome == outcome:
            return _closed_data(conn, row)
        raise Conflict(f"task {task_id} is already closed", code="task_closed")
    if row.status == OPEN:
        raise Conflict(
            f"task {task_id} must be claimed before it is closed", code="task_not_claimed"
        )
    if row.assignee != operator:
        raise Conflict(f"task {task_id} is claimed by {row.assignee}", code="task_taken")
    # Checked after the retry case: a retried call_back close stays a retry once its time passed.
    if call_back_at is not None and call_back_at <= now:
        raise InputError("call_back_at must be in the future")
    conn.execute(
        update(tasks)
        .where(tasks.c.id == task_id)
        .values(status=CLOSED, outcome=outcome, note=note, call_back_at=call_back_at, closed_at=now)
    )
    if outcome == CALL_BACK:
        assert call_back_at is not None
        create_task(
            conn,
            workspace_id,
            idempotency_key=_follow_up_key(task_id),
            profile_id=row.profile_id,
            reason=row.reason,
            script=row.script,
            priority=row.priority,
            due_at=call_back_at,
            now=now,
            journey_id=row.journey_id,
            instance_id=row.instance_id,
            step_id=row.step_id,
            previous_id=task_id,
        )
    closed = _row(conn, workspace_id, task_id)
    _emit_call_completed(conn, workspace_id, closed, now=now)
    return _closed_data(conn, closed)


# -- internals --------------------------------------------------------------------------


def _check_operator(operator: str) -> None:
    if not operator or not operator.strip() or len(operator) > MAX_OPERATOR_CHARS:
        raise InputError(f"operator must be 1 to {MAX_OPERATOR_CHARS} characters")


def _check_outcome(outcome: str, *, call_back_at: datetime | None) -> None:
    if outcome not in OUTCOMES:
        raise InputError(f"outcome must be one of {', '.join(OUTCOMES)}")
    if outcome == CALL_BACK:
        if call_back_at is None:
            raise InputError("outcome call_back needs call_back_at")
        if call_back_at.tzinfo is None:
            raise InputError("call_back_at needs a time zone offset, e.g. 2026-03-02T15:00:00Z")
    elif call_back_at is not None:
        raise InputError("call_back_at is only for outcome call_back")


def _follow_up_key(task_id: int) -> str:
    return f"task:{task_id}:call_back"


def _columns() -> list[Any]:
    return [
        *tasks.c,
        journeys.c.key.label("journey_key"),
        profiles.c.user_id.label("user_id"),
    ]


def _with_names(query: Any) -> Any:
    """Join what a task shows by name: its journey's key and the customer's user id."""
    return query.select_from(
        tasks.outerjoin(journeys, journeys.c.id == tasks.c.journey_id).outerjoin(
            profiles, profiles.c.id == tasks.c.profile_id
        )
    )


def _row_query(workspace_id: str, task_id: int) -> Any:
    return _with_names(select(*_columns())).where(
        tasks.c.workspace_id == workspace_id, tasks.c.id == task_id
    )


def _row(conn: Connection, workspace_id: str, task_id: int) -> Any:
    row = conn.execute(_row_query(workspace_id, task_id)).first()
    if row is None:
        raise NotFound(f"no task {task_id} in this workspace")
    return row


def _task_data(row: Any) -> dict[str, Any]:
    claim_expires_at = (
        _iso(row.claimed_at + CLAIM_TIMEOUT) if row.status == CLAIMED and row.claimed_at else None
    )
    return {
        "id": row.id,
        "status": row.status,
        "reason": row.reason,
        "script": row.script,
        "priority": row.priority,
        "due_at": _iso(row.due_at),
        "profile_id": row.profile_id,
        "user_id": row.user_id,
        "journey": row.journey_key,
        "instance_id": row.instance_id,
        "step": row.step_id,
        "previous_id": row.previous_id,
        "assignee": row.assignee,
        "claimed_at": _iso(row.claimed_at),
        "claim_expires_at": claim_expires_at,
        "outcome": row.outcome,
        "note": row.note,
        "call_back_at": _iso(row.call_back_at),
        "closed_at": _iso(row.closed_at),
        "created_at": _iso(row.created_at),
    }


def _closed_data(conn: Connection, row: Any) -> dict[str, Any]:
    data = _task_data(row)
    data["follow_up_id"] = None
    if row.outcome == CALL_BACK:
        data["follow_up_id"] = conn.execute(
            select(tasks.c.id).where(tasks.c.idempotency_key == _follow_up_key(row.id))
        ).scalar()
    return data


def _journey_context(conn: Connection, row: Any) -> dict[str, Any] | None:
    if row.journey_id is None:
        return None
    journey = conn.execute(
        select(journeys.c.key, journeys.c.name).where(journeys.c.id == row.journey_id)
    ).first()
    if journey is None:
        return None
    data: dict[str, Any] = {"key": journey.key, "name": journey.name, "step": row.step_id}
    data["instance"] = None
    if row.instance_id is not None:
        instance = conn.execute(
            select(instances.c.status, instances.c.step_id, instances.c.entered_at).where(
                instances.c.id == row.instance_id
            )
        ).first()
        if instance is not None:
            data["instance"] = {
                "id": row.instance_id,
                "status": instance.status,
                "step": instance.step_id,
                "entered_at": _iso(instance.entered_at),
            }
    return data


def _emit_call_completed(conn: Connection, workspace_id: str, row: Any, *, now: datetime) -> None:
    """Store the ``Call Completed`` event as the ingest API would, inside this transaction."""
    customer = get_profile(conn, workspace_id, f"#{row.profile_id}")
    user_id = customer["user_id"]
    anonymous_id = None
    if user_id is None:
        anonymous_id = next(
            (i["value"] for i in customer["identities"] if i["kind"] == "anonymous_id"), None
        )
        if anonymous_id is None:
            raise StoreError(f"profile #{customer['id']} has no identity to record the call on")
    event = IncomingEvent(
        type="track",
        message_id=f"task:{row.id}:closed",
        user_id=user_id,
        anonymous_id=anonymous_id,
        name=CALL_COMPLETED,
        properties={
            "task_id": row.id,
            "outcome": row.outcome,
            "note": row.note,
            "journey": row.journey_key,
            "reason": row.reason,
            "operator": row.assignee,
            "call_back_at": _iso(row.call_back_at),
        },
        traits=None,
        context={},
        timestamp=now,
        sent_at=None,
        received_at=now,
    )
    ingest_events(conn, workspace_id, [event], now=now)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None
