"""Reading promo codes out of CSV exports and order events (pure functions, no store)."""

from __future__ import annotations

from decimal import Decimal

import pytest

from touchline.store.promo import (
    ALPHABET,
    DEFAULT_LENGTH,
    coupons_of,
    entropy_bits,
    order_value,
    parse_codes_csv,
)


def test_a_file_without_header_gives_its_first_column() -> None:
    """One code a line, or extra columns after it: the first column, trimmed, blanks skipped."""
    assert parse_codes_csv("AAA-1\n BBB-2 ,used\n\n,\nCCC-3,x,y\n") == ["AAA-1", "BBB-2", "CCC-3"]


def test_a_header_with_a_code_column_picks_that_column() -> None:
    """A header naming ``code`` (any case) selects that column and is not itself a code."""
    text = "id,Code,discount\n1,AAA-1,10\n2,BBB-2,10\n3,,10\n"
    assert parse_codes_csv(text) == ["AAA-1", "BBB-2"]


def test_a_spreadsheet_export_with_bom_and_semicolons_is_read() -> None:
    """A UTF-8 byte-order mark and ``;`` as the delimiter (European Excel) are tolerated."""
    text = '\ufeffnote;code\r\n"a; b";AAA-1\r\nc;BBB-2\r\n'
    assert parse_codes_csv(text) == ["AAA-1", "BBB-2"]


def test_an_empty_file_gives_no_codes() -> None:
    """Nothing in, nothing out (no header-only surprises)."""
    assert parse_codes_csv("") == []
    assert parse_codes_csv("\ufeffcode\n") == []


@pytest.mark.parametrize(
    ("properties", "codes"),
    [
        ({"coupon": "AAA-1"}, ["AAA-1"]),
        ({"coupon": " AAA-1, BBB-2 ,,AAA-1"}, ["AAA-1", "BBB-2"]),
        ({"coupon": ["AAA-1", 7, "", "BBB-2"]}, ["AAA-1", "BBB-2"]),
        ({"coupon": None}, []),
        ({"coupon": 12}, []),
        ({}, []),
    ],
)
def test_an_order_coupon_may_be_a_string_a_comma_list_or_a_list(
    properties: dict[str, object], codes: list[str]
) -> None:
    """``coupon`` as one code, comma-separated codes or a list; non-strings and repeats dropped."""
    assert coupons_of("Order Completed", properties) == codes


def test_pre_purchase_events_with_a_coupon_redeem_nothing() -> None:
    """Segment's Checkout Started and Product Added carry a coupon but are no purchase;
    a shop's own purchase event with a coupon is one."""
    assert coupons_of("Checkout Started", {"coupon": "AAA-1"}) == []
    assert coupons_of("Product Added", {"coupon": "AAA-1"}) == []
    assert coupons_of("Покупка", {"coupon": "AAA-1"}) == ["AAA-1"]


def test_order_value_prefers_revenue_then_total() -> None:
    """The order's value is ``revenue``, else ``total``; non-numbers are skipped."""
    assert order_value({"revenue": "1990.50", "total": 2100}) == Decimal("1990.50")
    assert order_value({"revenue": "n/a", "total": 2100}) == Decimal(2100)
    assert order_value({"revenue": True, "total": "NaN"}) is None
    assert order_value({}) is None


def test_the_default_generated_code_carries_at_least_50_bits() -> None:
    """11 symbols of a 31-symbol alphabet: 54.5 bits, and no 0/O/1/I/L to misread."""
    assert len(ALPHABET) == len(set(ALPHABET)) == 31
    assert entropy_bits(DEFAULT_LENGTH) == pytest.approx(54.5, abs=0.05)
