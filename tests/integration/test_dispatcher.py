"""The dispatcher on SQLite and PostgreSQL: render, send, record, retry, fail with reasons."""

from __future__ import annotations

import asyncio
import random
import re
import textwrap
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, select

from touchline.errors import PermanentDeliveryError, TransientDeliveryError
from touchline.journeys.loader import LoadedJourney, load_journey_text
from touchline.measure.tokens import read_track_token
from touchline.messaging.channels.base import OutgoingMessage, SendResult
from touchline.messaging.channels.capture import CaptureChannel
from touchline.messaging.dispatcher import Dispatcher
from touchline.messaging.template_files import load_template_text
from touchline.store.db import transaction
from touchline.store.journeys import apply_journeys
from touchline.store.tables import outbox
from touchline.store.templates import apply_templates
from touchline.store.workspaces import create_workspace, link_secret
from touchline.testing import FrozenClock, identify, run_until_idle, send_events, track
from touchline.worker.loop import Worker

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)

JOURNEY = """
journey: thanks
trigger: {event: Order Completed}
entry: {reentry: always}
steps:
  - send: {channel: email, template: thanks}
"""

TEMPLATE = """
template: thanks
channel: email
subject: "{{ profile.first_name }}, спасибо за заказ {{ event.properties.order_id }}"
html: |
  <p>Сумма: {{ event.properties.revenue | money }}</p>
  <p><a href="https://shop.example/orders/{{ event.properties.order_id }}">Заказ</a></p>
defaults:
  profile.first_name: Друг
"""

BROKEN = """
template: thanks
channel: email
subject: "{{ profile.surname_nobody_has }}"
text: "x"
"""


class Flaky:
    """A channel that fails transiently ``failures`` times, then accepts."""

    name = "email"

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.sent: list[OutgoingMessage] = []

    async def send(self, message: OutgoingMessage) -> SendResult:
        if self.failures > 0:
            self.failures -= 1
            raise TransientDeliveryError("421 try again later")
        self.sent.append(message)
        return SendResult(provider_id=f"p-{len(self.sent)}")

    async def aclose(self) -> None:
        return None


class Refusing:
    name = "email"

    async def send(self, message: OutgoingMessage) -> SendResult:
        raise PermanentDeliveryError("550 no such mailbox", code="recipient_refused")

    async def aclose(self) -> None:
        return None


def setup(engine: Engine, *, template: str = TEMPLATE) -> tuple[str, FrozenClock, Worker]:
    clock = FrozenClock(T0)
    ws = create_workspace(engine, "shop", now=T0).id
    text = textwrap.dedent(JOURNEY)
    with transaction(engine) as conn:
        apply_journeys(
            conn,
            ws,
            [LoadedJourney("j.yaml", load_journey_text(text, file="j.yaml"), text)],
            now=T0,
        )
        apply_templates(
            conn, ws, [load_template_text(textwrap.dedent(template), file="t.yaml")], now=T0
        )
    return ws, clock, Worker(engine, clock=clock, owner="w")


def order(
    engine: Engine, ws: str, clock: FrozenClock, worker: Worker, *raws: dict[str, Any]
) -> None:
    send_events(engine, ws, list(raws), now=clock.now())
    run_until_idle(worker, clock)


def rows(engine: Engine) -> list[Any]:
    with engine.connect() as conn:
        return conn.execute(select(outbox).order_by(outbox.c.id)).all()


def dispatch(d: Dispatcher, now: datetime) -> int:
    return asyncio.run(d.run_once(now))


def test_message_is_rendered_sent_and_recorded(engine: Engine) -> None:
    """An order's message is rendered with the profile and event, captured, and marked sent."""
    # given
    ws, clock, worker = setup(engine)
    order(
        engine,
        ws,
        clock,
        worker,
        identify("u1", email="Anna@Example.ru", consent={"email": True}, firstName="Анна"),
        track("u1", "Order Completed", {"order_id": "A-7", "revenue": 1990}),
    )
    capture = CaptureChannel()
    d = Dispatcher(engine, clock=clock, owner="d1", channels={"*": capture})
    # when
    settled = dispatch(d, clock.now())
    # then
    assert settled == 1
    (row,) = rows(engine)
    assert (row.status, row.address, row.provider_id) == (
        "sent",
        "anna@example.ru",
        "capture:" + row.idempotency_key,
    )
    assert row.rendered["subject"] == "Анна, спасибо за заказ A-7"
    assert "1\xa0990,00\xa0₽" in row.rendered["html"]
    # the shop link is tracked: a signed click link whose destination carries the UTM tags
    (token,) = re.findall(r'href="http://127\.0\.0\.1:8000/t/c/([^"]+)"', row.rendered["html"])
    with engine.connect() as conn:
        claims = read_track_token(link_secret(conn, ws), token, kind="click")
    assert claims.url is not None and "utm_campaign=thanks" in claims.url
    assert "/t/o/" in row.rendered["html"]  # the open pixel
    assert capture.messages[0].idempotency_key == row.idempotency_key


def test_missing_email_is_skipped_with_a_reason(engine: Engine) -> None:
    """A customer without an email address is skipped, not failed, and says why."""
    # given
    ws, clock, worker = setup(engine)
    order(
        engine, ws, clock, worker, track("u1", "Order Completed", {"order_id": "1", "revenue": 1})
    )
    d = Dispatcher(engine, clock=clock, owner="d1", channels={"*": CaptureChannel()})
    # when
    dispatch(d, clock.now())
    # then
    (row,) = rows(engine)
    assert (row.status, row.reason) == ("skipped", "no_email")


def test_broken_template_fails_that_message_and_the_dispatcher_goes_on(engine: Engine) -> None:
    """A template that cannot render fails each message with the reason; the round completes."""
    # given
    ws, clock, worker = setup(engine, template=BROKEN)
    order(
        engine,
        ws,
        clock,
        worker,
        identify("u1", email="a@example.ru", consent={"email": True}),
        identify("u2", email="b@example.ru", consent={"email": True}),
        track("u1", "Order Completed", {"order_id": "1", "revenue": 100}),
        track("u2", "Order Completed", {"order_id": "2"}),
    )
    d = Dispatcher(engine, clock=clock, owner="d1", channels={"*": CaptureChannel()})
    # when
    settled = dispatch(d, clock.now())
    # then
    assert settled == 2
    assert [(r.status, r.reason) for r in rows(engine)] == [("failed", "render_failed")] * 2
    assert "surname_nobody_has" in rows(engine)[0].error


def test_transient_failure_retries_with_backoff_then_sends(engine: Engine) -> None:
    """Two 4xx-style failures push the message later; it is sent once the channel recovers."""
    # given
    ws, clock, worker = setup(engine)
    order(
        engine,
        ws,
        clock,
        worker,
        identify("u1", email="a@example.ru", consent={"email": True}),
        track("u1", "Order Completed", {"order_id": "1", "revenue": 100}),
    )
    flaky = Flaky(failures=2)
    d = Dispatcher(engine, clock=clock, owner="d1", channels={"email": flaky}, rng=random.Random(1))
    # when
    dispatch(d, clock.now())
    first_retry = rows(engine)[0].available_at
    nothing_yet = dispatch(d, clock.now())
    clock.set(first_retry)
    dispatch(d, clock.now())
    second_retry = rows(engine)[0].available_at
    clock.set(second_retry)
    dispatch(d, clock.now())
    # then
    assert nothing_yet == 0
    assert T0 + timedelta(seconds=20) <= first_retry <= T0 + timedelta(seconds=40)
    assert second_retry - first_retry >= timedelta(seconds=45)
    (row,) = rows(engine)
    assert (row.status, row.attempts, row.provider_id) == ("sent", 3, "p-1")
    assert len(flaky.sent) == 1


def test_permanent_failure_fails_at_once_with_the_providers_code(engine: Engine) -> None:
    """A 5xx-style refusal is not retried."""
    # given
    ws, clock, worker = setup(engine)
    order(
        engine,
        ws,
        clock,
        worker,
        identify("u1", email="a@example.ru", consent={"email": True}),
        track("u1", "Order Completed", {"order_id": "1", "revenue": 100}),
    )
    d = Dispatcher(engine, clock=clock, owner="d1", channels={"email": Refusing()})
    # when
    dispatch(d, clock.now())
    # then
    (row,) = rows(engine)
    assert (row.status, row.reason, row.attempts) == ("failed", "recipient_refused", 1)


def test_dispatcher_that_lost_its_lease_cannot_record(engine: Engine) -> None:
    """A stalled dispatcher whose lease was taken over records nothing; the new owner does."""
    # given
    ws, clock, worker = setup(engine)
    order(
        engine,
        ws,
        clock,
        worker,
        identify("u1", email="a@example.ru", consent={"email": True}),
        track("u1", "Order Completed", {"order_id": "1", "revenue": 100}),
    )
    slow = Dispatcher(
        engine, clock=clock, owner="slow", channels={"*": CaptureChannel()}, lease_seconds=5
    )
    fast = Dispatcher(
        engine, clock=clock, owner="fast", channels={"*": CaptureChannel()}, lease_seconds=5
    )
    ids = slow.claim(T0)
    prepared = slow.prepare(ids, T0)
    # when: the lease runs out and another dispatcher takes the row and sends it
    dispatch(fast, T0 + timedelta(seconds=6))
    slow.record([(prepared[0], SendResult(provider_id="stale"), None)], T0 + timedelta(seconds=7))
    # then
    (row,) = rows(engine)
    assert (row.status, row.provider_id) == ("sent", "capture:" + row.idempotency_key)
    assert fast.totals.sent == 1
