"""Journeys started by time: date triggers and cron schedules, as the worker runs them.

Neither kind is started by a customer's event, so the worker makes the event:

* **date** (``trigger: {date: ...}``): every customer has a row in
  ``date_timers`` with their next occurrence (see :mod:`touchline.audience.date_timers`);
  a due row stores a ``Date Reached`` event for that customer.
* **schedule** (``trigger: {schedule: ...}``): at each cron instant, one
  ``Schedule Reached`` event per member of the audience (a segment, or every
  customer), stored in chunks.

Both journeys are then entered by that event through the usual index on
``journeys.trigger_event``; the event names the journey in its properties so
only that journey takes it.

Per journey, ``time_triggers`` keeps the trigger as applied and the work owed
to it as a whole. :func:`sync_time_trigger` writes it when a journey is
applied; :class:`TimeTriggers` (one per worker) claims due rows with leases,
as timers are claimed, and does one chunk per row per turn:

* a date journey's **backfill** computes the timers of up to :data:`CHUNK`
  customers (profile ids after ``done_through``) per turn until every
  customer has been seen; a sweep each minute sets it going again when new
  customers appear. Customers are taken only once :data:`CREATION_LAG` old,
  since PostgreSQL may commit a lower profile id after a higher one.
* a schedule's **run** fixes its instant (``run_at``), stores the events of up
  to :data:`CHUNK` members after ``done_through`` per turn, committing the
  events with the new ``done_through`` in one transaction, and at the end
  computes the next instant after *now*. A run cut short by a crash resumes
  at ``done_through``; events are keyed by
  ``schedule:<journey>:<run instant>:<profile>``, so even a repeated chunk
  stores nothing twice. Instants missed while no worker ran collapse into one
  run (the oldest), never one per missed instant.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    Boolean,
    Connection,
    Engine,
    and_,
    bindparam,
    case,
    delete,
    exists,
    func,
    or_,
    select,
    union_all,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite

from touchline.audience.date_timers import (
    PROFILE_COLUMNS,
    DateJourney,
    fire_due,
    refresh,
    workspace_zone,
)
from touchline.audience.schedules import EVERYONE, next_run, schedule_message_id
from touchline.journeys.localtime import zone
from touchline.journeys.spec import SCHEDULE_EVENT, DateTrigger, JourneySpec, ScheduleTrigger
from touchline.store.db import transaction
from touchline.store.tables import (
    EVENT_PENDING,
    date_timers,
    events,
    journeys,
    profiles,
    segment_members,
    segments,
)
from touchline.store.tables import time_triggers as jobs
from touchline.store.types import UTCDateTime
from touchline.worker.claims import MAX_ATTEMPTS, _backoff, _claim

log = logging.getLogger("touchline.dates")

#: Customers per backfill step and audience members per run step: one transaction each.
CHUNK = 500
#: How often (in clock time) a worker looks for customers a date backfill has not seen.
SWEEP_EVERY = timedelta(minutes=1)
#: Customers younger than this wait for the next sweep: an ingest transaction on
#: PostgreSQL may commit a lower profile id after a higher one, never this much later.
CREATION_LAG = timedelta(minutes=2)
#: A run whose segment is being rebuilt waits this long before looking again.
HOLD_BACK = timedelta(minutes=1)
#: Time-trigger rows a worker takes per turn; each does one chunk.
JOBS_PER_TURN = 10


# -- applying a journey -------------------------------------------------------------------


def sync_time_trigger(
    conn: Connection, workspace_id: str, journey_id: int, spec: JourneySpec, *, now: datetime
) -> None:
    """Keep the journey's ``time_triggers`` row in line with its trigger (in the apply transaction).

    An unchanged trigger changes nothing. A new or changed date trigger starts a
    backfill over every customer (timers keep what they already fired, unless
    the trait or the repetition changed). A new or changed schedule is due at
    its next instant after ``now``; a run in progress finishes first. A trigger
    that is an event again drops the row and the journey's timers.
    """
    trigger = spec.trigger
    row = conn.execute(select(jobs).where(jobs.c.journey_id == journey_id)).first()
    if trigger.date is None and trigger.schedule is None:
        if row is not None:
            _forget(conn, journey_id)
        return
    rule = _rule_data(spec)
    kind = "date" if trigger.date is not None else "schedule"
    if row is not None and row.kind == kind and row.rule == rule:
        return
    if row is not None and row.kind == "date" and (kind != "date" or _fresh_start(row.rule, rule)):
        conn.execute(delete(date_timers).where(date_timers.c.journey_id == journey_id))
    values: dict[str, Any] = {"kind": kind, "rule": rule, "updated_at": now, "note": None}
    if kind == "date":
        # A backfill chunk in flight was computed for the old rule: taking its lease
        # away makes it roll back.
        values.update(
            next_run_at=now,
            run_at=None,
            done_through=0,
            run_size=0,
            lease_owner=None,
            lease_until=None,
            attempts=0,
        )
    elif row is None or row.kind != "schedule" or row.run_at is None:
        assert trigger.schedule is not None
        tz = zone(workspace_zone(conn, workspace_id, {}))
        values.update(
            next_run_at=next_run(trigger.schedule.cron, after=now, tz=tz),
            run_at=None,
            done_through=0,
            run_size=0,
        )
    if row is None:
        values.setdefault("attempts", 0)
        conn.execute(
            jobs.insert().values(workspace_id=workspace_id, journey_id=journey_id, **values)
        )
    else:
        conn.execute(update(jobs).where(jobs.c.id == row.id).values(**values))


def _rule_data(spec: JourneySpec) -> dict[str, Any]:
    """The trigger's date: or schedule: part in normal form (as journey versions store it)."""
    from touchline.journeys.loader import spec_to_data

    trigger = spec_to_data(spec)["trigger"]
    return dict(trigger.get("date") or trigger["schedule"])


def _fresh_start(old: dict[str, Any], new: dict[str, Any]) -> bool:
    """Whether timers must forget what they fired: another date, or another repetition."""
    return old.get("trait") != new.get("trait") or old.get("repeat") != new.get("repeat")


def _forget(conn: Connection, journey_id: int) -> None:
    conn.execute(delete(jobs).where(jobs.c.journey_id == journey_id))
    conn.execute(delete(date_timers).where(date_timers.c.journey_id == journey_id))


# -- the worker's part ----------------------------------------------------------------------


@dataclass
class TimeTotals:
    """What a worker's time triggers did, for logs and tests."""

    fired: int = 0
    late: int = 0
    paused: int = 0
    failed: int = 0
    backfilled: int = 0
    scheduled: int = 0
    runs: int = 0


class _LeaseLost(Exception):
    """Another worker took the row after our lease ended; this chunk must not commit."""


class TimeTriggers:
    """Fires due date timers and works through backfills and schedule runs. One per worker."""

    def __init__(
        self,
        engine: Engine,
        *,
        owner: str,
        lease: timedelta,
        batch: int = 200,
        chunk: int = CHUNK,
    ) -> None:
        self.engine = engine
        self.owner = owner
        self.lease = lease
        self.batch = batch
        self.chunk = chunk
        self.totals = TimeTotals()
        self._last_sweep: datetime | None = None

    def run_once(self, now: datetime) -> int:
        """One turn: fire due timers, look for new customers each minute, one chunk per job.

        One read says what there is to do, so an idle turn takes no write lock
        (SQLite has a single one, shared with ingest).
        """
        sweeping = self._last_sweep is None or now - self._last_sweep >= SWEEP_EVERY
        with self.engine.connect() as conn:
            timers_due, jobs_due, unseen = conn.execute(
                _PROBE, {"now": now, "settled": now - CREATION_LAG, "sweeping": sweeping}
            ).one()
        done = self._fire(now) if timers_due else 0
        if sweeping:
            if unseen:
                with transaction(self.engine) as conn:
                    jobs_due = sweep(conn, now=now) > 0 or jobs_due
            self._last_sweep = now
        if jobs_due:
            for job_id in self._claim(
                jobs, due=jobs.c.next_run_at <= now, order=jobs.c.next_run_at, now=now
            ):
                done += self.run_job(job_id, now=now)
        return done

    def _claim(self, table: Any, *, due: Any, order: Any, now: datetime) -> list[int]:
        return _claim(
            self.engine,
            table,
            due=due,
            order=order,
            owner=self.owner,
            now=now,
            lease=self.lease,
            limit=self.batch if table is date_timers else JOBS_PER_TURN,
        )

    def _fire(self, now: datetime) -> int:
        ids = self._claim(
            date_timers, due=date_timers.c.due_at <= now, order=date_timers.c.due_at, now=now
        )
        if not ids:
            return 0
        result = fire_due(self.engine, ids, owner=self.owner, now=now)
        self.totals.fired += result.fired
        self.totals.late += result.late
        self.totals.paused += result.paused
        if result.failed:
            self.totals.failed += len(result.failed)
            _hold_back_timers(self.engine, result.failed, owner=self.owner, now=now)
        return result.handled + len(result.failed)

    def run_job(self, job_id: int, *, now: datetime) -> int:
        """One chunk of one leased job, in its own transaction. Returns 1 (work was done)."""
        try:
            with transaction(self.engine) as conn:
                job = conn.execute(
                    select(jobs, journeys.c.key, journeys.c.status)
                    .join(journeys, journeys.c.id == jobs.c.journey_id)
                    .where(jobs.c.id == job_id, jobs.c.lease_owner == self.owner)
                ).first()
                if job is None:
                    return 0
                if job.kind == "date":
                    self.totals.backfilled += backfill_chunk(
                        conn, job, owner=self.owner, now=now, chunk=self.chunk
                    )
                else:
                    self.totals.scheduled += run_chunk(
                        conn, job, owner=self.owner, now=now, chunk=self.chunk, totals=self.totals
                    )
        except _LeaseLost:
            return 0
        except Exception as exc:  # noqa: BLE001 - one broken job must not stop the worker
            log.warning("time trigger %s failed: %s", job_id, exc, exc_info=True)
            _job_failed(
                self.engine, job_id, f"{type(exc).__name__}: {exc}", owner=self.owner, now=now
            )
        return 1

    def next_due(self, conn: Connection) -> datetime | None:
        """When the next timer or job becomes claimable, or the next sweep finds a new
        customer old enough (for virtual clocks, which skip the minutes in between)."""
        first, unseen = conn.execute(_NEXT_DUE_OR_UNSEEN).one()
        if unseen is None:
            return first
        sweep_at = unseen + CREATION_LAG
        if self._last_sweep is not None:
            sweep_at = max(sweep_at, self._last_sweep + SWEEP_EVERY)
        return sweep_at if first is None else min(first, sweep_at)


# -- backfill and sweep ---------------------------------------------------------------------


def backfill_chunk(conn: Connection, job: Any, *, owner: str, now: datetime, chunk: int) -> int:
    """Compute the timers of the next ``chunk`` customers; done when none old enough is left."""
    rows = conn.execute(
        select(*PROFILE_COLUMNS)
        .where(profiles.c.workspace_id == job.workspace_id, profiles.c.id > job.done_through)
        .order_by(profiles.c.id)
        .limit(chunk)
    ).all()
    ready = []
    for row in rows:
        if row.created_at > now - CREATION_LAG:
            break  # this one and later ones wait for a sweep
        ready.append(row)
    journey = DateJourney(
        job.journey_id,
        job.workspace_id,
        job.key,
        DateTrigger.model_validate(job.rule),
        active=job.status == "active",
    )
    refresh(conn, journey, ready, now=now, zones={})
    finished = len(ready) < chunk
    _release(
        conn,
        job.id,
        owner=owner,
        done_through=ready[-1].id if ready else job.done_through,
        next_run_at=None if finished else job.next_run_at,
    )
    return len(ready)


# Statements run every turn, built once; times are bound as parameters.
_NOW = bindparam("now", type_=UTCDateTime())
# A caught-up date job has customers it has not seen, old enough (`settled`) to be taken.
_NEWER = and_(
    jobs.c.kind == "date",
    jobs.c.next_run_at.is_(None),
    exists().where(
        profiles.c.workspace_id == jobs.c.workspace_id,
        profiles.c.id > jobs.c.done_through,
        profiles.c.created_at <= bindparam("settled", type_=UTCDateTime()),
    ),
)
# What a turn has to do: due timers, due jobs, and (when sweeping) unseen customers.
_PROBE = select(
    exists().where(
        date_timers.c.due_at <= _NOW,
        or_(date_timers.c.lease_until.is_(None), date_timers.c.lease_until <= _NOW),
    ),
    exists().where(
        jobs.c.next_run_at <= _NOW, or_(jobs.c.lease_until.is_(None), jobs.c.lease_until <= _NOW)
    ),
    and_(bindparam("sweeping", type_=Boolean()), exists().where(_NEWER)),
)


def sweep(conn: Connection, *, now: datetime) -> int:
    """Set date backfills going again where customers appeared since they finished."""
    return (
        conn.execute(
            update(jobs).where(_NEWER).values(next_run_at=now), {"settled": now - CREATION_LAG}
        ).rowcount
        or 0
    )


# -- schedule runs --------------------------------------------------------------------------


def run_chunk(
    conn: Connection, job: Any, *, owner: str, now: datetime, chunk: int, totals: TimeTotals
) -> int:
    """Store the events of the next ``chunk`` members of a schedule's run; finish it when done."""
    rule = ScheduleTrigger.model_validate(job.rule)
    tz = zone(workspace_zone(conn, job.workspace_id, {}))
    run_at = job.run_at or job.next_run_at
    if job.run_at is None and job.status != "active":
        return _finish(conn, job, run_at, tz, rule, owner=owner, now=now, note="journey paused")
    if rule.audience == EVERYONE:
        members = (
            select(profiles.c.id, profiles.c.user_id)
            .where(
                profiles.c.workspace_id == job.workspace_id,
                profiles.c.merged_into.is_(None),
                profiles.c.erased_at.is_(None),
                profiles.c.id > job.done_through,
            )
            .order_by(profiles.c.id)
        )
    else:
        segment = conn.execute(
            select(segments.c.id, segments.c.status).where(
                segments.c.workspace_id == job.workspace_id, segments.c.key == rule.audience
            )
        ).first()
        if segment is None or segment.status == "archived":
            note = f"no segment {rule.audience!r}"
            return _finish(conn, job, run_at, tz, rule, owner=owner, now=now, note=note)
        if segment.status == "building":  # members are being rewritten; look again shortly
            _release(conn, job.id, owner=owner, run_at=run_at, hold=now + HOLD_BACK)
            return 0
        members = (
            select(profiles.c.id, profiles.c.user_id)
            .join(segment_members, segment_members.c.profile_id == profiles.c.id)
            .where(
                segment_members.c.segment_id == segment.id,
                segment_members.c.profile_id > job.done_through,
                profiles.c.merged_into.is_(None),
            )
            .order_by(segment_members.c.profile_id)
        )
    rows = conn.execute(members.limit(chunk)).all()
    if rows:
        _store_run_events(conn, job, rule, run_at, rows, now=now)
    size = job.run_size + len(rows)
    if len(rows) < chunk:
        totals.runs += 1
        _finish(conn, job, run_at, tz, rule, owner=owner, now=now, size=size)
    else:
        _release(
            conn,
            job.id,
            owner=owner,
            run_at=run_at,
            done_through=rows[-1].id,
            run_size=size,
            next_run_at=job.next_run_at,
        )
    return len(rows)


def _store_run_events(
    conn: Connection,
    job: Any,
    rule: ScheduleTrigger,
    run_at: datetime,
    rows: Sequence[Any],
    *,
    now: datetime,
) -> None:
    """One event per member, ignoring those this run already stored (a repeated chunk)."""
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    properties = {
        "journey": job.key,
        "run_at": run_at.isoformat().replace("+00:00", "Z"),
        "cron": rule.cron,
        "audience": rule.audience,
    }
    conn.execute(
        dialect.insert(events).on_conflict_do_nothing(
            index_elements=["workspace_id", "message_id"]
        ),
        [
            {
                "workspace_id": job.workspace_id,
                "message_id": schedule_message_id(job.key, run_at, row.id),
                "type": "track",
                "name": SCHEDULE_EVENT,
                "profile_id": row.id,
                "user_id": row.user_id,
                "anonymous_id": None,
                "properties": properties,
                "traits": None,
                "context": None,
                "timestamp": run_at,
                "received_at": now,
                "status": EVENT_PENDING,
                "attempts": 0,
            }
            for row in rows
        ],
    )


def _finish(
    conn: Connection,
    job: Any,
    run_at: datetime,
    tz: Any,
    rule: ScheduleTrigger,
    *,
    owner: str,
    now: datetime,
    size: int = 0,
    note: str | None = None,
) -> int:
    """End a run (or pass over one, with a note) and set the next instant after ``now``."""
    following = next_run(rule.cron, after=max(now, run_at), tz=tz)
    if note is not None:
        log.info("journey %s: run of %s not made: %s", job.key, run_at.isoformat(), note)
    _release(
        conn,
        job.id,
        owner=owner,
        run_at=None,
        done_through=0,
        run_size=0,
        next_run_at=following,
        last_run_at=run_at,
        last_run_size=size,
        note=None if note is None else f"run of {run_at.isoformat()} not made: {note}"[:500],
    )
    return size


def _release(
    conn: Connection,
    job_id: int,
    *,
    owner: str,
    hold: datetime | None = None,
    **values: Any,
) -> None:
    """Write a job's progress and give up its lease, only while the lease is ours."""
    done = conn.execute(
        update(jobs)
        .where(jobs.c.id == job_id, jobs.c.lease_owner == owner)
        .values(lease_owner=None, lease_until=hold, attempts=0, **values)
    ).rowcount
    if done != 1:
        raise _LeaseLost(job_id)


# -- failures ---------------------------------------------------------------------------------


def _hold_back_timers(
    engine: Engine, failures: list[tuple[int, str]], *, owner: str, now: datetime
) -> None:
    """A failing timer waits with back-off; after the last attempt it stops, with its error."""
    with transaction(engine) as conn:
        for timer_id, error in failures:
            attempts = conn.execute(
                select(date_timers.c.attempts).where(date_timers.c.id == timer_id)
            ).scalar_one_or_none()
            if attempts is None:
                continue
            mine = (date_timers.c.id == timer_id, date_timers.c.lease_owner == owner)
            if attempts >= MAX_ATTEMPTS:
                values: dict[str, Any] = {
                    "due_at": None,
                    "outcome": "failed",
                    "handled_at": now,
                    "lease_owner": None,
                    "lease_until": None,
                }
            else:
                values = {"lease_owner": None, "lease_until": now + _backoff(attempts)}
            conn.execute(update(date_timers).where(*mine).values(error=error[:500], **values))


def _job_failed(engine: Engine, job_id: int, error: str, *, owner: str, now: datetime) -> None:
    """A failing chunk is retried with back-off; after the last attempt the job stops.

    A stopped backfill starts again at the next sweep that finds new customers or
    the next apply; a stopped run is passed over, and the schedule goes on.
    """
    with transaction(engine) as conn:
        job = conn.execute(select(jobs).where(jobs.c.id == job_id)).first()
        if job is None or job.lease_owner != owner:
            return
        mine = (jobs.c.id == job_id, jobs.c.lease_owner == owner)
        values: dict[str, Any] = {"note": error[:500], "lease_owner": None}
        if job.attempts < MAX_ATTEMPTS:
            values["lease_until"] = now + _backoff(job.attempts)
        elif job.kind == "date":
            values.update(next_run_at=None, lease_until=None, attempts=0)
        else:
            rule = ScheduleTrigger.model_validate(job.rule)
            tz = zone(workspace_zone(conn, job.workspace_id, {}))
            run_at = job.run_at or job.next_run_at
            values.update(
                run_at=None,
                done_through=0,
                run_size=0,
                next_run_at=next_run(rule.cron, after=max(now, run_at), tz=tz),
                last_run_at=run_at,
                last_run_size=job.run_size,
                lease_until=None,
                attempts=0,
            )
        conn.execute(update(jobs).where(*mine).values(**values))


# -- virtual clocks ----------------------------------------------------------------------------


def next_due(conn: Connection) -> datetime | None:
    """The earliest instant a date timer or a job becomes claimable (a lease or back-off counts)."""
    found: datetime | None = conn.execute(_NEXT_DUE).scalar_one_or_none()
    return found


def _build_next_due() -> Any:
    timer = case(
        (date_timers.c.lease_until > date_timers.c.due_at, date_timers.c.lease_until),
        else_=date_timers.c.due_at,
    )
    job = case(
        (jobs.c.lease_until > jobs.c.next_run_at, jobs.c.lease_until),
        else_=jobs.c.next_run_at,
    )
    both = union_all(
        select(func.min(timer).label("at")), select(func.min(job).label("at"))
    ).subquery()
    return select(func.min(both.c.at))


_NEXT_DUE = _build_next_due()
# The creation time of the oldest customer a caught-up date job has not seen.
_FIRST_UNSEEN = (
    select(func.min(profiles.c.created_at))
    .select_from(jobs)
    .join(
        profiles,
        and_(
            profiles.c.workspace_id == jobs.c.workspace_id,
            profiles.c.id > jobs.c.done_through,
        ),
    )
    .where(jobs.c.kind == "date", jobs.c.next_run_at.is_(None))
)
_NEXT_DUE_OR_UNSEEN = select(_NEXT_DUE.scalar_subquery(), _FIRST_UNSEEN.scalar_subquery())
