"""Signed customer links: tokens round-trip, and every alteration is refused."""

from __future__ import annotations

import string
from datetime import UTC, datetime

import pytest

from touchline.errors import InputError
from touchline.messaging.links import (
    MAC_BYTES,
    check_csrf,
    confirm_url,
    csrf_token,
    make_token,
    preferences_url,
    read_token,
    unsubscribe_url,
    workspace_of,
)

SECRET = bytes.fromhex("11" * 32)
OTHER_SECRET = bytes.fromhex("22" * 32)
WS = "ws_0123456789ab"
T0 = datetime(2026, 3, 2, 9, 30, 15, tzinfo=UTC)
URL_SAFE = set(string.ascii_letters + string.digits + "-_.")


def token(**overrides: object) -> str:
    fields: dict[str, object] = {
        "kind": "unsubscribe",
        "workspace_id": WS,
        "profile_id": 4242,
        "channel": "email",
        "topic": "selling",
        "message_id": 987_654,
        "issued_at": T0,
    }
    fields.update(overrides)
    return make_token(SECRET, **fields)  # type: ignore[arg-type]


def assert_bad_link(secret: bytes, text: str, kind: str = "unsubscribe") -> None:
    with pytest.raises(InputError) as caught:
        read_token(secret, text, kind=kind)  # type: ignore[arg-type]
    assert caught.value.code == "bad_link"
    assert caught.value.status == 400


def test_a_token_round_trips_every_claim() -> None:
    """What make_token signs, read_token gives back exactly."""
    # when
    claims = read_token(SECRET, token(), kind="unsubscribe")
    # then
    assert claims.kind == "unsubscribe"
    assert claims.workspace_id == WS
    assert claims.profile_id == 4242
    assert claims.channel == "email"
    assert claims.topic == "selling"
    assert claims.message_id == 987_654
    assert claims.issued_at == T0.replace(microsecond=0)


def test_optional_claims_come_back_as_none() -> None:
    """A token without topic or message id reads back with both None."""
    claims = read_token(
        SECRET, token(kind="preferences", topic=None, message_id=None), kind="preferences"
    )
    assert (claims.topic, claims.message_id) == (None, None)
    assert claims.kind == "preferences"


def test_the_workspace_is_readable_without_the_secret() -> None:
    """workspace_of names the workspace so the server can find its secret."""
    assert workspace_of(token()) == WS


@pytest.mark.parametrize("bad", ["", "no-dot", ".abc", "ws bad.abc", "x" * 40 + ".abc"])
def test_a_malformed_token_has_no_workspace(bad: str) -> None:
    """workspace_of refuses text that is not a token with InputError bad_link."""
    with pytest.raises(InputError) as caught:
        workspace_of(bad)
    assert caught.value.code == "bad_link"


def test_changing_any_character_is_refused() -> None:
    """Every single-character change, anywhere in the token, fails verification."""
    # given
    good = token()
    alphabet = string.ascii_letters + string.digits + "-_"
    # when / then
    for i, original in enumerate(good):
        for replacement in (alphabet[(alphabet.find(original) + 1) % len(alphabet)], "A", "_"):
            if replacement == original:
                continue
            forged = good[:i] + replacement + good[i + 1 :]
            assert_bad_link(SECRET, forged)


def test_cutting_or_extending_the_token_is_refused() -> None:
    """A truncated token, or one with characters appended, fails verification."""
    good = token()
    for cut in range(1, len(good) - len(WS)):
        assert_bad_link(SECRET, good[:-cut])
    for extra in ("A", "AA", "AAAA", "=", "%3D"):
        assert_bad_link(SECRET, good + extra)


def test_a_token_of_another_kind_is_refused() -> None:
    """An unsubscribe token does not open the preference or confirmation page."""
    good = token(kind="unsubscribe")
    assert_bad_link(SECRET, good, kind="preferences")
    assert_bad_link(SECRET, good, kind="confirm")
    assert read_token(SECRET, good, kind="unsubscribe").kind == "unsubscribe"


def test_another_workspaces_secret_refuses_the_token() -> None:
    """A token verifies only with the secret of the workspace that made it."""
    assert_bad_link(OTHER_SECRET, token())


def test_moving_a_token_to_another_workspace_is_refused() -> None:
    """Swapping the clear workspace id breaks the signature even under one secret."""
    good = token()
    moved = "ws_zzzzzzzzzzzz" + good[len(WS) :]
    assert_bad_link(SECRET, moved)


def test_tokens_are_short_and_url_safe() -> None:
    """Even with every field at realistic maximum a token fits an SMS and needs no escaping."""
    # given: big ids, a topic, a message id
    text = token(profile_id=2**40, message_id=2**40, channel="whatsapp", topic="engaging")
    # then
    assert len(text) <= 70, text
    assert set(text) <= URL_SAFE
    short = token(channel="sms", topic=None, message_id=123_456, profile_id=98_765)
    assert len(short) <= 60, short


def test_the_signature_has_at_least_128_bits() -> None:
    """MAC_BYTES keeps forgery out of reach (2**128 guesses)."""
    assert MAC_BYTES * 8 >= 128


def test_tokens_differ_per_customer_and_kind() -> None:
    """Two customers, or two kinds, never share a token."""
    assert token(profile_id=1) != token(profile_id=2)
    assert token(kind="unsubscribe") != token(kind="preferences")


def test_urls_put_each_kind_under_its_path() -> None:
    """The builders join the public URL (with or without a trailing slash) and the token."""
    assert unsubscribe_url("https://shop.example/", "T") == "https://shop.example/u/T"
    assert preferences_url("https://shop.example", "T") == "https://shop.example/p/T"
    assert confirm_url("https://shop.example", "T") == "https://shop.example/c/T"


def test_the_csrf_value_belongs_to_one_token() -> None:
    """The form check value verifies for its own token only, and not when missing."""
    first, second = token(profile_id=1), token(profile_id=2)
    value = csrf_token(SECRET, first)
    assert check_csrf(SECRET, first, value)
    assert not check_csrf(SECRET, second, value)
    assert not check_csrf(OTHER_SECRET, first, value)
    assert not check_csrf(SECRET, first, None)
    assert not check_csrf(SECRET, first, "")


def test_make_token_refuses_what_it_cannot_sign() -> None:
    """Naive times, ids below 1 and names over 64 bytes are programming errors."""
    with pytest.raises(ValueError):
        token(issued_at=datetime(2026, 3, 2))
    with pytest.raises(ValueError):
        token(profile_id=0)
    with pytest.raises(ValueError):
        token(channel="x" * 65)
    with pytest.raises(ValueError):
        token(workspace_id="ws.with.dots")


def test_uncommon_channel_names_round_trip() -> None:
    """A channel outside the one-byte table is carried in full."""
    text = token(channel="max-messenger", topic=None)
    assert read_token(SECRET, text, kind="unsubscribe").channel == "max-messenger"
