"""Customer pages: one-click unsubscribe, the preference page and double opt-in confirmation.

Runs the app in-process on SQLite and PostgreSQL with a frozen clock. Links
are made the way the dispatcher makes them (:func:`links_for_message`) or
with :func:`link_for`; what the pages record is read back from the consent
ledger and fed to the delivery rules.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, select, update

from touchline.config import Settings
from touchline.messaging.links import LinkKind, link_for, links_for_message, read_token
from touchline.messaging.policies import Candidate, Decision, Policy, decide
from touchline.store.consent import (
    Provenance,
    ledger,
    list_suppressions,
    load_consents,
    load_suppressions,
    record_consent,
)
from touchline.store.db import transaction
from touchline.store.ingest import get_profile
from touchline.store.tables import workspaces
from touchline.store.workspaces import create_workspace
from touchline.testing import FrozenClock, identify, send_events
from touchline.web.app import create_app

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
    from fastapi.testclient import TestClient

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
PUBLIC_URL = "https://shop.example"
EMAIL = "anna@example.com"
ONE_CLICK = {"List-Unsubscribe": "One-Click"}
MAILBOX_AGENT = {"User-Agent": "MailboxProvider/2.0"}


class Customer:
    """The app, a workspace, one customer who agreed to email, and a frozen clock."""

    def __init__(self, engine: Engine, client: TestClient, clock: FrozenClock, locale: str) -> None:
        self.engine = engine
        self.client = client
        self.clock = clock
        self.ws = create_workspace(engine, "Цветы у дома", now=T0).id
        send_events(
            engine,
            self.ws,
            [identify("anna", email=EMAIL, phone="+79161234567", locale=locale)],
            now=T0,
        )
        with engine.connect() as conn:
            self.pid: int = get_profile(conn, self.ws, "anna")["id"]
        self.record(channel="email", granted=True, source="checkout form")

    def record(self, **fields: Any) -> None:
        with transaction(self.engine) as conn:
            record_consent(
                conn,
                workspace_id=self.ws,
                profile_id=self.pid,
                at=self.clock.now(),
                provenance=Provenance(source=fields.pop("source", "test")),
                **fields,
            )

    def link(self, kind: LinkKind, channel: str = "email", **fields: Any) -> str:
        """The path of a signed link, e.g. ``/u/<token>``."""
        with self.engine.connect() as conn:
            url = link_for(
                conn,
                kind=kind,
                public_url=PUBLIC_URL,
                workspace_id=self.ws,
                profile_id=self.pid,
                channel=channel,
                now=self.clock.now(),
                **fields,
            )
        return url.removeprefix(PUBLIC_URL)

    def ledger(self) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            return ledger(conn, self.ws, self.pid)

    def suppressions(self) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            return list_suppressions(conn, self.ws)

    def decide(self, channel: str = "email", topic: str | None = None) -> Decision:
        """What the delivery rules say about a marketing message to this customer now."""
        address = {"email": EMAIL, "sms": "+79161234567"}[channel]
        with self.engine.connect() as conn:
            consents = load_consents(conn, self.ws, self.pid)
            suppressions = load_suppressions(conn, self.ws, [(channel, address)])
        candidate = Candidate(
            channel=channel,
            purpose="marketing",
            category=topic or "selling",
            journey="weekly-offers",
            address=address,
            topic=topic,
        )
        return decide(
            candidate,
            consents=consents,
            suppressions=suppressions,
            sent=[],
            policy=Policy(),
            now=self.clock.now(),
        )

    def set_settings(self, settings: dict[str, Any]) -> None:
        with transaction(self.engine) as conn:
            conn.execute(
                update(workspaces).where(workspaces.c.id == self.ws).values(settings=settings)
            )


def make_customer(engine: Engine, database_url: str, locale: str) -> Iterator[Customer]:
    clock = FrozenClock(T0)
    settings = Settings(database_url=database_url, public_url=PUBLIC_URL)
    app = create_app(settings, engine=engine, clock=clock)
    with TestClient(app) as client:
        yield Customer(engine, client, clock, locale)


@pytest.fixture
def anna(engine: Engine, database_url: str) -> Iterator[Customer]:
    yield from make_customer(engine, database_url, "ru-RU")


@pytest.fixture
def ann(engine: Engine, database_url: str) -> Iterator[Customer]:
    yield from make_customer(engine, database_url, "en-GB")


def html_of(response: httpx.Response, status: int = 200) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("text/html")
    assert response.headers["cache-control"] == "no-store"
    return response.text


def csrf_of(page: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', page)
    assert found is not None, page
    return found.group(1)


def tampered(path: str) -> str:
    """The path with one character of the token's signature changed."""
    swap = "B" if path[-3] != "B" else "C"
    return path[:-3] + swap + path[-2:]


# -- unsubscribe ----------------------------------------------------------------------------


def test_opening_the_unsubscribe_link_unsubscribes_no_one(anna: Customer) -> None:
    """A GET (what link scanners do) shows the question and a POST button and writes nothing."""
    # given
    path = anna.link("unsubscribe", message_id=77)
    # when
    page = html_of(anna.client.get(path))
    # then
    assert "Отписаться от писем?" in page
    assert '<form method="post">' in page
    assert "Цветы у дома" in page
    assert [row["granted"] for row in anna.ledger()] == [True]
    assert anna.suppressions() == []
    assert anna.decide().outcome == "send"


def test_one_click_post_unsubscribes_with_provenance_and_suppresses(anna: Customer) -> None:
    """RFC 8058 POST records a withdrawal with source, IP, user agent and suppresses the address."""
    # given
    path = anna.link("unsubscribe", message_id=77)
    anna.clock.advance(timedelta(days=3))
    # when
    response = anna.client.post(path, data=ONE_CLICK, headers=MAILBOX_AGENT)
    # then
    page = html_of(response)
    assert "Вы отписались" in page
    assert f'href="{PUBLIC_URL}/p/' in page
    withdrawal = anna.ledger()[-1]
    assert withdrawal["granted"] is False
    assert withdrawal["channel"] == "email" and withdrawal["topic"] is None
    assert withdrawal["source"] == "one-click (message #77)"
    assert withdrawal["ip"] == "testclient"
    assert withdrawal["user_agent"] == "MailboxProvider/2.0"
    assert withdrawal["address"] == EMAIL
    assert withdrawal["at"] == (T0 + timedelta(days=3)).isoformat()
    [suppression] = anna.suppressions()
    assert (suppression["channel"], suppression["address"]) == ("email", EMAIL.casefold())
    assert suppression["reason"] == "unsubscribe"
    assert anna.decide().reason == "suppressed:unsubscribe"


def test_one_click_is_idempotent(anna: Customer) -> None:
    """A second one-click POST answers 200 and writes neither ledger row nor suppression."""
    # given
    path = anna.link("unsubscribe", message_id=77)
    html_of(anna.client.post(path, data=ONE_CLICK))
    rows, suppressed = anna.ledger(), anna.suppressions()
    # when
    anna.clock.advance(timedelta(hours=1))
    again = anna.client.post(path, data=ONE_CLICK)
    # then
    assert "Вы отписались" in html_of(again)
    assert anna.ledger() == rows
    assert anna.suppressions() == suppressed
    assert len(rows) == 2


def test_one_click_accepts_a_multipart_body(anna: Customer) -> None:
    """Mailbox providers may post the one-click body as multipart/form-data (RFC 8058 says SHOULD)."""
    # given
    path = anna.link("unsubscribe")
    boundary = "x0x0x0"
    body = (
        f"--{boundary}\r\n"
        'Content-Disposition: form-data; name="List-Unsubscribe"\r\n\r\n'
        f"One-Click\r\n--{boundary}--\r\n"
    )
    # when
    response = anna.client.post(
        path,
        content=body.encode(),
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    # then
    html_of(response)
    assert anna.ledger()[-1]["source"] == "one-click"
    assert anna.decide().outcome == "skip"


def test_the_confirmation_button_unsubscribes_as_the_unsubscribe_page(anna: Customer) -> None:
    """The page's own form (no one-click body) unsubscribes too, with source 'unsubscribe page'."""
    # given
    path = anna.link("unsubscribe", message_id=5)
    # when
    html_of(anna.client.post(path))
    # then
    assert anna.ledger()[-1]["source"] == "unsubscribe page (message #5)"
    assert anna.decide().reason == "suppressed:unsubscribe"


def test_a_topic_link_withdraws_only_that_topic(anna: Customer) -> None:
    """A topic unsubscribe keeps the channel, names the workspace's label, suppresses nothing."""
    # given
    anna.set_settings({"topics": {"selling": "Распродажи"}})
    path = anna.link("unsubscribe", topic="selling")
    # when
    question = html_of(anna.client.get(path))
    html_of(anna.client.post(path, data=ONE_CLICK))
    # then
    assert "Отписаться от писем «Распродажи»?" in question
    withdrawal = anna.ledger()[-1]
    assert (withdrawal["topic"], withdrawal["granted"]) == ("selling", False)
    assert anna.suppressions() == []
    assert anna.decide(topic="selling").reason == "topic_withdrawn"
    assert anna.decide(topic="engaging").outcome == "send"


def test_pages_speak_english_to_a_customer_with_an_english_locale(ann: Customer) -> None:
    """A customer whose locale is en-GB gets the pages in English."""
    path = ann.link("unsubscribe", topic="selling")
    page = html_of(ann.client.get(path))
    assert "Unsubscribe from “Offers and discounts” emails?" in page
    assert '<html lang="en">' in page


# -- bad links ----------------------------------------------------------------------------


def test_a_tampered_link_answers_a_400_page_and_writes_nothing(anna: Customer) -> None:
    """Browser pages refuse a changed token with an HTML 400, never a stack trace."""
    # given
    bad_u = tampered(anna.link("unsubscribe"))
    bad_p = tampered(anna.link("preferences"))
    bad_c = tampered(anna.link("confirm"))
    # when / then
    for response in (
        anna.client.get(bad_u),
        anna.client.post(bad_u),
        anna.client.get(bad_p),
        anna.client.get(bad_c),
        anna.client.post(bad_c),
        anna.client.get("/u/not-a-token"),
    ):
        page = html_of(response, 400)
        assert "Ссылка не работает" in page
        assert "Traceback" not in page
    assert len(anna.ledger()) == 1
    assert anna.suppressions() == []


def test_a_tampered_one_click_post_answers_json(anna: Customer) -> None:
    """A one-click POST with a bad token answers 400 {code: bad_link, message} for the machine."""
    response = anna.client.post(tampered(anna.link("unsubscribe")), data=ONE_CLICK)
    assert response.status_code == 400
    body = response.json()
    assert set(body) == {"code", "message"}
    assert body["code"] == "bad_link"
    assert len(anna.ledger()) == 1


def test_a_link_of_another_kind_opens_no_page(anna: Customer) -> None:
    """A preference link does not unsubscribe, and an unsubscribe link opens no preference page."""
    prefs = anna.link("preferences")
    unsub = anna.link("unsubscribe")
    html_of(anna.client.post("/u/" + prefs.removeprefix("/p/"), data={}), 400)
    html_of(anna.client.get("/p/" + unsub.removeprefix("/u/")), 400)
    assert len(anna.ledger()) == 1


# -- preferences --------------------------------------------------------------------------


def test_the_preference_page_shows_the_ledgers_state(anna: Customer) -> None:
    """Email subscribed with 'selling' off, SMS not subscribed: the checkboxes say exactly that."""
    # given
    anna.record(channel="email", granted=False, topic="selling")
    # when
    page = html_of(anna.client.get(anna.link("preferences", channel="sms")))
    # then
    assert page.index('value="sms"') < page.index('value="email"')  # the link's channel first
    assert 'name="subscribed" value="email" checked>' in page
    assert 'name="subscribed" value="sms">' in page
    assert 'name="topic" value="email:engaging" checked>' in page
    assert 'name="topic" value="email:selling">' in page
    assert "Скидки и акции" in page and "Новости и советы" in page
    assert "an***@example.com" in page
    assert EMAIL not in page


def test_saving_a_topic_opt_out_writes_one_withdrawal_the_rules_honour(anna: Customer) -> None:
    """Unticking 'selling' writes only that topic withdrawal, and decide then skips selling mail."""
    # given
    path = anna.link("preferences")
    csrf = csrf_of(html_of(anna.client.get(path)))
    anna.clock.advance(timedelta(minutes=5))
    form = {
        "csrf": csrf,
        "channel": ["email", "sms"],
        "subscribed": ["email"],
        "topic": ["email:engaging", "sms:engaging", "sms:selling"],
    }
    # when
    response = anna.client.post(path, data=form, headers=MAILBOX_AGENT)
    # then
    page = html_of(response)
    assert "Настройки сохранены." in page
    assert 'name="topic" value="email:selling">' in page
    written = anna.ledger()[1:]
    assert [(r["channel"], r["topic"], r["granted"]) for r in written] == [
        ("email", "selling", False)
    ]
    assert written[0]["source"] == "preference page"
    assert written[0]["user_agent"] == "MailboxProvider/2.0"
    assert anna.decide(topic="selling") == Decision(
        "skip",
        "topic_withdrawn",
        None,
        f"the customer opted out of selling on email at {written[0]['at']} (preference page)",
    )
    assert anna.decide(topic="engaging").outcome == "send"


def test_resubscribing_on_the_preference_page_is_a_confirmed_grant(anna: Customer) -> None:
    """After a one-click unsubscribe, ticking the channel again grants consent that lifts it."""
    # given
    html_of(anna.client.post(anna.link("unsubscribe"), data=ONE_CLICK))
    assert anna.decide().reason == "suppressed:unsubscribe"
    path = anna.link("preferences")
    csrf = csrf_of(html_of(anna.client.get(path)))
    anna.clock.advance(timedelta(days=1))
    # when
    html_of(
        anna.client.post(
            path,
            data={
                "csrf": csrf,
                "channel": ["email"],
                "subscribed": ["email"],
                "topic": ["email:engaging", "email:selling"],
            },
        )
    )
    # then
    grant = anna.ledger()[-1]
    assert (grant["granted"], grant["confirmed"], grant["source"]) == (
        True,
        True,
        "preference page",
    )
    assert len(anna.ledger()) == 3
    assert anna.decide().outcome == "send"


def test_saving_without_the_csrf_field_is_refused(anna: Customer) -> None:
    """A POST to the preference page without (or with a wrong) check field writes nothing."""
    path = anna.link("preferences")
    form = {"channel": ["email"], "topic": []}
    missing = anna.client.post(path, data=form)
    wrong = anna.client.post(path, data={**form, "csrf": "A" * 22})
    for response in (missing, wrong):
        assert "Форма устарела" in html_of(response, 400)
    assert len(anna.ledger()) == 1


def test_a_channel_not_on_the_page_is_refused(anna: Customer) -> None:
    """The form cannot name a channel outside those the page shows."""
    path = anna.link("preferences")
    csrf = csrf_of(html_of(anna.client.get(path)))
    response = anna.client.post(path, data={"csrf": csrf, "channel": ["pigeon"]})
    html_of(response, 400)
    assert len(anna.ledger()) == 1


# -- double opt-in ------------------------------------------------------------------------


def test_double_opt_in_confirms_a_pending_grant_once(anna: Customer) -> None:
    """GET shows a button and confirms nothing; POST confirms; a second POST records nothing."""
    # given: a pending SMS subscription
    anna.record(channel="sms", granted=True, confirmed=False, source="signup form")
    assert anna.decide("sms").reason == "consent_unconfirmed"
    path = anna.link("confirm", channel="sms")
    # when
    ask = html_of(anna.client.get(path))
    rows_after_get = anna.ledger()
    anna.clock.advance(timedelta(minutes=10))
    first = html_of(anna.client.post(path, headers=MAILBOX_AGENT))
    second = html_of(anna.client.post(path))
    # then
    assert "Подтвердите подписку" in ask and '<form method="post">' in ask
    assert len(rows_after_get) == 2
    assert "Подписка подтверждена" in first and "Подписка подтверждена" in second
    rows = anna.ledger()
    assert len(rows) == 3
    confirmation = rows[-1]
    assert (confirmation["channel"], confirmation["granted"], confirmation["confirmed"]) == (
        "sms",
        True,
        True,
    )
    assert confirmation["source"] == "double opt-in link"
    assert confirmation["ip"] == "testclient"
    assert confirmation["user_agent"] == "MailboxProvider/2.0"
    assert anna.decide("sms").outcome != "skip"


def test_confirming_with_nothing_pending_says_so(anna: Customer) -> None:
    """A confirmation link for a channel without a pending grant records nothing."""
    path = anna.link("confirm", channel="sms")
    page = html_of(anna.client.post(path))
    assert "Подтверждать нечего" in page
    assert len(anna.ledger()) == 1


# -- links in messages --------------------------------------------------------------------


def test_message_links_open_the_pages_and_mailto_needs_the_setting(anna: Customer) -> None:
    """links_for_message gives working unsubscribe and preference URLs; mailto only when configured."""

    # given
    def links(channel: str) -> dict[str, str]:
        with anna.engine.connect() as conn:
            return links_for_message(
                conn,
                public_url=PUBLIC_URL,
                workspace_id=anna.ws,
                profile_id=anna.pid,
                channel=channel,
                message_id=31,
                now=anna.clock.now(),
            )

    # when
    plain = links("email")
    anna.set_settings({"sender": {"unsubscribe_mailto": "unsubscribe@shop.example"}})
    with_mailto = links("email")
    sms = links("sms")
    # then
    assert set(plain) == {"unsubscribe_url", "preferences_url"}
    assert with_mailto["unsubscribe_mailto"] == "unsubscribe@shop.example"
    assert set(sms) == {"unsubscribe_url", "preferences_url"}
    assert plain["unsubscribe_url"].startswith(f"{PUBLIC_URL}/u/")
    html_of(anna.client.get(plain["preferences_url"].removeprefix(PUBLIC_URL)))
    html_of(anna.client.post(plain["unsubscribe_url"].removeprefix(PUBLIC_URL), data=ONE_CLICK))
    assert anna.ledger()[-1]["source"] == "one-click (message #31)"


def test_a_secret_made_on_a_read_connection_is_kept(anna: Customer) -> None:
    """For a workspace without a link secret, links made on a read connection still verify later."""
    # given: a workspace from before link secrets
    with transaction(anna.engine) as conn:
        conn.execute(update(workspaces).where(workspaces.c.id == anna.ws).values(link_secret=None))
    # when: links are made on a connection that is never committed
    with anna.engine.connect() as conn:
        url = links_for_message(
            conn,
            public_url=PUBLIC_URL,
            workspace_id=anna.ws,
            profile_id=anna.pid,
            channel="email",
            message_id=None,
            now=anna.clock.now(),
        )["unsubscribe_url"]
        conn.rollback()
    # then
    with anna.engine.connect() as conn:
        stored = conn.execute(
            select(workspaces.c.link_secret).where(workspaces.c.id == anna.ws)
        ).scalar_one()
    token = url.rsplit("/", 1)[1]
    assert read_token(bytes.fromhex(stored), token, kind="unsubscribe").profile_id == anna.pid
    html_of(anna.client.get(url.removeprefix(PUBLIC_URL)))
