"""to_e164: national and international forms normalise; junk is a permanent invalid_number."""

from __future__ import annotations

import pytest

from touchline.errors import PermanentDeliveryError
from touchline.messaging.phone import to_e164


@pytest.mark.parametrize(
    "raw",
    ["+7 916 123-45-67", "8 (916) 123-45-67", "89161234567", "+79161234567", "9161234567"],
)
def test_russian_forms_normalise_to_one_e164(raw: str) -> None:
    """Every usual way of writing a Russian mobile gives the same E.164 string."""
    assert to_e164(raw) == "+79161234567"


def test_region_decides_national_numbers() -> None:
    """A number without a country code is read in the given region."""
    assert to_e164("(650) 253-0000", region="US") == "+16502530000"


def test_plus_number_ignores_region() -> None:
    """A number with + and a country code keeps its own country whatever the region."""
    assert to_e164("+44 20 7946 0958", region="RU") == "+442079460958"


@pytest.mark.parametrize("raw", ["", "hello", "+7 916", "+7 000 000-00-00", "12", "+999 123456"])
def test_unusable_numbers_are_permanent_invalid_number(raw: str) -> None:
    """Unparseable and impossible numbers raise PermanentDeliveryError with code invalid_number."""
    with pytest.raises(PermanentDeliveryError) as info:
        to_e164(raw)
    assert info.value.code == "invalid_number"
