"""The journey step ``unsubscribe``: a withdrawal in the consent ledger, live and simulated.

The case it is made for: a reactivation series the customer never answered
ends by taking them off the marketing list, so the list stays clean.
"""

from __future__ import annotations

import textwrap
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine, select

from touchline.journeys.loader import LoadedJourney, load_journey_text
from touchline.simulation import Simulation
from touchline.store.db import transaction
from touchline.store.journeys import apply_journeys
from touchline.store.tables import consents, profiles, step_log, suppressions
from touchline.store.workspaces import create_workspace
from touchline.testing import FrozenClock, identify, run_until_idle, send_events, track
from touchline.worker.loop import Worker

T0 = datetime(2026, 4, 6, 9, 0, tzinfo=UTC)

REACTIVATION = """
journey: reactivation
category: selling
trigger: {event: Reactivation Due}
entry: {reentry: always}
steps:
  - id: nudge
    send: {channel: email, template: we-miss-you}
  - id: answer
    wait_for: {event: Order Completed, timeout: 7d, on_event: exit}
  - id: clean
    unsubscribe: {channel: email, reason: inactive}
  - id: last-word
    send: {channel: email, template: goodbye}
"""


def journey(text: str) -> LoadedJourney:
    text = textwrap.dedent(text)
    return LoadedJourney(path="j.yaml", spec=load_journey_text(text, file="j.yaml"), source=text)


def shop(engine: Engine, text: str = REACTIVATION) -> tuple[str, Worker, FrozenClock]:
    clock = FrozenClock(T0)
    ws = create_workspace(engine, "shop", now=T0).id
    with transaction(engine) as conn:
        apply_journeys(conn, ws, [journey(text)], now=T0)
    worker = Worker(engine, clock=clock, owner="w1")
    send_events(
        engine,
        ws,
        [
            identify("silent", email="silent@example.com", consent={"email": True}),
            identify("buyer", email="buyer@example.com", consent={"email": True}),
            track("silent", "Reactivation Due"),
            track("buyer", "Reactivation Due"),
        ],
        now=T0,
    )
    run_until_idle(worker, clock)
    return ws, worker, clock


def test_silent_customer_is_unsubscribed_after_the_series(engine: Engine) -> None:
    """No answer in 7 days: email consent withdrawn with the journey as its source, and the
    address suppressed; the customer who ordered keeps their consent."""
    # given
    ws, worker, clock = shop(engine)
    send_events(engine, ws, [track("buyer", "Order Completed", {"order_id": "o1"})], now=T0)
    # when
    run_until_idle(worker, clock, until=T0 + timedelta(days=8))
    # then
    with engine.connect() as conn:
        withdrawals = conn.execute(
            select(
                consents.c.profile_id, consents.c.source, consents.c.at, consents.c.address
            ).where(consents.c.granted.is_(False))
        ).all()
        suppressed = conn.execute(select(suppressions.c.address, suppressions.c.reason)).all()
        logged = (
            conn.execute(select(step_log.c.detail).where(step_log.c.action == "unsubscribed"))
            .scalars()
            .all()
        )
    assert [(w.source, w.at, w.address) for w in withdrawals] == [
        ("journey reactivation, step clean: inactive", T0 + timedelta(days=7), "silent@example.com")
    ]
    assert suppressed == [("silent@example.com", "unsubscribe")]
    assert logged == ["email: inactive"]
    assert worker.totals.stats.unsubscribed == 1


def test_topic_unsubscribe_keeps_the_channel_and_suppresses_nothing(engine: Engine) -> None:
    """`topic: selling` withdraws that topic only; the address is not suppressed."""
    text = REACTIVATION.replace(
        "unsubscribe: {channel: email, reason: inactive}",
        "unsubscribe: {channel: email, reason: inactive, topic: selling}",
    )
    ws, worker, clock = shop(engine, text)

    run_until_idle(worker, clock, until=T0 + timedelta(days=8))

    with engine.connect() as conn:
        rows = (
            conn.execute(select(consents.c.topic).where(consents.c.granted.is_(False)))
            .scalars()
            .all()
        )
        assert conn.execute(select(suppressions)).first() is None
    assert sorted(rows) == ["selling", "selling"]


def test_a_second_pass_writes_no_second_withdrawal(engine: Engine) -> None:
    """Unsubscribing someone already unsubscribed changes nothing in the ledger."""
    ws, worker, clock = shop(engine)
    run_until_idle(worker, clock, until=T0 + timedelta(days=8))
    send_events(engine, ws, [track("silent", "Reactivation Due")], now=clock.now())

    run_until_idle(worker, clock, until=clock.now() + timedelta(days=8))

    with engine.connect() as conn:
        withdrawn = (
            conn.execute(
                select(profiles.c.user_id)
                .join(consents, consents.c.profile_id == profiles.c.id)
                .where(consents.c.granted.is_(False))
            )
            .scalars()
            .all()
        )
    assert sorted(withdrawn) == ["buyer", "silent"]  # silent went through twice, written once


def test_simulation_applies_the_unsubscribe_before_judging_later_messages() -> None:
    """In `touchline simulate`, the message after the unsubscribe step is skipped."""
    with Simulation([journey(REACTIVATION)], start=T0) as sim:
        sim.add(identify("silent", email="silent@example.com", consent={"email": True}), at=T0)
        sim.add(track("silent", "Reactivation Due"), at=T0 + timedelta(minutes=1))
        messages = list(sim.run(until=T0 + timedelta(days=9)))

    assert [(m.template, m.outcome, m.reason) for m in messages] == [
        ("we-miss-you", "sent", "ok"),
        ("goodbye", "skipped", "suppressed:unsubscribe"),
    ]
