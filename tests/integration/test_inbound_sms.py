"""SMS replies (``/callbacks/{workspace}/{provider}/inbound``) on SQLite and PostgreSQL.

Customers are ingested and their SMS sent by a real journey run and a
dispatcher with a capture channel; the providers' forwarded replies are then
posted through the app in-process, signed as each provider signs them.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import textwrap
import warnings
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
from sqlalchemy import Engine, func, select, update

from touchline.config import Settings
from touchline.journeys.loader import LoadedJourney, load_journey_text
from touchline.messaging.channels.capture import CaptureChannel
from touchline.messaging.channels.twilio import compute_signature
from touchline.messaging.dispatcher import Dispatcher
from touchline.messaging.template_files import load_template_text
from touchline.store.consent import ledger
from touchline.store.db import transaction
from touchline.store.journeys import apply_journeys
from touchline.store.tables import (
    daily_stats,
    events,
    journeys,
    message_events,
    outbox,
    profiles,
    suppressions,
    workspaces,
)
from touchline.store.templates import apply_templates
from touchline.store.workspaces import create_workspace
from touchline.testing import FrozenClock, identify, run_until_idle, send_events, track
from touchline.web.app import create_app
from touchline.worker.loop import Worker

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
    from fastapi.testclient import TestClient

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)  # noon in Moscow: no quiet hours
PUBLIC = "https://touchline.example"
SMS_SECRET = "sms-callback-secret"
TWILIO_TOKEN = "twilio-auth-token"
ANNA = "+79161234567"
SHOP_NUMBER = "+15005550006"

JOURNEYS = {
    "promo": """
        journey: promo
        category: selling
        trigger: {event: promo}
        entry: {reentry: always}
        steps:
          - send: {channel: sms, template: sms-note}
        """,
    "notice": """
        journey: notice
        category: transactional
        trigger: {event: notice}
        entry: {reentry: always}
        steps:
          - send: {channel: sms, template: sms-note}
        """,
    "support": """
        journey: support
        category: transactional
        trigger:
          event: SMS Received
          where: event.properties.text == 'Где мой заказ?'
        entry: {reentry: always}
        steps:
          - send: {channel: sms, template: sms-note}
        """,
}
TEMPLATE = "template: sms-note\nchannel: sms\ntext: Скидка 10% до воскресенья\n"


def sms_settings(provider: str) -> dict[str, Any]:
    options: dict[str, dict[str, Any]] = {
        "smsaero": {"email": "o@example.ru", "api_key": "k", "callback_secret": SMS_SECRET},
        "twilio": {"account_sid": "AC1", "auth_token": TWILIO_TOKEN, "from_number": SHOP_NUMBER},
        "http": {"url": "https://gateway.example/send", "callback_secret": SMS_SECRET},
    }
    return {"provider": provider, **options[provider]}


class Shop:
    """Workspace A (its SMS provider chosen per test) with journeys, and workspace B."""

    def __init__(self, engine: Engine, client: TestClient, clock: FrozenClock) -> None:
        self.engine = engine
        self.client = client
        self.clock = clock
        self.a = create_workspace(engine, "Shop A", now=T0, timezone="Europe/Moscow").id
        self.b = create_workspace(engine, "Shop B", now=T0, timezone="Europe/Moscow").id
        for ws in (self.a, self.b):
            with transaction(engine) as conn:
                loaded = [
                    LoadedJourney(
                        f"{key}.yaml",
                        load_journey_text(textwrap.dedent(text), file=f"{key}.yaml"),
                        textwrap.dedent(text),
                    )
                    for key, text in JOURNEYS.items()
                ]
                apply_journeys(conn, ws, loaded, now=T0)
                apply_templates(conn, ws, [load_template_text(TEMPLATE, file="t.yaml")], now=T0)
        self.worker = Worker(engine, clock=clock, owner="w")
        self.capture = CaptureChannel()
        self.provider = "smsaero"
        self.configure("smsaero")

    def configure(self, provider: str, ws: str | None = None) -> None:
        self.provider = provider
        settings = {"channels": {"sms": sms_settings(provider)}}
        with transaction(self.engine) as conn:
            conn.execute(
                update(workspaces)
                .where(workspaces.c.id == (ws or self.a))
                .values(settings=settings)
            )

    def events(self, *raws: dict[str, Any], ws: str | None = None) -> None:
        stamped = [{**r, "timestamp": self.clock.now().isoformat()} for r in raws]
        send_events(self.engine, ws or self.a, stamped, now=self.clock.now())
        run_until_idle(self.worker, self.clock)

    def dispatch(self) -> None:
        dispatcher = Dispatcher(
            self.engine, clock=self.clock, owner="d", channels={"*": self.capture}
        )
        asyncio.run(dispatcher.run_once(self.clock.now()))

    def reply(
        self,
        text: str,
        *,
        sid: str = "in-1",
        sender: str = ANNA,
        ws: str | None = None,
        secret: str | None = None,
    ) -> httpx.Response:
        """Post a reply as the configured provider forwards it, signed with ``secret``."""
        workspace = ws or self.a
        path = f"/callbacks/{workspace}/{self.provider}/inbound"
        if self.provider == "twilio":
            form = {"MessageSid": sid, "From": sender, "To": SHOP_NUMBER, "Body": text}
            signature = compute_signature(secret or TWILIO_TOKEN, f"http://testserver{path}", form)
            return self.client.post(
                path,
                content=urlencode(form).encode(),
                headers={
                    "Content-Type": "application/x-www-form-urlencoded",
                    "X-Twilio-Signature": signature,
                },
            )
        if self.provider == "smsaero":  # digits without +, nested like its API answers
            body = {"data": {"from": sender.lstrip("+"), "to": "SHOP", "text": text, "id": sid}}
            return self.client.post(f"{path}?token={secret or SMS_SECRET}", json=body)
        content = json.dumps({"from": sender, "to": SHOP_NUMBER, "text": text, "id": sid})
        digest = hmac.new(
            (secret or SMS_SECRET).encode(), content.encode(), hashlib.sha256
        ).hexdigest()
        return self.client.post(
            path,
            content=content.encode(),
            headers={"Content-Type": "application/json", "X-Touchline-Signature": digest},
        )

    def received(self, ws: str | None = None) -> list[Any]:
        with self.engine.connect() as conn:
            return conn.execute(
                select(events)
                .where(events.c.workspace_id == (ws or self.a), events.c.name == "SMS Received")
                .order_by(events.c.id)
            ).all()

    def profile_id(self, user_id: str, ws: str | None = None) -> int:
        with self.engine.connect() as conn:
            return int(
                conn.execute(
                    select(profiles.c.id).where(
                        profiles.c.workspace_id == (ws or self.a), profiles.c.user_id == user_id
                    )
                ).scalar_one()
            )

    def ledger(self, user_id: str) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            return ledger(conn, self.a, self.profile_id(user_id))

    def suppressions(self, ws: str | None = None) -> set[tuple[str, str, str]]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(suppressions).where(suppressions.c.workspace_id == (ws or self.a))
            ).all()
        return {(r.channel, r.address, r.reason) for r in rows}

    def messages(self, journey: str) -> list[Any]:
        with self.engine.connect() as conn:
            return conn.execute(
                select(outbox)
                .join(journeys, journeys.c.id == outbox.c.journey_id)
                .where(outbox.c.workspace_id == self.a, journeys.c.key == journey)
                .order_by(outbox.c.id)
            ).all()

    def unsubscribes(self) -> tuple[list[int], int]:
        """(outbox ids with an ``unsubscribed`` message event, the rollups' unsubscribed total)."""
        with self.engine.connect() as conn:
            ids = conn.execute(
                select(message_events.c.outbox_id).where(
                    message_events.c.workspace_id == self.a,
                    message_events.c.kind == "unsubscribed",
                )
            ).scalars()
            total = conn.execute(
                select(func.coalesce(func.sum(daily_stats.c.unsubscribed), 0)).where(
                    daily_stats.c.workspace_id == self.a
                )
            ).scalar_one()
            return [int(i) for i in ids], int(total)


@pytest.fixture
def shop(engine: Engine, database_url: str) -> Iterator[Shop]:
    clock = FrozenClock(T0)
    app = create_app(
        Settings(database_url=database_url, public_url=PUBLIC), engine=engine, clock=clock
    )
    with TestClient(app) as client:
        yield Shop(engine, client, clock)


def ok(response: httpx.Response) -> Any:
    assert response.status_code == 200, response.text
    return response.json()


def subscribed_customer_with_a_promo(shop: Shop) -> int:
    """Anna, subscribed to SMS, gets one promo SMS; its outbox id."""
    shop.events(identify("anna", phone=ANNA, consent={"sms": True}), track("anna", "promo"))
    shop.dispatch()
    [promo] = shop.messages("promo")
    assert promo.status == "sent"
    return int(promo.id)


# -- events -------------------------------------------------------------------------------


@pytest.mark.parametrize("provider", ["twilio", "smsaero", "http"])
def test_a_reply_becomes_one_event_even_when_posted_twice(shop: Shop, provider: str) -> None:
    """The reply is an SMS Received event for the customer; the provider's retry adds none."""
    # given
    shop.configure(provider)
    shop.events(identify("anna", phone=ANNA))
    shop.clock.advance(timedelta(minutes=5))
    # when
    first = shop.reply("Спасибо, всё пришло", sid="in-1")
    second = shop.reply("Спасибо, всё пришло", sid="in-1")
    # then
    assert first.status_code == second.status_code == 200
    [event] = shop.received()
    assert (event.user_id, event.message_id) == ("anna", f"sms-in:{provider}:in-1")
    assert event.timestamp == T0 + timedelta(minutes=5)
    assert event.properties == {
        "text": "Спасибо, всё пришло",
        "from": ANNA,
        "to": "SHOP" if provider == "smsaero" else SHOP_NUMBER,
        "provider": provider,
        "provider_id": "in-1",
    }
    if provider != "twilio":
        assert first.json() == {
            "matched": True,
            "duplicate": False,
            "stop": False,
            "unsubscribed": False,
        }
        assert second.json()["duplicate"] is True


def test_twilio_is_answered_with_empty_twiml(shop: Shop) -> None:
    """Twilio reads the answer as TwiML: an empty <Response> sends nothing back."""
    shop.configure("twilio")
    shop.events(identify("anna", phone=ANNA))
    response = shop.reply("ok")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/xml")
    assert "<Response></Response>" in response.text


def test_a_journey_can_trigger_on_a_reply(shop: Shop) -> None:
    """A journey triggered by SMS Received (with a where on the text) enters for the customer."""
    shop.events(identify("anna", phone=ANNA))
    ok(shop.reply("Где мой заказ?", sid="q-1"))
    ok(shop.reply("Спасибо", sid="q-2"))
    run_until_idle(shop.worker, shop.clock)
    [answer] = shop.messages("support")
    assert answer.profile_id == shop.profile_id("anna")


def test_the_most_recently_seen_of_several_customers_with_the_number_gets_the_reply(
    shop: Shop,
) -> None:
    """Two profiles share a number: the one seen last is the customer."""
    shop.events(identify("old", phone=ANNA))
    shop.clock.advance(timedelta(hours=1))
    shop.events(identify("new", phone="8 916 123-45-67"))
    shop.clock.advance(timedelta(hours=1))
    ok(shop.reply("Да"))
    assert [e.user_id for e in shop.received()] == ["new"]


def test_a_merged_profile_is_never_the_customer(shop: Shop) -> None:
    """A visitor profile merged into Anna keeps the number, yet the reply goes to Anna."""
    # given: the visitor left the number, then signed in as Anna; the visitor is merged
    shop.events({"type": "identify", "anonymousId": "visitor-1", "traits": {"phone": ANNA}})
    shop.events(identify("anna"))
    shop.events({"type": "identify", "userId": "anna", "anonymousId": "visitor-1", "traits": {}})
    with transaction(shop.engine) as conn:  # the merged profile looks the most recently seen
        merged = conn.execute(
            update(profiles)
            .where(profiles.c.workspace_id == shop.a, profiles.c.merged_into.is_not(None))
            .values(last_seen_at=T0 + timedelta(days=1))
        ).rowcount
    assert merged == 1
    # when
    ok(shop.reply("Да"))
    # then
    assert [e.user_id for e in shop.received()] == ["anna"]


def test_a_customer_known_only_by_an_anonymous_id_gets_the_event_under_it(shop: Shop) -> None:
    """Without a user id the event is recorded under the customer's anonymous id."""
    shop.events({"type": "identify", "anonymousId": "visitor-1", "traits": {"phone": ANNA}})
    assert ok(shop.reply("Да"))["matched"] is True
    [event] = shop.received()
    assert (event.user_id, event.anonymous_id) == (None, "visitor-1")


def test_an_unknown_number_is_acknowledged_as_unmatched(shop: Shop) -> None:
    """A number no customer has answers 200 matched false and stores nothing."""
    shop.events(identify("anna", phone=ANNA))
    assert ok(shop.reply("STOP", sender="+79031112233")) == {"matched": False}
    assert ok(shop.reply("STOP", sender="SHOP-ALERTS", sid="x")) == {"matched": False}
    assert shop.received() == []
    assert shop.suppressions() == set()


def test_another_workspaces_customer_is_never_matched(shop: Shop) -> None:
    """Boris exists only in workspace B: his reply posted to A matches nobody and touches B not."""
    # given
    shop.events(identify("boris", phone="+79990001122", consent={"sms": True}), ws=shop.b)
    # when
    response = shop.reply("STOP", sender="+79990001122")
    # then
    assert ok(response) == {"matched": False}
    assert shop.received(shop.b) == [] and shop.suppressions(shop.b) == set()
    with shop.engine.connect() as conn:
        assert len(ledger(conn, shop.b, shop.profile_id("boris", ws=shop.b))) == 1


@pytest.mark.parametrize("provider", ["twilio", "smsaero", "http"])
def test_a_bad_signature_is_refused(shop: Shop, provider: str) -> None:
    """A reply signed with the wrong secret answers 401 and records nothing."""
    shop.configure(provider)
    shop.events(identify("anna", phone=ANNA, consent={"sms": True}))
    response = shop.reply("STOP", secret="guessed")
    assert response.status_code == 401
    assert response.json()["code"] == "unauthorized"
    assert shop.received() == [] and shop.suppressions() == set()


def test_replies_for_another_provider_than_configured_are_refused(shop: Shop) -> None:
    """Workspace A uses SMS Aero: a generic-gateway reply with the same secret cannot get in."""
    shop.events(identify("anna", phone=ANNA))
    response = shop.client.post(
        f"/callbacks/{shop.a}/http/inbound?token={SMS_SECRET}",
        json={"from": ANNA, "text": "hi", "id": "1"},
    )
    assert response.status_code == 401


def test_email_takes_no_inbound_route_and_bad_bodies_are_400(shop: Shop) -> None:
    """Only SMS providers have inbound routes; an authenticated body without id is a 400."""
    assert shop.client.post(f"/callbacks/{shop.a}/email/inbound", json={}).status_code == 404
    response = shop.client.post(
        f"/callbacks/{shop.a}/smsaero/inbound?token={SMS_SECRET}",
        json={"from": ANNA, "text": "hi"},
    )
    assert response.status_code == 400
    assert response.json()["message"].startswith("id:")


# -- STOP ---------------------------------------------------------------------------------


@pytest.mark.parametrize("provider", ["twilio", "smsaero", "http"])
def test_stop_withdraws_sms_consent_suppresses_and_counts_on_the_last_sms(
    shop: Shop, provider: str
) -> None:
    """STOP appends a withdrawal, suppresses the number (stop_reply) and counts one unsubscribe."""
    # given
    shop.configure(provider)
    promo = subscribed_customer_with_a_promo(shop)
    shop.clock.advance(timedelta(hours=1))
    # when
    first = shop.reply(" Stop! ", sid="in-7")
    retried = shop.reply(" Stop! ", sid="in-7")
    # then
    assert first.status_code == retried.status_code == 200
    rows = shop.ledger("anna")
    assert [(r["granted"], r["channel"]) for r in rows] == [(True, "sms"), (False, "sms")]
    withdrawal = rows[1]
    assert withdrawal["source"] == f"SMS reply STOP ({provider} message in-7)"
    assert (withdrawal["address"], withdrawal["at"]) == (
        ANNA,
        (T0 + timedelta(hours=1)).isoformat(),
    )
    assert shop.suppressions() == {("sms", ANNA, "unsubscribe"), ("sms", ANNA, "stop_reply")}
    assert shop.unsubscribes() == ([promo], 1)
    assert len(shop.received()) == 1
    if provider != "twilio":
        assert first.json() == {
            "matched": True,
            "duplicate": False,
            "stop": True,
            "unsubscribed": True,
        }
        assert retried.json()["duplicate"] is True


def test_after_stop_marketing_sms_is_skipped_but_transactional_sms_goes(shop: Shop) -> None:
    """The dispatcher skips the next promo (suppressed:stop_reply) and still sends an order notice."""
    # given
    subscribed_customer_with_a_promo(shop)
    shop.clock.advance(timedelta(hours=1))
    ok(shop.reply("СТОП"))
    shop.clock.advance(timedelta(hours=1))
    # when
    shop.events(track("anna", "promo"), track("anna", "notice"))
    shop.dispatch()
    # then
    later_promo = shop.messages("promo")[-1]
    [notice] = shop.messages("notice")
    assert (later_promo.status, later_promo.reason) == ("skipped", "suppressed:stop_reply")
    assert notice.status == "sent"


def test_a_second_stop_records_its_event_but_no_second_withdrawal(shop: Shop) -> None:
    """Another STOP message (new id) is a new event; consent is already withdrawn, nothing counts."""
    promo = subscribed_customer_with_a_promo(shop)
    ok(shop.reply("STOP", sid="s-1"))
    shop.clock.advance(timedelta(minutes=1))
    second = ok(shop.reply("отписаться", sid="s-2"))
    assert second == {"matched": True, "duplicate": False, "stop": True, "unsubscribed": False}
    assert len(shop.received()) == 2
    assert [r["granted"] for r in shop.ledger("anna")] == [True, False]
    assert shop.unsubscribes() == ([promo], 1)


@pytest.mark.parametrize(
    "text", ["Please stop sending the wrong size", "Стоп, я перепутал размер", "Нет", "START"]
)
def test_an_ordinary_reply_does_not_unsubscribe(shop: Shop, text: str) -> None:
    """Stop inside a sentence, НЕТ and START are events only: consent and suppressions stay."""
    subscribed_customer_with_a_promo(shop)
    body = ok(shop.reply(text))
    assert (body["matched"], body["stop"], body["unsubscribed"]) == (True, False, False)
    assert [r["granted"] for r in shop.ledger("anna")] == [True]
    assert shop.suppressions() == set()
    assert shop.unsubscribes() == ([], 0)
    assert [e.properties["text"] for e in shop.received()] == [text]


def test_start_after_stop_does_not_resubscribe(shop: Shop) -> None:
    """START is no consent: the ledger keeps the withdrawal and promos stay suppressed."""
    subscribed_customer_with_a_promo(shop)
    ok(shop.reply("STOP", sid="s-1"))
    shop.clock.advance(timedelta(minutes=5))
    ok(shop.reply("START", sid="s-2"))
    shop.events(track("anna", "promo"))
    shop.dispatch()
    assert [r["granted"] for r in shop.ledger("anna")] == [True, False]
    assert shop.messages("promo")[-1].reason == "suppressed:stop_reply"


def test_a_stop_without_any_sms_sent_still_withdraws(shop: Shop) -> None:
    """A customer who never got an SMS can still opt out; there is no message to count it on."""
    shop.events(identify("anna", phone=ANNA, consent={"sms": True}))
    assert ok(shop.reply("UNSUBSCRIBE"))["unsubscribed"] is True
    assert [r["granted"] for r in shop.ledger("anna")] == [True, False]
    assert shop.unsubscribes() == ([], 0)


def test_twilio_advanced_opt_out_unsubscribes_whatever_the_words(shop: Shop) -> None:
    """OptOutType=STOP (a keyword Twilio's account settings add) withdraws like STOP."""
    shop.configure("twilio")
    shop.events(identify("anna", phone=ANNA, consent={"sms": True}))
    path = f"/callbacks/{shop.a}/twilio/inbound"
    form = {"MessageSid": "SM5", "From": ANNA, "Body": "REMOVE ME", "OptOutType": "STOP"}
    signature = compute_signature(TWILIO_TOKEN, f"http://testserver{path}", form)
    response = shop.client.post(
        path,
        content=urlencode(form).encode(),
        headers={
            "Content-Type": "application/x-www-form-urlencoded",
            "X-Twilio-Signature": signature,
        },
    )
    assert response.status_code == 200
    [_, withdrawal] = shop.ledger("anna")
    assert withdrawal["source"] == "SMS reply REMOVE ME (twilio message SM5)"
    assert ("sms", ANNA, "stop_reply") in shop.suppressions()
