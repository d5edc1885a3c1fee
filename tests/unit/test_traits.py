"""Normalising identify traits into profile columns and custom traits (pure)."""

from __future__ import annotations

import math
from datetime import UTC, date, datetime
from decimal import Decimal

import pytest

from touchline.ingest.traits import (
    json_safe,
    normalize_birthday,
    normalize_locale,
    normalize_phone,
    normalize_traits,
)


def test_email_is_trimmed_and_lowercased() -> None:
    """A valid email is stored trimmed and lower-case."""
    assert (
        normalize_traits({"email": "  Ivan.Petrov@Example.RU "}).email == "ivan.petrov@example.ru"
    )


@pytest.mark.parametrize("raw", ["not-an-email", "a@b", "a b@c.de", "@x.ru", "x@.ru."])
def test_invalid_email_stays_in_custom(raw: str) -> None:
    """An invalid email is not set as the column but kept as a custom trait."""
    result = normalize_traits({"email": raw})
    assert result.email is None
    assert result.custom == {"email": raw}


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("8 (916) 123-45-67", "+79161234567"),
        ("+7 916 123 45 67", "+79161234567"),
        (79161234567, "+79161234567"),
        ("+44 20 7946 0958", "+442079460958"),
    ],
)
def test_phone_becomes_e164(raw: object, expected: str) -> None:
    """Phones in local or international form become E.164 (default region RU)."""
    result = normalize_traits({"phone": raw})
    assert (result.phone, result.phone_valid) == (expected, True)


def test_phone_region_comes_from_country_trait() -> None:
    """The country trait picks the region for numbers without a '+'."""
    result = normalize_traits({"phone": "(201) 555-0123", "country": "us"})
    assert (result.phone, result.phone_valid) == ("+12015550123", True)
    assert result.custom == {"country": "us"}


def test_phone_region_comes_from_context_locale() -> None:
    """Without a country trait, the context locale's region is used."""
    result = normalize_traits({"phone": "030 1234567"}, context={"locale": "de-DE"})
    assert (result.phone, result.phone_valid) == ("+49301234567", True)


def test_invalid_phone_is_kept_raw_and_flagged() -> None:
    """A number that is not valid is kept raw with phone_valid False."""
    result = normalize_traits({"phone": " 12345 "})
    assert (result.phone, result.phone_valid) == ("12345", False)
    assert normalize_phone("call me maybe") == ("call me maybe", False)


def test_unstorable_phone_goes_to_custom() -> None:
    """A phone too long for the column, or not text, is kept as a custom trait."""
    result = normalize_traits({"phone": "1" * 70})
    assert result.phone is None
    assert result.custom == {"phone": "1" * 70}
    assert normalize_traits({"phone": {"home": "1"}}).custom == {"phone": {"home": "1"}}


def test_timezone_must_be_iana() -> None:
    """A valid IANA zone is set; anything else stays custom and is ignored."""
    assert normalize_traits({"timezone": "Europe/Moscow"}).timezone == "Europe/Moscow"
    bad = normalize_traits({"timezone": "MSK+3"})
    assert bad.timezone is None
    assert bad.custom == {"timezone": "MSK+3"}
    assert normalize_traits({"timezone": "../../etc/passwd"}).timezone is None


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("ru", "ru"), ("ru_ru", "ru-RU"), ("EN-us", "en-US"), ("zh-hant-TW", "zh-Hant-TW")],
)
def test_locale_is_canonical(raw: str, expected: str) -> None:
    """Locales are written ll[-Ssss][-RR], underscores accepted."""
    assert normalize_locale(raw) == expected


def test_invalid_locale_stays_custom() -> None:
    """A locale that is not a language tag is kept as a custom trait."""
    result = normalize_traits({"locale": "Russian please"})
    assert result.locale is None
    assert result.custom == {"locale": "Russian please"}


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("1990-05-17", date(1990, 5, 17)),
        ("1990-05-17T00:00:00.000Z", date(1990, 5, 17)),
        ("1990-05-17T00:00:00+03:00", date(1990, 5, 17)),
        (datetime(1990, 5, 17, 22, tzinfo=UTC), date(1990, 5, 17)),
        ("17.05.1990", None),
        ("1990-02-30", None),
    ],
)
def test_birthday_parsing(raw: object, expected: date | None) -> None:
    """Birthdays accept YYYY-MM-DD and date-times (date as written), nothing else."""
    assert normalize_birthday(raw) == expected


def test_invalid_birthday_stays_custom() -> None:
    """A birthday that does not parse is kept as a custom trait."""
    result = normalize_traits({"birthday": "soon"})
    assert result.birthday is None
    assert result.custom == {"birthday": "soon"}


def test_first_and_last_name_in_both_spellings() -> None:
    """firstName/first_name and lastName/last_name set the name columns."""
    camel = normalize_traits({"firstName": "Ivan", "lastName": "Petrov"})
    snake = normalize_traits({"first_name": " Ivan ", "last_name": "Petrov"})
    assert (camel.first_name, camel.last_name) == ("Ivan", "Petrov")
    assert (snake.first_name, snake.last_name) == ("Ivan", "Petrov")
    assert camel.custom == snake.custom == {}


def test_name_is_split_when_no_parts_given() -> None:
    """name splits at the first space when first/last names are absent."""
    result = normalize_traits({"name": "Anna  Maria Ivanova"})
    assert (result.first_name, result.last_name) == ("Anna", "Maria Ivanova")
    assert normalize_traits({"name": "Cher"}).last_name is None


def test_name_is_kept_custom_when_parts_given() -> None:
    """With explicit parts, name is not split but kept as a custom trait."""
    result = normalize_traits({"firstName": "Ivan", "name": "Dr. Ivan Petrov"})
    assert result.first_name == "Ivan"
    assert result.last_name is None
    assert result.custom == {"name": "Dr. Ivan Petrov"}


def test_other_traits_are_custom_and_json_safe() -> None:
    """Unknown traits go to custom, converted to plain JSON values."""
    result = normalize_traits(
        {
            "plan": "gold",
            "ltv": Decimal("10.50"),
            "score": math.nan,
            "tags": ("a", "b"),
            "since": date(2020, 1, 2),
        }
    )
    assert result.custom == {
        "plan": "gold",
        "ltv": 10.5,
        "score": None,
        "tags": ["a", "b"],
        "since": "2020-01-02",
    }


def test_null_and_blank_known_fields_are_ignored() -> None:
    """null or blank known fields set nothing and are not kept as custom."""
    result = normalize_traits({"email": None, "phone": "  ", "firstName": ""})
    assert result.columns() == {}
    assert result.custom == {}


def test_columns_lists_only_given_values() -> None:
    """columns() holds the set columns, with phone_valid only alongside phone."""
    result = normalize_traits({"email": "a@b.co", "phone": "+79161234567"})
    assert result.columns() == {
        "email": "a@b.co",
        "phone": "+79161234567",
        "phone_valid": True,
    }


def test_context_locale_and_timezone_are_fallbacks() -> None:
    """Context locale and timezone are offered as fallbacks, not as columns."""
    result = normalize_traits(
        {"locale": "en-GB"}, context={"locale": "ru_RU", "timezone": "Europe/Moscow"}
    )
    assert result.locale == "en-GB"
    assert result.fallbacks == {"locale": "ru-RU", "timezone": "Europe/Moscow"}
    assert normalize_traits({}, context={"timezone": "Mars/Olympus"}).fallbacks == {}


def test_json_safe_stringifies_unknown_objects() -> None:
    """Objects with no JSON form become their string."""

    class Thing:
        def __str__(self) -> str:
            return "thing"

    assert json_safe({1: Thing()}) == {"1": "thing"}
