"""Delivery-status callbacks (``/callbacks/{workspace}/{provider}``) on SQLite and PostgreSQL.

Messages are put in the outbox by a real journey run; their provider ids are
then set as a dispatcher would after a provider took them, and the providers'
reports are posted through the app in-process.
"""

from __future__ import annotations

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
from sqlalchemy import Engine, select, update

from touchline.config import Settings
from touchline.journeys.loader import LoadedJourney, load_journey_text
from touchline.messaging.channels.twilio import compute_signature
from touchline.messaging.channels.webhook import sign
from touchline.store.db import transaction
from touchline.store.journeys import apply_journeys
from touchline.store.tables import EVENT_PENDING, events, outbox, profiles, suppressions, workspaces
from touchline.store.workspaces import create_workspace
from touchline.testing import FrozenClock, identify, run_until_idle, send_events, track
from touchline.web.app import create_app
from touchline.worker.loop import Worker

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
    from fastapi.testclient import TestClient

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
PUBLIC = "https://touchline.example"
EMAIL_SECRET = "email-callback-secret"
SMS_SECRET = "sms-callback-secret"
TWILIO_TOKEN = "twilio-auth-token"

JOURNEY = """
journey: thanks
trigger: {event: Order Completed}
entry: {reentry: always}
steps:
  - id: mail
    send: {channel: email, template: thanks-mail}
  - id: text
    send: {channel: sms, template: thanks-sms}
"""


def sms_settings(provider: str) -> dict[str, Any]:
    options: dict[str, dict[str, Any]] = {
        "smsaero": {"email": "o@example.ru", "api_key": "k", "callback_secret": SMS_SECRET},
        "twilio": {"account_sid": "AC1", "auth_token": TWILIO_TOKEN, "from_number": "+15005550006"},
        "http": {"url": "https://gateway.example/send", "callback_secret": SMS_SECRET},
    }
    return {"provider": provider, **options[provider]}


class Shop:
    """A workspace with one customer's email and SMS messages sent, and a second workspace."""

    def __init__(self, engine: Engine, client: TestClient, clock: FrozenClock) -> None:
        self.engine = engine
        self.client = client
        self.clock = clock
        self.a = create_workspace(engine, "Shop A", now=T0).id
        self.b = create_workspace(engine, "Shop B", now=T0).id
        for ws in (self.a, self.b):
            self._journey(ws)
            send_events(
                engine,
                ws,
                [
                    identify("anna", email="Anna@Example.ru", phone="+79161234567"),
                    track("anna", "Order Completed", {"order_id": "A-1"}),
                ],
                now=T0,
            )
        run_until_idle(Worker(engine, clock=clock, owner="w"), clock)
        self.mail_a = self._sent(self.a, "email", "<mail-a@shop.example>")
        self.sms_a = self._sent(self.a, "sms", "SMS-1")
        self.mail_b = self._sent(self.b, "email", "<mail-b@shop.example>")
        self.sms_b = self._sent(self.b, "sms", "SMS-B")
        self.configure(self.a, "smsaero")

    def _journey(self, ws: str) -> None:
        text = textwrap.dedent(JOURNEY)
        with transaction(self.engine) as conn:
            apply_journeys(
                conn,
                ws,
                [LoadedJourney("j.yaml", load_journey_text(text, file="j.yaml"), text)],
                now=T0,
            )

    def _sent(self, ws: str, channel: str, provider_id: str) -> int:
        """Mark the workspace's message on ``channel`` sent under ``provider_id``; its outbox id."""
        with transaction(self.engine) as conn:
            row_id = conn.execute(
                select(outbox.c.id).where(outbox.c.workspace_id == ws, outbox.c.channel == channel)
            ).scalar_one()
            address = "Anna@Example.ru" if channel == "email" else "+79161234567"
            conn.execute(
                update(outbox)
                .where(outbox.c.id == row_id)
                .values(status="sent", provider_id=provider_id, address=address, sent_at=T0)
            )
        return int(row_id)

    def configure(self, ws: str, sms_provider: str) -> None:
        settings = {
            "channels": {
                "email": {"provider": "capture", "callback_secret": EMAIL_SECRET},
                "sms": sms_settings(sms_provider),
            }
        }
        with transaction(self.engine) as conn:
            conn.execute(update(workspaces).where(workspaces.c.id == ws).values(settings=settings))

    def post(
        self,
        provider: str,
        *,
        json_body: Any = None,
        form: dict[str, str] | None = None,
        token: str | None = None,
        headers: dict[str, str] | None = None,
        ws: str | None = None,
    ) -> httpx.Response:
        path = f"/callbacks/{ws or self.a}/{provider}"
        if token is not None:
            path += f"?token={token}"
        if form is not None:
            content = urlencode(form).encode()
            all_headers = {"Content-Type": "application/x-www-form-urlencoded", **(headers or {})}
        else:
            content = json.dumps(json_body).encode()
            all_headers = {"Content-Type": "application/json", **(headers or {})}
        return self.client.post(path, content=content, headers=all_headers)

    def bounce(self, kind: str = "hard_bounce", **extra: Any) -> httpx.Response:
        body = {"message_id": "mail-a@shop.example", "type": kind, "detail": "550 5.1.1", **extra}
        return self.post("email", json_body=body, token=EMAIL_SECRET)

    def row(self, outbox_id: int) -> Any:
        with self.engine.connect() as conn:
            return conn.execute(select(outbox).where(outbox.c.id == outbox_id)).one()

    def events(self, ws: str, name: str | None = None) -> list[Any]:
        query = select(events).where(events.c.workspace_id == ws, events.c.name.like("Message %"))
        if name is not None:
            query = query.where(events.c.name == name)
        with self.engine.connect() as conn:
            return conn.execute(query.order_by(events.c.id)).all()

    def suppressions(self, ws: str) -> list[Any]:
        with self.engine.connect() as conn:
            return conn.execute(select(suppressions).where(suppressions.c.workspace_id == ws)).all()


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock(T0)


@pytest.fixture
def shop(engine: Engine, database_url: str, clock: FrozenClock) -> Iterator[Shop]:
    settings = Settings(database_url=database_url, public_url=PUBLIC)
    app = create_app(settings, engine=engine, clock=clock)
    with TestClient(app) as client:
        yield Shop(engine, client, clock)


def ok(response: httpx.Response) -> Any:
    assert response.status_code == 200, response.text
    return response.json()


# -- email --------------------------------------------------------------------------------


def test_a_hard_bounce_marks_the_message_suppresses_and_emits_one_event(shop: Shop) -> None:
    """A hard bounce sets bounced, suppresses the address and records Message Bounced, once."""
    # given
    shop.clock.advance(timedelta(minutes=5))
    # when
    first = ok(shop.bounce())
    second = ok(shop.bounce())
    # then
    assert first == {
        "matched": True,
        "message_id": shop.mail_a,
        "status": "bounced",
        "changed": True,
    }
    assert second["changed"] is False
    row = shop.row(shop.mail_a)
    assert (row.delivery_status, row.delivery_at) == ("bounced", T0 + timedelta(minutes=5))
    [event] = shop.events(shop.a)
    assert event.name == "Message Bounced"
    assert event.message_id == f"delivery:{shop.mail_a}:bounced"
    assert event.user_id == "anna"
    assert event.status == EVENT_PENDING
    assert event.properties == {
        "message_id": shop.mail_a,
        "channel": "email",
        "journey": "thanks",
        "step": "mail",
        "template": "thanks-mail",
        "provider_id": "<mail-a@shop.example>",
        "status": "bounced",
        "detail": "550 5.1.1",
    }
    [suppression] = shop.suppressions(shop.a)
    assert (suppression.channel, suppression.address, suppression.reason) == (
        "email",
        "anna@example.ru",
        "hard_bounce",
    )


def test_a_complaint_after_delivery_records_both_and_suppresses(shop: Shop) -> None:
    """delivered then complaint: two events, status complained, address suppressed for complaint."""
    ok(shop.bounce("delivered"))
    ok(shop.bounce("complaint"))
    assert shop.row(shop.mail_a).delivery_status == "complained"
    assert [e.name for e in shop.events(shop.a)] == ["Message Delivered", "Message Complained"]
    assert [s.reason for s in shop.suppressions(shop.a)] == ["complaint"]


def test_a_late_delivered_report_does_not_hide_a_bounce(shop: Shop) -> None:
    """Reports out of order: a delivered after a bounce changes nothing and emits nothing."""
    ok(shop.bounce())
    late = ok(shop.bounce("delivered"))
    assert late["changed"] is False and late["status"] == "bounced"
    assert shop.row(shop.mail_a).delivery_status == "bounced"
    assert [e.name for e in shop.events(shop.a)] == ["Message Bounced"]


def test_a_soft_bounce_is_undelivered_without_suppression(shop: Shop) -> None:
    """A soft bounce records Message Undelivered and suppresses nothing."""
    ok(shop.bounce("soft_bounce"))
    assert shop.row(shop.mail_a).delivery_status == "undelivered"
    assert [e.name for e in shop.events(shop.a)] == ["Message Undelivered"]
    assert shop.suppressions(shop.a) == []


def test_the_delivery_event_does_not_count_as_the_customer_being_seen(shop: Shop) -> None:
    """Recording a report leaves the customer's last_seen_at as it was."""
    shop.clock.advance(timedelta(days=2))
    ok(shop.bounce("delivered"))
    with shop.engine.connect() as conn:
        seen = conn.execute(
            select(profiles.c.last_seen_at).where(
                profiles.c.user_id == "anna", profiles.c.workspace_id == shop.a
            )
        ).scalar_one()
    assert seen == T0


def test_a_body_signature_authenticates_the_email_webhook(shop: Shop) -> None:
    """X-Touchline-Signature (hex HMAC-SHA256 of the body) is accepted instead of ?token=."""
    body = json.dumps({"provider_id": "<mail-a@shop.example>", "type": "delivered"}).encode()
    signature = hmac.new(EMAIL_SECRET.encode(), body, hashlib.sha256).hexdigest()
    response = shop.client.post(
        f"/callbacks/{shop.a}/email",
        content=body,
        headers={
            "Content-Type": "application/json",
            "X-Touchline-Signature": f"sha256={signature}",
        },
    )
    assert ok(response)["status"] == "delivered"


def test_the_webhook_signature_scheme_with_a_timestamp_is_accepted(shop: Shop) -> None:
    """touchline's own v1= signature over timestamp.body authenticates too (fresh timestamps only)."""
    body = json.dumps({"message_id": "mail-a@shop.example", "type": "delivered"}).encode()
    timestamp = str(int(shop.clock.now().timestamp()))
    headers = {
        "Content-Type": "application/json",
        "X-Touchline-Timestamp": timestamp,
        "X-Touchline-Signature": sign(EMAIL_SECRET, timestamp, body),
    }
    assert ok(shop.client.post(f"/callbacks/{shop.a}/email", content=body, headers=headers))[
        "matched"
    ]
    stale = str(int(shop.clock.now().timestamp()) - 3600)
    headers.update(
        {"X-Touchline-Timestamp": stale, "X-Touchline-Signature": sign(EMAIL_SECRET, stale, body)}
    )
    assert (
        shop.client.post(f"/callbacks/{shop.a}/email", content=body, headers=headers).status_code
        == 401
    )


@pytest.mark.parametrize(
    "auth",
    [
        {"token": "wrong"},
        {"headers": {"X-Touchline-Signature": "0" * 64}},
        {},
    ],
)
def test_unauthenticated_email_callbacks_are_refused(shop: Shop, auth: dict[str, Any]) -> None:
    """A wrong token, a wrong signature or none at all answers 401 JSON and changes nothing."""
    response = shop.post(
        "email", json_body={"message_id": "mail-a@shop.example", "type": "hard_bounce"}, **auth
    )
    assert response.status_code == 401
    assert response.json()["code"] == "unauthorized"
    assert shop.row(shop.mail_a).delivery_status is None
    assert shop.suppressions(shop.a) == []


def test_another_workspaces_message_is_not_matched(shop: Shop) -> None:
    """A's callback naming B's provider id answers matched false; B's message is untouched."""
    response = shop.post(
        "email",
        json_body={"message_id": "mail-b@shop.example", "type": "hard_bounce"},
        token=EMAIL_SECRET,
    )
    assert ok(response) == {"matched": False}
    assert shop.row(shop.mail_b).delivery_status is None
    assert shop.events(shop.b) == [] and shop.suppressions(shop.b) == []


def test_an_unknown_provider_id_is_acknowledged_as_unmatched(shop: Shop) -> None:
    """An id no message has answers 200 matched false, so the provider stops retrying."""
    response = shop.post(
        "email", json_body={"message_id": "nobody@x", "type": "delivered"}, token=EMAIL_SECRET
    )
    assert ok(response) == {"matched": False}
    assert shop.events(shop.a) == []


def test_a_workspace_without_a_callback_secret_refuses_callbacks(shop: Shop) -> None:
    """Workspace B configured no email callback secret: its callbacks answer 401."""
    response = shop.post(
        "email",
        ws=shop.b,
        json_body={"message_id": "mail-b@shop.example", "type": "delivered"},
        token="x",
    )
    assert response.status_code == 401


def test_a_malformed_authenticated_report_is_a_400(shop: Shop) -> None:
    """An authenticated body with an unknown type answers 400 naming the field."""
    response = shop.post(
        "email", json_body={"message_id": "m@x", "type": "opened"}, token=EMAIL_SECRET
    )
    assert response.status_code == 400
    assert response.json()["message"].startswith("type:")


def test_an_unknown_provider_is_404(shop: Shop) -> None:
    """Only the documented providers have callback routes."""
    assert shop.post("sendgrid", json_body={}, token=EMAIL_SECRET).status_code == 404


# -- SMS ----------------------------------------------------------------------------------


def test_smsaero_delivered_report_updates_the_sms_once(shop: Shop) -> None:
    """An SMS Aero form callback marks the SMS delivered; a repeat emits nothing more."""
    form = {"id": "SMS-1", "status": "1", "extendStatus": "delivery"}
    first = ok(shop.post("smsaero", form=form, token=SMS_SECRET))
    ok(shop.post("smsaero", form=form, token=SMS_SECRET))
    assert first["message_id"] == shop.sms_a and first["changed"] is True
    assert shop.row(shop.sms_a).delivery_status == "delivered"
    assert shop.row(shop.mail_a).delivery_status is None
    assert [e.message_id for e in shop.events(shop.a)] == [f"delivery:{shop.sms_a}:delivered"]


def test_smsaero_not_final_status_changes_nothing(shop: Shop) -> None:
    """'Passed to the operator' is acknowledged, matched, and recorded nowhere."""
    body = ok(
        shop.post("smsaero", json_body={"data": {"id": "SMS-1", "status": 3}}, token=SMS_SECRET)
    )
    assert body == {"matched": True, "message_id": shop.sms_a, "status": None, "changed": False}
    assert shop.events(shop.a) == []


def test_smsaero_listed_permanent_status_suppresses_the_number(shop: Shop) -> None:
    """A failure whose status the settings list as permanent bounces and suppresses the number."""
    with transaction(shop.engine) as conn:
        settings = {"channels": {"sms": {**sms_settings("smsaero"), "permanent_statuses": ["6"]}}}
        conn.execute(update(workspaces).where(workspaces.c.id == shop.a).values(settings=settings))
    ok(shop.post("smsaero", form={"id": "SMS-1", "status": "6"}, token=SMS_SECRET))
    assert shop.row(shop.sms_a).delivery_status == "bounced"
    assert [(s.channel, s.address, s.reason) for s in shop.suppressions(shop.a)] == [
        ("sms", "+79161234567", "hard_bounce")
    ]


def test_smsaero_callback_with_a_bad_token_is_refused(shop: Shop) -> None:
    """A wrong ?token= answers 401 and the SMS keeps no status."""
    response = shop.post("smsaero", form={"id": "SMS-1", "status": "1"}, token="guess")
    assert response.status_code == 401
    assert shop.row(shop.sms_a).delivery_status is None


def test_callbacks_for_another_provider_than_configured_are_refused(shop: Shop) -> None:
    """Workspace A sends SMS through SMS Aero: a Twilio-style callback cannot authenticate."""
    response = shop.post("twilio", form={"MessageSid": "SMS-1", "MessageStatus": "delivered"})
    assert response.status_code == 401


def twilio_post(
    shop: Shop, form: dict[str, str], *, url: str | None = None, token: str = TWILIO_TOKEN
) -> httpx.Response:
    signed_url = url or f"http://testserver/callbacks/{shop.a}/twilio"
    signature = compute_signature(token, signed_url, form)
    return shop.post("twilio", form=form, headers={"X-Twilio-Signature": signature})


def test_twilio_signed_callbacks_update_the_sms(shop: Shop) -> None:
    """A correctly signed Twilio callback marks the SMS undelivered; a repeat changes nothing."""
    shop.configure(shop.a, "twilio")
    form = {"MessageSid": "SMS-1", "MessageStatus": "undelivered", "ErrorCode": "30003"}
    assert ok(twilio_post(shop, form))["changed"] is True
    assert ok(twilio_post(shop, form))["changed"] is False
    assert shop.row(shop.sms_a).delivery_status == "undelivered"
    assert len(shop.events(shop.a, "Message Undelivered")) == 1
    assert shop.suppressions(shop.a) == []


def test_twilio_signature_over_the_public_url_is_accepted(shop: Shop) -> None:
    """Behind a proxy Twilio signs the public URL; that signature is accepted as well."""
    shop.configure(shop.a, "twilio")
    form = {"MessageSid": "SMS-1", "MessageStatus": "delivered"}
    response = twilio_post(shop, form, url=f"{PUBLIC}/callbacks/{shop.a}/twilio")
    assert ok(response)["status"] == "delivered"


def test_twilio_unknown_handset_suppresses_the_number(shop: Shop) -> None:
    """Twilio error 30005 (unknown destination handset) bounces the SMS and suppresses the number."""
    shop.configure(shop.a, "twilio")
    ok(twilio_post(shop, {"MessageSid": "SMS-1", "MessageStatus": "failed", "ErrorCode": "30005"}))
    assert shop.row(shop.sms_a).delivery_status == "bounced"
    assert [s.reason for s in shop.suppressions(shop.a)] == ["hard_bounce"]
    assert [e.name for e in shop.events(shop.a)] == ["Message Bounced"]


def test_twilio_bad_signature_is_refused(shop: Shop) -> None:
    """A signature made with another token answers 401."""
    shop.configure(shop.a, "twilio")
    response = twilio_post(
        shop, {"MessageSid": "SMS-1", "MessageStatus": "delivered"}, token="not-it"
    )
    assert response.status_code == 401
    assert response.json()["code"] == "unauthorized"
    assert shop.row(shop.sms_a).delivery_status is None


def test_http_gateway_default_status_words_are_understood(shop: Shop) -> None:
    """A generic gateway's {id, status} JSON with common words needs no status_map."""
    shop.configure(shop.a, "http")
    ok(shop.post("http", json_body={"id": "SMS-1", "status": "delivered"}, token=SMS_SECRET))
    assert shop.row(shop.sms_a).delivery_status == "delivered"


def test_http_gateway_invalid_number_suppresses(shop: Shop) -> None:
    """status invalid_number (the default permanent word) bounces and suppresses the number."""
    shop.configure(shop.a, "http")
    ok(shop.post("http", json_body={"id": "SMS-1", "status": "invalid_number"}, token=SMS_SECRET))
    assert shop.row(shop.sms_a).delivery_status == "bounced"
    assert [s.reason for s in shop.suppressions(shop.a)] == ["hard_bounce"]


def test_http_gateway_uses_its_configured_paths_and_map(shop: Shop) -> None:
    """callback_id_path, callback_status_path and status_map from the settings read the report."""
    settings = {
        "channels": {
            "sms": {
                **sms_settings("http"),
                "callback_id_path": "result.msg",
                "callback_status_path": "result.state",
                "status_map": {"DLV": "delivered", "UND": "failed"},
            }
        }
    }
    with transaction(shop.engine) as conn:
        conn.execute(update(workspaces).where(workspaces.c.id == shop.a).values(settings=settings))
    body = {"result": {"msg": "SMS-1", "state": "UND"}}
    assert ok(shop.post("http", json_body=body, token=SMS_SECRET))["status"] == "undelivered"


def test_http_gateway_ignores_another_workspaces_id(shop: Shop) -> None:
    """SMS-B belongs to workspace B: posted to A it matches nothing."""
    shop.configure(shop.a, "http")
    response = shop.post("http", json_body={"id": "SMS-B", "status": "delivered"}, token=SMS_SECRET)
    assert ok(response) == {"matched": False}
    assert shop.row(shop.sms_b).delivery_status is None


def test_an_oversized_body_is_refused(shop: Shop) -> None:
    """Bodies over the limit answer 413 payload_too_large before anything is read from the store."""
    body = {"message_id": "m@x", "type": "delivered", "detail": "x" * 70_000}
    response = shop.post("email", json_body=body, token=EMAIL_SECRET)
    assert response.status_code == 413
    assert response.json()["code"] == "payload_too_large"
