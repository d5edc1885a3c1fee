"""How an SMS text is encoded, split into parts and priced (pure, no I/O).

Operators bill per *part*, and the size of a part depends on the encoding:

* **GSM-7** (3GPP TS 23.038 / GSM 03.38 default alphabet) when every character
  is in the basic table or its extension table. Characters of the extension
  table are sent as ESC + character, so they take two septets. One message
  holds 160 septets; a concatenated message holds 153 per part (the user data
  header takes the rest). An escape pair is never split across parts.
* **UCS-2** (UTF-16 in practice) as soon as one character is outside those
  tables — one Cyrillic letter is enough. One message holds 70 UTF-16 code
  units; a concatenated one 67 per part. A character outside the BMP (most
  emoji) takes two code units, a surrogate pair, never split across parts.

Parts are cut greedily character by character, so a part may end one unit short
of its limit when the next character does not fit whole; :func:`analyse` counts
parts the same way :func:`split` cuts them, so the count is what gets billed.

An empty text has no parts: there is nothing to send and nothing to pay.
Characters are counted as Unicode code points; a multi-code-point emoji (a flag,
a family joined with ZWJ) counts as several and may be cut between them, as
phones and gateways do.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Literal

__all__ = [
    "GSM_BASIC",
    "GSM_EXTENSION",
    "GSM_MULTI_PART",
    "GSM_SINGLE",
    "UCS2_MULTI_PART",
    "UCS2_SINGLE",
    "SmsInfo",
    "analyse",
    "cost",
    "split",
]

GSM_SINGLE = 160
"""Septets in a single GSM-7 message (140 octets * 8 / 7)."""

GSM_MULTI_PART = 153
"""Septets per part of a concatenated GSM-7 message (6-octet UDH takes 7 septets)."""

UCS2_SINGLE = 70
"""UTF-16 code units in a single UCS-2 message (140 octets / 2)."""

UCS2_MULTI_PART = 67
"""UTF-16 code units per part of a concatenated UCS-2 message (140 - 6 octets of UDH)."""

# GSM 03.38 default alphabet, positions 0x00-0x7F in order, eight per line.
# 0x1B is the escape to the extension table and stands for no character here.
_ESC = "\x1b"
GSM_BASIC_TABLE = (
    "@£$¥èéùì"  # 0x00
    "òÇ\nØø\rÅå"  # 0x08
    "Δ_ΦΓΛΩΠΨ"  # 0x10
    "ΣΘΞ\x1bÆæßÉ"  # 0x18
    " !\"#¤%&'"  # 0x20
    "()*+,-./"  # 0x28
    "01234567"  # 0x30
    "89:;<=>?"  # 0x38
    "¡ABCDEFG"  # 0x40
    "HIJKLMNO"  # 0x48
    "PQRSTUVW"  # 0x50
    "XYZÄÖÑÜ§"  # 0x58
    "¿abcdefg"  # 0x60
    "hijklmno"  # 0x68
    "pqrstuvw"  # 0x70
    "xyzäöñüà"  # 0x78
)
assert len(GSM_BASIC_TABLE) == 128

GSM_BASIC = frozenset(GSM_BASIC_TABLE) - {_ESC}
"""Characters of the basic table: one septet each."""

GSM_EXTENSION = frozenset("\f^{}\\[~]|€")
"""Characters of the extension table (0x0A, 0x14, 0x28, 0x29, 0x2F, 0x3C-0x3E, 0x40, 0x65): two septets."""

Encoding = Literal["GSM-7", "UCS-2"]


@dataclass(frozen=True)
class SmsInfo:
    """The encoding of a text and what it costs in units and parts.

    ``units`` are septets for GSM-7 (extension characters count two) and
    UTF-16 code units for UCS-2. ``per_part`` is the limit that applied: 160/70
    for a single message, 153/67 for each part of a concatenated one.
    """

    encoding: Encoding
    units: int
    parts: int
    per_part: int
    characters: int


def _is_gsm(text: str) -> bool:
    return all(c in GSM_BASIC or c in GSM_EXTENSION for c in text)


def _septets(char: str) -> int:
    return 2 if char in GSM_EXTENSION else 1


def _code_units(char: str) -> int:
    return 2 if ord(char) > 0xFFFF else 1


def _limits(encoding: Encoding) -> tuple[int, int]:
    return (GSM_SINGLE, GSM_MULTI_PART) if encoding == "GSM-7" else (UCS2_SINGLE, UCS2_MULTI_PART)


def _encoding(text: str) -> Encoding:
    return "GSM-7" if _is_gsm(text) else "UCS-2"


def _cut(text: str, encoding: Encoding) -> tuple[int, list[str], int]:
    """(units, parts, per_part) with parts cut greedily at whole characters."""
    units_of = _septets if encoding == "GSM-7" else _code_units
    single, multi = _limits(encoding)
    total = sum(units_of(c) for c in text)
    if total == 0:
        return 0, [], single
    if total <= single:
        return total, [text], single
    parts: list[str] = []
    start, used = 0, 0
    for index, char in enumerate(text):
        size = units_of(char)
        if used + size > multi:
            parts.append(text[start:index])
            start, used = index, 0
        used += size
    parts.append(text[start:])
    return total, parts, multi


def analyse(text: str) -> SmsInfo:
    """The encoding, size and part count of ``text`` as it would be sent."""
    encoding = _encoding(text)
    units, parts, per_part = _cut(text, encoding)
    return SmsInfo(
        encoding=encoding,
        units=units,
        parts=len(parts),
        per_part=per_part,
        characters=len(text),
    )


def split(text: str) -> list[str]:
    """The parts of ``text`` as sent; joined they give ``text`` back. Empty text: no parts."""
    return _cut(text, _encoding(text))[1]


def cost(info: SmsInfo, *, price_per_part: Decimal) -> Decimal:
    """What sending the analysed text costs at ``price_per_part``."""
    return price_per_part * info.parts
