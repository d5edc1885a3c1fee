"""Phone numbers: normalise what customers typed into E.164 (pure, no I/O).

SMS providers want ``+79161234567``, not ``8 (916) 123-45-67``. A number that
does not parse, or parses but cannot exist under the national numbering plan,
is never worth sending to: every SMS channel calls :func:`to_e164` before it
spends a request, and turns a bad number into a permanent ``invalid_number``.
"""

from __future__ import annotations

import phonenumbers

from touchline.errors import PermanentDeliveryError

DEFAULT_REGION = "RU"
"""Where a number written without ``+`` and a country code is assumed to be."""

INVALID_NUMBER = "invalid_number"
"""The stable error code of a number no provider could deliver to."""


def to_e164(raw: str, *, region: str = DEFAULT_REGION) -> str:
    """``raw`` as an E.164 string (``+`` and digits) or PermanentDeliveryError ``invalid_number``.

    ``region`` decides national forms: with ``"RU"``, ``8 916 123-45-67`` is
    ``+79161234567``. A number with a leading ``+`` ignores ``region``.
    """
    try:
        number = phonenumbers.parse(raw, region)
    except phonenumbers.NumberParseException as exc:
        raise PermanentDeliveryError(
            f"not a phone number: {raw!r} ({exc})", code=INVALID_NUMBER
        ) from None
    if not phonenumbers.is_valid_number(number):
        raise PermanentDeliveryError(f"not a valid phone number: {raw!r}", code=INVALID_NUMBER)
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
