"""Tracking end to end on SQLite and PostgreSQL: pixels, click links, SMS short links, journeys.

Messages come from real journeys run by the worker; their content is made
measurable with :func:`track_rendered` as the dispatcher does, and the links
in it are fetched through the app with a frozen clock.
"""

from __future__ import annotations

import re
import textwrap
import warnings
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from html import unescape
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, select, update

from touchline.config import Settings
from touchline.journeys.loader import LoadedJourney, load_journey_text
from touchline.measure import engagement as engagement_module
from touchline.measure.engagement import engagement, record_message_event
from touchline.measure.tokens import click_url, make_track_token
from touchline.measure.tracking import track_rendered
from touchline.store.db import transaction
from touchline.store.journeys import apply_journeys
from touchline.store.tables import events, instances, message_events, outbox, profiles, short_links
from touchline.store.workspaces import create_workspace
from touchline.testing import FrozenClock, identify, run_until_idle, send_events, track
from touchline.web import track as track_routes
from touchline.web.app import create_app
from touchline.web.track import PIXEL_GIF
from touchline.worker.loop import Worker

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
    from fastapi.testclient import TestClient

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
PUBLIC_URL = "https://t.shop.example"
BROWSER = {
    "User-Agent": (
        "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 "
        "(KHTML, like Gecko) Mobile/15E148"
    )
}
SCANNER = {"User-Agent": "Mozilla/5.0 (compatible; Barracuda Sentinel link scanner)"}
SALE = "https://shop.example/sale?utm_source=touchline&utm_medium=email"
NEW = "https://shop.example/new"

NEWS = """
journey: weekly-news
category: engaging
trigger: {event: News Published}
entry: {reentry: always}
steps:
  - id: mail
    send: {channel: email, template: news}
  - id: wait-open
    wait_for:
      event: Email Opened
      where: event.properties.journey == "weekly-news"
      timeout: 24h
      on_event: exit
  - id: text
    send: {channel: sms, template: news-sms}
"""

FLASH = """
journey: flash-sale
category: selling
trigger: {event: Sale Started}
entry: {reentry: always}
steps:
  - send: {channel: sms, template: flash}
"""

RECEIPT = """
journey: receipt-fallback
category: transactional
trigger: {event: Order Placed}
entry: {reentry: always}
steps:
  - id: mail
    send: {channel: email, template: receipt}
  - id: wait-fate
    wait_for:
      event: Message Failed
      where: event.properties.journey == "receipt-fallback"
      timeout: 1h
      on_event: text
      on_timeout: exit
  - id: text
    send: {channel: sms, template: receipt-sms}
"""

HTML = f"""<html><body><p><a href="{SALE.replace("&", "&amp;")}">Распродажа</a>
<a href="{NEW}">Новинки</a> <a href="mailto:help@shop.example">Написать</a></p></body></html>"""


def journey(text: str, name: str) -> LoadedJourney:
    text = textwrap.dedent(text)
    return LoadedJourney(path=name, spec=load_journey_text(text, file=name), source=text)


class Shop:
    """A workspace with the two journeys, one customer, a worker and the app, all on one clock."""

    def __init__(self, engine: Engine, client: TestClient, clock: FrozenClock) -> None:
        self.engine = engine
        self.client = client
        self.clock = clock
        self.ws = create_workspace(engine, "shop", now=T0).id
        with transaction(engine) as conn:
            apply_journeys(
                conn,
                self.ws,
                [
                    journey(NEWS, "news.yaml"),
                    journey(FLASH, "flash.yaml"),
                    journey(RECEIPT, "receipt.yaml"),
                ],
                now=T0,
            )
        self.worker = Worker(engine, clock=clock, owner="w1")
        self.trigger(identify("anna", email="anna@example.com", phone="+79161234567"))

    def trigger(self, *raws: dict[str, Any]) -> None:
        send_events(self.engine, self.ws, list(raws), now=self.clock.now())
        run_until_idle(self.worker, self.clock)

    def advance(self, delta: timedelta) -> None:
        run_until_idle(self.worker, self.clock, until=self.clock.now() + delta)

    def message(self, event: str) -> int:
        """Trigger ``event``, take the message its journey queued and mark it sent now."""
        before = set(self.messages())
        self.trigger(track("anna", event))
        (outbox_id,) = set(self.messages()) - before
        with transaction(self.engine) as conn:
            conn.execute(
                update(outbox)
                .where(outbox.c.id == outbox_id)
                .values(status="sent", sent_at=self.clock.now())
            )
            record_message_event(
                conn, workspace_id=self.ws, outbox_id=outbox_id, kind="sent", at=self.clock.now()
            )
        return outbox_id

    def messages(self) -> list[int]:
        with self.engine.connect() as conn:
            return list(conn.execute(select(outbox.c.id).order_by(outbox.c.id)).scalars())

    def templates(self) -> list[str]:
        with self.engine.connect() as conn:
            return list(conn.execute(select(outbox.c.template).order_by(outbox.c.id)).scalars())

    def email(self, outbox_id: int, html: str = HTML) -> str:
        """The HTML of a message as it would go out: click links and the open pixel."""
        with self.engine.connect() as conn:
            out, _ = track_rendered(
                conn,
                channel="email",
                html=html,
                text=None,
                public_url=PUBLIC_URL,
                workspace_id=self.ws,
                outbox_id=outbox_id,
                now=self.clock.now(),
            )
        assert out is not None
        return out

    def sms(self, outbox_id: int, text: str, *, channel: str = "sms") -> str:
        with self.engine.connect() as conn:
            # A read already under way, as on the dispatcher's render connection.
            conn.execute(select(outbox.c.id)).all()
            out, shortened = track_rendered(
                conn,
                channel=channel,
                html=None,
                text=text,
                public_url=PUBLIC_URL,
                workspace_id=self.ws,
                outbox_id=outbox_id,
                now=self.clock.now(),
            )
        assert out is None and shortened is not None
        return shortened

    def rows(self, kind: str) -> list[Any]:
        with self.engine.connect() as conn:
            return conn.execute(
                select(message_events)
                .where(message_events.c.kind == kind)
                .order_by(message_events.c.id)
            ).all()

    def events(self, name: str) -> list[Any]:
        with self.engine.connect() as conn:
            return conn.execute(
                select(events).where(events.c.name == name).order_by(events.c.id)
            ).all()


@pytest.fixture
def shop(engine: Engine, database_url: str) -> Iterator[Shop]:
    clock = FrozenClock(T0)
    settings = Settings(database_url=database_url, public_url=PUBLIC_URL)
    app = create_app(settings, engine=engine, clock=clock)
    with TestClient(app) as client:
        yield Shop(engine, client, clock)


def path(url: str) -> str:
    assert url.startswith(PUBLIC_URL), url
    return url.removeprefix(PUBLIC_URL)


def pixel_of(html: str) -> str:
    found = re.search(r'<img src="([^"]+/t/o/[^"]+\.gif)"', html)
    assert found is not None, html
    return path(unescape(found.group(1)))


def clicks_of(html: str) -> list[str]:
    return [path(unescape(url)) for url in re.findall(r'href="([^"]+/t/c/[^"]+)"', html)]


def redirected(response: httpx.Response) -> str:
    assert response.status_code == 302, response.text
    assert response.headers["cache-control"] == "no-store"
    return response.headers["location"]


# -- opens ----------------------------------------------------------------------------------


def test_the_pixel_records_each_open_and_one_email_opened_event(shop: Shop) -> None:
    """Two loads give two opened rows and one Email Opened event; last_seen_at stays put."""
    # given
    message = shop.message("News Published")
    pixel = pixel_of(shop.email(message))
    with shop.engine.connect() as conn:
        seen_before = conn.execute(select(profiles.c.last_seen_at)).scalar_one()
    shop.clock.advance(timedelta(minutes=5))
    # when
    first = shop.client.get(pixel, headers=BROWSER)
    shop.clock.advance(timedelta(hours=1))
    second = shop.client.get(pixel, headers=BROWSER)
    # then
    for response in (first, second):
        assert response.status_code == 200
        assert response.headers["content-type"] == "image/gif"
        assert response.headers["cache-control"] == "no-store"
        assert response.content == PIXEL_GIF
    opens = shop.rows("opened")
    assert [(r.outbox_id, r.machine, r.channel) for r in opens] == [(message, False, "email")] * 2
    assert opens[0].at == T0 + timedelta(minutes=5)
    assert opens[0].user_agent == BROWSER["User-Agent"]
    (event,) = shop.events("Email Opened")
    assert event.message_id == f"open:{message}"
    assert event.properties == {
        "message_id": message,
        "journey": "weekly-news",
        "step": "mail",
        "template": "news",
        "channel": "email",
        "url": None,
    }
    with shop.engine.connect() as conn:
        assert conn.execute(select(profiles.c.last_seen_at)).scalar_one() == seen_before


def test_a_pixel_that_does_not_verify_still_answers_the_image(shop: Shop) -> None:
    """An image in an old mail never breaks; the fetch is simply not recorded."""
    message = shop.message("News Published")
    forged = make_track_token(b"x" * 32, kind="open", workspace_id=shop.ws, outbox_id=message)
    response = shop.client.get(f"/t/o/{forged}.gif", headers=BROWSER)
    assert response.status_code == 200
    assert response.content == PIXEL_GIF
    assert shop.rows("opened") == []


def test_an_apple_proxy_open_is_stored_as_a_machine_and_makes_no_event(shop: Shop) -> None:
    """Apple's prefetch is recorded with its reason but opens nothing, and rates leave it out."""
    # given
    message = shop.message("News Published")
    pixel = pixel_of(shop.email(message))
    shop.clock.advance(timedelta(minutes=1))
    # when
    shop.client.get(pixel, headers={"User-Agent": "Mozilla/5.0"})
    # then
    (row,) = shop.rows("opened")
    assert (row.machine, row.detail) == (True, "privacy_proxy")
    assert shop.events("Email Opened") == []
    with shop.engine.connect() as conn:
        counts = engagement(conn, shop.ws, since=T0, until=T0 + timedelta(days=1))
    assert (counts.sent, counts.opened, counts.machine_opened, counts.open_rate) == (1, 0, 1, 0.0)


# -- clicks ---------------------------------------------------------------------------------


def test_a_click_redirects_to_its_destination_and_is_recorded(shop: Shop) -> None:
    """302 to the exact URL the mail linked (UTM query intact), a clicked row, one event."""
    # given
    message = shop.message("News Published")
    sale, new = clicks_of(shop.email(message))
    shop.clock.advance(timedelta(minutes=30))
    # when
    location = redirected(shop.client.get(sale, headers=BROWSER, follow_redirects=False))
    shop.clock.advance(timedelta(minutes=1))
    redirected(shop.client.get(new, headers=BROWSER, follow_redirects=False))
    # then
    assert location == SALE
    assert [(r.url, r.machine) for r in shop.rows("clicked")] == [(SALE, False), (NEW, False)]
    (event,) = shop.events("Email Link Clicked")
    assert event.message_id == f"click:{message}"
    assert event.properties["url"] == SALE
    assert event.properties["journey"] == "weekly-news"
    with shop.engine.connect() as conn:
        counts = engagement(conn, shop.ws, since=T0, until=T0 + timedelta(days=1))
    assert (counts.clicked, counts.click_rate) == (1, 1.0)


def test_a_forged_or_tampered_click_link_is_refused_without_redirect(shop: Shop) -> None:
    """A token not signed with the workspace's key answers 400 bad_link and goes nowhere."""
    # given
    message = shop.message("News Published")
    (sale, _) = clicks_of(shop.email(message))
    forged = make_track_token(
        b"k" * 32, kind="click", workspace_id=shop.ws, outbox_id=message, url="https://evil.example"
    )
    swap = "A" if sale[-2] != "A" else "B"
    tampered = sale[:-2] + swap + sale[-1]
    for bad in (path(click_url(PUBLIC_URL, forged)), tampered, "/t/c/nope.AAAA"):
        # when
        response = shop.client.get(bad, headers=BROWSER, follow_redirects=False)
        # then
        assert response.status_code == 400, bad
        assert response.json()["code"] == "bad_link"
        assert "location" not in response.headers
    assert shop.rows("clicked") == []


def test_a_scanner_click_right_after_sending_is_a_machine(shop: Shop) -> None:
    """A gateway scanner following a link 1 s after sending is flagged; the person's later click counts."""
    # given
    message = shop.message("News Published")
    (sale, _) = clicks_of(shop.email(message))
    shop.clock.advance(timedelta(seconds=1))
    # when
    scanned = redirected(shop.client.get(sale, headers=SCANNER, follow_redirects=False))
    shop.clock.advance(timedelta(hours=3))
    clicked = redirected(shop.client.get(sale, headers=BROWSER, follow_redirects=False))
    # then
    assert scanned == clicked == SALE
    rows = shop.rows("clicked")
    assert [(r.machine, r.detail) for r in rows] == [(True, "scanner_agent"), (False, None)]
    (event,) = shop.events("Email Link Clicked")
    assert event.timestamp == T0 + timedelta(hours=3, seconds=1)


def test_clicking_every_link_at_once_flags_the_whole_burst(shop: Shop) -> None:
    """Two different links of one message within a second: both clicks become machine."""
    # given
    message = shop.message("News Published")
    sale, new = clicks_of(shop.email(message))
    shop.clock.advance(timedelta(hours=1))
    # when
    shop.client.get(sale, headers=BROWSER, follow_redirects=False)
    shop.clock.advance(timedelta(milliseconds=400))
    shop.client.get(new, headers=BROWSER, follow_redirects=False)
    # then
    assert [(r.machine, r.detail) for r in shop.rows("clicked")] == [
        (True, "burst"),
        (True, "burst"),
    ]


def test_a_failed_write_still_redirects(shop: Shop, monkeypatch: pytest.MonkeyPatch) -> None:
    """If recording fails the customer still reaches the shop; the failure is only logged."""
    # given
    message = shop.message("News Published")
    (sale, _) = clicks_of(shop.email(message))

    def broken(conn: Any, hit: Any) -> None:
        raise RuntimeError("disk full")

    monkeypatch.setattr(track_routes, "record_hit", broken)
    # when
    response = shop.client.get(sale, headers=BROWSER, follow_redirects=False)
    # then
    assert redirected(response) == SALE
    assert shop.rows("clicked") == []


# -- SMS ------------------------------------------------------------------------------------


def test_an_sms_short_link_redirects_and_records(shop: Shop) -> None:
    """The SMS carries /s/<code>; the same code on a second render; a tap records and redirects."""
    # given
    message = shop.message("Sale Started")
    text = f"Распродажа до -50%: {SALE}."
    shortened = shop.sms(message, text)
    again = shop.sms(message, text)
    found = re.fullmatch(
        rf"Распродажа до -50%: {re.escape(PUBLIC_URL)}(/s/[0-9A-Za-z]{{8}})\.", shortened
    )
    assert found is not None, shortened
    shop.clock.advance(timedelta(minutes=10))
    # when
    location = redirected(shop.client.get(found.group(1), headers=BROWSER, follow_redirects=False))
    # then
    assert again == shortened
    assert location == SALE
    with shop.engine.connect() as conn:
        assert len(conn.execute(select(short_links)).all()) == 1
    (row,) = shop.rows("clicked")
    assert (row.outbox_id, row.channel, row.url, row.machine) == (message, "sms", SALE, False)
    (event,) = shop.events("SMS Link Clicked")
    assert event.message_id == f"click:{message}"
    assert event.properties["journey"] == "flash-sale"


def test_channels_without_tracking_are_left_unchanged(shop: Shop) -> None:
    """A Telegram message keeps its links as written and no short link is made."""
    message = shop.message("Sale Started")
    assert shop.sms(message, f"Скидки: {SALE}", channel="telegram") == f"Скидки: {SALE}"
    with shop.engine.connect() as conn:
        assert conn.execute(select(short_links)).all() == []


def test_an_unknown_short_code_is_not_found(shop: Shop) -> None:
    """A code touchline never made answers 404 and records nothing."""
    for code in ("Zz9Zz9Zz", "short", "../../etc"):
        response = shop.client.get(f"/s/{code}", follow_redirects=False)
        assert response.status_code == 404
    assert shop.rows("clicked") == []


# -- ledger ---------------------------------------------------------------------------------


def test_delivery_outcomes_are_recorded_against_the_message(shop: Shop) -> None:
    """record_message_event copies customer, journey and channel; an unknown message writes nothing."""
    # given
    message = shop.message("News Published")
    # when
    with transaction(shop.engine) as conn:
        delivered = record_message_event(
            conn,
            workspace_id=shop.ws,
            outbox_id=message,
            kind="delivered",
            at=shop.clock.now(),
            detail="250 OK",
        )
        unknown = record_message_event(
            conn, workspace_id=shop.ws, outbox_id=9999, kind="bounced", at=shop.clock.now()
        )
        with pytest.raises(ValueError):
            record_message_event(
                conn, workspace_id=shop.ws, outbox_id=message, kind="opened", at=shop.clock.now()
            )
    # then
    assert (delivered, unknown) == (True, False)
    (row,) = shop.rows("delivered")
    with shop.engine.connect() as conn:
        profile_id = conn.execute(select(profiles.c.id)).scalar_one()
    assert (row.profile_id, row.channel, row.detail, row.machine) == (
        profile_id,
        "email",
        "250 OK",
        False,
    )
    assert row.journey_id is not None
    assert shop.rows("bounced") == []
    assert {"sent", "unsubscribed", "failed"} <= engagement_module.OUTCOME_KINDS


# -- journeys -------------------------------------------------------------------------------


@pytest.mark.parametrize("opened", [False, True], ids=["no-open", "opened"])
def test_a_journey_waiting_for_an_open_falls_back_to_sms_only_without_one(
    shop: Shop, opened: bool
) -> None:
    """wait_for Email Opened: no open in 24 h sends the SMS; an open ends the journey instead."""
    # given
    message = shop.message("News Published")
    pixel = pixel_of(shop.email(message))
    shop.advance(timedelta(hours=2))
    # when
    if opened:
        shop.client.get(pixel, headers=BROWSER)
        run_until_idle(shop.worker, shop.clock)
    shop.advance(timedelta(days=2))
    # then
    with shop.engine.connect() as conn:
        status = conn.execute(select(instances.c.status)).scalar_one()
    assert status == "completed"
    assert shop.templates() == (["news"] if opened else ["news", "news-sms"])
    assert len(shop.events("Email Opened")) == int(opened)


@pytest.mark.parametrize("fate", ["sent", "failed"])
def test_a_journey_waiting_for_its_message_to_fail_texts_instead(shop: Shop, fate: str) -> None:
    """A failed receipt email falls back to SMS; a sent one stores no Message Sent event,
    since nothing awaits it."""
    # given
    before = set(shop.messages())
    shop.trigger(track("anna", "Order Placed"))
    (mail,) = set(shop.messages()) - before
    # when: the outcome is recorded twice, as a crash inside the send window would
    for _ in range(2):
        with transaction(shop.engine) as conn:
            record_message_event(
                conn,
                workspace_id=shop.ws,
                outbox_id=mail,
                kind=fate,
                at=shop.clock.now(),
                detail=None if fate == "sent" else "550 mailbox unavailable",
            )
    shop.advance(timedelta(hours=2))
    # then
    if fate == "failed":
        (event,) = shop.events("Message Failed")
        assert event.properties["message_id"] == mail
        assert event.properties["journey"] == "receipt-fallback"
        assert shop.templates()[-1] == "receipt-sms"
    else:
        assert shop.events("Message Sent") == []
        assert shop.templates()[-1] == "receipt"


SENT_THEN = """
journey: ticket
category: transactional
trigger: {event: Ticket Booked}
entry: {reentry: always}
steps:
  - id: mail
    send: {channel: email, template: ticket}
  - id: wait-sent
    wait_for:
      event: Message Sent
      where: event.properties.journey == "ticket"
      timeout: 1h
      on_event: note
      on_timeout: exit
  - id: note
    send: {channel: sms, template: ticket-sent}
"""


def test_a_message_sent_event_is_stored_once_for_a_customer_awaiting_it(shop: Shop) -> None:
    """A customer whose journey waits for Message Sent gets the event, once per message."""
    # given
    with transaction(shop.engine) as conn:
        apply_journeys(conn, shop.ws, [journey(SENT_THEN, "ticket.yaml")], now=shop.clock.now())
    before = set(shop.messages())
    shop.trigger(track("anna", "Ticket Booked"))
    (mail,) = set(shop.messages()) - before
    # when
    for _ in range(2):
        with transaction(shop.engine) as conn:
            record_message_event(
                conn, workspace_id=shop.ws, outbox_id=mail, kind="sent", at=shop.clock.now()
            )
    shop.advance(timedelta(minutes=5))
    # then
    (event,) = shop.events("Message Sent")
    assert event.properties["message_id"] == mail
    assert shop.templates()[-1] == "ticket-sent"
