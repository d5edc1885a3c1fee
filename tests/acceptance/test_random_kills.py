"""A worker killed with SIGKILL at random moments, round after round, while it processes events,
fires timers and mails at once: nothing is lost, nothing is applied twice, and the only duplicate
mails are messages resent from the send window, no more than one per kill.

This is the long variant of the fixed-point kill tests (``test_worker_kill``,
``test_dispatcher_kill``): it runs with ``--run-slow``. ``TOUCHLINE_KILL_ROUNDS`` sets the number
of kills (default 30) and ``TOUCHLINE_KILL_SEED`` the seed of the kill moments; the seed is in
every failure message, so a failing run can be repeated.
"""

from __future__ import annotations

import os
import random
import signal
import textwrap
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from mail_sink import Sink
from sqlalchemy import Engine, func, select
from test_dispatcher_kill import _count, _start, _wait_for

from touchline.journeys.loader import LoadedJourney, load_journey_text
from touchline.messaging.template_files import load_template_text
from touchline.store.db import transaction
from touchline.store.journeys import apply_journeys
from touchline.store.tables import (
    EVENT_DONE,
    daily_stats,
    events,
    instances,
    journeys,
    outbox,
    step_log,
    timers,
)
from touchline.store.templates import apply_templates
from touchline.store.workspaces import create_workspace
from touchline.testing import FrozenClock, identify, run_until_idle, send_events, track
from touchline.worker.loop import Worker

CUSTOMERS = 2400
ORDERS_EVERY = 3  # every third customer orders: a receipt, and their cart reminder is cancelled
ROUNDS = int(os.environ.get("TOUCHLINE_KILL_ROUNDS", "30"))
SEED = int(os.environ.get("TOUCHLINE_KILL_SEED") or random.randrange(1 << 32))
JOURNEYS = {
    "cart.yaml": """
        journey: cart
        category: transactional
        trigger: {event: Product Added}
        exit_on:
          - event: Order Completed
            match: cart_id
        steps:
          - id: wait
            wait: 1h
          - id: remind
            send: {channel: email, template: reminder}
    """,
    "receipt.yaml": """
        journey: receipt
        category: transactional
        trigger: {event: Order Completed}
        entry: {reentry: always}
        steps:
          - id: receipt
            send: {channel: email, template: receipt}
    """,
}
TEMPLATES = (
    """
    template: reminder
    channel: email
    subject: "Ваша корзина {{ event.properties.cart_id }} ждёт"
    text: "Вы оставили товары в корзине."
    """,
    """
    template: receipt
    channel: email
    subject: "Заказ {{ event.properties.order_id }} принят"
    text: "Спасибо за заказ {{ event.properties.order_id }}."
    """,
)


def _prepare(engine: Engine) -> str:
    """Every customer waits on a cart reminder already due; a third have an order not yet seen."""
    start = datetime.now(UTC) - timedelta(hours=2)
    clock = FrozenClock(start)
    ws = create_workspace(engine, "kills", now=start).id
    with transaction(engine) as conn:
        loaded = []
        for name, text in JOURNEYS.items():
            body = textwrap.dedent(text)
            loaded.append(LoadedJourney(name, load_journey_text(body, file=name), body))
        apply_journeys(conn, ws, loaded, now=start)
        apply_templates(
            conn,
            ws,
            [load_template_text(textwrap.dedent(t), file="t.yaml") for t in TEMPLATES],
            now=start,
        )
    for chunk in range(0, CUSTOMERS, 500):
        people = range(chunk, min(chunk + 500, CUSTOMERS))
        send_events(
            engine, ws, [identify(f"u{i}", email=f"u{i}@example.ru") for i in people], now=start
        )
        send_events(
            engine,
            ws,
            [track(f"u{i}", "Product Added", {"cart_id": f"c{i}"}) for i in people],
            now=start,
        )
    run_until_idle(Worker(engine, clock=clock, owner="setup", batch=500), clock)
    orders = [
        track(f"u{i}", "Order Completed", {"cart_id": f"c{i}", "order_id": f"o{i}"})
        for i in range(0, CUSTOMERS, ORDERS_EVERY)
    ]
    send_events(engine, ws, orders, now=start + timedelta(minutes=90))
    return ws


def _journey_id(engine: Engine, key: str) -> int:
    return _count(engine, select(journeys.c.id).where(journeys.c.key == key))


@pytest.mark.slow
def test_a_worker_killed_at_random_moments_loses_nothing_and_repeats_nothing(
    engine: Engine, database_url: str, sink: tuple[Sink, int], tmp_path: Path
) -> None:
    """Up to ROUNDS SIGKILLs at random moments of a mixed run (orders processed, cart reminders
    fired or cancelled, receipts and reminders mailed): every state change lands exactly once."""
    # given: 2,400 due cart reminders and 800 unprocessed orders that cancel some of them
    handler, port = sink
    rng = random.Random(SEED)
    _prepare(engine)
    cart, receipt = _journey_id(engine, "cart"), _journey_id(engine, "receipt")
    orders = len(range(0, CUSTOMERS, ORDERS_EVERY))
    pending_events = select(func.count()).where(events.c.status != EVENT_DONE)
    unsent = select(func.count()).where(outbox.c.status.in_(("pending", "sending")))
    left_timers = select(func.count()).select_from(timers)
    done_events = select(func.count()).where(events.c.status == EVENT_DONE)
    made = select(func.count()).select_from(outbox)

    def progress() -> int:
        return handler.received() + _count(engine, done_events) + _count(engine, made)

    def moved_past(before: int) -> Callable[[], bool]:
        return lambda: progress() > before

    def finished() -> bool:
        return not (
            _count(engine, pending_events) or _count(engine, left_timers) or _count(engine, unsent)
        )

    log = tmp_path / "worker.log"

    # when: a worker is started and SIGKILLed at a random moment once it is at work, round after
    # round, until ROUNDS kills or the work is done; then one more worker finishes the work
    kills = 0
    for _ in range(ROUNDS):
        if finished():
            break
        before = progress()
        proc = _start(database_url, port, log)
        try:
            _wait_for(moved_past(before), timeout=60, what=f"progress (seed {SEED})", log=log)
            time.sleep(rng.uniform(0.0, 0.6))
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
        kills += 1
    proc = _start(database_url, port, log)
    try:
        _wait_for(finished, timeout=300, what=f"the work to finish (seed {SEED})", log=log)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)

    # then: every event processed once and every timer gone
    said = f"seed {SEED}, {kills} kills"
    assert kills >= min(ROUNDS, 5), f"{said}: the work finished before the kills"
    assert _count(engine, pending_events) == 0, said
    assert _count(engine, left_timers) == 0, said
    # each cart ended once: reminded (completed) or cancelled by its order (exited), never both
    by_status = dict(
        Counter(
            status
            for (status,) in engine.connect().execute(
                select(instances.c.status).where(instances.c.journey_id == cart)
            )
        )
    )
    assert sum(by_status.values()) == CUSTOMERS, (said, by_status)
    assert set(by_status) <= {"completed", "exited"}, (said, by_status)
    assert by_status.get("exited", 0) <= orders, (said, by_status)
    reminders = select(func.count()).where(outbox.c.journey_id == cart)
    assert _count(engine, reminders) == by_status["completed"], said
    once = select(func.count(func.distinct(outbox.c.instance_id))).where(
        outbox.c.journey_id == cart
    )
    assert _count(engine, once) == by_status["completed"], f"{said}: a reminder made twice"
    fired = (
        select(step_log.c.instance_id, func.count().label("n"))
        .where(step_log.c.step_id == "remind", step_log.c.action == "entered")
        .group_by(step_log.c.instance_id)
        .subquery()
    )
    assert _count(engine, select(func.max(fired.c.n))) == 1, f"{said}: a step applied twice"
    # one receipt per order
    receipts = select(func.count(func.distinct(outbox.c.instance_id))).where(
        outbox.c.journey_id == receipt
    )
    assert _count(engine, receipts) == orders, said
    assert _count(engine, select(func.count()).where(outbox.c.journey_id == receipt)) == orders
    # the rollups counted each entry and each send once
    for journey in (cart, receipt):
        entered = select(func.sum(daily_stats.c.entered)).where(daily_stats.c.journey_id == journey)
        started = select(func.count()).where(instances.c.journey_id == journey)
        assert _count(engine, entered) == _count(engine, started), said
        counted = select(func.sum(daily_stats.c.sent)).where(daily_stats.c.journey_id == journey)
        sent = select(func.count()).where(outbox.c.journey_id == journey, outbox.c.status == "sent")
        assert _count(engine, counted) == _count(engine, sent), said
    failed = select(func.count()).where(outbox.c.status != "sent")
    assert _count(engine, failed) == 0, f"{said}: a message was not sent"
    # every message arrived; a duplicate is a resend of one message, at most one per kill
    mail = handler.snapshot()
    by_id = Counter(m["Message-ID"] for m in mail)
    recipients: dict[str, set[str]] = {}
    for m in mail:
        recipients.setdefault(m["Message-ID"], set()).add(str(m["To"]))
    duplicates = sum(n - 1 for n in by_id.values())
    assert len(by_id) == _count(engine, made), f"{said}: a message never arrived"
    assert all(len(to) == 1 for to in recipients.values()), f"{said}: a Message-ID reused"
    assert duplicates <= kills, f"{said}: {duplicates} duplicates"
    print(f"\n{said}: {len(by_id)} messages, {duplicates} duplicates, carts {by_status}")
