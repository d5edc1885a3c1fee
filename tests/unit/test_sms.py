"""SMS encoding, unit counting, splitting and pricing."""

from __future__ import annotations

from decimal import Decimal

import pytest

from touchline.messaging.sms import GSM_BASIC, GSM_EXTENSION, SmsInfo, analyse, cost, split

# (id, text, encoding, units, parts)
CASES = [
    ("empty", "", "GSM-7", 0, 0),
    ("one-latin", "a", "GSM-7", 1, 1),
    ("gsm-160", "a" * 160, "GSM-7", 160, 1),
    ("gsm-161", "a" * 161, "GSM-7", 161, 2),
    ("gsm-153x2", "a" * 306, "GSM-7", 306, 2),
    ("gsm-153x2+1", "a" * 307, "GSM-7", 307, 3),
    ("ext-doubles", "€" * 80, "GSM-7", 160, 1),
    ("ext-over-single", "€" * 80 + "a", "GSM-7", 161, 2),
    # 152 plain septets then € (2 septets) would end at 154: the pair moves whole.
    ("ext-at-part-boundary", "a" * 152 + "€" + "b" * 10, "GSM-7", 164, 2),
    ("ext-fits-boundary", "a" * 151 + "€" + "b" * 10, "GSM-7", 163, 2),
    ("ext-pair-forces-third", "a" * 152 + "€" + "a" * 152, "GSM-7", 306, 3),
    ("all-ext", "^{}\\[~]|€\f", "GSM-7", 20, 1),
    ("mixed-latin-euro", "Price: 10 € [sale]", "GSM-7", 21, 1),
    ("gsm-greek-and-accents", "ΔΦΓ àéÑ @£$¥", "GSM-7", 12, 1),
    ("crlf", "a\r\nb", "GSM-7", 4, 1),
    ("cyrillic-70", "я" * 70, "UCS-2", 70, 1),
    ("cyrillic-71", "я" * 71, "UCS-2", 71, 2),
    ("cyrillic-67x2", "я" * 134, "UCS-2", 134, 2),
    ("cyrillic-67x2+1", "я" * 135, "UCS-2", 135, 3),
    ("one-cyrillic-in-latin", "a" * 100 + "я", "UCS-2", 101, 2),
    ("emoji-35-single", "😀" * 35, "UCS-2", 70, 1),
    # 66 units then an emoji (2 units) would end at 68: the surrogate pair moves whole.
    ("emoji-at-part-boundary", "я" * 66 + "😀" + "я" * 10, "UCS-2", 78, 2),
    ("emoji-pair-forces-third", "я" * 66 + "😀" + "я" * 66, "UCS-2", 134, 3),
    ("lowercase-c-cedilla-is-not-gsm", "ç", "UCS-2", 1, 1),
    ("backtick-is-not-gsm", "`", "UCS-2", 1, 1),
]


@pytest.mark.parametrize(
    ("text", "encoding", "units", "parts"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_analyse_table(text: str, encoding: str, units: int, parts: int) -> None:
    """Each tricky text gets the expected encoding, unit count and billed part count."""
    info = analyse(text)
    assert (info.encoding, info.units, info.parts) == (encoding, units, parts)
    assert info.characters == len(text)


@pytest.mark.parametrize("text", [c[1] for c in CASES], ids=[c[0] for c in CASES])
def test_split_rejoins_and_respects_limits(text: str) -> None:
    """Parts re-join to the original, their count matches analyse, and each fits its limit."""
    info = analyse(text)
    parts = split(text)
    assert "".join(parts) == text
    assert len(parts) == info.parts
    for part in parts:
        assert part
        assert analyse(part).units <= info.per_part


def test_per_part_reports_single_or_concatenated_limit() -> None:
    """per_part is 160/70 for one message and 153/67 once the text is concatenated."""
    assert analyse("a" * 160).per_part == 160
    assert analyse("a" * 161).per_part == 153
    assert analyse("я" * 70).per_part == 70
    assert analyse("я" * 71).per_part == 67


def test_extension_pair_moves_whole_to_next_part() -> None:
    """A € that would straddle the 153-septet boundary starts the next part."""
    parts = split("a" * 152 + "€" + "b" * 10)
    assert parts[0] == "a" * 152
    assert parts[1].startswith("€")


def test_emoji_moves_whole_to_next_part() -> None:
    """An emoji whose surrogate pair would straddle the 67-unit boundary starts the next part."""
    parts = split("я" * 66 + "😀" + "я" * 10)
    assert parts[0] == "я" * 66
    assert parts[1].startswith("😀")


def test_charset_tables_have_spec_sizes() -> None:
    """The hand-typed tables have 127 basic characters (128 less ESC) and 10 extension ones."""
    assert len(GSM_BASIC) == 127
    assert len(GSM_EXTENSION) == 10
    assert not GSM_BASIC & GSM_EXTENSION


def test_cost_multiplies_parts() -> None:
    """Cost is the part count times the price, kept exact in Decimal."""
    assert cost(analyse("я" * 71), price_per_part=Decimal("2.35")) == Decimal("4.70")
    assert cost(analyse(""), price_per_part=Decimal("2.35")) == Decimal("0")


def test_info_is_plain_value() -> None:
    """SmsInfo compares by value, so callers can store and compare it."""
    assert analyse("hi") == SmsInfo("GSM-7", 2, 1, 160, 2)
