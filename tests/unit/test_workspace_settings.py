"""Workspace settings documents: validation with field paths, secret masking, masked round trips."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from touchline.errors import InputError
from touchline.messaging.policies import DEFAULT_POLICY
from touchline.messaging.settings import (
    MASK,
    WorkspaceSettings,
    mask,
    masked,
    merge_secrets,
)

SMSAERO_KEY = "aero-key-0123456789abcd"
SMTP_PASSWORD = "smtp-password-wxyz"

FULL: dict[str, Any] = {
    "caps": [{"limit": 2, "window": "1d", "channel": "email"}],
    "quiet_hours": [],
    "default_timezone": "Europe/Moscow",
    "double_opt_in": ["email"],
    "topics": {"promo": "Sales and offers", "news": "News"},
    "sender": {
        "email_from": "Shop <shop@example.ru>",
        "reply_to": "care@example.ru",
        "sms_sender": "Shop",
        "unsubscribe_mailto": "mailto:unsubscribe@example.ru",
    },
    "channels": {
        "email": {
            "provider": "smtp",
            "host": "smtp.example.ru",
            "security": "tls",
            "username": "shop",
            "password": SMTP_PASSWORD,
            "callback_secret": "email-callback-secret-1234",
        },
        "sms": {"provider": "smsaero", "email": "owner@example.ru", "api_key": SMSAERO_KEY},
        "telegram": {"provider": "telegram", "bot_token": "123456:telegram-bot-token"},
        "webhook": {"provider": "webhook", "url": "https://hooks.example/t", "secret": "hook-s"},
    },
}


def parse(document: Any) -> WorkspaceSettings:
    return WorkspaceSettings.parse(document)


def error_of(document: Any) -> str:
    with pytest.raises(InputError) as caught:
        parse(document)
    return caught.value.message


def test_an_empty_document_means_defaults_and_no_channels() -> None:
    """No settings at all: the default delivery policy and no workspace channels."""
    settings = parse({})
    assert settings.policy == DEFAULT_POLICY
    assert settings.channels == {}
    assert settings.double_opt_in == frozenset()
    assert settings.sender.email_from is None


def test_a_full_document_parses_into_its_parts() -> None:
    """Every section of a complete document is read: policy, opt-in, topics, sender, channels."""
    settings = parse(FULL)
    assert settings.policy.caps[0].limit == 2
    assert settings.policy.caps[0].window == timedelta(days=1)
    assert settings.policy.quiet_hours == ()
    assert settings.policy.default_timezone == "Europe/Moscow"
    assert settings.double_opt_in == frozenset({"email"})
    assert settings.topics == {"promo": "Sales and offers", "news": "News"}
    assert settings.sender.email_from == "shop@example.ru"
    assert settings.sender.email_from_name == "Shop"
    assert settings.sender.unsubscribe_mailto == "unsubscribe@example.ru"
    assert {name: c.provider for name, c in settings.channels.items()} == {
        "email": "smtp",
        "sms": "smsaero",
        "telegram": "telegram",
        "webhook": "webhook",
    }
    sms = settings.channel("sms")
    assert sms is not None
    assert sms.secret("api_key") is not None
    assert sms.secret("api_key").reveal() == SMSAERO_KEY  # type: ignore[union-attr]


def test_the_workspace_zone_stands_in_for_a_missing_default_timezone() -> None:
    """Without default_timezone, the workspace's own zone is the policy's default."""
    assert WorkspaceSettings.parse({}, timezone="Asia/Yekaterinburg").policy.default_timezone == (
        "Asia/Yekaterinburg"
    )
    assert WorkspaceSettings.parse(FULL, timezone="UTC").policy.default_timezone == "Europe/Moscow"


@pytest.mark.parametrize(
    ("document", "starts", "contains"),
    [
        ([], "settings:", "object"),
        ({"chanels": {}}, "chanels:", "did you mean 'channels'?"),
        ({"channels": {"sms": {"provider": "twillio"}}}, "channels.sms.provider:", "'twilio'"),
        ({"channels": {"sms": {}}}, "channels.sms.provider:", "required"),
        ({"channels": {"push": {"provider": "x"}}}, "channels.push:", "unknown key"),
        (
            {"channels": {"sms": {"provider": "smsaero", "email": "a@example.ru"}}},
            "channels.sms.api_key:",
            "required",
        ),
        (
            {"channels": {"sms": {"provider": "smsaero", "email": "a@b.ru", "api_kye": "k"}}},
            "channels.sms.api_kye:",
            "did you mean 'api_key'?",
        ),
        (
            {"channels": {"email": {"provider": "smtp", "host": "h", "port": 0, "from": "a@b.ru"}}},
            "channels.email.port:",
            "port number",
        ),
        ({"channels": {"email": {"provider": "smtp", "host": "h"}}}, "channels.email.from:", ""),
        (
            {"channels": {"email": {"provider": "smtp", "host": "h", "from": "not-an-address"}}},
            "channels.email.from:",
            "email address",
        ),
        (
            {"channels": {"sms": {"provider": "http", "url": "ftp://gateway.example"}}},
            "channels.sms.url:",
            "http(s) URL",
        ),
        (
            {
                "channels": {
                    "sms": {"provider": "http", "url": "https://g.example", "auth": "bearer"}
                }
            },
            "channels.sms.token:",
            "bearer",
        ),
        (
            {
                "channels": {
                    "sms": {"provider": "http", "url": "https://g", "status_map": {"ok": "yes"}}
                }
            },
            "channels.sms.status_map.ok:",
            "delivered, failed or sent",
        ),
        (
            {"channels": {"sms": {"provider": "twilio", "account_sid": "AC1", "auth_token": "t"}}},
            "channels.sms.from_number:",
            "sender.sms_sender",
        ),
        (
            {"channels": {"webhook": {"provider": "webhook", "secret": "s", "extra": 1}}},
            "channels.webhook.extra:",
            "unknown key",
        ),
        (
            {"channels": {"telegram": {"provider": "telegram", "bot_token": "t", "timeout": 0}}},
            "channels.telegram.timeout:",
            "seconds",
        ),
        (
            {"channels": {"sms": {"provider": "capture", "price_per_part": -1}}},
            "channels.sms.price_per_part:",
            "zero or more",
        ),
        (
            {"channels": {"sms": {"provider": "capture", "price_per_part": "cheap"}}},
            "channels.sms.price_per_part:",
            "number",
        ),
        ({"sender": {"sms_sender": "TooLongSenderName"}}, "sender.sms_sender:", "11"),
        ({"sender": {"from": "a@b.ru"}}, "sender.from:", "unknown key"),
        ({"caps": [{"limit": 0, "window": "1d"}]}, "caps[0].limit:", ""),
        ({"default_timezone": "Mars/Olympus"}, "default_timezone:", "IANA"),
        ({"double_opt_in": ["emial"]}, "double_opt_in[0]:", "did you mean 'email'?"),
        ({"double_opt_in": "email"}, "double_opt_in:", "list"),
        ({"topics": {"Big Sale": "x"}}, "topics.Big Sale:", "lower-case"),
        ({"topics": {"sale": ""}}, "topics.sale:", "non-empty"),
    ],
)
def test_a_bad_document_is_refused_naming_the_field(
    document: Any, starts: str, contains: str
) -> None:
    """Each kind of mistake is an InputError whose message starts with the field's path."""
    message = error_of(document)
    assert message.startswith(starts), message
    assert contains in message, message


@pytest.mark.parametrize("sender", ["Shop", "SHOP-24.ru", "900", "+79161234567", "Abc Def Ghi"])
def test_alphanumeric_and_e164_sms_senders_are_accepted(sender: str) -> None:
    """SMS senders of up to 11 alphanumeric characters, or E.164 numbers, pass."""
    assert parse({"sender": {"sms_sender": sender}}).sender.sms_sender == sender


def test_a_null_channel_entry_means_not_configured() -> None:
    """A channel set to null is as if it were absent, so it can be switched off by a PUT."""
    assert parse({"channels": {"sms": None}}).channels == {}


def test_a_channel_checksum_follows_its_options_and_the_sender() -> None:
    """Changing a channel's options or the sender changes its checksum; other channels keep theirs."""
    base = parse(FULL)
    other_sms = parse({**FULL, "channels": {**FULL["channels"], "sms": {"provider": "capture"}}})
    new_sender = parse({**FULL, "sender": {**FULL["sender"], "sms_sender": "Shop2"}})
    assert other_sms.channels["sms"].checksum != base.channels["sms"].checksum
    assert other_sms.channels["email"].checksum == base.channels["email"].checksum
    assert new_sender.channels["sms"].checksum != base.channels["sms"].checksum


def test_channel_settings_never_print_their_secrets() -> None:
    """repr of parsed settings shows no secret value."""
    text = repr(parse(FULL))
    assert SMSAERO_KEY not in text
    assert SMTP_PASSWORD not in text


# -- masking ------------------------------------------------------------------------------


def test_secrets_are_masked_to_their_last_four_characters() -> None:
    """Every secret key is masked wherever it sits; other values are untouched."""
    shown = masked(FULL)
    assert shown["channels"]["sms"]["api_key"] == MASK + SMSAERO_KEY[-4:]
    assert shown["channels"]["email"]["password"] == MASK + SMTP_PASSWORD[-4:]
    assert shown["channels"]["email"]["callback_secret"] == MASK + "1234"
    assert shown["channels"]["sms"]["email"] == "owner@example.ru"
    assert shown["sender"] == FULL["sender"]
    assert FULL["channels"]["sms"]["api_key"] == SMSAERO_KEY  # the original is not modified


def test_short_secrets_are_masked_whole() -> None:
    """A short secret shows none of its characters."""
    assert mask("hook-s") == MASK
    assert masked(FULL)["channels"]["webhook"]["secret"] == MASK


def test_nested_secrets_are_masked() -> None:
    """A DKIM private key inside the email channel is masked like any other secret."""
    pem = "-----BEGIN RSA PRIVATE KEY-----\nMIIBOgIBAAJBAK\n-----END RSA PRIVATE KEY-----"
    document = {"channels": {"email": {"provider": "smtp", "dkim": {"private_key": pem}}}}
    assert masked(document)["channels"]["email"]["dkim"]["private_key"] == MASK + pem[-4:]


def test_a_masked_document_sent_back_keeps_the_stored_secrets() -> None:
    """Reading the masked document and writing it back unchanged stores the same secrets."""
    merged = merge_secrets(FULL, masked(FULL))
    assert merged == FULL
    parse(merged)


def test_a_new_secret_replaces_the_stored_one() -> None:
    """A secret sent in clear replaces the stored one; masked siblings keep theirs."""
    edited = masked(FULL)
    edited["channels"]["sms"]["api_key"] = "a-brand-new-api-key"
    merged = merge_secrets(FULL, edited)
    assert merged["channels"]["sms"]["api_key"] == "a-brand-new-api-key"
    assert merged["channels"]["email"]["password"] == SMTP_PASSWORD


def test_a_masked_value_that_matches_no_stored_secret_is_refused() -> None:
    """A masked value for a provider that has no stored secret there cannot become the secret."""
    edited = masked(FULL)
    edited["channels"]["sms"] = {
        "provider": "twilio",
        "account_sid": "AC1",
        "auth_token": "••••abcd",
    }
    with pytest.raises(InputError) as caught:
        merge_secrets(FULL, edited)
    assert caught.value.message.startswith("channels.sms.auth_token:")


def test_a_masked_value_is_never_accepted_as_a_secret() -> None:
    """Validation refuses a value that is itself masked, should it reach the parser."""
    document = {"channels": {"telegram": {"provider": "telegram", "bot_token": MASK + "abcd"}}}
    assert error_of(document).startswith("channels.telegram.bot_token:")
