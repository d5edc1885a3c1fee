"""The catalog's pure parts: what a product change announces, the settings, CSV rows, orders."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from touchline.audience.catalog import CatalogRules, decide_change, parse_product, read_catalog_csv
from touchline.audience.interest import MAX_ORDER_PRODUCTS, order_products
from touchline.errors import InputError

TEN = Decimal(10)


def stored(**fields: Any) -> dict[str, Any]:
    """A stored product row, in stock at 1000 unless told otherwise."""
    row = {
        "name": "Куртка",
        "url": None,
        "image": None,
        "price": Decimal(1000),
        "currency": "RUB",
        "category": "Одежда",
        "in_stock": True,
        "attributes": {},
        "price_basis": Decimal(1000),
        "restocks": 0,
        "price_drops": 0,
        "archived_at": None,
    }
    return {**row, **fields}


def test_a_new_product_takes_the_defaults_and_announces_nothing() -> None:
    """In stock, no attributes, the basis is its price."""
    change = decide_change(None, {"name": "Куртка", "price": Decimal(990)}, drop_percent=TEN)
    assert change.values["in_stock"] is True and change.values["attributes"] == {}
    assert change.values["price_basis"] == Decimal(990)
    assert not change.restocked and change.dropped_from is None


def test_a_new_product_needs_a_name_and_stock_cannot_be_cleared() -> None:
    with pytest.raises(InputError, match="name"):
        decide_change(None, {"price": Decimal(1)}, drop_percent=TEN)
    with pytest.raises(InputError, match="in_stock"):
        decide_change(stored(), {"in_stock": None}, drop_percent=TEN)


def test_out_of_stock_to_in_stock_is_a_restock_numbered_by_the_count() -> None:
    """The third restock of a product is occurrence 3; in stock again is not a restock."""
    change = decide_change(stored(in_stock=False, restocks=2), {"in_stock": True}, drop_percent=TEN)
    assert change.restocked and change.values["restocks"] == 3
    again = decide_change(stored(), {"in_stock": True}, drop_percent=TEN)
    assert not again.restocked and not again.changed


@pytest.mark.parametrize(
    ("basis", "price", "dropped", "new_basis"),
    [
        (1000, 901, False, 1000),  # 9.9 %: not yet; the basis stays, so cuts add up
        (1000, 900, True, 900),  # exactly 10 %
        (1000, 1200, False, 1200),  # a rise moves the basis up
        (1000, 1000, False, 1000),
    ],
)
def test_a_drop_is_measured_from_the_basis(
    basis: int, price: int, dropped: bool, new_basis: int
) -> None:
    change = decide_change(
        stored(price=Decimal(basis), price_basis=Decimal(basis)),
        {"price": Decimal(price)},
        drop_percent=TEN,
    )
    assert (change.dropped_from is not None) == dropped
    assert change.values["price_basis"] == Decimal(new_basis)
    if dropped:
        assert change.dropped_from == Decimal(basis) and change.values["price_drops"] == 1


def test_no_drop_out_of_stock_on_a_restock_a_new_currency_or_from_the_archive() -> None:
    """Each of these restarts the basis at the new price instead of announcing a cut."""
    cut = {"price": Decimal(500)}
    cases = [
        (stored(in_stock=False), cut),
        (stored(in_stock=False), {**cut, "in_stock": True}),
        (stored(), {**cut, "currency": "USD"}),
        (stored(archived_at=datetime(2026, 1, 1, tzinfo=UTC)), cut),
    ]
    for old, given in cases:
        change = decide_change(old, given, drop_percent=TEN)
        assert change.dropped_from is None, given
    restock = decide_change(stored(in_stock=False), {**cut, "in_stock": True}, drop_percent=TEN)
    assert restock.restocked and restock.values["price_basis"] == Decimal(500)
    back = decide_change(
        stored(archived_at=datetime(2026, 1, 1, tzinfo=UTC), in_stock=False),
        {"in_stock": True},
        drop_percent=TEN,
    )
    assert not back.restocked and back.changed and back.values["archived_at"] is None


def test_catalog_settings_read_windows_and_threshold_and_name_bad_fields() -> None:
    rules = CatalogRules.from_settings(
        {"catalog": {"view_window": "14d", "price_drop_percent": 15}}
    )
    assert rules.view_window == timedelta(days=14)
    assert rules.request_window == timedelta(days=90)
    assert rules.price_drop_percent == Decimal(15)
    assert CatalogRules.from_settings({}) == CatalogRules()
    for bad, where in (
        ({"view_window": "soon"}, "catalog.view_window"),
        ({"request_window": "400d"}, "catalog.request_window"),
        ({"price_drop_percent": 0}, "catalog.price_drop_percent"),
        ({"price_drop_percent": True}, "catalog.price_drop_percent"),
        ({"viewwindow": "1d"}, "catalog.viewwindow"),
    ):
        with pytest.raises(InputError) as caught:
            CatalogRules.from_settings({"catalog": bad})
        assert caught.value.message.startswith(where)


def test_a_product_body_is_checked_field_by_field() -> None:
    """Ids may be numbers; currency is upper-cased; bad fields are named."""
    product = parse_product({"id": 17, "name": " Чай ", "currency": "rub", "price": "12.50"})
    assert (product.product_id, product.name, product.currency) == ("17", "Чай", "RUB")
    assert product.given() == {"name": "Чай", "currency": "RUB", "price": Decimal("12.50")}
    for body, where in (
        ({"id": "p", "price": -1}, "price"),
        ({"id": "p", "url": "javascript:alert(1)"}, "url"),
        ({"id": "p", "currency": "рубли"}, "currency"),
        ({"id": "p", "colour": "red"}, "colour"),
        ({"name": "no id"}, "product_id"),
        ({"id": "p", "product_id": "q"}, "id"),
    ):
        with pytest.raises(InputError) as caught:
            parse_product(body)
        assert caught.value.message.startswith(where), caught.value.message
    with pytest.raises(InputError, match="the URL"):
        parse_product({"id": "a"}, product_id="b")


def test_csv_rows_become_products_or_rejections_with_their_line() -> None:
    """Known columns are fields, others attributes; bad rows keep their line number."""
    text = (
        "\ufeffID,Name,Price,In_Stock,Colour\n"
        'p1,Куртка,"1 999,90",да,red\n'
        "\n"
        "p2,Шапка,abc,yes,\n"
        "p3,Шарф,100,maybe,\n"
        "p4,Пальто\n"
        "p5,,500,no,\n"
    )
    rows = list(read_catalog_csv(io.StringIO(text)))
    assert [(r.line, r.error) for r in rows] == [
        (2, None),
        (4, "price: Input should be a valid decimal"),
        (5, "in_stock: 'maybe' is not true or false"),
        (6, "2 cells; the header has 5"),
        (7, None),
    ]
    first = rows[0].product
    assert first is not None
    assert first.given() == {
        "name": "Куртка",
        "price": Decimal("1999.90"),
        "in_stock": True,
        "attributes": {"colour": "red"},
    }
    last = rows[4].product
    assert last is not None and last.given() == {
        "name": None,
        "price": Decimal(500),
        "in_stock": False,
    }


@pytest.mark.parametrize(
    ("text", "message"),
    [("", "the file is empty"), ("name,price\n", "no id"), ("id,name,name\n", "appears twice")],
)
def test_a_csv_without_a_usable_header_is_refused(text: str, message: str) -> None:
    with pytest.raises(InputError, match=message):
        list(read_catalog_csv(io.StringIO(text)))


def test_order_products_reads_ids_dedupes_and_caps() -> None:
    """product_id, else id or sku; junk skipped; a lone product_id counts too."""
    props = {
        "products": [
            {"product_id": "a"},
            {"id": 7},
            {"sku": "s-1"},
            {"product_id": "a"},
            {"product_id": True},
            "junk",
            {"name": "no id"},
        ]
    }
    assert order_products(props) == ["a", "7", "s-1"]
    assert order_products({"product_id": "solo"}) == ["solo"]
    many = {"products": [{"product_id": str(n)} for n in range(MAX_ORDER_PRODUCTS + 5)]}
    assert len(order_products(many)) == MAX_ORDER_PRODUCTS
