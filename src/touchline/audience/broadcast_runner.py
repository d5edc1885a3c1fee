"""Moving broadcasts forward: the worker's tick.

Each worker turn calls :func:`advance_broadcasts`. It leases the broadcasts
that are due (``next_at`` passed, lease free) and moves each through small
write transactions, each one step of:

1. **start** — at ``send_at``: status ``sending`` (``testing`` with an A/B test);
2. **snapshot** — copy the audience (segment members, or every customer) into
   ``broadcast_recipients`` in customer-id order, :data:`SNAPSHOT_CHUNK` a
   transaction, drawing each one's phase and variant
   (:func:`~touchline.audience.broadcast_spec.recipient_lot`) and noting their
   time zone; customers without an address on the channel are counted as
   ``unreachable`` and left out;
3. **queue** — for the phase being sent (``test``, then ``main``), make each
   recipient's journey instance and outbox row, :data:`QUEUE_CHUNK` a
   transaction, in the order time-zone group (earliest first), then customer
   id. A row's ``available_at`` is its group's start, spaced by the rate from
   the row before (:func:`~touchline.audience.broadcast_spec.next_slot`). Rows
   due more than :data:`QUEUE_AHEAD` ahead wait for a later tick;
4. **decide** (A/B) — when the wait is over, judge the variants on their
   rollups, record the winner (or the fallback) with its figures, and queue the
   ``main`` phase with the winner's template;
5. **settle** — once no message of the broadcast is pending, it is ``sent``.

**Crashes.** A step's writes — recipients, instances, outbox rows, rollups and
the bookmark (``broadcasts.cursor``) — commit together or not at all, so a
worker killed anywhere leaves the bookmark where the committed work ends; the
next worker resumes there and skips no one. Each outbox row's idempotency key
is ``broadcast:{id}:{profile id}`` (unique), and the recipient row moves from
``pending`` to ``queued`` only once, so nobody gets a second row. Slots follow
from the order alone, so a resumed run spaces messages exactly as an
uninterrupted one. Duplicates can then only come from the dispatcher's own
window (a crash between the provider's acceptance and its record).

**Leases.** A worker owns a broadcast while its lease holds; every step first
renews the lease with an ``UPDATE ... WHERE lease_owner = me``, which also
locks the row on PostgreSQL, so two workers never queue one broadcast at once.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, bindparam, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite

from touchline.audience.broadcast_spec import ALL, BroadcastSpec, next_slot, phase_groups
from touchline.audience.broadcast_spec import recipient_lot as draw_lot
from touchline.audience.broadcasts import ACTIVE
from touchline.journeys.localtime import zone as load_zone
from touchline.measure.experiments import VariantFigures, declare_winner
from touchline.measure.rollups import bump
from touchline.measure.stats import Comparison
from touchline.measure.winners import CORRECTION
from touchline.messaging.rules import ADDRESS_FIELDS
from touchline.store.db import insert_ignore, run_in_transaction, transaction
from touchline.store.tables import (
    broadcast_recipients,
    broadcasts,
    daily_stats,
    experiment_winners,
    instances,
    outbox,
    profiles,
    segment_members,
    segments,
    workspaces,
)

__all__ = [
    "CHUNKS_PER_TICK",
    "QUEUE_AHEAD",
    "QUEUE_CHUNK",
    "SNAPSHOT_CHUNK",
    "advance_broadcast",
    "advance_broadcasts",
    "claim_broadcasts",
    "idempotency_key",
]

log = logging.getLogger("touchline.broadcasts")

SNAPSHOT_CHUNK = 1000
"""Customers copied into the recipients table per transaction."""
QUEUE_CHUNK = 200
"""Recipients queued (instance + outbox row each) per transaction: short enough that the
SQLite writer lock is never held long, large enough that a million take minutes."""
CHUNKS_PER_TICK = 10
"""Transactions one broadcast gets per worker turn, so events and timers are not starved."""
QUEUE_AHEAD = timedelta(minutes=10)
"""How far ahead of their slot messages are put in the outbox. Throttled and local-time
sends sit in ``broadcast_recipients`` until then, so a cancel has little to undo."""
SETTLE_EVERY = timedelta(seconds=5)
"""How often a fully queued broadcast checks whether its messages have all settled."""
RETRY_AFTER = timedelta(minutes=1)
"""Pause before a broadcast whose step failed is tried again."""
SEGMENT_WAIT = timedelta(minutes=1)
"""How long a start waits, and looks again, while its segment is being rebuilt."""
CLAIM_LIMIT = 10
TEST_SPLIT_STEP = "split"


def idempotency_key(broadcast_id: int, profile_id: int) -> str:
    """The outbox key of a broadcast's message to one customer: one message, ever."""
    return f"broadcast:{broadcast_id}:{profile_id}"


# -- claiming --------------------------------------------------------------------------


def claim_broadcasts(
    engine: Engine, *, owner: str, now: datetime, lease: timedelta, limit: int = CLAIM_LIMIT
) -> list[int]:
    """Lease the due broadcasts (``next_at`` passed, lease free or expired)."""
    b = broadcasts.c
    free = or_(b.lease_until.is_(None), b.lease_until <= now)
    pick = (
        select(b.id)
        .where(b.status.in_(ACTIVE), b.next_at <= now, free)
        .order_by(b.next_at, b.id)
        .limit(limit)
    )
    with transaction(engine) as conn:
        if conn.dialect.name == "postgresql":
            pick = pick.with_for_update(skip_locked=True)
        stmt = (
            update(broadcasts)
            .where(b.id.in_(pick.scalar_subquery()))
            .values(lease_owner=owner, lease_until=now + lease)
            .returning(b.id)
        )
        return [row[0] for row in conn.execute(stmt)]


def advance_broadcasts(
    engine: Engine,
    *,
    owner: str,
    now: datetime,
    lease: timedelta,
    chunks: int = CHUNKS_PER_TICK,
) -> int:
    """One worker turn: claim the due broadcasts and move each forward; returns work done.

    A broadcast whose step raises is logged, its error kept in its bookmark,
    and tried again after :data:`RETRY_AFTER`; the others carry on.
    """
    done = 0
    for broadcast_id in claim_broadcasts(engine, owner=owner, now=now, lease=lease):
        try:
            done += advance_broadcast(
                engine, broadcast_id, owner=owner, now=now, lease=lease, chunks=chunks
            )
        except Exception as exc:  # noqa: BLE001 - one broken broadcast must not stop the worker
            log.exception("broadcast %s failed a step", broadcast_id)
            _park(engine, broadcast_id, owner=owner, now=now, error=f"{type(exc).__name__}: {exc}")
        finally:
            _release(engine, broadcast_id, owner=owner)
    return done


def advance_broadcast(
    engine: Engine,
    broadcast_id: int,
    *,
    owner: str,
    now: datetime,
    lease: timedelta,
    chunks: int = CHUNKS_PER_TICK,
) -> int:
    """Run up to ``chunks`` steps of one leased broadcast; returns recipients and changes done."""
    done = 0
    for _ in range(chunks):
        worked, more = run_in_transaction(
            engine, lambda conn: _step(conn, broadcast_id, owner=owner, now=now, lease=lease)
        )
        done += worked
        if not more:
            break
    return done


def _release(engine: Engine, broadcast_id: int, *, owner: str) -> None:
    with transaction(engine) as conn:
        conn.execute(
            update(broadcasts)
            .where(broadcasts.c.id == broadcast_id, broadcasts.c.lease_owner == owner)
            .values(lease_owner=None, lease_until=None)
        )


def _park(engine: Engine, broadcast_id: int, *, owner: str, now: datetime, error: str) -> None:
    with transaction(engine) as conn:
        row = conn.execute(
            select(broadcasts.c.cursor).where(
                broadcasts.c.id == broadcast_id, broadcasts.c.lease_owner == owner
            )
        ).first()
        if row is None:
            return
        conn.execute(
            update(broadcasts)
            .where(broadcasts.c.id == broadcast_id, broadcasts.c.lease_owner == owner)
            .values(
                cursor={**(row.cursor or {}), "error": error[:1000]},
                next_at=now + RETRY_AFTER,
                updated_at=now,
            )
        )


# -- one step ----------------------------------------------------------------------------


def _step(
    conn: Connection, broadcast_id: int, *, owner: str, now: datetime, lease: timedelta
) -> tuple[int, bool]:
    """One transaction's worth of work; returns (work done, whether more is due now)."""
    # Renewing the lease first both proves it is still ours and, on PostgreSQL, locks
    # the row until commit: no other step of this broadcast runs meanwhile.
    row = conn.execute(
        update(broadcasts)
        .where(broadcasts.c.id == broadcast_id, broadcasts.c.lease_owner == owner)
        .values(lease_until=now + lease)
        .returning(*broadcasts.c)
    ).first()
    if row is None or row.status not in ACTIVE:
        return 0, False
    spec = BroadcastSpec.model_validate(row.spec)
    stage = (row.cursor or {}).get("stage")
    if row.status == "scheduled":
        if row.send_at is not None and row.send_at > now:
            _save(conn, row, now=now, next_at=row.send_at)
            return 0, False
        if _segment_rebuilding(conn, row, spec):  # its members are being refilled: wait
            _save(conn, row, now=now, next_at=now + SEGMENT_WAIT)
            return 0, False
        _save(
            conn,
            row,
            now=now,
            status="testing" if spec.ab_test else "sending",
            started_at=now,
            next_at=now,
            cursor={"stage": "snapshot", "after": 0},
        )
        return 1, True
    if stage == "snapshot":
        return _snapshot(conn, row, spec, now=now)
    if stage == "queue":
        return _queue(conn, row, spec, now=now)
    if stage == "decide":
        return _decide(conn, row, spec, now=now)
    if stage == "settle":
        return _settle(conn, row, now=now)
    raise ValueError(f"broadcast {row.id} has an unknown stage {stage!r}")


def _save(conn: Connection, row: Any, *, now: datetime, **values: Any) -> None:
    conn.execute(
        update(broadcasts).where(broadcasts.c.id == row.id).values(updated_at=now, **values)
    )


# -- snapshot ------------------------------------------------------------------------------


def _segment_rebuilding(conn: Connection, row: Any, spec: BroadcastSpec) -> bool:
    """Whether the audience segment is mid-rebuild, when its members are incomplete."""
    if spec.audience == ALL:
        return False
    status = conn.execute(
        select(segments.c.status).where(
            segments.c.workspace_id == row.workspace_id, segments.c.key == spec.audience
        )
    ).scalar_one_or_none()
    return status == "building"


def _snapshot(
    conn: Connection, row: Any, spec: BroadcastSpec, *, now: datetime
) -> tuple[int, bool]:
    """Copy the next chunk of the audience into the recipients table."""
    cursor = dict(row.cursor)
    after = int(cursor.get("after", 0))
    p = profiles.c
    query = (
        select(p.id, p.timezone, p.user_id, p.email, p.phone)
        .where(
            p.workspace_id == row.workspace_id,
            p.merged_into.is_(None),
            p.erased_at.is_(None),
            p.id > after,
        )
        .order_by(p.id)
        .limit(SNAPSHOT_CHUNK)
    )
    if spec.audience != ALL:
        segment_id = conn.execute(
            select(segments.c.id).where(
                segments.c.workspace_id == row.workspace_id, segments.c.key == spec.audience
            )
        ).scalar_one_or_none()
        if segment_id is None:
            raise ValueError(f"segment {spec.audience!r} no longer exists")
        query = query.join(
            segment_members,
            (segment_members.c.profile_id == p.id) & (segment_members.c.segment_id == segment_id),
        )
    found = conn.execute(query).all()
    default_zone = _workspace_zone(conn, row.workspace_id)
    field = ADDRESS_FIELDS.get(spec.channel)
    recipients, unreachable = [], 0
    for person in found:
        if field is not None and not getattr(person, field):
            unreachable += 1
            continue
        lot = draw_lot(spec, row.id, person.id)
        tz = ""
        if spec.local_time is not None:
            tz = person.timezone if _valid_zone(person.timezone) else default_zone
        recipients.append(
            {
                "broadcast_id": row.id,
                "profile_id": person.id,
                "workspace_id": row.workspace_id,
                "phase": lot.phase,
                "variant": lot.variant,
                "zone": tz,
                "status": "pending",
            }
        )
    if recipients:
        conn.execute(
            _insert_ignoring(conn, broadcast_recipients, ["broadcast_id", "profile_id"]), recipients
        )
    values: dict[str, Any] = {
        "audience": broadcasts.c.audience + len(recipients),
        "unreachable": broadcasts.c.unreachable + unreachable,
    }
    if len(found) == SNAPSHOT_CHUNK:
        _save(conn, row, now=now, cursor={**cursor, "after": found[-1].id}, **values)
        return len(found), True
    first = "test" if spec.ab_test else "main"
    start = row.started_at or now
    _save(conn, row, now=now, cursor=_phase_cursor(conn, row, spec, first, start), **values)
    return len(found) + 1, True


def _phase_cursor(
    conn: Connection, row: Any, spec: BroadcastSpec, phase: str, start: datetime
) -> dict[str, Any]:
    """The bookmark at the start of queueing ``phase``: its zone groups, earliest first."""
    r = broadcast_recipients.c
    zones = (
        conn.execute(select(r.zone).where(r.broadcast_id == row.id, r.phase == phase).distinct())
        .scalars()
        .all()
    )
    groups = phase_groups(
        sorted(zones),
        start=start,
        local_time=spec.local_time,
        default_zone=_workspace_zone(conn, row.workspace_id),
    )
    return {
        "stage": "queue",
        "phase": phase,
        "groups": [[name, at.isoformat()] for name, at in groups],
        "group": 0,
        "after": 0,
        "last_at": None,
    }


def _workspace_zone(conn: Connection, workspace_id: str) -> str:
    found = conn.execute(
        select(workspaces.c.timezone).where(workspaces.c.id == workspace_id)
    ).scalar_one_or_none()
    return str(found) if _valid_zone(found) else "UTC"


def _valid_zone(name: str | None) -> bool:
    return bool(name) and load_zone(name, "").key == name


# -- queue -----------------------------------------------------------------------------------


def _queue(conn: Connection, row: Any, spec: BroadcastSpec, *, now: datetime) -> tuple[int, bool]:
    """Give the next chunk of the phase its instances and outbox rows, slotted by the rate."""
    cursor = dict(row.cursor)
    phase = cursor["phase"]
    groups: list[list[str]] = cursor["groups"]
    index, after = int(cursor["group"]), int(cursor["after"])
    last_at = _time(cursor.get("last_at"))
    horizon = now + QUEUE_AHEAD
    r = broadcast_recipients.c
    batch: list[tuple[Any, datetime]] = []
    later: datetime | None = None
    while len(batch) < QUEUE_CHUNK and index < len(groups) and later is None:
        zone_name, group_start = groups[index][0], _time(groups[index][1])
        assert group_start is not None
        wanted = QUEUE_CHUNK - len(batch)
        found = conn.execute(
            select(r.profile_id, r.variant)
            .where(r.broadcast_id == row.id, r.phase == phase, r.zone == zone_name)
            .where(r.profile_id > after)
            .order_by(r.profile_id)
            .limit(wanted)
        ).all()
        for person in found:
            at = next_slot(group_start, last_at, rate=spec.rate)
            if at > horizon:
                later = at
                break
            batch.append((person, at))
            last_at, after = at, person.profile_id
        if later is None and len(found) < wanted:
            index, after = index + 1, 0
    if batch:
        _enqueue(conn, row, spec, phase, batch, now=now)
    cursor.update(group=index, after=after, last_at=last_at.isoformat() if last_at else None)
    values: dict[str, Any] = {"cursor": cursor, "queued": broadcasts.c.queued + len(batch)}
    if index >= len(groups):
        if phase == "test":
            assert spec.ab_test is not None
            ends = (last_at or row.started_at or now) + spec.ab_test.wait
            values.update(
                status="waiting",
                test_ends_at=ends,
                next_at=ends,
                cursor={"stage": "decide", "phase": "test", "last_at": cursor["last_at"]},
            )
        else:
            values.update(cursor={"stage": "settle"}, next_at=now)
        _save(conn, row, now=now, **values)
        return len(batch) + 1, True
    if later is not None:
        _save(conn, row, now=now, next_at=later - QUEUE_AHEAD, **values)
        return len(batch), False
    _save(conn, row, now=now, next_at=now, **values)
    return len(batch), True


def _enqueue(
    conn: Connection,
    row: Any,
    spec: BroadcastSpec,
    phase: str,
    batch: Sequence[tuple[Any, datetime]],
    *,
    now: datetime,
) -> None:
    """One journey instance and one outbox row per recipient, and the entry rollups."""
    r = broadcast_recipients.c
    ids = [person.profile_id for person, _at in batch]
    claimed = conn.execute(
        update(broadcast_recipients)
        .where(r.broadcast_id == row.id, r.profile_id.in_(ids), r.status == "pending")
        .values(status="queued")
    ).rowcount
    if claimed != len(ids):  # another worker queued some of them: let this transaction go
        raise RuntimeError(f"broadcast {row.id}: {len(ids) - claimed} recipients already queued")
    variants = {
        person.profile_id: person.variant if phase == "test" else row.winner
        for person, _at in batch
    }
    trigger = {
        "name": "Broadcast",
        "type": "track",
        "properties": dict(spec.properties),
        "timestamp": now.isoformat(),
    }
    made = conn.execute(
        instances.insert().returning(instances.c.id, sort_by_parameter_order=True),
        [
            {
                "workspace_id": row.workspace_id,
                "journey_id": row.journey_id,
                "version_id": row.version_id,
                "profile_id": profile_id,
                "entry_key": f"broadcast:{row.id}",
                "status": "completed",
                "step_id": spec.step_of(variants[profile_id]),
                "state": {
                    "trigger": trigger,
                    "context": {"broadcast": row.key, "phase": phase}
                    | (
                        {"variants": {TEST_SPLIT_STEP: variants[profile_id]}}
                        if variants[profile_id]
                        else {}
                    ),
                },
                "entered_at": now,
                "updated_at": now,
                "ended_at": now,
            }
            for profile_id in ids
        ],
    ).all()
    instance_of = dict(zip(ids, (m.id for m in made), strict=True))
    payload = {"when_capped": spec.when_capped, "cap_exempt": spec.cap_exempt, "broadcast": row.key}
    rows = [
        {
            "workspace_id": row.workspace_id,
            "idempotency_key": idempotency_key(row.id, person.profile_id),
            "instance_id": instance_of[person.profile_id],
            "journey_id": row.journey_id,
            "version_id": row.version_id,
            "step_id": spec.step_of(variants[person.profile_id]),
            "profile_id": person.profile_id,
            "channel": spec.channel,
            "template": spec.template_of(variants[person.profile_id]),
            "purpose": spec.purpose,
            "category": spec.journey_category,
            "variant": variants[person.profile_id],
            "payload": payload,
            "status": "pending",
            "created_at": now,
            "available_at": at,
        }
        for person, at in batch
    ]
    stmt = _insert_ignoring(conn, outbox, ["idempotency_key"]).returning(
        outbox.c.id, outbox.c.idempotency_key
    )
    outbox_of = {m.idempotency_key: m.id for m in conn.execute(stmt, rows)}
    conn.execute(
        update(broadcast_recipients)
        .where(r.broadcast_id == bindparam("b_id"), r.profile_id == bindparam("b_profile"))
        .values(
            variant=bindparam("b_variant"),
            instance_id=bindparam("b_instance"),
            outbox_id=bindparam("b_outbox"),
        ),
        [
            {
                "b_id": row.id,
                "b_profile": profile_id,
                "b_variant": variants[profile_id],
                "b_instance": instance_of[profile_id],
                "b_outbox": outbox_of.get(idempotency_key(row.id, profile_id)),
            }
            for profile_id in ids
        ],
    )
    bump(conn, workspace_id=row.workspace_id, at=now, journey_id=row.journey_id, entered=len(ids))
    if phase == "test":
        for variant, n in Counter(variants.values()).items():
            bump(
                conn,
                workspace_id=row.workspace_id,
                at=now,
                journey_id=row.journey_id,
                step_id=TEST_SPLIT_STEP,
                variant=variant,
                entered=n,
            )


_INSERTS: dict[tuple[str, str], Any] = {}


def _insert_ignoring(conn: Connection, table: Any, key: list[str]) -> Any:
    """A many-row INSERT that skips rows whose unique ``key`` exists (see ``insert_ignore``)."""
    cache_key = (conn.dialect.name, table.name)
    stmt = _INSERTS.get(cache_key)
    if stmt is None:
        dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
        stmt = dialect.insert(table).on_conflict_do_nothing(index_elements=key)
        _INSERTS[cache_key] = stmt
    return stmt


def _time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


# -- decide ----------------------------------------------------------------------------------


def _decide(conn: Connection, row: Any, spec: BroadcastSpec, *, now: datetime) -> tuple[int, bool]:
    """At the end of the wait: name the winner (or fall back), then queue everyone else."""
    assert spec.ab_test is not None
    if row.test_ends_at is not None and row.test_ends_at > now:
        _save(conn, row, now=now, next_at=row.test_ends_at)
        return 0, False
    test = spec.ab_test
    names = spec.variant_names
    figures = variant_figures(conn, row, names)
    verdict = declare_winner(
        figures,
        metric=test.metric,
        min_sample=test.min_sample,
        confidence=test.confidence,
        correction=CORRECTION,
    )
    if verdict.winner is not None:
        winner, chosen_by = verdict.winner, "test"
    elif test.fallback == "best" and verdict.leader is not None:
        winner, chosen_by = verdict.leader, "fallback: best point estimate"
    else:
        winner, chosen_by = names[0], "fallback: first variant"
    decision = {
        "winner": winner,
        "chosen_by": chosen_by,
        "significant": verdict.winner is not None,
        "reason": verdict.reason,
        "leader": verdict.leader,
        "metric": test.metric,
        "min_sample": test.min_sample,
        "confidence": test.confidence,
        "correction": CORRECTION,
        "variants": [_variant_dict(name, figures[name], test.metric) for name in names],
        "comparisons": {
            name: _comparison_dict(c, verdict.adjusted_p_values.get(name))
            for name, c in verdict.comparisons.items()
        },
    }
    insert_ignore(
        conn,
        experiment_winners,
        {
            "workspace_id": row.workspace_id,
            "journey_id": row.journey_id,
            "step_id": TEST_SPLIT_STEP,
            "winner": winner,
            "metric": test.metric,
            "decided_at": now,
            "detail": decision,
        },
        key=["journey_id", "step_id"],
    )
    _save(
        conn,
        row,
        now=now,
        status="sending",
        winner=winner,
        decided_at=now,
        decision=decision,
        next_at=now,
        cursor=_phase_cursor(conn, row, spec, "main", now),
    )
    return 1, True


def variant_figures(conn: Connection, row: Any, names: Sequence[str]) -> dict[str, VariantFigures]:
    """Each variant's messages sent and how many were opened, clicked, or won an order.

    Read from the broadcast journey's rollups (message rows, any day): unique
    human opens and clicks per message, and orders attributed to its messages
    (last touch; capped at the messages sent). Taken before the main phase is
    queued, so they are the test sample's alone.
    """
    ds = daily_stats.c
    counters = ("sent", "opened", "clicked", "attributed")
    sums = {
        r.variant: r
        for r in conn.execute(
            select(ds.variant, *(func.sum(ds[name]).label(name) for name in counters))
            .where(
                ds.workspace_id == row.workspace_id,
                ds.journey_id == row.journey_id,
                ds.variant.in_(list(names)),
                ds.channel != "",
            )
            .group_by(ds.variant)
        )
    }
    out = {}
    for name in names:
        found = sums.get(name)
        sent = int(found.sent or 0) if found else 0

        def capped(counter: str, found: Any = found, sent: int = sent) -> int:
            return min(int(getattr(found, counter) or 0), sent) if found else 0

        out[name] = VariantFigures(
            customers=sent,
            opened=capped("opened"),
            clicked=capped("clicked"),
            converted=capped("attributed"),
        )
    return out


def _variant_dict(name: str, figures: VariantFigures, metric: str) -> dict[str, Any]:
    successes = {"click": figures.clicked, "open": figures.opened, "conversion": figures.converted}
    return {
        "variant": name,
        "sent": figures.customers,
        "opened": figures.opened,
        "clicked": figures.clicked,
        "converted": figures.converted,
        "rate": successes[metric] / figures.customers if figures.customers else None,
    }


def _comparison_dict(c: Comparison, adjusted: float | None) -> dict[str, Any]:
    def number(value: float | None) -> float | None:
        return (
            None
            if value is None or value != value or value in (float("inf"), float("-inf"))
            else float(value)
        )

    return {
        "difference": number(c.difference),
        "low": number(c.interval.low if c.interval else None),
        "high": number(c.interval.high if c.interval else None),
        "p_value": number(c.p_value),
        "adjusted_p_value": number(adjusted),
        "significant": c.significant,
    }


# -- settle ----------------------------------------------------------------------------------


def _settle(conn: Connection, row: Any, *, now: datetime) -> tuple[int, bool]:
    """``sent`` once none of the broadcast's messages waits in the outbox any more."""
    waiting = conn.execute(
        select(func.count()).where(
            outbox.c.status.in_(("pending", "sending")), outbox.c.journey_id == row.journey_id
        )
    ).scalar_one()
    if waiting:
        _save(conn, row, now=now, next_at=now + SETTLE_EVERY)
        return 0, False
    _save(conn, row, now=now, status="sent", finished_at=now, next_at=None)
    return 1, False
