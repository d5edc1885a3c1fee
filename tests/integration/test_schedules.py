"""Cron-scheduled journeys against the store, with a frozen clock, on SQLite and PostgreSQL.

At each instant of the cron expression (on the workspace's clock) every member
of the audience gets one ``Schedule Reached`` event and enters the journey; a
run is stored in chunks, resumes after a crash, and never stores a member twice.
"""

from __future__ import annotations

import textwrap
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, func, insert, select, update

from touchline.audience import time_triggers as tt
from touchline.journeys.loader import LoadedJourney, load_journey_text
from touchline.journeys.spec import SCHEDULE_EVENT
from touchline.store.db import transaction
from touchline.store.journeys import apply_journeys, set_status
from touchline.store.tables import (
    events,
    instances,
    outbox,
    profiles,
    segment_members,
    segments,
    time_triggers,
)
from touchline.store.workspaces import create_workspace
from touchline.testing import FrozenClock, identify, run_until_idle, send_events
from touchline.worker.loop import Worker

T0 = datetime(2026, 2, 25, 12, 0, tzinfo=UTC)  # a Wednesday

WEEKLY = """
journey: weekly-digest
trigger:
  schedule:
    cron: "0 10 * * MON"
    audience: all
entry:
  reentry: not_within
  not_within: 6d
steps:
  - send: {channel: email, template: digest}
"""

VIP = WEEKLY.replace("audience: all", "audience: vip").replace("weekly-digest", "vip-digest")


def journey(text: str, name: str) -> LoadedJourney:
    text = textwrap.dedent(text)
    return LoadedJourney(path=name, spec=load_journey_text(text, file=name), source=text)


class Shop:
    def __init__(self, engine: Engine, *, timezone: str, customers: int = 3) -> None:
        self.engine = engine
        self.clock = FrozenClock(T0)
        self.ws = create_workspace(engine, "shop", now=T0, timezone=timezone).id
        self.worker = Worker(engine, clock=self.clock, owner="w1")
        if customers:
            send_events(
                engine,
                self.ws,
                [identify(f"c{i}", email=f"c{i}@example.com") for i in range(customers)],
                now=T0,
            )
            run_until_idle(self.worker, self.clock)

    def apply(self, *texts: str) -> None:
        with transaction(self.engine) as conn:
            apply_journeys(
                conn,
                self.ws,
                [journey(t, f"j{i}.yaml") for i, t in enumerate(texts)],
                now=self.clock.now(),
            )

    def advance_to(self, when: datetime) -> None:
        run_until_idle(self.worker, self.clock, until=when)

    def sent_at(self) -> list[datetime]:
        with self.engine.connect() as conn:
            return list(
                conn.execute(
                    select(outbox.c.created_at).distinct().order_by(outbox.c.created_at)
                ).scalars()
            )

    def sends(self) -> list[tuple[str, datetime]]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(profiles.c.user_id, outbox.c.created_at)
                .join(profiles, profiles.c.id == outbox.c.profile_id)
                .order_by(outbox.c.created_at, profiles.c.user_id)
            ).all()
        return [(r.user_id, r.created_at) for r in rows]

    def job(self) -> Any:
        with self.engine.connect() as conn:
            return conn.execute(select(time_triggers)).one()

    def count(self, table: Any, *where: Any) -> int:
        with self.engine.connect() as conn:
            return conn.execute(select(func.count()).select_from(table).where(*where)).scalar_one()

    def segment(self, key: str, user_ids: list[str], *, status: str = "ready") -> int:
        """A segment of ``user_ids`` (their trait ``tier`` is ``key``, as its rule says)."""
        rule = f'profile.traits.tier == "{key}"'
        with transaction(self.engine) as conn:
            conn.execute(
                update(profiles)
                .where(profiles.c.user_id.in_(user_ids))
                .values(traits={"tier": key})
            )
            segment_id = conn.execute(
                insert(segments)
                .values(
                    workspace_id=self.ws,
                    key=key,
                    name=key,
                    spec={"segment": key, "match": {"profile": rule}},
                    source=f"segment: {key}\nmatch:\n  profile: '{rule}'\n",
                    checksum="0" * 64,
                    status=status,
                    created_at=T0,
                    updated_at=T0,
                )
                .returning(segments.c.id)
            ).scalar_one()
            ids = conn.execute(
                select(profiles.c.id).where(profiles.c.user_id.in_(user_ids))
            ).scalars()
            for pid in ids:
                conn.execute(
                    insert(segment_members).values(
                        segment_id=segment_id, profile_id=pid, workspace_id=self.ws, entered_at=T0
                    )
                )
        return int(segment_id)


def at(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)  # type: ignore[misc]


def test_weekly_run_enters_everyone_at_10_on_the_workspace_clock(engine: Engine) -> None:
    """Mondays at 10:00 Moscow time: every customer gets the digest at 07:00 UTC, each week."""
    # given
    shop = Shop(engine, timezone="Europe/Moscow")
    shop.apply(WEEKLY)
    assert shop.job().next_run_at == at(2026, 3, 2, 7)
    # when
    shop.advance_to(at(2026, 3, 10))
    # then
    assert shop.sent_at() == [at(2026, 3, 2, 7), at(2026, 3, 9, 7)]
    assert shop.count(outbox) == 6
    job = shop.job()
    assert (job.last_run_at, job.last_run_size, job.next_run_at) == (
        at(2026, 3, 9, 7),
        3,
        at(2026, 3, 16, 7),
    )
    with engine.connect() as conn:
        props = conn.execute(
            select(events.c.properties).where(events.c.name == SCHEDULE_EVENT).limit(1)
        ).scalar_one()
    assert props == {
        "journey": "weekly-digest",
        "run_at": "2026-03-02T07:00:00Z",
        "cron": "0 10 * * MON",
        "audience": "all",
    }


def test_weekly_run_follows_new_york_across_spring_forward(engine: Engine) -> None:
    """10:00 in New York is 15:00 UTC before 8 March 2026 and 14:00 UTC after it."""
    shop = Shop(engine, timezone="America/New_York", customers=1)
    shop.apply(WEEKLY)

    shop.advance_to(at(2026, 3, 17))

    assert shop.sent_at() == [at(2026, 3, 2, 15), at(2026, 3, 9, 14), at(2026, 3, 16, 14)]


def test_segment_audience_enters_only_its_members(engine: Engine) -> None:
    """audience: vip enters the segment's members only."""
    shop = Shop(engine, timezone="UTC")
    shop.segment("vip", ["c0", "c2"])
    shop.apply(VIP)

    shop.advance_to(at(2026, 3, 3))

    assert shop.sends() == [("c0", at(2026, 3, 2, 10)), ("c2", at(2026, 3, 2, 10))]


def test_missing_segment_passes_the_run_with_a_note_and_the_schedule_goes_on(
    engine: Engine,
) -> None:
    """No segment `vip`: nothing is sent, the note says why, the next Monday is planned."""
    shop = Shop(engine, timezone="UTC")
    shop.apply(VIP)

    shop.advance_to(at(2026, 3, 3))

    job = shop.job()
    assert shop.count(outbox) == 0
    assert job.note == "run of 2026-03-02T10:00:00+00:00 not made: no segment 'vip'"
    assert job.next_run_at == at(2026, 3, 9, 10)


def test_segment_being_rebuilt_holds_the_run_back(engine: Engine) -> None:
    """While the segment is building, the run waits (same instant), then goes out."""
    shop = Shop(engine, timezone="UTC")
    segment_id = shop.segment("vip", ["c1"], status="building")
    shop.apply(VIP)
    shop.advance_to(at(2026, 3, 2, 10, 30))
    assert shop.count(events, events.c.name == SCHEDULE_EVENT) == 0

    with transaction(engine) as conn:
        conn.execute(update(segments).where(segments.c.id == segment_id).values(status="ready"))
    shop.advance_to(at(2026, 3, 2, 11))

    assert shop.count(events, events.c.name == SCHEDULE_EVENT) == 1
    with engine.connect() as conn:
        stamp = conn.execute(select(events.c.timestamp).where(events.c.name == SCHEDULE_EVENT))
        assert stamp.scalar_one() == at(2026, 3, 2, 10)  # the run keeps its instant


def test_missed_runs_after_downtime_run_once(engine: Engine) -> None:
    """Three Mondays passed with no worker: one run (the oldest instant), then the next Monday."""
    shop = Shop(engine, timezone="UTC")
    shop.apply(WEEKLY)

    shop.clock.set(at(2026, 3, 20))
    run_until_idle(shop.worker, shop.clock)

    assert shop.count(outbox) == 3
    job = shop.job()
    assert job.last_run_at == at(2026, 3, 2, 10)
    assert job.next_run_at == at(2026, 3, 23, 10)


def test_paused_journey_passes_its_runs(engine: Engine) -> None:
    """A paused journey's run is passed with a note; resumed, the next one goes out."""
    shop = Shop(engine, timezone="UTC")
    shop.apply(WEEKLY)
    with transaction(engine) as conn:
        set_status(conn, shop.ws, "weekly-digest", "paused", now=T0)

    shop.advance_to(at(2026, 3, 3))
    assert shop.count(events, events.c.name == SCHEDULE_EVENT) == 0
    assert "journey paused" in shop.job().note
    with transaction(engine) as conn:
        set_status(conn, shop.ws, "weekly-digest", "active", now=shop.clock.now())
    shop.advance_to(at(2026, 3, 10))

    assert shop.sent_at() == [at(2026, 3, 9, 10)]


def test_run_in_chunks_resumes_after_a_crash_without_duplicates(engine: Engine) -> None:
    """A worker dies after two chunks; another takes the run over after the lease and
    finishes it: seven customers, seven events, seven entries."""
    # given
    shop = Shop(engine, timezone="UTC", customers=7)
    shop.apply(WEEKLY)
    shop.clock.set(at(2026, 3, 2, 10))
    doomed = tt.TimeTriggers(engine, owner="doomed", lease=timedelta(minutes=1), chunk=2)
    # when: two chunks, then the process is gone while holding the lease
    for _ in range(2):
        [job_id] = tt._claim(
            engine,
            time_triggers,
            due=time_triggers.c.next_run_at <= shop.clock.now(),
            order=time_triggers.c.next_run_at,
            owner="doomed",
            now=shop.clock.now(),
            lease=timedelta(minutes=1),
            limit=1,
        )
        doomed.run_job(job_id, now=shop.clock.now())
    with transaction(engine) as conn:
        conn.execute(
            update(time_triggers).values(
                lease_owner="doomed", lease_until=shop.clock.now() + timedelta(minutes=1)
            )
        )
    assert shop.count(events, events.c.name == SCHEDULE_EVENT) == 4
    shop.worker.time_triggers.chunk = 2
    run_until_idle(shop.worker, shop.clock)
    assert shop.count(events, events.c.name == SCHEDULE_EVENT) == 4  # the lease still holds
    shop.advance_to(at(2026, 3, 2, 10, 5))
    # then
    assert shop.count(events, events.c.name == SCHEDULE_EVENT) == 7
    assert shop.count(instances) == 7
    assert shop.job().last_run_size == 7


def test_a_chunk_repeated_from_a_lost_cursor_stores_nothing_twice(engine: Engine) -> None:
    """Even with its cursor rewound mid-run, the run stores each member's event once."""
    shop = Shop(engine, timezone="UTC", customers=5)
    shop.apply(WEEKLY)
    shop.clock.set(at(2026, 3, 2, 10))
    worker = tt.TimeTriggers(engine, owner="w2", lease=timedelta(minutes=1), chunk=2)

    def one_chunk() -> None:
        [job_id] = tt._claim(
            engine,
            time_triggers,
            due=time_triggers.c.next_run_at <= shop.clock.now(),
            order=time_triggers.c.next_run_at,
            owner="w2",
            now=shop.clock.now(),
            lease=timedelta(minutes=1),
            limit=1,
        )
        worker.run_job(job_id, now=shop.clock.now())

    one_chunk()
    one_chunk()
    with transaction(engine) as conn:
        conn.execute(update(time_triggers).values(done_through=0))
    for _ in range(3):
        one_chunk()

    assert shop.count(events, events.c.name == SCHEDULE_EVENT) == 5
    assert shop.job().run_at is None  # finished


def test_crash_inside_a_chunk_commits_nothing_of_it(engine: Engine, monkeypatch: Any) -> None:
    """A failure after the chunk's events were written rolls them back with the cursor;
    the retry stores them once."""
    shop = Shop(engine, timezone="UTC", customers=3)
    shop.apply(WEEKLY)
    real = tt._release
    calls = {"n": 0}

    def failing_release(*args: Any, **kwargs: Any) -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("power cut")
        real(*args, **kwargs)

    monkeypatch.setattr(tt, "_release", failing_release)
    shop.clock.set(at(2026, 3, 2, 10))
    run_until_idle(shop.worker, shop.clock)
    assert shop.count(events, events.c.name == SCHEDULE_EVENT) == 0
    assert shop.job().note == "RuntimeError: power cut"

    shop.advance_to(at(2026, 3, 2, 10, 5))

    assert shop.count(events, events.c.name == SCHEDULE_EVENT) == 3
    assert shop.count(outbox) == 3


def test_merged_profiles_are_not_in_the_audience(engine: Engine) -> None:
    """`all` means unmerged customers: a profile merged into another gets no event."""
    shop = Shop(engine, timezone="UTC", customers=3)
    with transaction(engine) as conn:
        survivor = conn.execute(
            select(profiles.c.id).where(profiles.c.user_id == "c0")
        ).scalar_one()
        conn.execute(
            update(profiles).where(profiles.c.user_id == "c1").values(merged_into=survivor)
        )
    shop.apply(WEEKLY)

    shop.advance_to(at(2026, 3, 3))

    assert [u for u, _ in shop.sends()] == ["c0", "c2"]


@pytest.mark.parametrize("change", ["cron", "audience"])
def test_changed_schedule_plans_its_next_run_from_now(engine: Engine, change: str) -> None:
    """A new cron (or audience) takes effect at once: the next instant is computed anew."""
    shop = Shop(engine, timezone="UTC", customers=1)
    shop.apply(WEEKLY)
    changed = (
        WEEKLY.replace("0 10 * * MON", "0 9 * * FRI")
        if change == "cron"
        else WEEKLY.replace("audience: all", "audience: vip")
    )

    shop.apply(changed)

    expected = at(2026, 2, 27, 9) if change == "cron" else at(2026, 3, 2, 10)
    assert shop.job().next_run_at == expected
