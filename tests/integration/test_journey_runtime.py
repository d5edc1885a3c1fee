"""The store and the engine together, on SQLite and PostgreSQL (the `engine` fixture)."""

from __future__ import annotations

import textwrap
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, func, select, update

from touchline.journeys.loader import LoadedJourney, load_journey_text
from touchline.store.db import transaction
from touchline.store.journeys import apply_journeys, set_status
from touchline.store.tables import (
    EVENT_DONE,
    EVENT_FAILED,
    conversions,
    events,
    instances,
    journey_versions,
    listeners,
    outbox,
    profiles,
    timers,
)
from touchline.store.workspaces import create_workspace
from touchline.testing import FrozenClock, identify, run_until_idle, send_events, track
from touchline.worker.loop import Worker

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)  # a Monday

CART = """
journey: abandoned-cart
category: selling
trigger:
  event: Product Added
  where: exists(event.properties.cart_id)
entry:
  key: cart_id
  reentry: once_per_key
exit_on:
  - event: Order Completed
    match: cart_id
goal:
  event: Order Completed
  match: cart_id
  within: 7d
steps:
  - id: wait-1h
    wait: 1h
  - id: reminder-1
    send: {channel: email, template: cart-1}
  - id: wait-order
    wait_for:
      event: Order Completed
      match: cart_id
      timeout: 23h
      on_event: exit
  - id: reminder-2
    send: {channel: sms, template: cart-2}
"""


def journey(text: str, name: str = "j.yaml") -> LoadedJourney:
    text = textwrap.dedent(text)
    return LoadedJourney(path=name, spec=load_journey_text(text, file=name), source=text)


class Shop:
    """One workspace with journeys applied, a frozen clock and a worker."""

    def __init__(self, engine: Engine, *journeys_: str, timezone: str = "UTC") -> None:
        self.engine = engine
        self.clock = FrozenClock(T0)
        self.ws = create_workspace(engine, "shop", now=T0, timezone=timezone).id
        self.apply(*journeys_)
        self.worker = Worker(engine, clock=self.clock, owner="w1")

    def apply(self, *texts: str) -> None:
        with transaction(self.engine) as conn:
            apply_journeys(
                conn,
                self.ws,
                [journey(t, f"j{i}.yaml") for i, t in enumerate(texts)],
                now=self.clock.now(),
            )

    def send(self, *raws: dict[str, Any]) -> None:
        send_events(self.engine, self.ws, list(raws), now=self.clock.now())
        run_until_idle(self.worker, self.clock)

    def advance(self, delta: timedelta) -> None:
        run_until_idle(self.worker, self.clock, until=self.clock.now() + delta)

    def sent(self) -> list[tuple[str, str, datetime]]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(profiles.c.user_id, outbox.c.template, outbox.c.created_at)
                .join(profiles, profiles.c.id == outbox.c.profile_id)
                .where(outbox.c.workspace_id == self.ws)
                .order_by(outbox.c.id)
            ).all()
        return [(r.user_id, r.template, r.created_at) for r in rows]

    def count(self, table: Any, *where: Any) -> int:
        with self.engine.connect() as conn:
            return conn.execute(select(func.count()).select_from(table).where(*where)).scalar_one()


def test_abandoned_cart_sends_both_reminders_at_1h_and_24h(engine: Engine) -> None:
    """A cart with no order gets the 1 h email and the 24 h SMS, at those times."""
    # given
    shop = Shop(engine, CART)
    # when
    shop.send(track("u1", "Product Added", {"cart_id": "c1"}))
    shop.advance(timedelta(days=3))
    # then
    assert shop.sent() == [
        ("u1", "cart-1", T0 + timedelta(hours=1)),
        ("u1", "cart-2", T0 + timedelta(hours=24)),
    ]
    assert shop.count(timers) == 0
    assert shop.count(instances, instances.c.status == "completed") == 1


def test_order_with_same_cart_stops_the_journey_and_converts(engine: Engine) -> None:
    """An order for the cart after the first reminder ends it at once and counts the goal."""
    # given
    shop = Shop(engine, CART)
    shop.send(track("u1", "Product Added", {"cart_id": "c1"}))
    shop.advance(timedelta(hours=2))
    # when
    shop.send(track("u1", "Order Completed", {"cart_id": "c1", "revenue": 1990.5}))
    shop.advance(timedelta(days=3))
    # then
    assert [t for _, t, _ in shop.sent()] == ["cart-1"]
    assert shop.count(instances, instances.c.status == "exited") == 1
    with engine.connect() as conn:
        value = conn.execute(select(conversions.c.value)).scalar_one()
    assert float(value) == 1990.5
    assert shop.count(timers) == 0
    assert shop.count(listeners) == 0


def test_order_for_another_cart_does_not_stop_the_journey(engine: Engine) -> None:
    """The exit event must carry the same cart_id as the trigger."""
    # given
    shop = Shop(engine, CART)
    shop.send(track("u1", "Product Added", {"cart_id": "c1"}))
    # when
    shop.send(track("u1", "Order Completed", {"cart_id": "other"}))
    shop.advance(timedelta(days=2))
    # then
    assert [t for _, t, _ in shop.sent()] == ["cart-1", "cart-2"]


def test_same_cart_enters_once_new_cart_enters_again(engine: Engine) -> None:
    """once_per_key: a second add to the same cart is ignored, a new cart is a new entry."""
    # given
    shop = Shop(engine, CART)
    # when
    shop.send(track("u1", "Product Added", {"cart_id": "c1"}))
    shop.send(track("u1", "Product Added", {"cart_id": "c1"}))
    shop.send(track("u1", "Product Added", {"cart_id": "c2"}))
    # then
    assert shop.count(instances) == 2


def test_duplicate_message_id_runs_journeys_once(engine: Engine) -> None:
    """The same event delivered twice (same messageId) enters the journey once."""
    # given
    shop = Shop(engine, CART.replace("reentry: once_per_key", "reentry: always"))
    event = track("u1", "Product Added", {"cart_id": "c1"}, messageId="m-1")
    # when
    shop.send(event)
    shop.send(event)
    # then
    assert shop.count(instances) == 1


def test_changed_journey_pins_running_customers_to_their_version(engine: Engine) -> None:
    """Customers inside finish on the version they entered; new ones get the new one."""
    # given
    shop = Shop(engine, CART)
    shop.send(track("old", "Product Added", {"cart_id": "c1"}))
    # when
    shop.apply(CART.replace("template: cart-1", "template: cart-1-v2"))
    shop.send(track("new", "Product Added", {"cart_id": "c2"}))
    shop.advance(timedelta(hours=2))
    # then
    assert shop.count(journey_versions) == 2
    assert sorted((u, t) for u, t, _ in shop.sent()) == [("new", "cart-1-v2"), ("old", "cart-1")]


def test_applying_an_unchanged_journey_creates_no_version(engine: Engine) -> None:
    """Re-applying the same file is a no-op."""
    # given
    shop = Shop(engine, CART)
    # when
    shop.apply(CART)
    # then
    assert shop.count(journey_versions) == 1


def test_paused_journey_admits_no_one(engine: Engine) -> None:
    """A paused journey ignores its trigger."""
    # given
    shop = Shop(engine, CART)
    with transaction(engine) as conn:
        set_status(conn, shop.ws, "abandoned-cart", "paused", now=T0)
    # when
    shop.send(track("u1", "Product Added", {"cart_id": "c1"}))
    # then
    assert shop.count(instances) == 0


def test_wait_until_uses_the_customers_timezone(engine: Engine) -> None:
    """'Wait until 10:00' means 10:00 where the customer lives."""
    # given
    shop = Shop(
        engine,
        """
        journey: review
        trigger: {event: Order Delivered}
        entry: {reentry: always}
        steps:
          - wait_until: {time: "10:00"}
          - send: {channel: email, template: review}
        """,
    )
    shop.send(
        identify("vlad", timezone="Asia/Vladivostok"), identify("msk", timezone="Europe/Moscow")
    )
    # when: delivered at 09:00 UTC = 19:00 in Vladivostok, 12:00 in Moscow
    shop.send(track("vlad", "Order Delivered"), track("msk", "Order Delivered"))
    shop.advance(timedelta(days=2))
    # then: next 10:00 local is 00:00 UTC tomorrow (Vladivostok) and 07:00 UTC tomorrow (Moscow)
    sent = {u: at for u, _, at in shop.sent()}
    assert sent == {
        "vlad": datetime(2026, 3, 3, 0, 0, tzinfo=UTC),
        "msk": datetime(2026, 3, 3, 7, 0, tzinfo=UTC),
    }


def test_split_and_branch_and_trait_update(engine: Engine) -> None:
    """A split records a variant; update_profile writes a trait a later branch reads."""
    # given
    shop = Shop(
        engine,
        """
        journey: cross-sell
        trigger: {event: Order Completed}
        entry: {reentry: always}
        steps:
          - id: ab
            split:
              - {name: a, percent: 50}
              - {name: b, percent: 50}
          - id: mark
            update_profile: {set: {loyal: true}, compute: {last_order_total: "event.properties.revenue"}}
          - id: route
            branch:
              cases:
                - {when: "profile.traits.last_order_total > 1000", goto: big}
              otherwise: small
          - id: big
            send: {channel: email, template: big}
            next: exit
          - id: small
            send: {channel: email, template: small}
        """,
    )
    # when
    shop.send(track("rich", "Order Completed", {"revenue": 5000}))
    shop.send(track("modest", "Order Completed", {"revenue": 100}))
    # then
    assert sorted((u, t) for u, t, _ in shop.sent()) == [("modest", "small"), ("rich", "big")]
    with engine.connect() as conn:
        traits = conn.execute(
            select(profiles.c.traits).where(profiles.c.user_id == "rich")
        ).scalar_one()
        variants = conn.execute(select(outbox.c.variant)).scalars().all()
    assert traits["loyal"] is True and traits["last_order_total"] == 5000
    assert set(variants) <= {"a", "b"} and None not in variants


def test_goal_after_completion_still_counts_within_window(engine: Engine) -> None:
    """An order two days after the last message still converts the journey."""
    # given
    shop = Shop(
        engine,
        """
        journey: welcome
        trigger: {event: Signed Up}
        entry: {reentry: never}
        goal: {event: Order Completed, within: 7d}
        steps:
          - send: {channel: email, template: welcome}
        """,
    )
    shop.send(track("u1", "Signed Up"))
    assert shop.count(instances, instances.c.status == "completed") == 1
    # when
    shop.advance(timedelta(days=2))
    shop.send(track("u1", "Order Completed", {"revenue": 10}))
    shop.advance(timedelta(days=10))
    shop.send(track("u1", "Order Completed", {"revenue": 20}))
    # then
    assert shop.count(conversions) == 1
    assert shop.count(listeners) == 0


def test_workspaces_do_not_see_each_others_events(engine: Engine) -> None:
    """A journey of one workspace never reacts to another workspace's events."""
    # given
    a = Shop(engine, CART)
    b_ws = create_workspace(engine, "other", now=T0).id
    # when
    send_events(engine, b_ws, [track("u1", "Product Added", {"cart_id": "c1"})], now=T0)
    run_until_idle(a.worker, a.clock, until=T0 + timedelta(days=2))
    # then
    assert a.count(instances) == 0
    assert a.count(events, events.c.status == EVENT_DONE) == 1


def test_poison_event_is_recorded_and_the_rest_flows(engine: Engine) -> None:
    """An event whose processing keeps failing is parked as failed; others still run."""
    # given
    shop = Shop(engine, CART)
    send_events(
        engine,
        shop.ws,
        [
            track("bad", "Product Added", {"cart_id": "x"}),
            track("good", "Product Added", {"cart_id": "y"}),
        ],
        now=T0,
    )
    original = shop.worker.runtime.handle_event

    def explode(conn: Any, row: Any, *, now: datetime) -> Any:
        if row.user_id == "bad":
            raise ValueError("boom")
        return original(conn, row, now=now)

    shop.worker.runtime.handle_event = explode  # type: ignore[method-assign]
    # when: retries back off; let the clock run past them all
    shop.advance(timedelta(hours=3))
    # then
    with engine.connect() as conn:
        bad = conn.execute(
            select(events.c.status, events.c.error).where(events.c.user_id == "bad")
        ).one()
    assert bad.status == EVENT_FAILED and "boom" in bad.error
    assert [u for u, _, _ in shop.sent()] == ["good"]


def test_expired_lease_is_claimed_again_and_fires_once(engine: Engine) -> None:
    """A timer leased by a worker that died is taken over after the lease and fires once."""
    # given
    shop = Shop(engine, CART)
    shop.send(track("u1", "Product Added", {"cart_id": "c1"}))
    shop.clock.advance(timedelta(hours=1))
    with transaction(engine) as conn:
        conn.execute(
            update(timers).values(
                lease_owner="dead", lease_until=shop.clock.now() + timedelta(minutes=1)
            )
        )
    # when
    assert shop.worker.run_once() == 0  # still leased by the dead worker
    shop.clock.advance(timedelta(minutes=2))
    shop.worker.run_once()
    shop.worker.run_once()
    # then
    assert [t for _, t, _ in shop.sent()] == ["cart-1"]


def test_stale_worker_cannot_fire_a_timer_taken_over_by_another(engine: Engine) -> None:
    """Two workers holding the same timer (lease expired mid-work): exactly one fires it."""
    # given
    from touchline.worker.claims import claim_timers, process_timers

    shop = Shop(engine, CART)
    shop.send(track("u1", "Product Added", {"cart_id": "c1"}))
    now = T0 + timedelta(hours=1)
    lease = timedelta(seconds=30)
    first = claim_timers(engine, owner="slow", now=now, lease=lease, limit=10)
    later = now + timedelta(minutes=1)
    second = claim_timers(engine, owner="fast", now=later, lease=lease, limit=10)
    assert first == second and len(first) == 1
    # when
    fast = process_timers(engine, shop.worker.runtime, second, owner="fast", now=later)
    slow = process_timers(engine, shop.worker.runtime, first, owner="slow", now=later)
    # then
    assert (fast.processed, slow.processed) == (1, 0)
    assert len(shop.sent()) == 1


@pytest.mark.parametrize("kind", ["identify", "alias"])
def test_merged_visitor_keeps_journey_going(engine: Engine, kind: str) -> None:
    """An anonymous visitor's cart journey continues after they sign in and are merged."""
    # given
    shop = Shop(engine, CART)
    shop.send(
        {
            "type": "track",
            "anonymousId": "anon-1",
            "event": "Product Added",
            "properties": {"cart_id": "c9"},
        }
    )
    # when
    if kind == "identify":
        shop.send(
            {
                "type": "identify",
                "userId": "u9",
                "anonymousId": "anon-1",
                "traits": {"email": "A@B.ru"},
            }
        )
    else:
        shop.send({"type": "identify", "userId": "u9", "traits": {"email": "a@b.ru"}})
        shop.send({"type": "alias", "previousId": "anon-1", "userId": "u9"})
    shop.send(track("u9", "Order Completed", {"cart_id": "c9"}))
    shop.advance(timedelta(days=2))
    # then: the order (sent as u9) stopped the journey begun anonymously
    assert shop.sent() == []
    assert shop.count(conversions) == 1


def test_journey_applied_paused_admits_customers_once_resumed(engine: Engine) -> None:
    """Status lives on the journey, not the version: resuming a file-paused journey works."""
    # given
    shop = Shop(engine, CART.replace("category: selling", "category: selling\nstatus: paused"))
    shop.send(track("early", "Product Added", {"cart_id": "c0"}))
    # when
    with transaction(engine) as conn:
        set_status(conn, shop.ws, "abandoned-cart", "active", now=T0)
    shop.send(track("late", "Product Added", {"cart_id": "c1"}))
    # then
    with engine.connect() as conn:
        entered = (
            conn.execute(
                select(profiles.c.user_id).join(instances, instances.c.profile_id == profiles.c.id)
            )
            .scalars()
            .all()
        )
    assert entered == ["late"]
