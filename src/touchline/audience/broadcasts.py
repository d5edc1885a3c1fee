"""Broadcasts in the store: create, schedule, cancel, list, and show progress.

A broadcast is one message (or an A/B test of several, then the winner) to a
segment, now or at a time, optionally at the same local time in each
customer's zone and at a limited rate. It goes **through the outbox and the
dispatcher** like any journey message, so consent, suppressions, caps, quiet
hours, tracking and receipts apply unchanged.

**A broadcast is a journey.** Creating one registers a journey row (key
``broadcast:<key>``, status ``broadcast``, an empty trigger, so the engine
never enters anyone) and a version holding a tiny spec: a split step with one
send step per variant, or a single ``send`` step. Every message is an
ordinary outbox row of that journey, and each recipient gets a real journey
instance (status ``completed``) that ``outbox.instance_id`` points to: the
dispatcher renders with its state (``event.properties`` are the broadcast's
``properties``), a ``promo_code()`` in the template issues one code per
customer (offer ``instance:<id>``), and reports, attribution and the split
report work per broadcast, step and variant as they do for journeys.

Statuses: ``draft`` → ``scheduled`` → ``sending`` (or ``testing`` →
``waiting`` → ``sending`` with an A/B test) → ``sent``; ``cancelled`` from
any but the last. How a worker moves them is in
:mod:`touchline.audience.broadcast_runner`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Connection, func, select, update

from touchline.audience.broadcast_spec import (
    ALL,
    BroadcastSpec,
    journey_key,
    journey_spec,
)
from touchline.errors import Conflict, InputError, NotFound
from touchline.journeys.loader import spec_checksum
from touchline.journeys.spec import JourneySpec
from touchline.measure.rollups import bump
from touchline.store.tables import (
    broadcast_recipients,
    broadcasts,
    daily_stats,
    journey_versions,
    journeys,
    outbox,
    segments,
    templates,
)

__all__ = [
    "ACTIVE",
    "CANCELLABLE",
    "JOURNEY_STATUS",
    "cancel_broadcast",
    "create_broadcast",
    "get_broadcast",
    "list_broadcasts",
    "load_broadcast",
    "schedule_broadcast",
]

JOURNEY_STATUS = "broadcast"
"""The status of a broadcast's journey row: not ``active``, so no event ever enters it."""

ACTIVE = ("scheduled", "testing", "waiting", "sending")
"""Statuses a worker advances."""
CANCELLABLE = ("draft", *ACTIVE)
SCHEDULABLE = ("draft", "scheduled")
#: Report counters shown as a broadcast's progress, summed from its rollups.
PROGRESS_COUNTERS = (
    "sent",
    "delivered",
    "opened",
    "clicked",
    "failed",
    "skipped",
    "bounced",
    "unsubscribed",
    "attributed",
    "attributed_revenue",
)


def create_broadcast(
    conn: Connection, workspace_id: str, spec: BroadcastSpec, *, source: str, now: datetime
) -> dict[str, Any]:
    """Store a new broadcast and its journey; ``scheduled`` when it has ``send_at``, else a draft.

    Refuses (400 ``invalid_broadcast``, naming the field) an unknown segment or
    template, or a template of another channel; 409 ``broadcast_exists`` for a
    key in use.
    """
    _check_references(conn, workspace_id, spec)
    taken = conn.execute(
        select(broadcasts.c.id).where(
            broadcasts.c.workspace_id == workspace_id, broadcasts.c.key == spec.broadcast
        )
    ).first()
    if taken is not None:
        raise Conflict(f"broadcast {spec.broadcast!r} exists", code="broadcast_exists")
    key = journey_key(spec.broadcast)
    data = journey_spec(spec)
    checksum = spec_checksum(JourneySpec.model_validate(data))
    journey_id = conn.execute(
        journeys.insert()
        .values(
            workspace_id=workspace_id,
            key=key,
            name=spec.name or spec.broadcast,
            status=JOURNEY_STATUS,
            category=spec.journey_category,
            trigger_event="",
            created_at=now,
            updated_at=now,
        )
        .returning(journeys.c.id)
    ).scalar_one()
    version_id = conn.execute(
        journey_versions.insert()
        .values(
            workspace_id=workspace_id,
            journey_id=journey_id,
            version=1,
            spec=data,
            source=source,
            checksum=checksum,
            created_at=now,
        )
        .returning(journey_versions.c.id)
    ).scalar_one()
    conn.execute(
        update(journeys).where(journeys.c.id == journey_id).values(current_version_id=version_id)
    )
    status = "scheduled" if spec.send_at is not None else "draft"
    conn.execute(
        broadcasts.insert().values(
            workspace_id=workspace_id,
            key=spec.broadcast,
            name=spec.name or spec.broadcast,
            journey_id=journey_id,
            version_id=version_id,
            spec=spec.to_data(),
            source=source,
            status=status,
            send_at=spec.send_at,
            next_at=spec.send_at,
            cursor={},
            created_at=now,
            updated_at=now,
        )
    )
    return get_broadcast(conn, workspace_id, spec.broadcast, progress=False)


def _check_references(conn: Connection, workspace_id: str, spec: BroadcastSpec) -> None:
    if spec.audience != ALL:
        status = conn.execute(
            select(segments.c.status).where(
                segments.c.workspace_id == workspace_id, segments.c.key == spec.audience
            )
        ).scalar_one_or_none()
        if status is None:
            raise InputError(
                f"audience: no segment {spec.audience!r} in this workspace (or use `all`)",
                code="invalid_broadcast",
            )
        if status == "archived":
            raise InputError(
                f"audience: segment {spec.audience!r} is archived", code="invalid_broadcast"
            )
    for field, key in spec.templates():
        channel = conn.execute(
            select(templates.c.channel).where(
                templates.c.workspace_id == workspace_id, templates.c.key == key
            )
        ).scalar_one_or_none()
        if channel is None:
            raise InputError(
                f"{field}: no template {key!r} in this workspace", code="invalid_broadcast"
            )
        if channel != spec.channel:
            raise InputError(
                f"{field}: template {key!r} is for {channel}, not {spec.channel}",
                code="invalid_broadcast",
            )


def load_broadcast(conn: Connection, workspace_id: str, key: str, *, lock: bool = False) -> Any:
    """The broadcast's row; :class:`NotFound` when the workspace has none by that key."""
    query = select(broadcasts).where(
        broadcasts.c.workspace_id == workspace_id, broadcasts.c.key == key
    )
    if lock and conn.dialect.name == "postgresql":
        query = query.with_for_update()
    row = conn.execute(query).first()
    if row is None:
        raise NotFound(f"no broadcast {key!r} in this workspace")
    return row


def schedule_broadcast(
    conn: Connection, workspace_id: str, key: str, *, send_at: datetime, now: datetime
) -> dict[str, Any]:
    """Set when a draft (or a not yet started broadcast) starts; a past time means at once."""
    row = load_broadcast(conn, workspace_id, key, lock=True)
    if row.status not in SCHEDULABLE:
        raise Conflict(
            f"broadcast {key!r} is {row.status}; only a draft or scheduled one can be scheduled",
            code="broadcast_started",
        )
    conn.execute(
        update(broadcasts)
        .where(broadcasts.c.id == row.id)
        .values(status="scheduled", send_at=send_at, next_at=send_at, updated_at=now)
    )
    return get_broadcast(conn, workspace_id, key, progress=False)


def cancel_broadcast(
    conn: Connection, workspace_id: str, key: str, *, now: datetime
) -> dict[str, Any]:
    """Stop a broadcast: nobody else is queued, and its messages still waiting are skipped.

    Messages still ``pending`` in the outbox (due later, deferred, or waiting
    for a retry) become ``skipped`` with reason ``cancelled`` and count as
    skipped in the reports. Their lease is cleared as well, so a dispatcher
    that claimed one a moment ago cannot write its verdict any more (every
    dispatcher write is conditional on its lease). A message already being
    handed to its channel (``sending``) goes out. 409 ``broadcast_finished``
    when it is already sent or cancelled.
    """
    row = load_broadcast(conn, workspace_id, key, lock=True)
    if row.status not in CANCELLABLE:
        raise Conflict(f"broadcast {key!r} is already {row.status}", code="broadcast_finished")
    conn.execute(
        update(broadcasts)
        .where(broadcasts.c.id == row.id)
        .values(
            status="cancelled",
            next_at=None,
            lease_owner=None,
            lease_until=None,
            finished_at=now,
            updated_at=now,
        )
    )
    stopped = skip_pending(conn, row, reason="cancelled", now=now)
    found = get_broadcast(conn, workspace_id, key, progress=False)
    found["cancelled_messages"] = stopped
    return found


def skip_pending(conn: Connection, row: Any, *, reason: str, now: datetime) -> int:
    """Settle the broadcast's pending outbox rows as skipped with ``reason``; returns how many.

    Found through ``ix_outbox_status_available`` (pending rows of the whole
    outbox, which holds only what is in flight), not by the journey.
    """
    pending = conn.execute(
        select(outbox.c.id, outbox.c.step_id, outbox.c.variant, outbox.c.channel).where(
            outbox.c.status == "pending", outbox.c.journey_id == row.journey_id
        )
    ).all()
    for start in range(0, len(pending), 500):
        ids = [p.id for p in pending[start : start + 500]]
        conn.execute(
            update(outbox)
            .where(outbox.c.id.in_(ids), outbox.c.status == "pending")
            .values(status="skipped", reason=reason, lease_owner=None, lease_until=None)
        )
    counts: dict[tuple[str, str | None, str], int] = {}
    for p in pending:
        group = (p.step_id, p.variant, p.channel)
        counts[group] = counts.get(group, 0) + 1
    for (step_id, variant, channel), n in counts.items():
        bump(
            conn,
            workspace_id=row.workspace_id,
            at=now,
            journey_id=row.journey_id,
            step_id=step_id,
            variant=variant,
            channel=channel,
            skipped=n,
        )
    return len(pending)


def list_broadcasts(conn: Connection, workspace_id: str) -> list[dict[str, Any]]:
    """Every broadcast of the workspace, newest first, with its stored counters only."""
    rows = conn.execute(
        select(broadcasts)
        .where(broadcasts.c.workspace_id == workspace_id)
        .order_by(broadcasts.c.created_at.desc(), broadcasts.c.id.desc())
    ).all()
    return [_summary(row) for row in rows]


def get_broadcast(
    conn: Connection, workspace_id: str, key: str, *, progress: bool = True
) -> dict[str, Any]:
    """One broadcast: its definition, status, decision and, with ``progress``, what happened.

    Progress: ``audience`` (customers snapshotted), ``unreachable`` (left out
    for want of an address on the channel), ``queued`` (outbox rows made),
    ``pending`` (not yet settled by the dispatcher), the report counters
    (sent, delivered, opened, clicked, failed, skipped...) summed from the
    rollups, the same per variant, and ``skipped_by_reason`` (the delivery
    rule that skipped each message, e.g. ``no_consent``, or ``cancelled``),
    which reads the broadcast's outbox rows through its recipients: linear
    in the audience, so the list shows stored counters only.
    """
    row = load_broadcast(conn, workspace_id, key)
    out = _summary(row)
    out["spec"] = row.spec
    out["journey"] = journey_key(row.key)
    out["decision"] = row.decision
    out["test_ends_at"] = _iso(row.test_ends_at)
    out["started_at"] = _iso(row.started_at)
    out["finished_at"] = _iso(row.finished_at)
    if progress:
        out["progress"] = _progress(conn, row)
    return out


def _summary(row: Any) -> dict[str, Any]:
    spec = row.spec or {}
    return {
        "broadcast": row.key,
        "name": row.name,
        "status": row.status,
        "audience_segment": spec.get("audience"),
        "channel": spec.get("channel"),
        "send_at": _iso(row.send_at),
        "local_time": spec.get("local_time"),
        "rate": spec.get("rate"),
        "ab_test": "ab_test" in spec,
        "winner": row.winner,
        "audience": int(row.audience),
        "unreachable": int(row.unreachable),
        "queued": int(row.queued),
        "created_at": _iso(row.created_at),
    }


def _progress(conn: Connection, row: Any) -> dict[str, Any]:
    ds = daily_stats.c
    sums = [func.coalesce(func.sum(ds[name]), 0).label(name) for name in PROGRESS_COUNTERS]
    where = (ds.workspace_id == row.workspace_id, ds.journey_id == row.journey_id, ds.channel != "")
    total = conn.execute(select(*sums).where(*where)).one()
    by_variant = {
        r.variant: _counts(r)
        for r in conn.execute(select(ds.variant, *sums).where(*where).group_by(ds.variant))
        if r.variant
    }
    r, o = broadcast_recipients.c, outbox.c
    states = conn.execute(
        select(o.status, o.reason, func.count())
        .select_from(broadcast_recipients.join(outbox, o.id == r.outbox_id))
        .where(r.broadcast_id == row.id)
        .group_by(o.status, o.reason)
    ).all()
    skipped = {reason or "": int(n) for status, reason, n in states if status == "skipped"}
    pending = sum(int(n) for status, _reason, n in states if status in ("pending", "sending"))
    return {
        "audience": int(row.audience),
        "unreachable": int(row.unreachable),
        "queued": int(row.queued),
        "pending": pending,
        **_counts(total),
        "skipped_by_reason": dict(sorted(skipped.items())),
        "variants": by_variant,
    }


def _counts(row: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in PROGRESS_COUNTERS:
        value = row._mapping[name]
        out[name] = float(value) if name == "attributed_revenue" else int(value)
    return out


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None
