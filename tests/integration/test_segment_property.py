"""Incremental segment membership always equals a full rebuild, whatever the event stream."""

from __future__ import annotations

import itertools
import textwrap
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, insert, select

from touchline.audience.segment_runtime import build_segment
from touchline.audience.segment_store import LoadedSegment
from touchline.audience.segments import load_segment_text, save_segments
from touchline.store.db import transaction
from touchline.store.ingest import get_profile
from touchline.store.tables import message_events, segment_members, segment_timers, segments
from touchline.store.workspaces import create_workspace
from touchline.testing import FrozenClock, identify, run_until_idle, send_events, track
from touchline.worker.loop import Worker

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
USERS = ("u1", "u2", "u3")

SEGMENTS = [
    """
    segment: repeat
    match:
      event: Order Completed
      within: 10d
      count: {at_least: 2}
    """,
    """
    segment: big-spender-moscow
    match:
      - event: Order Completed
        sum: {property: revenue, more_than: 100}
      - profile: 'profile.traits.city == "Moscow"'
    """,
    """
    segment: lapsed
    match:
      last: Order Completed
      before: 5d
    """,
    """
    segment: new
    match:
      - first: Signed Up
        within: 3d
      - not: {event: Order Completed}
    """,
    """
    segment: viewed-not-bought
    match:
      event: Product Viewed
      within: 4d
      without: Order Completed
    """,
    """
    segment: traits
    match:
      any:
        - profile: 'profile.traits.tier in ["gold", "silver"] or profile.traits.age >= 30'
        - profile: 'not exists(profile.traits.city) and profile.email != "b@example.com"'
    """,
    """
    segment: reachable
    match:
      consent: email
      topic: selling
    """,
    """
    segment: cold
    match:
      - messages: sent
        channel: email
        within: 6d
      - messages: [opened, clicked]
        channel: email
        within: 6d
        count: {exactly: 0}
    """,
    """
    segment: first-buyer-big-basket
    match:
      first: Order Completed
      where: {big: true}
      before: 2d
    """,
]

user = st.sampled_from(USERS)
step = st.one_of(
    st.tuples(st.just("order"), user, st.sampled_from([0, 30, 80, 150]), st.booleans()),
    st.tuples(st.just("view"), user),
    st.tuples(st.just("signup"), user),
    st.tuples(
        st.just("identify"),
        user,
        st.sampled_from(["Moscow", "Kazan", None]),
        st.sampled_from(["gold", "bronze", None]),
        st.sampled_from([25, 31, "40", None]),
        st.sampled_from(["a@example.com", "b@example.com", None]),
    ),
    st.tuples(st.just("consent"), user, st.booleans(), st.sampled_from([True, False, None])),
    st.tuples(st.just("mail"), user, st.sampled_from(["sent", "opened", "clicked"]), st.booleans()),
    st.tuples(st.just("advance"), st.sampled_from([1, 20, 50, 100, 170])),
)


def _raw(action: tuple[Any, ...], n: int) -> list[dict[str, Any]]:
    kind, *args = action
    if kind == "order":
        who, revenue, big = args
        return [track(who, "Order Completed", {"revenue": revenue, "big": big, "n": n})]
    if kind == "view":
        return [track(args[0], "Product Viewed", {"n": n})]
    if kind == "signup":
        return [track(args[0], "Signed Up", {"n": n})]
    if kind == "identify":
        who, city, tier, age, email = args
        traits = {"city": city, "tier": tier, "age": age}
        if email:
            traits["email"] = email
        return [identify(who, **{k: v for k, v in traits.items() if v is not None})]
    if kind == "consent":
        who, granted, selling = args
        value: dict[str, Any] = {"granted": granted}
        if selling is not None:
            value["topics"] = {"selling": selling}
        return [identify(who, email=f"{who}@example.com", consent={"email": value})]
    return []


class World:
    def __init__(self, engine: Engine, ws: str) -> None:
        self.engine, self.ws = engine, ws
        self.clock = FrozenClock(T0)
        self.worker = Worker(engine, clock=self.clock, owner="w1")
        self.outbox_ids = itertools.count(1)

    def mail(self, who: str, kind: str, machine: bool) -> None:
        """A message fact for the customer, and the event a person's hit would store.

        The event is stored first (it creates the customer) and the row is added
        before the worker runs, as the tracking routes write both in one transaction.
        """
        now = self.clock.now()
        name = {"sent": "Message Sent", "opened": "Email Opened", "clicked": "Email Link Clicked"}
        send_events(self.engine, self.ws, [track(who, name[kind])], now=now)
        with transaction(self.engine) as conn:
            profile_id = get_profile(conn, self.ws, who)["id"]
            conn.execute(
                insert(message_events).values(
                    workspace_id=self.ws,
                    outbox_id=next(self.outbox_ids),
                    profile_id=profile_id,
                    channel="email",
                    kind=kind,
                    at=now,
                    machine=machine and kind != "sent",
                )
            )

    def snapshot(self) -> tuple[set[tuple[str, int]], set[tuple[str, int, datetime]]]:
        with self.engine.connect() as conn:
            members = conn.execute(
                select(segments.c.key, segment_members.c.profile_id).join(
                    segments, segments.c.id == segment_members.c.segment_id
                )
            ).all()
            timers = conn.execute(
                select(segments.c.key, segment_timers.c.profile_id, segment_timers.c.due_at).join(
                    segments, segments.c.id == segment_timers.c.segment_id
                )
            ).all()
        return {tuple(r) for r in members}, {tuple(r) for r in timers}  # type: ignore[misc]


def _setup(engine: Engine) -> World:
    ws = create_workspace(engine, "prop", now=T0).id
    world = World(engine, ws)
    loaded = []
    for i, text in enumerate(SEGMENTS):
        text = textwrap.dedent(text)
        loaded.append(LoadedSegment(f"s{i}.yaml", load_segment_text(text, file=f"s{i}.yaml"), text))
    with transaction(engine) as conn:
        save_segments(conn, ws, loaded, now=T0)
    for item in loaded:
        build_segment(engine, ws, item.spec.segment, now=T0)
    return world


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(actions=st.lists(step, min_size=1, max_size=14))
def test_incremental_membership_equals_full_rebuild(engine: Engine, actions: list[Any]) -> None:
    """After every step of a random stream, members and timers equal what a rebuild computes."""
    # given
    world = _setup(engine)
    for n, action in enumerate(actions):
        # when
        if action[0] == "advance":
            until = world.clock.now() + timedelta(hours=action[1])
            run_until_idle(world.worker, world.clock, until=until)
        elif action[0] == "mail":
            world.mail(action[1], action[2], action[3])
        else:
            send_events(engine, world.ws, _raw(action, n), now=world.clock.now())
        run_until_idle(world.worker, world.clock)
        incremental = world.snapshot()
        # then
        now = world.clock.now()
        for spec in SEGMENTS:
            key = load_segment_text(textwrap.dedent(spec), file="s").segment
            result = build_segment(engine, world.ws, key, now=now, announce=False)
            assert (result.entered, result.exited) == (0, 0), (key, action, n)
        assert world.snapshot() == incremental, (action, n)
