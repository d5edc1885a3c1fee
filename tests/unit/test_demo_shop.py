"""Unit tests for the demo's synthetic shop, its reactions and its report (touchline.demo).

The shop is pure: every test builds a small one from a seed and inspects the
Segment dicts it produces, without a store.
"""

from __future__ import annotations

import io
import re
from collections import Counter
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from touchline.demo.catalogue import TIMEZONES, build_catalogue
from touchline.demo.report import SECTIONS, DemoReport, JourneyFigures, VariantFigures, render
from touchline.demo.run import MARKER, WORKDIR_NAME, demo_dir, run_demo
from touchline.demo.shop import REACTIONS, TIME_GRID, Reaction, Shop, iso, parse_iso
from touchline.errors import ConfigError, InputError
from touchline.ingest.segment import parse_payload
from touchline.simulation import SimulatedMessage

SEED, CUSTOMERS, DAYS = 11, 80, 10


@pytest.fixture(scope="module")
def shop() -> Shop:
    return Shop(seed=SEED, customers=CUSTOMERS, days=DAYS)


def named(shop: Shop, name: str) -> list[dict[str, Any]]:
    return [e for e in shop.events if e.get("event") == name]


def message(user_id: str | None, template: str, at: str, **kw: str) -> SimulatedMessage:
    return SimulatedMessage(
        at=at,
        user_id=user_id,
        journey=kw.get("journey", "j"),
        step=kw.get("step", "s"),
        channel=kw.get("channel", "email"),
        template=template,
    )


# -- the catalogue and the customers ----------------------------------------------------


def test_catalogue_has_sixty_products_with_unique_ids_and_rouble_prices() -> None:
    """The catalogue is 60 products in 10 categories, ids unique, prices positive whole roubles."""
    catalogue = build_catalogue()
    assert len(catalogue) == 60
    assert len({p.product_id for p in catalogue}) == 60
    assert len({p.category for p in catalogue}) == 10
    assert all(isinstance(p.price, int) and p.price > 0 for p in catalogue)


def test_customers_have_russian_contact_details_and_known_time_zones(shop: Shop) -> None:
    """Every customer has an e-mail, a zone from the mix, an optional +7 9xx phone and a birthday."""
    zones = {zone for zone, _ in TIMEZONES}
    assert len(shop.customers) == CUSTOMERS
    for c in shop.customers:
        assert re.fullmatch(r"[a-z.]+\d+@[a-z.]+", c.email)
        assert c.timezone in zones
        assert c.phone is None or re.fullmatch(r"\+79\d{9}", c.phone)
        assert 1960 < c.birthday.year < 2010
        assert shop.start <= c.signup_at < shop.end
    assert any(c.phone is None for c in shop.customers)
    assert len({c.timezone for c in shop.customers}) > 1


# -- the events -------------------------------------------------------------------------


def test_same_seed_gives_the_same_events_and_another_seed_different_ones(shop: Shop) -> None:
    """The generator is deterministic for a seed and varies with it."""
    again = Shop(seed=SEED, customers=CUSTOMERS, days=DAYS)
    other = Shop(seed=SEED + 1, customers=CUSTOMERS, days=DAYS)
    assert again.events == shop.events
    assert other.events != shop.events


def test_events_are_time_ordered_on_the_grid_inside_the_period(shop: Shop) -> None:
    """Timestamps are ISO UTC, non-decreasing, on the 10-minute grid, within [start, end)."""
    stamps = [e["timestamp"] for e in shop.events]
    assert stamps == sorted(stamps)
    for stamp in stamps:
        at = parse_iso(stamp)
        assert stamp.endswith("Z")
        assert shop.start <= at < shop.end
        assert (at - shop.start) % TIME_GRID == timedelta(0)


def test_every_event_is_an_accepted_segment_message_with_a_unique_message_id(shop: Shop) -> None:
    """Each dict passes touchline's Segment parser, and messageIds never repeat."""
    received = datetime(2030, 1, 1, tzinfo=UTC)
    for raw in shop.events:
        (parsed,) = parse_payload(raw, kind=raw["type"], received_at=received)
        assert parsed.timestamp == parse_iso(raw["timestamp"])
    ids = [e["messageId"] for e in shop.events]
    assert len(ids) == len(set(ids))


def test_each_customer_signs_up_once_with_an_identify_carrying_their_traits(shop: Shop) -> None:
    """One identify (userId + anonymousId + traits) and one Signed Up per customer, in that order."""
    identifies = [e for e in shop.events if e["type"] == "identify"]
    signups = named(shop, "Signed Up")
    assert len(identifies) == len(signups) == CUSTOMERS
    order = {e["messageId"]: i for i, e in enumerate(shop.events)}
    first_identify = {e["userId"]: order[e["messageId"]] for e in identifies}
    for event in signups:
        assert first_identify[event["userId"]] < order[event["messageId"]]
    for event in identifies:
        traits = event["traits"]
        assert traits["locale"] == "ru-RU"
        assert {"email", "timezone", "birthday", "firstName", "lastName"} <= set(traits)
        assert event["anonymousId"].startswith("anon-")


def test_anonymous_browsing_comes_before_the_identify_that_links_it(shop: Shop) -> None:
    """Events with only an anonymousId precede the identify that carries that anonymousId."""
    anonymous = [e for e in shop.events if "userId" not in e]
    assert anonymous, "some visitors should browse before signing up"
    linked = {e["anonymousId"]: e["timestamp"] for e in shop.events if e["type"] == "identify"}
    for event in anonymous:
        assert event["event"] == "Product Viewed"
        assert event["timestamp"] <= linked[event["anonymousId"]]


def test_cart_and_order_events_carry_the_spec_properties(shop: Shop) -> None:
    """Product Added has cart_id and product fields; Order Completed totals its products in RUB."""
    adds = named(shop, "Product Added")
    orders = named(shop, "Order Completed")
    assert adds and orders
    for event in adds:
        props = event["properties"]
        assert props["cart_id"].startswith("cart-")
        assert props["product_id"] in shop.products
        assert props["currency"] == "RUB" and props["price"] > 0
    for event in orders:
        props = event["properties"]
        assert props["currency"] == "RUB"
        assert props["products"]
        subtotal = sum(p["price"] * p["quantity"] for p in props["products"])
        assert props["revenue"] == subtotal - props["discount"]
        assert props["total"] == props["revenue"] + props["shipping"]
        assert shop.carts[props["cart_id"]].ordered


def test_an_order_ships_and_is_delivered_after_it_is_placed(shop: Shop) -> None:
    """Order Shipped (with a tracking number) follows Order Completed; Order Delivered follows it."""
    placed = {e["properties"]["order_id"]: e["timestamp"] for e in named(shop, "Order Completed")}
    shipped = {e["properties"]["order_id"]: e for e in named(shop, "Order Shipped")}
    assert shipped
    for order_id, event in shipped.items():
        assert placed[order_id] < event["timestamp"]
        assert re.fullmatch(r"RU\d{9}CN", event["properties"]["tracking_number"])
    for event in named(shop, "Order Delivered"):
        order_id = event["properties"]["order_id"]
        assert shipped[order_id]["timestamp"] < event["timestamp"]
        assert event["properties"]["delivery_type"] in ("pickup_point", "courier")


def test_a_bigger_shop_has_cancellations_refunds_and_payment_notices() -> None:
    """Rare order outcomes appear at realistic shares in a month of a mid-sized shop."""
    shop = Shop(seed=3, customers=1200, days=28)
    counts = Counter(e.get("event") for e in shop.events)
    orders = counts["Order Completed"]
    assert orders > 200
    assert 0 < counts["Order Cancelled"] < orders * 0.15
    assert 0 < counts["Payment Due"] < orders * 0.2
    assert counts["Order Refunded"] < orders * 0.1
    for event in named(shop, "Payment Due"):
        assert set(event["properties"]) >= {"order_id", "amount", "currency", "due_date"}


def test_iso_rounds_down_to_the_grid() -> None:
    """Times are written in UTC with a Z, rounded down to the 10-minute grid."""
    assert iso(datetime(2025, 3, 3, 18, 19, 59, 999, tzinfo=UTC)) == "2025-03-03T18:10:00Z"


# -- reactions --------------------------------------------------------------------------


def abandoned_cart(shop: Shop) -> tuple[str, str, dict[str, Any]]:
    """(user id, time of the first Product Added, its properties) of a cart never ordered."""
    for event in named(shop, "Product Added"):
        cart = shop.carts[event["properties"]["cart_id"]]
        if not cart.ordered and "userId" in event:
            return event["userId"], event["timestamp"], event["properties"]
    raise AssertionError("the shop has no abandoned cart")


def test_a_cart_reminder_can_make_the_customer_order_that_very_cart(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With a certain reaction, a reminder yields an Order Completed of the reminded cart, later."""
    shop = Shop(seed=SEED, customers=CUSTOMERS, days=DAYS)
    monkeypatch.setitem(REACTIONS, "cart-reminder-1h", Reaction(1.0, "order_cart", (10, 30)))
    user, added_at, props = abandoned_cart(shop)
    sent_at = iso(parse_iso(added_at) + timedelta(hours=1))
    answer = shop.react(message(user, "cart-reminder-1h", sent_at), trigger=lambda: props)
    completed = [e for e in answer if e.get("event") == "Order Completed"]
    assert len(completed) == 1
    assert completed[0]["properties"]["cart_id"] == props["cart_id"]
    assert all(e["timestamp"] > sent_at and e["userId"] == user for e in answer)
    # the cart is now ordered: a second reminder brings nothing
    assert shop.react(message(user, "cart-reminder-1h", sent_at), trigger=lambda: props) == []


def test_reactions_are_repeatable_for_the_same_message() -> None:
    """Two shops with one seed answer one message with the same events."""
    answers = []
    for _ in range(2):
        shop = Shop(seed=SEED, customers=CUSTOMERS, days=DAYS)
        answers.append(
            [
                shop.react(
                    message(c.user_id, "welcome-promo", iso(c.signup_at + timedelta(days=1))),
                    trigger=lambda: None,
                )
                for c in shop.customers
            ]
        )
    assert answers[0] == answers[1]
    assert any(answers[0]), "some customers should answer the welcome promo"


def test_no_reaction_from_anonymous_profiles_or_to_unknown_templates(shop: Shop) -> None:
    """Messages to profiles without a user id, or with templates nobody reacts to, get no answer."""
    at = iso(shop.start + timedelta(days=1))
    user = shop.customers[0].user_id

    def boom() -> dict[str, Any]:
        raise AssertionError("the trigger is only read when the customer reacts")

    assert shop.react(message(None, "cart-reminder-1h", at), trigger=boom) == []
    assert shop.react(message(user, "order-confirmation", at), trigger=boom) == []


def test_reactions_past_the_end_of_the_period_are_dropped(monkeypatch: pytest.MonkeyPatch) -> None:
    """A customer reacting after the simulated period produces no events."""
    shop = Shop(seed=SEED, customers=CUSTOMERS, days=DAYS)
    monkeypatch.setitem(REACTIONS, "welcome-promo", Reaction(1.0, "buy", (60, 120)))
    late = iso(shop.end - timedelta(minutes=10))
    user = shop.customers[0].user_id
    assert shop.react(message(user, "welcome-promo", late), trigger=lambda: None) == []


# -- where the demo keeps its store, and its report ---------------------------------------


def test_demo_folder_sits_next_to_the_sqlite_file_or_in_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """sqlite:///dir/x.db gives dir/touchline-demo; other stores give ./touchline-demo."""
    monkeypatch.chdir(tmp_path)
    assert demo_dir(f"sqlite:///{tmp_path}/data/t.db") == tmp_path / "data" / WORKDIR_NAME
    assert demo_dir("sqlite:///t.db") == tmp_path / WORKDIR_NAME
    assert demo_dir("postgresql+psycopg://u@h/db") == tmp_path / WORKDIR_NAME
    assert demo_dir("sqlite://") == tmp_path / WORKDIR_NAME


def test_demo_refuses_to_replace_a_folder_it_did_not_make(tmp_path: Path) -> None:
    """An existing touchline-demo/ without the demo's marker file is left alone."""
    folder = tmp_path / WORKDIR_NAME
    folder.mkdir()
    (folder / "precious.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="not made by `touchline demo`"):
        run_demo(database_url=f"sqlite:///{tmp_path}/t.db", customers=5, days=1, seed=1)
    assert (folder / "precious.txt").exists()
    assert not (folder / MARKER).exists()


def test_demo_needs_a_customer_and_a_day(tmp_path: Path) -> None:
    """Zero customers or days is refused before anything is created."""
    for customers, days in ((0, 7), (10, 0)):
        with pytest.raises(InputError):
            run_demo(database_url=f"sqlite:///{tmp_path}/t.db", customers=customers, days=days)
    assert not (tmp_path / WORKDIR_NAME).exists()


def test_report_renders_every_section_as_plain_text_when_not_a_terminal(tmp_path: Path) -> None:
    """Written to a file, the report has all headings, ASCII tables and no colour codes."""
    report = DemoReport(
        workdir=tmp_path,
        customers=10,
        days=2,
        seed=1,
        start=datetime(2025, 3, 3, tzinfo=UTC),
        end=datetime(2025, 3, 5, tzinfo=UTC),
        journeys=[
            JourneyFigures(
                key="abandoned-cart",
                name="Abandoned cart",
                category="selling",
                entered=4,
                customers=3,
                active=1,
                completed=1,
                exited=2,
                messages=5,
                conversions=1,
                revenue=Decimal("6990.00"),
            )
        ],
        messages=[("abandoned-cart", "email", "cart-reminder-1h", 3)],
        exits=[("abandoned-cart", "exited", "exit event: Order Completed", 2)],
        variants=[VariantFigures("cross-sell", "offer-test", "accessories", 2, 2, 1, Decimal(990))],
        events=[("Product Added", 4), ("(identify)", 10)],
        simulate_seconds=1.5,
    )
    out = io.StringIO()
    render(report, out)
    text = out.getvalue()
    for section in SECTIONS:
        assert section in text
    assert "\x1b[" not in text
    assert "6 990 RUB" in text
    assert "cart-reminder-1h" in text and "exit event: Order Completed" in text
