"""Segments kept current by the worker, announced as events, and read by journeys."""

from __future__ import annotations

import textwrap
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, func, insert, select

from touchline.audience.segment_runtime import build_segment
from touchline.audience.segment_store import LoadedSegment
from touchline.audience.segments import (
    load_segment_text,
    member_ids,
    save_segments,
    segment_keys_for,
)
from touchline.journeys.loader import LoadedJourney, load_journey_text
from touchline.store.db import transaction
from touchline.store.ingest import get_profile
from touchline.store.journeys import apply_journeys
from touchline.store.tables import (
    events,
    message_events,
    outbox,
    profiles,
    segment_changes,
    segment_members,
    segment_timers,
)
from touchline.store.workspaces import create_workspace
from touchline.testing import FrozenClock, identify, run_until_idle, send_events, track
from touchline.worker.loop import Worker

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)

VIP = """
segment: vip
name: VIP
match:
  event: Order Completed
  sum: {property: revenue, more_than: 10000}
"""
LAPSED = """
segment: lapsed
match:
  last: Order Completed
  before: 30d
"""
UNENGAGED = """
segment: unengaged
match:
  - messages: sent
    channel: email
    within: 60d
  - messages: [opened, clicked]
    channel: email
    within: 60d
    count: {exactly: 0}
"""
WELCOME_VIP = """
journey: welcome-vip
trigger: {segment: vip}
entry: {reentry: always}
steps:
  - send: {channel: email, template: vip-hello}
"""
GOODBYE_VIP = """
journey: goodbye-vip
trigger: {segment: vip, on: exit}
entry: {reentry: always}
steps:
  - send: {channel: email, template: vip-bye}
"""
BRANCH = """
journey: thanks
trigger: {event: Order Completed}
entry: {reentry: always}
steps:
  - branch:
      cases:
        - when: '"vip" in profile.segments'
          goto: vip
      otherwise: plain
  - id: vip
    send: {channel: email, template: thanks-vip}
    next: exit
  - id: plain
    send: {channel: email, template: thanks}
"""


class Shop:
    def __init__(self, engine: Engine, *segment_texts: str) -> None:
        self.engine = engine
        self.clock = FrozenClock(T0)
        self.ws = create_workspace(engine, "shop", now=T0).id
        self.worker = Worker(engine, clock=self.clock, owner="w1")
        if segment_texts:
            self.define(*segment_texts)

    def define(self, *texts: str, build: bool = True) -> None:
        loaded = []
        for text in texts:
            text = textwrap.dedent(text)
            loaded.append(LoadedSegment("s.yaml", load_segment_text(text, file="s.yaml"), text))
        with transaction(self.engine) as conn:
            save_segments(conn, self.ws, loaded, now=self.clock.now())
        if build:
            for item in loaded:
                build_segment(self.engine, self.ws, item.spec.segment, now=self.clock.now())

    def journeys(self, *texts: str) -> None:
        loaded = [
            LoadedJourney(f"j{i}.yaml", load_journey_text(t, file=f"j{i}.yaml"), t)
            for i, t in enumerate(textwrap.dedent(t) for t in texts)
        ]
        with transaction(self.engine) as conn:
            apply_journeys(conn, self.ws, loaded, now=self.clock.now())

    def send(self, *raws: dict[str, Any]) -> None:
        send_events(self.engine, self.ws, list(raws), now=self.clock.now())
        run_until_idle(self.worker, self.clock)

    def advance(self, delta: timedelta) -> None:
        run_until_idle(self.worker, self.clock, until=self.clock.now() + delta)

    def pid(self, user: str) -> int:
        with self.engine.connect() as conn:
            return int(get_profile(conn, self.ws, user)["id"])

    def members(self, key: str) -> set[int]:
        with self.engine.connect() as conn:
            return set(conn.execute(member_ids(conn, self.ws, key)).scalars())

    def templates(self) -> list[str]:
        with self.engine.connect() as conn:
            return list(conn.execute(select(outbox.c.template).order_by(outbox.c.id)).scalars())

    def names(self, name: str) -> list[Any]:
        with self.engine.connect() as conn:
            return conn.execute(
                select(events.c.message_id, events.c.timestamp, events.c.properties)
                .where(events.c.name == name)
                .order_by(events.c.id)
            ).all()


def test_entering_and_leaving_are_events_that_trigger_journeys(engine: Engine) -> None:
    """Spending past 10 000 enters vip and starts its journey; a new definition exits it."""
    # given
    shop = Shop(engine, VIP)
    shop.journeys(WELCOME_VIP, GOODBYE_VIP)
    # when
    shop.send(track("u1", "Order Completed", {"order_id": "o1", "revenue": 6000}))
    shop.send(track("u1", "Order Completed", {"order_id": "o2", "revenue": 6000}))
    # then
    pid = shop.pid("u1")
    assert shop.members("vip") == {pid}
    entered = shop.names("Segment Entered")
    assert [(m, p) for m, _, p in entered] == [(f"segment:1:{pid}:1", {"segment": "vip"})]
    assert shop.templates() == ["vip-hello"]
    # when the bar is raised, the rebuild of an already built segment announces the exit
    shop.define(VIP.replace("10000", "50000"))
    run_until_idle(shop.worker, shop.clock)
    # then
    assert shop.members("vip") == set()
    assert [m for m, _, _ in shop.names("Segment Exited")] == [f"segment:1:{pid}:2"]
    assert shop.templates() == ["vip-hello", "vip-bye"]


def test_first_build_of_a_new_segment_is_silent_unless_asked(engine: Engine) -> None:
    """Customers already qualifying when a segment is created join without events."""
    # given
    shop = Shop(engine)
    shop.journeys(WELCOME_VIP)
    shop.send(track("u1", "Order Completed", {"revenue": 20000}))
    # when
    shop.define(VIP)
    run_until_idle(shop.worker, shop.clock)
    # then
    assert shop.members("vip") == {shop.pid("u1")}
    assert shop.names("Segment Entered") == []
    assert shop.templates() == []
    with engine.connect() as conn:
        changes = conn.execute(select(segment_changes.c.change)).scalars().all()
    assert changes == ["entered"]
    # and a forced announcement on a rebuild that changes nothing announces nothing
    result = build_segment(engine, shop.ws, "vip", now=shop.clock.now(), announce=True)
    assert (result.entered, result.exited, result.members) == (0, 0, 1)


def test_events_before_the_first_build_keep_membership_silently(engine: Engine) -> None:
    """A saved but never built segment is kept current without announcing anyone."""
    # given
    shop = Shop(engine)
    shop.journeys(WELCOME_VIP)
    shop.define(VIP, build=False)
    # when
    shop.send(track("u1", "Order Completed", {"revenue": 20000}))
    # then
    assert shop.members("vip") == {shop.pid("u1")}
    assert shop.names("Segment Entered") == []


def test_branch_conditions_read_the_customers_segments(engine: Engine) -> None:
    """`"vip" in profile.segments` sees membership changed by the very event being processed."""
    # given
    shop = Shop(engine, VIP)
    shop.journeys(BRANCH)
    # when
    shop.send(track("u1", "Order Completed", {"revenue": 500}))
    shop.send(track("u1", "Order Completed", {"revenue": 12000}))
    # then
    assert shop.templates() == ["thanks", "thanks-vip"]
    with engine.connect() as conn:
        assert segment_keys_for(conn, shop.ws, shop.pid("u1")) == {"vip"}


def test_a_timer_moves_a_customer_when_the_time_comes_without_a_rescan(engine: Engine) -> None:
    """'Last order more than 30 days ago' turns true exactly 30 days after the last order."""
    # given
    shop = Shop(engine, LAPSED)
    shop.send(track("u1", "Order Completed", {"revenue": 100}))
    shop.send(track("u2", "Page Viewed"))
    with engine.connect() as conn:
        timers = conn.execute(select(segment_timers.c.profile_id, segment_timers.c.due_at)).all()
    assert timers == [(shop.pid("u1"), T0 + timedelta(days=30))]
    # when
    shop.advance(timedelta(days=29, hours=23))
    assert shop.members("lapsed") == set()
    shop.advance(timedelta(hours=2))
    # then
    assert shop.members("lapsed") == {shop.pid("u1")}
    (entered,) = shop.names("Segment Entered")
    assert entered.timestamp == T0 + timedelta(days=30)
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(segment_timers)).scalar_one() == 0
    # and a new order takes the customer out at once, with a fresh timer
    shop.send(track("u1", "Order Completed", {"order_id": "o2", "revenue": 100}))
    assert shop.members("lapsed") == set()
    with engine.connect() as conn:
        due = conn.execute(select(segment_timers.c.due_at)).scalar_one()
    assert due == shop.clock.now() + timedelta(days=30)


def test_machine_opens_do_not_count_as_engagement(engine: Engine) -> None:
    """A customer mailed whose only open was a privacy proxy's stays 'stopped opening'."""
    # given
    shop = Shop(engine, UNENGAGED)
    shop.send(track("u1", "Message Sent"), track("u2", "Message Sent"))
    pids = {u: shop.pid(u) for u in ("u1", "u2")}
    rows = [
        (1, pids["u1"], "sent", False),
        (2, pids["u2"], "sent", False),
        (1, pids["u1"], "opened", True),
        (2, pids["u2"], "opened", False),
    ]
    with transaction(engine) as conn:
        for outbox_id, pid, kind, machine in rows:
            conn.execute(
                insert(message_events).values(
                    workspace_id=shop.ws,
                    outbox_id=outbox_id,
                    profile_id=pid,
                    channel="email",
                    kind=kind,
                    at=T0,
                    machine=machine,
                )
            )
    # when
    shop.send(track("u1", "Email Opened"), track("u2", "Email Opened"))
    # then
    assert shop.members("unengaged") == {pids["u1"]}
    # and after 60 days the send leaves the window: nobody is "receiving" any more
    shop.advance(timedelta(days=61))
    assert shop.members("unengaged") == set()


def test_a_merged_away_profile_leaves_every_segment(engine: Engine) -> None:
    """An anonymous shopper's profile merged into a known customer's is no member any more."""
    # given
    shop = Shop(engine, VIP)
    shop.send(
        {
            "type": "track",
            "anonymousId": "anon-1",
            "event": "Order Completed",
            "properties": {"revenue": 20000},
        },
        track("u1", "Page Viewed"),
    )
    with engine.connect() as conn:
        anon = conn.execute(select(profiles.c.id).where(profiles.c.user_id.is_(None))).scalar_one()
    assert shop.members("vip") == {anon}
    # when
    shop.send({"type": "alias", "previousId": "anon-1", "userId": "u1"})
    # then
    survivor = shop.pid("u1")
    with engine.connect() as conn:
        merged = conn.execute(select(profiles.c.merged_into).where(profiles.c.id == anon)).scalar()
        left = (
            conn.execute(
                select(segment_changes.c.change).where(segment_changes.c.profile_id == anon)
            )
            .scalars()
            .all()
        )
        members = conn.execute(select(segment_members.c.profile_id)).scalars().all()
    assert merged == survivor
    assert left == ["entered", "exited"]
    assert members == [survivor]  # the moved order now counts for the survivor
    result = build_segment(engine, shop.ws, "vip", now=shop.clock.now())
    assert (result.entered, result.exited) == (0, 0)


def test_consent_from_identify_is_seen_by_segments_at_once(engine: Engine) -> None:
    """Consent written by the worker after the segments looked at the event still counts."""
    # given
    shop = Shop(engine, "segment: reachable\nmatch: {consent: email}\n")
    # when
    shop.send(identify("u1", email="u1@example.com", consent={"email": True}))
    # then
    assert shop.members("reachable") == {shop.pid("u1")}
    # and a withdrawal takes the customer out
    shop.send(identify("u1", consent={"email": False}))
    assert shop.members("reachable") == set()


def test_a_build_reads_profiles_in_ranges_and_reports_progress(engine: Engine) -> None:
    """Chunked builds find the same members as one pass and call progress per range."""
    # given
    shop = Shop(engine)
    for i in range(7):
        shop.send(track(f"u{i}", "Order Completed", {"revenue": 20000 if i % 2 else 10}))
    shop.define(VIP, build=False)
    seen: list[tuple[int, int]] = []
    # when
    result = build_segment(
        engine,
        shop.ws,
        "vip",
        now=shop.clock.now(),
        chunk=3,
        progress=lambda d, t: seen.append((d, t)),
    )
    # then
    assert result.members == 3
    assert seen[-1] == (7, 7) and len(seen) == 3
