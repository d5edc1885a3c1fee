"""A template edited into a broken one while journeys run: its messages fail with the reason,
everything else keeps flowing, and fixing it lets the next messages through."""

from __future__ import annotations

import asyncio
import textwrap
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, select

from touchline.journeys.loader import LoadedJourney, load_journey_text
from touchline.messaging.channels.capture import CaptureChannel
from touchline.messaging.dispatcher import Dispatcher
from touchline.messaging.template_files import load_template_text
from touchline.store.db import transaction
from touchline.store.journeys import apply_journeys
from touchline.store.tables import EVENT_DONE, events, outbox, profiles
from touchline.store.templates import apply_templates
from touchline.store.workspaces import create_workspace
from touchline.testing import FrozenClock, identify, run_until_idle, send_events, track
from touchline.worker.loop import Worker

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
JOURNEYS = {
    "thanks.yaml": """
        journey: thanks
        category: transactional
        trigger: {event: Order Completed}
        entry: {reentry: always}
        steps:
          - send: {channel: email, template: thanks}
    """,
    "welcome.yaml": """
        journey: welcome
        category: transactional
        trigger: {event: Signed Up}
        steps:
          - send: {channel: email, template: welcome}
    """,
}
GOOD = """
    template: thanks
    channel: email
    subject: "Заказ {{ event.properties.order_id }} принят"
    text: "Спасибо!"
"""
# The edit: a greeting by first name with no default, so customers without one cannot render.
BROKEN = """
    template: thanks
    channel: email
    subject: "{{ profile.first_name }}, заказ {{ event.properties.order_id }} принят"
    text: "Спасибо!"
"""
FIXED = """
    template: thanks
    channel: email
    subject: "{{ profile.first_name }}, заказ {{ event.properties.order_id }} принят"
    text: "Спасибо!"
    defaults:
      profile.first_name: Друг
"""
WELCOME = """
    template: welcome
    channel: email
    subject: "Добро пожаловать"
    text: "Рады вам."
"""


def _templates(engine: Engine, ws: str, *texts: str, now: datetime) -> None:
    with transaction(engine) as conn:
        apply_templates(
            conn,
            ws,
            [load_template_text(textwrap.dedent(t), file="t.yaml") for t in texts],
            now=now,
        )


def _messages(engine: Engine) -> list[Any]:
    with engine.connect() as conn:
        return conn.execute(select(outbox).order_by(outbox.c.id)).all()


def test_a_template_broken_mid_run_fails_its_messages_with_reasons_and_the_rest_flows(
    engine: Engine,
) -> None:
    """Three receipts go out; the template is edited to need a first name; of the next four
    receipts the two customers without one fail with `render_failed` naming the field, the two
    with one are sent, and welcome mails still go out; after the fix, receipts flow again."""
    # given: two journeys running, each with its template
    clock = FrozenClock(T0)
    ws = create_workspace(engine, "shop", now=T0).id
    with transaction(engine) as conn:
        loaded = []
        for name, text in JOURNEYS.items():
            body = textwrap.dedent(text)
            loaded.append(LoadedJourney(name, load_journey_text(body, file=name), body))
        apply_journeys(conn, ws, loaded, now=T0)
    _templates(engine, ws, GOOD, WELCOME, now=T0)
    worker = Worker(engine, clock=clock, owner="w")
    capture = CaptureChannel()
    dispatcher = Dispatcher(engine, clock=clock, owner="d", channels={"*": capture})

    def run(*raws: dict[str, Any]) -> None:
        send_events(engine, ws, list(raws), now=clock.now())
        run_until_idle(worker, clock)
        while asyncio.run(dispatcher.run_once(clock.now())):
            pass
        clock.advance(timedelta(minutes=1))

    people = [identify(f"u{i}", email=f"u{i}@example.ru") for i in range(1, 8)]
    named = [identify(f"u{i}", firstName=f"Имя{i}") for i in (4, 6)]
    run(*people, *named, *[track(f"u{i}", "Order Completed", {"order_id": i}) for i in (1, 2, 3)])

    # when: the template is broken for customers without a first name, mid-run
    _templates(engine, ws, BROKEN, now=clock.now())
    run(
        *[track(f"u{i}", "Order Completed", {"order_id": i}) for i in (4, 5, 6, 7)],
        track("u5", "Signed Up"),
    )
    # ...and fixed again
    _templates(engine, ws, FIXED, now=clock.now())
    run(track("u5", "Order Completed", {"order_id": 8}))

    # then: before the edit everything was sent
    statuses = [(r.template, r.status, r.reason) for r in _messages(engine)]
    assert statuses[:3] == [("thanks", "sent", "delivered")] * 3
    # the broken render failed exactly the two customers without a first name, saying why
    after_edit = statuses[3:8]
    failed = [r for r in _messages(engine)[3:8] if r.status == "failed"]
    assert (
        sorted(s for s in after_edit if s[1] == "failed")
        == [("thanks", "failed", "render_failed")] * 2
    )
    assert all("first_name" in (r.error or "") for r in failed)
    assert {r.profile_id for r in failed} == _profiles(engine, ws, "u5", "u7")
    # the rest flowed: the named customers' receipts with the new subject, and the welcome
    subjects = sorted(m.subject for m in capture.messages if m.subject and "Имя" in m.subject)
    assert subjects == ["Имя4, заказ 4 принят", "Имя6, заказ 6 принят"]
    assert ("welcome", "sent", "delivered") in after_edit
    # after the fix the next receipt is sent; the failed ones stay failed, each with its event
    assert statuses[8] == ("thanks", "sent", "delivered")
    assert capture.messages[-1].subject == "Друг, заказ 8 принят"
    assert len([s for s in statuses if s[1] == "failed"]) == 2
    assert dispatcher.totals.failed == 2 and dispatcher.totals.sent == 7
    with engine.connect() as conn:
        names = conn.execute(select(events.c.name, events.c.status)).all()
    assert sum(1 for n, _ in names if n == "Message Failed") == 2
    assert all(status == EVENT_DONE for _, status in names)


def _profiles(engine: Engine, ws: str, *user_ids: str) -> set[int]:
    with engine.connect() as conn:
        return set(
            conn.execute(
                select(profiles.c.id).where(
                    profiles.c.workspace_id == ws, profiles.c.user_id.in_(user_ids)
                )
            ).scalars()
        )
