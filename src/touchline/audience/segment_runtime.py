"""Keeping segment membership current: per event, per timer, and by full builds.

Three paths move ``segment_members``, and they must agree (a property test
holds them to it):

* **incremental** — :func:`observe` runs for every event the worker claims,
  inside its savepoint, before journeys: the customer alone is re-evaluated
  against the workspace's segments, from one aggregate query on their events
  (index ``ix_events_ws_profile_ts``), one on their message events, their
  profile, and consent only when a segment asks for it;
* **timers** — :func:`fire_segment_timers` claims due ``segment_timers`` rows
  with leases (as worker.claims does for journey timers) and re-evaluates that
  customer for that segment: "no order for 30 days" turns true at the right
  moment with no rescan;
* **full build** — :func:`build_segment` runs the segment's member query
  (:mod:`touchline.audience.segment_sql`) over ranges of profile ids, writes
  the difference with the current members, and sets timers.

Every entry and exit is a ``segment_changes`` row and, once the segment has
been built, an ordinary pending ``Segment Entered`` / ``Segment Exited`` event
(``properties.segment`` = the key) whose ``message_id`` is derived from the
segment, the customer and the change's number, so replaying the same work
stores nothing twice.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, delete, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite

from touchline.audience.segment_eval import (
    CompiledSegment,
    ConsentTest,
    Facts,
    TraitTest,
    holds,
    next_change,
)
from touchline.audience.segment_spec import SEGMENT_ENTERED, SEGMENT_EXITED
from touchline.audience.segment_sql import (
    ADDRESS_COLUMNS,
    customer_facts,
    facts_query,
    member_query,
    message_facts_query,
    profiles_in_range,
)
from touchline.audience.segment_store import READY, SegmentCache, compiled
from touchline.store.db import transaction
from touchline.store.tables import (
    EVENT_PENDING,
    events,
    profiles,
    segment_changes,
    segment_members,
    segment_timers,
    segments,
)

__all__ = [
    "BuildResult",
    "build_segment",
    "claim_segment_timers",
    "evaluate_profile",
    "fire_segment_timers",
    "forget_profiles",
    "next_segment_timer",
    "observe",
    "refresh_consent_segments",
]

log = logging.getLogger("touchline.segments")

#: Profile ids per build transaction: big enough to amortise the queries, small
#: enough that a chunk's writes commit quickly and a progress bar moves.
BUILD_CHUNK = 5_000
#: A segment timer that failed this many times is dropped (the next event re-creates it).
MAX_TIMER_ATTEMPTS = 5
RETRY_BASE = timedelta(seconds=5)

CACHE = SegmentCache()
_CHANGE_EVENTS = frozenset({SEGMENT_ENTERED, SEGMENT_EXITED})


# ----------------------------------------------------------------- facts


def _fill(facts: Facts, row: Any, described: list[tuple[str, str, Any]]) -> None:
    values: dict[str, Any] = {}
    mapping = row._mapping if row is not None else {}  # built anew on every access
    for label, part, leaf in described:
        value = mapping.get(label)
        if part == "time":
            facts.times[leaf.sig] = value
        elif part == "value":
            values[leaf.sig] = value or 0
        else:
            facts.aggregates[leaf.sig] = (values.get(leaf.sig, 0), value)


def _profile_scope(row: Any) -> dict[str, Any]:
    """The ``profile`` root of trait conditions, as journeys see a profile."""
    from touchline.journeys.engine import ProfileView
    from touchline.store.runtime import profile_traits

    return ProfileView(
        id=row.id, user_id=row.user_id, timezone=row.timezone, traits=profile_traits(row)
    ).scope()


def _reachable(
    conn: Connection, workspace_id: str, row: Any, tests: Iterable[ConsentTest], now: datetime
) -> dict[tuple[str, str | None], bool]:
    """Consent answers through the dispatcher's own rules, for a marketing message."""
    from touchline.messaging.policies import MARKETING, Candidate, Policy, decide
    from touchline.store.consent import load_consents, load_suppressions

    records = load_consents(conn, workspace_id, row.id)
    out: dict[tuple[str, str | None], bool] = {}
    for test in tests:
        column = ADDRESS_COLUMNS.get(test.channel)
        address = getattr(row, column) if column else None
        if column and not address:
            out[(test.channel, test.topic)] = False
            continue
        blocked = (
            load_suppressions(conn, workspace_id, [(test.channel, address)]) if address else []
        )
        candidate = Candidate(
            channel=test.channel,
            purpose=MARKETING,
            category=test.topic or "engaging",
            journey="",
            address=address or "",
            topic=test.topic,
        )
        decision = decide(
            candidate, consents=records, suppressions=blocked, sent=(), policy=Policy(), now=now
        )
        out[(test.channel, test.topic)] = decision.outcome != "skip"
    return out


def load_facts(
    conn: Connection, segs: list[CompiledSegment], row: Any, *, workspace_id: str, now: datetime
) -> Facts:
    """Everything ``segs`` need to know about the customer of profile ``row``."""
    facts = Facts()
    for query in customer_facts(segs, dialect=conn.dialect.name):
        params = query.params(workspace_id=workspace_id, profile_id=row.id, now=now)
        _fill(facts, conn.execute(query.stmt, params).first(), query.described)
    leaves = [leaf for seg in segs for leaf in seg.leaves()]
    if any(isinstance(leaf, TraitTest) for leaf in leaves):
        facts.profile = _profile_scope(row)
    tests = {leaf for leaf in leaves if isinstance(leaf, ConsentTest)}
    if tests:
        facts.reachable = _reachable(conn, workspace_id, row, tests, now)
    return facts


# ------------------------------------------------------------- evaluation


@dataclass(frozen=True)
class Change:
    segment: str
    profile_id: int
    change: str  # entered | exited


def evaluate_profile(
    conn: Connection,
    workspace_id: str,
    profile_id: int,
    *,
    now: datetime,
    segs: list[CompiledSegment],
) -> list[Change]:
    """Re-evaluate one customer against ``segs``; write changes and timers; return the changes."""
    if not segs:
        return []
    row = conn.execute(select(profiles).where(profiles.c.id == profile_id)).first()
    live = (
        row is not None
        and row.merged_into is None
        and row.erased_at is None
        and row.workspace_id == workspace_id
    )
    ids = [s.id for s in segs]
    current = set(
        conn.execute(
            select(segment_members.c.segment_id).where(
                segment_members.c.workspace_id == workspace_id,
                segment_members.c.profile_id == profile_id,
                segment_members.c.segment_id.in_(ids),
            )
        ).scalars()
    )
    timers = dict(
        conn.execute(
            select(segment_timers.c.segment_id, segment_timers.c.due_at).where(
                segment_timers.c.workspace_id == workspace_id,
                segment_timers.c.profile_id == profile_id,
                segment_timers.c.segment_id.in_(ids),
            )
        ).all()
    )
    facts = load_facts(conn, segs, row, workspace_id=workspace_id, now=now) if live else Facts()
    moved: list[Moved] = []
    timer_moves: list[tuple[int, datetime | None]] = []
    for seg in segs:
        member = live and holds(seg.root, facts, now)
        if member != (seg.id in current):
            moved.append((seg, profile_id, "entered" if member else "exited", seg.built))
        due = next_change(seg, facts, now) if live else None
        if due != timers.get(seg.id):
            timer_moves.append((seg.id, due))
    # One statement per kind of write, not per segment: an order moves several at once.
    if moved:
        _write_memberships(conn, workspace_id, profile_id, moved, now=now)
        user_id = row.user_id if row is not None else None
        _record(conn, workspace_id, moved, now=now, users={profile_id: user_id})
    if timer_moves:
        _set_timers(conn, workspace_id, profile_id, timer_moves)
    return [Change(seg.key, pid, change) for seg, pid, change, _ in moved]


#: One entry or exit to record: segment, profile id, ``entered``/``exited``, announced or not.
Moved = tuple[CompiledSegment, int, str, bool]


def _write_memberships(
    conn: Connection, workspace_id: str, profile_id: int, moved: list[Moved], *, now: datetime
) -> None:
    """Add and remove one customer's memberships: a statement each way."""
    entered = [seg.id for seg, _, change, _ in moved if change == "entered"]
    exited = [seg.id for seg, _, change, _ in moved if change == "exited"]
    if entered:
        conn.execute(
            segment_members.insert(),
            [
                {
                    "segment_id": segment_id,
                    "profile_id": profile_id,
                    "workspace_id": workspace_id,
                    "entered_at": now,
                }
                for segment_id in entered
            ],
        )
    if exited:
        conn.execute(
            delete(segment_members).where(
                segment_members.c.profile_id == profile_id,
                segment_members.c.segment_id.in_(exited),
            )
        )


def _set_timers(
    conn: Connection,
    workspace_id: str,
    profile_id: int,
    moves: list[tuple[int, datetime | None]],
) -> None:
    """Upsert the customer's timer of each segment, or drop it when nothing can flip.

    ``moves`` holds (segment id, due or None), one per segment.
    """
    gone = [segment_id for segment_id, due in moves if due is None]
    if gone:
        conn.execute(
            delete(segment_timers).where(
                segment_timers.c.profile_id == profile_id,
                segment_timers.c.segment_id.in_(gone),
            )
        )
    rows = [
        {
            "workspace_id": workspace_id,
            "segment_id": segment_id,
            "profile_id": profile_id,
            "due_at": due,
            "attempts": 0,
        }
        for segment_id, due in moves
        if due is not None
    ]
    if not rows:
        return
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    stmt = dialect.insert(segment_timers)
    conn.execute(
        stmt.on_conflict_do_update(
            index_elements=["segment_id", "profile_id"],
            set_={
                "due_at": stmt.excluded.due_at,
                "lease_owner": None,
                "lease_until": None,
                "attempts": 0,
            },
        ),
        rows,
    )


def _record_changes(
    conn: Connection,
    seg: CompiledSegment,
    workspace_id: str,
    profile_ids: list[int],
    change: str,
    *,
    now: datetime,
    emit: bool,
    users: dict[int, str | None],
) -> None:
    """The same change of one segment for many customers (a build's range)."""
    _record(
        conn,
        workspace_id,
        [(seg, pid, change, emit) for pid in profile_ids],
        now=now,
        users=users,
    )


def _record(
    conn: Connection,
    workspace_id: str,
    moved: list[Moved],
    *,
    now: datetime,
    users: dict[int, str | None],
) -> None:
    """``segment_changes`` rows and, for those announced, the change events (idempotent)."""
    if not moved:
        return
    announced = [m for m in moved if m[3]]
    numbers: dict[tuple[int, int], int] = {}
    if announced:
        segment_ids = sorted({seg.id for seg, _, _, _ in announced})
        pids = sorted({pid for _, pid, _, _ in announced})
        c = segment_changes
        for chunk in _chunks(pids, 500):
            found = conn.execute(
                select(c.c.segment_id, c.c.profile_id, func.count())
                .where(c.c.segment_id.in_(segment_ids), c.c.profile_id.in_(chunk))
                .group_by(c.c.segment_id, c.c.profile_id)
            ).all()
            numbers.update(((s, p), n) for s, p, n in found)
    conn.execute(
        segment_changes.insert(),
        [
            {
                "workspace_id": workspace_id,
                "segment_id": seg.id,
                "profile_id": pid,
                "change": change,
                "at": now,
            }
            for seg, pid, change, _ in moved
        ],
    )
    if not announced:
        return
    rows = [
        {
            "workspace_id": workspace_id,
            # the n-th change of this customer in this segment: the same work replayed
            # derives the same id, and the unique (workspace, message_id) keeps one row
            "message_id": f"segment:{seg.id}:{pid}:{numbers.get((seg.id, pid), 0) + 1}",
            "type": "track",
            "name": SEGMENT_ENTERED if change == "entered" else SEGMENT_EXITED,
            "profile_id": pid,
            "user_id": users.get(pid),
            "anonymous_id": None,
            "properties": {"segment": seg.key},
            "traits": None,
            "context": {},
            "timestamp": now,
            "received_at": now,
            "status": EVENT_PENDING,
            "attempts": 0,
        }
        for seg, pid, change, _ in announced
    ]
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    conn.execute(
        dialect.insert(events).on_conflict_do_nothing(
            index_elements=["workspace_id", "message_id"]
        ),
        rows,
    )


def _chunks(items: list[int], size: int) -> Iterable[list[int]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def observe(conn: Connection, row: Any, *, now: datetime) -> None:
    """The audience observer: re-evaluate the event's customer against every segment.

    The segments' own change events are skipped: they carry nothing a segment reads.
    """
    if row.name in _CHANGE_EVENTS:
        return
    segs = CACHE.segments(conn, row.workspace_id)
    if segs:
        evaluate_profile(conn, row.workspace_id, row.profile_id, now=now, segs=segs)


def refresh_consent_segments(
    conn: Connection, workspace_id: str, profile_id: int, *, now: datetime
) -> None:
    """Re-evaluate segments that read consent, after an identify changed the ledger."""
    segs = [
        s
        for s in CACHE.segments(conn, workspace_id)
        if any(isinstance(x, ConsentTest) for x in s.leaves())
    ]
    if segs:
        evaluate_profile(conn, workspace_id, profile_id, now=now, segs=segs)


def forget_profiles(
    conn: Connection, workspace_id: str, profile_ids: list[int], *, now: datetime
) -> None:
    """Merged-away profiles leave every segment (recorded, not announced) and lose their timers."""
    if not profile_ids:
        return
    found = conn.execute(
        select(segment_members.c.segment_id, segment_members.c.profile_id).where(
            segment_members.c.workspace_id == workspace_id,
            segment_members.c.profile_id.in_(profile_ids),
        )
    ).all()
    if found:
        conn.execute(
            segment_changes.insert(),
            [
                {
                    "workspace_id": workspace_id,
                    "segment_id": s,
                    "profile_id": p,
                    "change": "exited",
                    "at": now,
                }
                for s, p in found
            ],
        )
    for table in (segment_members, segment_timers):
        conn.execute(
            delete(table).where(
                table.c.workspace_id == workspace_id, table.c.profile_id.in_(profile_ids)
            )
        )


# ------------------------------------------------------------------ timers


def claim_segment_timers(
    engine: Engine, *, owner: str, now: datetime, lease: timedelta, limit: int
) -> list[int]:
    """Lease up to ``limit`` due segment timers, earliest first (see worker.claims)."""
    t = segment_timers
    free = or_(t.c.lease_until.is_(None), t.c.lease_until <= now)
    pick = select(t.c.id).where(t.c.due_at <= now, free).order_by(t.c.due_at).limit(limit)
    with transaction(engine) as conn:
        if conn.dialect.name == "postgresql":
            pick = pick.with_for_update(skip_locked=True)
        stmt = (
            update(t)
            .where(t.c.id.in_(pick.scalar_subquery()))
            .values(lease_owner=owner, lease_until=now + lease, attempts=t.c.attempts + 1)
            .returning(t.c.id)
        )
        return [r[0] for r in conn.execute(stmt)]


def fire_segment_timers(
    engine: Engine, *, owner: str, now: datetime, lease: timedelta, limit: int = 200
) -> int:
    """Claim due segment timers and re-evaluate each customer for its segment; returns how many.

    Each timer row is deleted in the savepoint that re-evaluates, only while
    the lease is ours, so one fires once; the evaluation sets the next timer.
    A failing timer is retried with back-off and dropped after
    MAX_TIMER_ATTEMPTS (logged): the customer's next event sets it again.
    """
    ids = claim_segment_timers(engine, owner=owner, now=now, lease=lease, limit=limit)
    if not ids:
        return 0
    done = 0
    failed: list[int] = []
    with transaction(engine) as conn:
        rows = conn.execute(
            select(segment_timers)
            .where(segment_timers.c.id.in_(ids), segment_timers.c.lease_owner == owner)
            .order_by(segment_timers.c.profile_id, segment_timers.c.id)
        ).all()
        by_ws: dict[str, dict[int, CompiledSegment]] = {}
        for row in rows:
            savepoint = conn.begin_nested()
            try:
                gone = conn.execute(
                    delete(segment_timers).where(
                        segment_timers.c.id == row.id, segment_timers.c.lease_owner == owner
                    )
                ).rowcount
                if gone != 1:
                    savepoint.rollback()
                    continue
                if row.workspace_id not in by_ws:
                    by_ws[row.workspace_id] = {
                        s.id: s for s in CACHE.segments(conn, row.workspace_id)
                    }
                seg = by_ws[row.workspace_id].get(row.segment_id)
                if seg is not None:
                    evaluate_profile(conn, row.workspace_id, row.profile_id, now=now, segs=[seg])
                savepoint.commit()
                done += 1
            except Exception:  # noqa: BLE001 - one customer must not stop the batch
                savepoint.rollback()
                log.warning("segment timer %s failed", row.id, exc_info=True)
                failed.append(row.id)
    if failed:
        _record_failures(engine, failed, owner=owner, now=now)
    return done + len(failed)


def _record_failures(engine: Engine, ids: list[int], *, owner: str, now: datetime) -> None:
    t = segment_timers
    with transaction(engine) as conn:
        for timer_id in ids:
            attempts = conn.execute(
                select(t.c.attempts).where(t.c.id == timer_id)
            ).scalar_one_or_none()
            if attempts is None:
                continue
            if attempts >= MAX_TIMER_ATTEMPTS:
                conn.execute(delete(t).where(t.c.id == timer_id, t.c.lease_owner == owner))
            else:
                backoff = RETRY_BASE * 2 ** max(attempts - 1, 0)
                conn.execute(
                    update(t)
                    .where(t.c.id == timer_id, t.c.lease_owner == owner)
                    .values(lease_owner=None, lease_until=now + backoff)
                )


def next_segment_timer(conn: Connection) -> datetime | None:
    """When the next segment timer becomes claimable (due, or its lease or back-off ends)."""
    from sqlalchemy import case

    t = segment_timers
    ready = case((t.c.lease_until > t.c.due_at, t.c.lease_until), else_=t.c.due_at)
    return conn.execute(select(func.min(ready))).scalar_one_or_none()


# ------------------------------------------------------------------- builds


@dataclass(frozen=True)
class BuildResult:
    segment: str
    members: int
    entered: int
    exited: int
    timers: int
    announced: bool

    def as_dict(self) -> dict[str, Any]:
        return {
            "segment": self.segment,
            "members": self.members,
            "entered": self.entered,
            "exited": self.exited,
            "timers": self.timers,
            "announced": self.announced,
        }


Progress = Callable[[int, int], None]


def build_segment(
    engine: Engine,
    workspace_id: str,
    key: str,
    *,
    now: datetime,
    announce: bool | None = None,
    chunk: int = BUILD_CHUNK,
    progress: Progress | None = None,
) -> BuildResult:
    """Recompute the segment's members with its member query and write the difference.

    Profiles are read in ranges of ``chunk`` ids, one transaction each;
    ``progress(done, total)`` is called after each range. ``announce`` says
    whether entries and exits become ``Segment Entered/Exited`` events; by
    default they do once the segment has been built before, and not on its
    first build (else applying a segment would start journeys for everyone
    already in it). Changes are recorded in ``segment_changes`` either way.
    """
    with transaction(engine) as conn:
        seg = compiled(conn, workspace_id, key)
        conn.execute(update(segments).where(segments.c.id == seg.id).values(status="building"))
        low, high, total = conn.execute(
            select(func.min(profiles.c.id), func.max(profiles.c.id), func.count()).where(
                profiles.c.workspace_id == workspace_id
            )
        ).one()
    emit = seg.built if announce is None else announce
    entered = exited = timers = done = 0
    if low is not None:
        for start in range(low, high + 1, chunk):
            id_range = (start, min(start + chunk - 1, high))
            with transaction(engine) as conn:
                e, x, t, n = _build_range(conn, seg, workspace_id, id_range, now=now, emit=emit)
            entered, exited, timers, done = entered + e, exited + x, timers + t, done + n
            if progress is not None:
                progress(done, total)
    with transaction(engine) as conn:
        conn.execute(
            update(segments).where(segments.c.id == seg.id).values(status=READY, built_at=now)
        )
        members = conn.execute(
            select(func.count())
            .select_from(segment_members)
            .where(segment_members.c.segment_id == seg.id)
        ).scalar_one()
    return BuildResult(key, members, entered, exited, timers, emit)


def _build_range(
    conn: Connection,
    seg: CompiledSegment,
    workspace_id: str,
    id_range: tuple[int, int],
    *,
    now: datetime,
    emit: bool,
) -> tuple[int, int, int, int]:
    dialect = conn.dialect.name
    live = dict(
        conn.execute(
            select(profiles.c.id, profiles.c.user_id).where(
                profiles_in_range(profiles, workspace_id, id_range, dialect=dialect),
                profiles.c.merged_into.is_(None),
                profiles.c.erased_at.is_(None),
            )
        ).all()
    )
    members = set(
        conn.execute(
            member_query(
                seg, workspace_id=workspace_id, now=now, dialect=dialect, id_range=id_range
            )
        ).scalars()
    )
    current = set(
        conn.execute(
            select(segment_members.c.profile_id).where(
                segment_members.c.segment_id == seg.id,
                segment_members.c.profile_id.between(*id_range),
            )
        ).scalars()
    )
    entered = sorted(members - current)
    exited = sorted(current - members)
    if entered:
        conn.execute(
            segment_members.insert(),
            [
                {
                    "segment_id": seg.id,
                    "profile_id": pid,
                    "workspace_id": workspace_id,
                    "entered_at": now,
                }
                for pid in entered
            ],
        )
    for part in _chunks(exited, 500):
        conn.execute(
            delete(segment_members).where(
                segment_members.c.segment_id == seg.id, segment_members.c.profile_id.in_(part)
            )
        )
    users = {pid: live.get(pid) for pid in entered + exited}
    _record_changes(conn, seg, workspace_id, entered, "entered", now=now, emit=emit, users=users)
    _record_changes(conn, seg, workspace_id, exited, "exited", now=now, emit=emit, users=users)
    timers = _build_timers(conn, seg, workspace_id, id_range, live=set(live), now=now)
    return len(entered), len(exited), timers, len(live)


def _build_timers(
    conn: Connection,
    seg: CompiledSegment,
    workspace_id: str,
    id_range: tuple[int, int],
    *,
    live: set[int],
    now: datetime,
) -> int:
    """Replace the range's timers of this segment by those its facts call for."""
    conn.execute(
        delete(segment_timers).where(
            segment_timers.c.segment_id == seg.id, segment_timers.c.profile_id.between(*id_range)
        )
    )
    if not seg.timed:
        return 0
    facts: dict[int, Facts] = {}
    queries = (
        facts_query(
            [seg], workspace_id=workspace_id, now=now, dialect=conn.dialect.name, id_range=id_range
        ),
        message_facts_query([seg], workspace_id=workspace_id, now=now, id_range=id_range),
    )
    for stmt, described in queries:
        if stmt is None:
            continue
        for row in conn.execute(stmt):
            if row.profile_id in live:
                _fill(facts.setdefault(row.profile_id, Facts()), row, described)
    due = {pid: next_change(seg, f, now) for pid, f in facts.items()}
    rows = [
        {
            "workspace_id": workspace_id,
            "segment_id": seg.id,
            "profile_id": pid,
            "due_at": at,
            "attempts": 0,
        }
        for pid, at in sorted(due.items())
        if at is not None
    ]
    if rows:
        conn.execute(segment_timers.insert(), rows)
    return len(rows)


def live_members(conn: Connection, segment_id: int) -> set[int]:
    """The current member ids of one segment (tests and tools)."""
    return set(
        conn.execute(
            select(segment_members.c.profile_id).where(segment_members.c.segment_id == segment_id)
        ).scalars()
    )
