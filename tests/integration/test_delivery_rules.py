"""Delivery rules applied by the dispatcher at send time, on SQLite and PostgreSQL.

Consent from identify calls, frequency caps (skip and defer), quiet hours in the
customer's zone across a daylight-saving change, suppression after a hard
bounce, and caps holding when two dispatchers race for one customer.
"""

from __future__ import annotations

import asyncio
import textwrap
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, func, select, update

from touchline.errors import PermanentDeliveryError
from touchline.journeys.loader import LoadedJourney, load_journey_text
from touchline.messaging.channels.base import OutgoingMessage, SendResult
from touchline.messaging.channels.capture import CaptureChannel
from touchline.messaging.dispatcher import Dispatcher
from touchline.messaging.template_files import load_template_text
from touchline.store.consent import ledger
from touchline.store.db import transaction
from touchline.store.journeys import apply_journeys
from touchline.store.tables import daily_stats, outbox, profiles, suppressions, workspaces
from touchline.store.templates import apply_templates
from touchline.store.workspaces import create_workspace
from touchline.testing import FrozenClock, identify, run_until_idle, send_events, track
from touchline.worker.loop import Worker

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


def journey(key: str, *, channel: str = "email", category: str = "selling", extra: str = "") -> str:
    return textwrap.dedent(
        f"""
        journey: {key}
        category: {category}
        trigger: {{event: {key}}}
        entry: {{reentry: always}}
        {extra}
        steps:
          - send: {{channel: {channel}, template: {channel}-note}}
        """
    )


def journey_defer(key: str) -> str:
    return textwrap.dedent(
        f"""
        journey: {key}
        category: selling
        trigger: {{event: {key}}}
        entry: {{reentry: always}}
        steps:
          - send: {{channel: email, template: email-note, when_capped: defer}}
        """
    )


TEMPLATES = [
    "template: email-note\nchannel: email\nsubject: Привет\ntext: Новости магазина\n",
    "template: sms-note\nchannel: sms\ntext: Скидка 10% до воскресенья\n",
]


class Shop:
    def __init__(self, engine: Engine, sources: dict[str, str], *, settings: Any = None) -> None:
        self.engine = engine
        self.clock = FrozenClock(T0)
        self.ws = create_workspace(engine, "shop", now=T0, timezone="Europe/Moscow").id
        with transaction(engine) as conn:
            loaded = [
                LoadedJourney(f"{k}.yaml", load_journey_text(v, file=f"{k}.yaml"), v)
                for k, v in sources.items()
            ]
            apply_journeys(conn, self.ws, loaded, now=T0)
            apply_templates(
                conn, self.ws, [load_template_text(t, file="t.yaml") for t in TEMPLATES], now=T0
            )
            if settings is not None:
                conn.execute(
                    update(workspaces).where(workspaces.c.id == self.ws).values(settings=settings)
                )
        self.worker = Worker(engine, clock=self.clock, owner="w")
        self.capture = CaptureChannel()

    def events(self, *raws: dict[str, Any]) -> None:
        stamped = [{**r, "timestamp": self.clock.now().isoformat()} for r in raws]
        send_events(self.engine, self.ws, stamped, now=self.clock.now())
        run_until_idle(self.worker, self.clock)

    def dispatcher(self, owner: str = "d", channel: Any = None) -> Dispatcher:
        return Dispatcher(
            self.engine, clock=self.clock, owner=owner, channels={"*": channel or self.capture}
        )

    def dispatch(self, d: Dispatcher | None = None) -> Dispatcher:
        d = d or self.dispatcher()
        asyncio.run(d.run_once(self.clock.now()))
        return d

    def rows(self) -> list[Any]:
        with self.engine.connect() as conn:
            return conn.execute(select(outbox).order_by(outbox.c.id)).all()


def test_marketing_needs_consent_and_transactional_does_not(engine: Engine) -> None:
    """Without a grant a selling email is skipped (no_consent); an order notice still goes."""
    # given
    shop = Shop(
        engine, {"promo": journey("promo"), "notice": journey("notice", category="transactional")}
    )
    shop.events(
        identify("u1", email="a@example.ru"),
        track("u1", "promo"),
        track("u1", "notice"),
    )
    # when
    shop.dispatch()
    # then
    assert [(r.status, r.reason) for r in shop.rows()] == [
        ("skipped", "no_consent"),
        ("sent", "delivered"),
    ]


def test_consent_from_identify_is_ledgered_with_provenance_and_lets_marketing_through(
    engine: Engine,
) -> None:
    """An identify with consent writes one ledger row with page URL, IP and agent; sends go."""
    # given
    shop = Shop(engine, {"promo": journey("promo")})
    grant = identify("u1", email="a@example.ru", consent={"email": {"granted": True, "text": "v3"}})
    grant["context"] = {
        "ip": "203.0.113.7",
        "userAgent": "Firefox",
        "page": {"url": "https://shop.example/signup"},
    }
    # when: the same grant twice, then a message
    shop.events(grant)
    shop.events(grant)
    shop.events(track("u1", "promo"))
    shop.dispatch()
    # then
    with engine.connect() as conn:
        pid = conn.execute(select(profiles.c.id).where(profiles.c.user_id == "u1")).scalar_one()
        rows = ledger(conn, shop.ws, pid)
    assert len(rows) == 1
    assert rows[0]["granted"] and rows[0]["confirmed"]
    assert (rows[0]["source"], rows[0]["ip"], rows[0]["user_agent"], rows[0]["text_version"]) == (
        "identify from https://shop.example/signup",
        "203.0.113.7",
        "Firefox",
        "v3",
    )
    assert [r.status for r in shop.rows()] == ["sent"]


def test_double_opt_in_holds_marketing_until_confirmed(engine: Engine) -> None:
    """With double opt-in for email, an unconfirmed grant does not count."""
    # given
    shop = Shop(engine, {"promo": journey("promo")}, settings={"double_opt_in": ["email"]})
    shop.events(identify("u1", email="a@example.ru", consent={"email": True}), track("u1", "promo"))
    # when
    shop.dispatch()
    # then
    assert [(r.status, r.reason) for r in shop.rows()] == [("skipped", "consent_unconfirmed")]


def test_a_withdrawal_by_identify_stops_marketing(engine: Engine) -> None:
    """consent: false after a grant writes a withdrawal, and the next promo is skipped."""
    shop = Shop(engine, {"promo": journey("promo")})
    shop.events(identify("u1", email="a@example.ru", consent={"email": True}))
    shop.clock.advance(timedelta(minutes=1))
    shop.events(identify("u1", consent={"email": False}), track("u1", "promo"))
    shop.dispatch()
    assert [(r.status, r.reason) for r in shop.rows()] == [("skipped", "consent_withdrawn")]


def test_daily_email_cap_skips_the_second_message(engine: Engine) -> None:
    """Default caps allow one marketing email a day: the second of two journeys is skipped."""
    # given
    shop = Shop(engine, {"a": journey("a"), "b": journey("b", category="engaging")})
    shop.events(identify("u1", email="a@example.ru", consent={"email": True}), track("u1", "a"))
    shop.dispatch()
    shop.clock.advance(timedelta(hours=2))
    # when
    shop.events(track("u1", "b"))
    d = shop.dispatch()
    # then
    assert [(r.status, r.reason) for r in shop.rows()] == [
        ("sent", "delivered"),
        ("skipped", "cap:marketing email 1/1d"),
    ]
    assert d.totals.by_reason["cap:marketing email 1/1d"] == 1


def test_a_capped_message_may_wait_for_the_window_instead(engine: Engine) -> None:
    """when_capped: defer moves the message to when the cap frees up, without using an attempt."""
    # given
    shop = Shop(engine, {"a": journey("a"), "b": journey_defer("b")})
    shop.events(identify("u1", email="a@example.ru", consent={"email": True}), track("u1", "a"))
    shop.dispatch()
    first_sent = shop.rows()[0].sent_at
    shop.clock.advance(timedelta(hours=2))
    shop.events(track("u1", "b"))
    # when
    shop.dispatch()
    # then
    deferred = shop.rows()[1]
    assert (deferred.status, deferred.deferred_reason, deferred.attempts) == (
        "pending",
        "cap:marketing email 1/1d",
        0,
    )
    assert deferred.available_at == first_sent + timedelta(days=1)
    # and when the day has passed it goes
    shop.clock.set(deferred.available_at)
    shop.dispatch()
    assert shop.rows()[1].status == "sent"


def test_a_cap_exempt_journey_is_not_capped(engine: Engine) -> None:
    """cap_exempt: true lets a journey's marketing mail past the daily cap (consent still applies)."""
    shop = Shop(engine, {"a": journey("a"), "b": journey("b", extra="cap_exempt: true")})
    shop.events(identify("u1", email="a@example.ru", consent={"email": True}), track("u1", "a"))
    shop.dispatch()
    shop.events(track("u1", "b"))
    shop.dispatch()
    assert [r.status for r in shop.rows()] == ["sent", "sent"]


def test_quiet_hours_defer_marketing_sms_to_local_morning_across_dst(engine: Engine) -> None:
    """A promo SMS at 22:00 in Berlin on the night clocks go forward waits until 09:00 CEST."""
    # given: 2026-03-28 21:00 UTC is 22:00 CET; that night Berlin moves to CEST (UTC+2)
    shop = Shop(engine, {"sms": journey("sms", channel="sms")})
    shop.clock.set(datetime(2026, 3, 28, 21, 0, tzinfo=UTC))
    shop.events(
        identify("u1", phone="+79161234567", timezone="Europe/Berlin", consent={"sms": True}),
        track("u1", "sms"),
    )
    # when
    d = shop.dispatch()
    # then: 09:00 CEST on the 29th is 07:00 UTC, not 08:00
    row = shop.rows()[0]
    assert (row.status, row.deferred_reason) == ("pending", "quiet_hours")
    assert row.available_at == datetime(2026, 3, 29, 7, 0, tzinfo=UTC)
    assert d.totals.deferred == 1
    shop.clock.set(row.available_at)
    shop.dispatch()
    assert shop.rows()[0].status == "sent"


def test_quiet_hours_follow_workspace_settings(engine: Engine) -> None:
    """A workspace that sets its own quiet hours (none for SMS) sends at night at once."""
    shop = Shop(engine, {"sms": journey("sms", channel="sms")}, settings={"quiet_hours": []})
    shop.clock.set(datetime(2026, 3, 28, 21, 0, tzinfo=UTC))
    shop.events(
        identify("u1", phone="+79161234567", timezone="Europe/Berlin", consent={"sms": True}),
        track("u1", "sms"),
    )
    shop.dispatch()
    assert shop.rows()[0].status == "sent"


class Bouncing:
    """An email channel whose server refuses the mailbox (a hard bounce)."""

    name = "email"

    async def send(self, message: OutgoingMessage) -> SendResult:
        error = PermanentDeliveryError("550 5.1.1 no such user", code="smtp_recipient_refused")
        error.hard_bounce = True  # type: ignore[attr-defined]
        raise error

    async def aclose(self) -> None:
        return None


def test_a_hard_bounce_suppresses_the_address_for_every_later_message(engine: Engine) -> None:
    """After a 550, the address is suppressed: even a transactional message is skipped."""
    # given
    shop = Shop(
        engine, {"promo": journey("promo"), "notice": journey("notice", category="transactional")}
    )
    shop.events(
        identify("u1", email="Gone@Example.ru", consent={"email": True}), track("u1", "promo")
    )
    shop.dispatch(shop.dispatcher(channel=Bouncing()))
    # when
    shop.clock.advance(timedelta(days=2))
    shop.events(track("u1", "notice"))
    shop.dispatch()
    # then
    assert [(r.status, r.reason) for r in shop.rows()] == [
        ("failed", "smtp_recipient_refused"),
        ("skipped", "suppressed:hard_bounce"),
    ]
    with engine.connect() as conn:
        kept = conn.execute(select(suppressions.c.address, suppressions.c.reason)).all()
    assert [tuple(k) for k in kept] == [("gone@example.ru", "hard_bounce")]


def test_two_dispatchers_racing_for_one_customer_respect_the_cap(engine: Engine) -> None:
    """Each of two dispatchers takes one of a customer's two promos at once: only one is sent."""
    # given
    shop = Shop(engine, {"a": journey("a"), "b": journey("b")})
    shop.events(
        identify("u1", email="a@example.ru", consent={"email": True}),
        track("u1", "a"),
        track("u1", "b"),
    )
    dispatchers = [
        Dispatcher(engine, clock=shop.clock, owner=f"d{i}", channels={"*": shop.capture}, batch=1)
        for i in range(2)
    ]
    barrier = threading.Barrier(2)

    def run(d: Dispatcher) -> None:
        barrier.wait()
        asyncio.run(d.run_once(shop.clock.now()))

    # when
    threads = [threading.Thread(target=run, args=(d,)) for d in dispatchers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # then
    statuses = sorted(r.status for r in shop.rows())
    assert statuses == ["sent", "skipped"]
    assert len(shop.capture.messages) == 1


def test_one_click_unsubscribe_from_a_sent_email_stops_the_next_one(engine: Engine) -> None:
    """The List-Unsubscribe URL of a sent promo, POSTed as RFC 8058 says, stops later promos."""
    from fastapi.testclient import TestClient

    from touchline.config import Settings
    from touchline.messaging.channels.smtp import SmtpSettings, compose_email
    from touchline.web.app import create_app

    # given: a promo went out and its mail carries the one-click headers
    shop = Shop(engine, {"promo": journey("promo", extra="cap_exempt: true")})
    shop.events(identify("u1", email="a@example.ru", consent={"email": True}), track("u1", "promo"))
    shop.dispatch()
    sent = shop.capture.messages[0]
    mail = compose_email(
        sent, settings=SmtpSettings(host="x", port=25, from_address="shop@example.ru"), now=T0
    )
    url = sent.metadata["unsubscribe_url"]
    assert mail["List-Unsubscribe"] == f"<{url}>"
    assert mail["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    # when: the mailbox provider posts to it (twice: it is idempotent)
    app = create_app(Settings(), engine=engine, clock=shop.clock)
    with TestClient(app) as client:
        path = "/" + url.split("/", 3)[3]
        for _ in range(2):
            answer = client.post(
                path,
                content="List-Unsubscribe=One-Click",
                headers={"content-type": "application/x-www-form-urlencoded"},
            )
            assert answer.status_code == 200
    shop.clock.advance(timedelta(minutes=5))
    shop.events(track("u1", "promo"))
    shop.dispatch()
    # then
    assert [(r.status, r.reason) for r in shop.rows()] == [
        ("sent", "delivered"),
        ("skipped", "suppressed:unsubscribe"),
    ]


CONFIRM_JOURNEY = """
journey: confirm
category: transactional
trigger: {event: Consent Confirmation Requested}
entry: {reentry: always}
steps:
  - send: {channel: email, template: confirm}
"""


def test_double_opt_in_sends_a_confirmation_link_that_unlocks_marketing(engine: Engine) -> None:
    """A pending grant triggers a confirmation mail; POSTing its link confirms; promos then go."""
    from fastapi.testclient import TestClient

    from touchline.config import Settings
    from touchline.web.app import create_app

    # given
    shop = Shop(
        engine,
        {"promo": journey("promo"), "confirm": textwrap.dedent(CONFIRM_JOURNEY)},
        settings={"double_opt_in": ["email"]},
    )
    with transaction(engine) as conn:
        apply_templates(
            conn,
            shop.ws,
            [
                load_template_text(
                    "template: confirm\nchannel: email\nsubject: Подтвердите подписку\n"
                    "text: 'Нажмите: {{ links.confirm_url }}'\n",
                    file="confirm.yaml",
                )
            ],
            now=T0,
        )
    shop.events(identify("u1", email="a@example.ru", consent={"email": True}))
    run_until_idle(shop.worker, shop.clock)  # the request event emitted while processing
    shop.dispatch()
    confirmation = shop.capture.messages[0]
    url = confirmation.metadata["confirm_url"]
    assert url in confirmation.text
    # when
    app = create_app(Settings(), engine=engine, clock=shop.clock)
    with TestClient(app) as client:
        assert client.post("/" + url.split("/", 3)[3]).status_code == 200
    shop.clock.advance(timedelta(minutes=1))
    shop.events(track("u1", "promo"))
    shop.dispatch()
    # then
    assert [(r.template, r.status) for r in shop.rows()] == [
        ("confirm", "sent"),
        ("email-note", "sent"),
    ]


def test_a_journey_holdout_records_but_never_sends_to_its_control_group(engine: Engine) -> None:
    """holdout: 30 keeps ~30% of customers out, by a stable hash, and marks their messages."""
    # given
    shop = Shop(engine, {"promo": journey("promo", extra="holdout: 30")})
    users = [f"u{i}" for i in range(200)]
    shop.events(*[identify(u, email=f"{u}@example.ru", consent={"email": True}) for u in users])
    # when
    shop.events(*[track(u, "promo") for u in users])
    d = shop.dispatcher()
    while asyncio.run(d.run_once(shop.clock.now())):
        pass
    # then
    rows = shop.rows()
    held = [r for r in rows if r.reason == "holdout"]
    assert all(r.status == "skipped" for r in held)
    assert 40 <= len(held) <= 80  # 30% of 200, give or take chance
    assert len(shop.capture.messages) == len(rows) - len(held)
    from touchline.journeys.engine import in_holdout

    with engine.connect() as conn:
        held_users = set(
            conn.execute(
                select(profiles.c.user_id).where(profiles.c.id.in_([r.profile_id for r in held]))
            ).scalars()
        )
    assert held_users == {u for u in users if in_holdout("promo", u, 30)}


def test_the_workspace_control_group_is_counted_on_each_marketing_journey_s_holdout_side(
    engine: Engine,
) -> None:
    """control_group: 20 keeps its customers' journey entries off the treated side of uplift."""
    from touchline.messaging.policies import in_control_group

    # given: a journey with no holdout of its own
    shop = Shop(engine, {"promo": journey("promo")}, settings={"control_group": 20})
    users = [f"u{i}" for i in range(200)]
    shop.events(*[identify(u, email=f"{u}@example.ru", consent={"email": True}) for u in users])
    # when
    shop.events(*[track(u, "promo") for u in users])
    d = shop.dispatcher()
    while asyncio.run(d.run_once(shop.clock.now())):
        pass
    # then: their messages are kept with the reason, never sent, and the report counts them apart
    control = {u for u in users if in_control_group(u, 20)}
    assert 20 <= len(control) <= 60
    with engine.connect() as conn:
        kept = set(
            conn.execute(
                select(profiles.c.user_id)
                .join(outbox, outbox.c.profile_id == profiles.c.id)
                .where(outbox.c.reason == "control_group", outbox.c.status == "skipped")
            ).scalars()
        )
        entered, held = conn.execute(
            select(func.sum(daily_stats.c.entered), func.sum(daily_stats.c.holdout_entered)).where(
                daily_stats.c.workspace_id == shop.ws
            )
        ).one()
    assert kept == control
    assert len(shop.capture.messages) == len(users) - len(control)
    assert (entered, held) == (len(users) - len(control), len(control))
