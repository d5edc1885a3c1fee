"""The catalog on SQLite and PostgreSQL: products, interest kept from events, and the
back-in-stock and price-drop events a change sends to the customers it concerns."""

from __future__ import annotations

import asyncio
import textwrap
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import Engine, select

from touchline.audience.alerts import (
    BACK_IN_STOCK_EVENT,
    PRICE_DROPPED_EVENT,
    fire_alerts,
    fire_chunk,
)
from touchline.audience.catalog import (
    CatalogRules,
    UpsertResult,
    archive_product,
    get_product,
    list_products,
    parse_product,
    upsert_products,
)
from touchline.errors import NotFound
from touchline.journeys.loader import LoadedJourney, load_journey_text
from touchline.messaging.channels.capture import CaptureChannel
from touchline.messaging.dispatcher import Dispatcher
from touchline.messaging.template_files import load_template_text
from touchline.store.db import transaction
from touchline.store.journeys import apply_journeys
from touchline.store.tables import catalog_alerts, events, outbox, product_pairs, product_stats
from touchline.store.templates import apply_templates
from touchline.store.workspaces import create_workspace
from touchline.testing import FrozenClock, identify, run_until_idle, send_events, track
from touchline.worker.loop import Worker

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
DAY = timedelta(days=1)


class Shop:
    """A workspace, a frozen clock and a worker; customers act at given times."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.clock = FrozenClock(T0 - timedelta(days=100))
        self.ws = create_workspace(engine, "Shop", now=self.clock.now()).id
        self.worker = Worker(engine, clock=self.clock, owner="w1")

    def at(self, when: datetime) -> None:
        self.clock.set(when)

    def send(self, *raws: dict[str, Any]) -> None:
        stamped = [{"timestamp": self.clock.now().isoformat(), **raw} for raw in raws]
        send_events(self.engine, self.ws, stamped, now=self.clock.now())
        run_until_idle(self.worker, self.clock)

    def view(self, user: str, product: str, when: datetime) -> None:
        self.at(when)
        self.send(track(user, "Product Viewed", {"product_id": product}))

    def ask(self, user: str, product: str, when: datetime) -> None:
        self.at(when)
        self.send(track(user, "Back In Stock Requested", {"product_id": product}))

    def buy(self, user: str, when: datetime, *products: str, order: str = "o") -> None:
        self.at(when)
        items = [{"product_id": p, "quantity": 1} for p in products]
        self.send(track(user, "Order Completed", {"order_id": order, "products": items}))

    def put(
        self, *items: dict[str, Any], when: datetime, rules: CatalogRules | None = None
    ) -> UpsertResult:
        self.at(when)
        with transaction(self.engine) as conn:
            return upsert_products(
                conn,
                self.ws,
                [parse_product(i) for i in items],
                now=when,
                rules=rules or CatalogRules(),
            )

    def fire(self) -> None:
        """Let the worker announce what is pending and process the events it stored."""
        run_until_idle(self.worker, self.clock)

    def told(self, name: str) -> list[tuple[str, dict[str, Any]]]:
        """(user id, properties) of every event ``name`` stored, in id order."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(events.c.user_id, events.c.properties)
                .where(events.c.workspace_id == self.ws, events.c.name == name)
                .order_by(events.c.id)
            ).all()
        return [(r.user_id, r.properties) for r in rows]

    def alerts(self) -> list[Any]:
        with self.engine.connect() as conn:
            return conn.execute(select(catalog_alerts).order_by(catalog_alerts.c.id)).all()


@pytest.fixture
def shop(engine: Engine) -> Shop:
    return Shop(engine)


# -- products ---------------------------------------------------------------------------------


def test_updates_change_only_the_fields_given_and_a_repeat_changes_nothing(shop: Shop) -> None:
    """A stock feed of id and in_stock keeps name and price; the same data twice is unchanged."""
    # given
    made = shop.put(
        {
            "id": "p1",
            "name": "Наушники",
            "price": "6990",
            "category": "Аудио",
            "attributes": {"color": "black"},
        },
        when=T0,
    )
    # when
    stock = shop.put({"id": "p1", "in_stock": False}, when=T0 + DAY)
    again = shop.put({"id": "p1", "in_stock": False}, when=T0 + 2 * DAY)
    # then
    assert (made.created, stock.updated, again.unchanged) == (1, 1, 1)
    with shop.engine.connect() as conn:
        product = get_product(conn, shop.ws, "p1")
    assert product["name"] == "Наушники" and product["price"] == "6990.00"
    assert product["in_stock"] is False and product["attributes"] == {"color": "black"}
    assert product["updated_at"] == (T0 + DAY).isoformat()


def test_a_new_product_without_a_name_is_rejected_alone(shop: Shop) -> None:
    """In one batch, the nameless new product is rejected with its label; the other is stored."""
    with transaction(shop.engine) as conn:
        result = upsert_products(
            conn,
            shop.ws,
            [
                parse_product({"id": "ok", "name": "Чехол"}),
                parse_product({"id": "bad", "price": 5}),
            ],
            now=T0,
            rules=CatalogRules(),
            labels=[2, 3],
        )
    assert result.created == 1
    assert result.rejected == [
        {"at": 3, "product_id": "bad", "message": "name: a new product needs a name"}
    ]


def test_archiving_hides_a_product_stops_its_alerts_and_sending_it_again_restores_it(
    shop: Shop,
) -> None:
    """DELETE archives: out of listings, pending alerts stopped; a later PUT brings it back."""
    # given
    shop.put({"id": "p1", "name": "Куртка", "in_stock": False}, when=T0)
    shop.view("u1", "p1", T0 + DAY)
    shop.put({"id": "p1", "in_stock": True}, when=T0 + 2 * DAY)  # an alert, not fired yet
    # when
    with transaction(shop.engine) as conn:
        archive_product(conn, shop.ws, "p1", now=T0 + 2 * DAY)
    shop.fire()
    with shop.engine.connect() as conn:
        hidden = list_products(conn, shop.ws)
        shown = list_products(conn, shop.ws, archived=True)
    back = shop.put({"id": "p1", "name": "Куртка"}, when=T0 + 3 * DAY)
    # then
    assert hidden == [] and [p["product_id"] for p in shown] == ["p1"]
    [alert] = shop.alerts()
    assert (alert.status, alert.detail) == ("stopped", "the product was archived")
    assert shop.told(BACK_IN_STOCK_EVENT) == []
    assert back.updated == 1 and back.restocks == 0
    with shop.engine.connect() as conn:
        assert get_product(conn, shop.ws, "p1")["archived"] is False
        with pytest.raises(NotFound):
            get_product(conn, shop.ws, "nope")


# -- back in stock ------------------------------------------------------------------------------


def test_a_restock_tells_viewers_and_askers_once_but_not_buyers_or_stale_viewers(
    shop: Shop,
) -> None:
    """Viewers within 30 days and askers within 90 get one Back In Stock; a buyer after the
    view, a viewer 40 days back and anyone after the restock do not; importing again is silent."""
    # given
    restock = T0
    shop.put(
        {
            "id": "p1",
            "name": "Кроссовки",
            "price": 5990,
            "url": "https://shop.example/p1",
            "in_stock": False,
        },
        when=restock - 70 * DAY,
    )
    shop.ask("boris", "p1", restock - 60 * DAY)
    shop.view("vera", "p1", restock - 40 * DAY)
    shop.buy("dima", restock - 20 * DAY, "p1")  # bought long ago, viewed again since
    shop.view("gleb", "p1", restock - 5 * DAY)
    shop.view("anna", "p1", restock - 5 * DAY)
    shop.buy("gleb", restock - 4 * DAY, "p1")
    shop.view("dima", "p1", restock - 2 * DAY)
    shop.view("other", "p2", restock - DAY)
    # when
    first = shop.put({"id": "p1", "in_stock": True}, when=restock)
    shop.view("late", "p1", restock + timedelta(minutes=1))  # saw it in stock already
    shop.fire()
    again = shop.put({"id": "p1", "in_stock": True}, when=restock + DAY)
    shop.fire()
    # then
    assert (first.restocks, again.restocks, again.unchanged) == (1, 0, 1)
    told = shop.told(BACK_IN_STOCK_EVENT)
    assert sorted((user, props["reason"]) for user, props in told) == [
        ("anna", "viewed"),
        ("boris", "requested"),
        ("dima", "viewed"),
    ]
    props = told[0][1]
    assert {k: props[k] for k in ("product_id", "name", "price", "url")} == {
        "product_id": "p1",
        "name": "Кроссовки",
        "price": 5990,
        "url": "https://shop.example/p1",
    }
    [alert] = shop.alerts()
    assert (alert.status, alert.fired, alert.occurrence) == ("done", 3, 1)
    with shop.engine.connect() as conn:
        statuses = (
            conn.execute(select(events.c.status).where(events.c.name == BACK_IN_STOCK_EVENT))
            .scalars()
            .all()
        )
    assert set(statuses) == {1}  # processed by the worker like any event


def test_a_later_restock_is_a_new_occurrence_for_renewed_interest_only(shop: Shop) -> None:
    """After out-of-stock and back again, who viewed or asked since the first message hears
    again (a new messageId); who did not, does not."""
    # given: a first restock told anna and boris
    shop.put({"id": "p1", "name": "Палатка", "in_stock": False}, when=T0 - 10 * DAY)
    shop.view("anna", "p1", T0 - 3 * DAY)
    shop.view("boris", "p1", T0 - 3 * DAY)
    shop.put({"id": "p1", "in_stock": True}, when=T0)
    shop.fire()
    shop.put({"id": "p1", "in_stock": False}, when=T0 + DAY)
    shop.ask("anna", "p1", T0 + 2 * DAY)
    # when
    second = shop.put({"id": "p1", "in_stock": True}, when=T0 + 5 * DAY)
    shop.fire()
    # then
    assert second.restocks == 1
    told = [user for user, _ in shop.told(BACK_IN_STOCK_EVENT)]
    assert sorted(told) == ["anna", "anna", "boris"]
    assert [a.occurrence for a in shop.alerts()] == [1, 2]
    with shop.engine.connect() as conn:
        ids = (
            conn.execute(select(events.c.message_id).where(events.c.name == BACK_IN_STOCK_EVENT))
            .scalars()
            .all()
        )
    assert len(set(ids)) == 3 and all(i.startswith("catalog:") for i in ids)


def test_an_alert_goes_out_in_chunks_that_resume_where_they_stopped(shop: Shop) -> None:
    """Seven viewers, chunks of three: 3, 6, 7 events; the alert's cursor moves; a chunk run
    again from a stale copy of the alert stores nothing twice."""
    # given
    shop.put({"id": "p1", "name": "Лампа", "in_stock": False}, when=T0 - 10 * DAY)
    for n in range(7):
        shop.view(f"u{n}", "p1", T0 - DAY + timedelta(minutes=n))
    shop.put({"id": "p1", "in_stock": True}, when=T0)
    [stale] = shop.alerts()
    counts = []
    # when
    for _ in range(4):
        with transaction(shop.engine) as conn:
            alert = conn.execute(select(catalog_alerts)).one()
            fire_chunk(conn, alert, now=T0, size=3)
        counts.append(len(shop.told(BACK_IN_STOCK_EVENT)))
    with transaction(shop.engine) as conn:
        fire_chunk(conn, stale, now=T0, size=3)
    # then
    assert counts == [3, 6, 7, 7]
    assert len(shop.told(BACK_IN_STOCK_EVENT)) == 7
    [alert] = shop.alerts()
    assert (alert.status, alert.fired) == ("done", 7)


def test_an_alert_stops_when_the_product_is_out_of_stock_again(shop: Shop) -> None:
    """Between the restock and its first chunk the product sold out: nobody is told, and why."""
    shop.put({"id": "p1", "name": "Шарф", "in_stock": False}, when=T0 - DAY)
    shop.view("anna", "p1", T0 - DAY)
    shop.put({"id": "p1", "in_stock": True}, when=T0)
    shop.put({"id": "p1", "in_stock": False}, when=T0)
    # when
    chunks = fire_alerts(shop.engine, now=T0)
    # then
    assert chunks == 1
    [alert] = shop.alerts()
    assert (alert.status, alert.detail) == ("stopped", "the product is out of stock again")
    assert shop.told(BACK_IN_STOCK_EVENT) == []


def test_interest_of_an_anonymous_visitor_reaches_the_customer_they_turn_out_to_be(
    shop: Shop,
) -> None:
    """A view before signing in is merged into the known customer, who is told under their id."""
    # given
    shop.put({"id": "p1", "name": "Рюкзак", "in_stock": False}, when=T0 - 10 * DAY)
    shop.at(T0 - 9 * DAY)
    shop.send(identify("anna", email="anna@example.ru"))
    shop.at(T0 - 3 * DAY)
    shop.send(
        {
            "type": "track",
            "anonymousId": "visit-1",
            "event": "Product Viewed",
            "properties": {"product_id": "p1"},
        }
    )
    shop.send({"type": "identify", "userId": "anna", "anonymousId": "visit-1", "traits": {}})
    # when
    shop.put({"id": "p1", "in_stock": True}, when=T0)
    shop.fire()
    # then
    assert [user for user, _ in shop.told(BACK_IN_STOCK_EVENT)] == ["anna"]


# -- price drops -----------------------------------------------------------------------------------


def test_a_price_drop_of_the_threshold_tells_viewers_and_small_cuts_add_up(shop: Shop) -> None:
    """At 10 %: 1000 -> 950 says nothing, -> 880 (12 % below 1000) tells the recent viewer with
    old and new price, -> 870 says nothing (1 % below 880), a rise to 1000 then 900 tells again."""
    # given
    shop.view("vera", "p1", T0 - 45 * DAY)  # too long ago
    shop.put({"id": "p1", "name": "Куртка", "price": 1000, "currency": "RUB"}, when=T0 - 20 * DAY)
    shop.view("anna", "p1", T0 - 5 * DAY)
    shop.view("other", "p2", T0 - DAY)
    # when
    steps = []
    for day, price in ((0, 950), (1, 880), (2, 870), (3, 1000)):
        steps.append(shop.put({"id": "p1", "price": price}, when=T0 + day * DAY).price_drops)
        shop.fire()
    shop.view("anna", "p1", T0 + 4 * DAY)
    steps.append(shop.put({"id": "p1", "price": 900}, when=T0 + 5 * DAY).price_drops)
    shop.fire()
    # then
    assert steps == [0, 1, 0, 0, 1]
    told = shop.told(PRICE_DROPPED_EVENT)
    assert [(u, p["price"], p["old_price"], p["drop_percent"]) for u, p in told] == [
        ("anna", 880, 1000, 12.0),
        ("anna", 900, 1000, 10.0),
    ]


def test_a_configured_threshold_and_stock_decide_a_drop(shop: Shop) -> None:
    """With price_drop_percent 30, a 20 % cut is silent; an out-of-stock product's cut is too."""
    rules = CatalogRules.from_settings({"catalog": {"price_drop_percent": 30, "view_window": "7d"}})
    shop.put({"id": "p1", "name": "Плед", "price": 1000}, when=T0 - DAY, rules=rules)
    shop.put(
        {"id": "p2", "name": "Пуф", "price": 1000, "in_stock": False}, when=T0 - DAY, rules=rules
    )
    # when
    small = shop.put({"id": "p1", "price": 800}, when=T0, rules=rules)
    sold_out = shop.put({"id": "p2", "price": 500}, when=T0, rules=rules)
    big = shop.put({"id": "p1", "price": 690}, when=T0 + DAY, rules=rules)
    # then
    assert (small.price_drops, sold_out.price_drops, big.price_drops) == (0, 0, 1)
    [alert] = shop.alerts()
    assert alert.viewed_since == T0 + DAY - timedelta(days=7)
    assert alert.properties["old_price"] == 1000 and alert.properties["price"] == 690


# -- what the observer keeps -------------------------------------------------------------------------


def test_orders_count_products_and_pairs_both_ways_exactly_once(shop: Shop) -> None:
    """Two orders holding a and b, one holding a and c: a counts 3, (a, b) 2 each way, (b, c) none."""
    shop.buy("u1", T0, "a", "b", order="1")
    shop.buy("u2", T0, "b", "a", "b", order="2")  # a repeated line is one product
    shop.buy("u3", T0, "a", "c", order="3")
    with shop.engine.connect() as conn:
        stats = dict(conn.execute(select(product_stats.c.product_id, product_stats.c.orders)).all())
        pairs = {(r.product_id, r.other_id): r.orders for r in conn.execute(select(product_pairs))}
    assert stats == {"a": 3, "b": 2, "c": 1}
    assert pairs == {("a", "b"): 2, ("b", "a"): 2, ("a", "c"): 1, ("c", "a"): 1}


# -- end to end: a journey on Back In Stock, with recommendations in its email ------------------------

JOURNEY = """
journey: back-in-stock
category: selling
trigger: {event: Back In Stock}
entry: {key: alert_id, reentry: once_per_key}
steps:
  - send: {channel: email, template: back-in-stock}
"""
TEMPLATE = """
template: back-in-stock
channel: email
subject: "{{ event.properties.name }} снова в наличии"
text: |
  {{ event.properties.name }}: {{ event.properties.price | money }}
  {% for p in recommend.similar(event.properties.product_id, 2) %}- {{ p.name }} {{ p.price | money }}
  {% endfor %}
"""


def test_a_restock_journey_sends_an_email_listing_similar_products(shop: Shop) -> None:
    """Back In Stock triggers the journey; its email names the product and two similar ones."""
    # given
    with transaction(shop.engine) as conn:
        text = textwrap.dedent(JOURNEY)
        apply_journeys(
            conn,
            shop.ws,
            [LoadedJourney("j.yaml", load_journey_text(text, file="j.yaml"), text)],
            now=shop.clock.now(),
        )
        apply_templates(
            conn,
            shop.ws,
            [load_template_text(textwrap.dedent(TEMPLATE), file="t.yaml")],
            now=shop.clock.now(),
        )
    shop.put(
        {"id": "p1", "name": "Куртка", "price": 5000, "category": "Одежда", "in_stock": False},
        {"id": "p2", "name": "Парка", "price": 5500, "category": "Одежда"},
        {"id": "p3", "name": "Пальто", "price": 6000, "category": "Одежда"},
        {"id": "p4", "name": "Шуба", "price": 50000, "category": "Одежда"},
        when=T0 - 10 * DAY,
    )
    shop.at(T0 - 9 * DAY)
    shop.send(identify("anna", email="anna@example.ru", consent={"email": True}))
    shop.view("anna", "p1", T0 - 2 * DAY)
    # when
    shop.put({"id": "p1", "in_stock": True}, when=T0)
    shop.fire()
    dispatcher = Dispatcher(
        shop.engine, clock=shop.clock, owner="d1", channels={"*": CaptureChannel()}
    )
    asyncio.run(dispatcher.run_once(shop.clock.now()))
    # then
    with shop.engine.connect() as conn:
        [row] = conn.execute(select(outbox)).all()
    assert row.status == "sent", row.error
    assert row.rendered["subject"] == "Куртка снова в наличии"
    lines = [line.strip() for line in row.rendered["text"].splitlines() if line.strip()]
    assert lines == [
        "Куртка: 5\xa0000,00\xa0₽",
        "- Парка 5\xa0500,00\xa0₽",
        "- Пальто 6\xa0000,00\xa0₽",
    ]


def test_prices_keep_two_decimals_on_both_stores(shop: Shop) -> None:
    """A price of 1999.99 comes back as that Decimal, not a float's neighbour."""
    shop.put({"id": "p1", "name": "Кружка", "price": "1999.99"}, when=T0)
    with shop.engine.connect() as conn:
        product = get_product(conn, shop.ws, "p1")
    assert Decimal(product["price"]) == Decimal("1999.99")
