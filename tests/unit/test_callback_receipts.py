"""Reading providers' delivery reports and checking their secrets (pure parts of the callbacks)."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from touchline.config import Secret
from touchline.errors import InputError
from touchline.messaging.channels.sms_http import DeliveryReport, HttpSmsConfig
from touchline.messaging.channels.webhook import sign
from touchline.web.api.callbacks import (
    Receipt,
    decode_payload,
    email_ids,
    form_fields,
    parse_email,
    parse_http,
    parse_smsaero,
    parse_twilio,
    receipt_from_report,
    verify_shared_secret,
)

NOW = 1_772_442_000.0


def test_sms_reports_map_to_delivery_statuses() -> None:
    """delivered -> delivered, failed -> undelivered (bounced when permanent), sent -> nothing yet."""
    assert (
        receipt_from_report(DeliveryReport("1", "delivered"), permanent=False).status == "delivered"
    )
    assert receipt_from_report(DeliveryReport("1", "failed"), permanent=False) == Receipt(
        ("1",), "undelivered", None
    )
    bounced = receipt_from_report(DeliveryReport("1", "failed", error="E"), permanent=True)
    assert (bounced.status, bounced.suppress, bounced.detail) == ("bounced", "hard_bounce", "E")
    assert receipt_from_report(DeliveryReport("1", "sent"), permanent=True).status is None


def test_twilio_permanent_error_codes_suppress() -> None:
    """Twilio 30005 is a dead number (suppress); 30003 an unreachable handset (do not)."""
    dead = parse_twilio({"MessageSid": "SM1", "MessageStatus": "undelivered", "ErrorCode": "30005"})
    away = parse_twilio({"MessageSid": "SM1", "MessageStatus": "undelivered", "ErrorCode": "30003"})
    assert (dead.status, dead.suppress) == ("bounced", "hard_bounce")
    assert (away.status, away.suppress) == ("undelivered", None)
    assert parse_twilio({"MessageSid": "SM1", "MessageStatus": "sent"}).status is None


def test_smsaero_permanent_statuses_match_the_code_or_the_extended_status() -> None:
    """A listed status code or extendStatus makes a failure permanent; unlisted ones are not."""
    payload = {"id": 5, "status": 6, "extendStatus": "rejected"}
    assert parse_smsaero(payload, permanent_statuses=["6"]).suppress == "hard_bounce"
    assert parse_smsaero(payload, permanent_statuses=["rejected"]).suppress == "hard_bounce"
    assert parse_smsaero(payload, permanent_statuses=[]).status == "undelivered"
    assert parse_smsaero({"data": {"id": 5, "status": 1}}, permanent_statuses=[]).status == (
        "delivered"
    )


def test_http_gateway_reports_follow_the_config() -> None:
    """The gateway's paths and status map read the report; listed words suppress."""
    config = HttpSmsConfig(
        url="https://g.example",
        body_template={},
        status_map={"DLV": "delivered", "BAD": "failed"},
        callback_id_path="m.id",
        callback_status_path="m.st",
    )
    assert parse_http(
        config, {"m": {"id": 9, "st": "DLV"}}, permanent_statuses=[]
    ).provider_ids == ("9",)
    bad = parse_http(config, {"m": {"id": 9, "st": "BAD"}}, permanent_statuses=["BAD"])
    assert (bad.status, bad.suppress) == ("bounced", "hard_bounce")
    with pytest.raises(InputError):
        parse_http(config, {"m": {}}, permanent_statuses=[])


@pytest.mark.parametrize(
    ("kind", "status", "suppress"),
    [
        ("delivered", "delivered", None),
        ("hard_bounce", "bounced", "hard_bounce"),
        ("soft_bounce", "undelivered", None),
        ("complaint", "complained", "complaint"),
    ],
)
def test_email_webhook_types_map_to_statuses(kind: str, status: str, suppress: str | None) -> None:
    """Each email report type gives its delivery status and suppression reason."""
    receipt = parse_email({"message_id": "<a@b>", "type": kind, "recipient": "x@y.ru"})
    assert (receipt.status, receipt.suppress, receipt.recipient) == (status, suppress, "x@y.ru")


def test_email_webhook_matches_message_ids_with_or_without_brackets() -> None:
    """A bare Message-ID also matches the stored <...> form; provider_id is taken as given."""
    assert email_ids("abc@shop.example") == ("<abc@shop.example>", "abc@shop.example")
    assert email_ids(" <abc@shop.example> ") == ("<abc@shop.example>", "abc@shop.example")
    receipt = parse_email({"message_id": "abc@s", "provider_id": "esp-1", "type": "delivered"})
    assert receipt.provider_ids == ("<abc@s>", "abc@s", "esp-1")


@pytest.mark.parametrize(
    ("payload", "starts"),
    [
        ({"type": "delivered"}, "message_id:"),
        ({"message_id": "", "type": "delivered"}, "message_id:"),
        ({"message_id": "m", "type": "opened"}, "type:"),
        ({"message_id": "m", "type": "delivered", "recipient": "nobody"}, "recipient:"),
    ],
)
def test_malformed_email_reports_name_the_field(payload: dict[str, object], starts: str) -> None:
    """Missing ids, unknown types and bad recipients are InputErrors naming the field."""
    with pytest.raises(InputError) as caught:
        parse_email(payload)
    assert caught.value.message.startswith(starts)


def test_email_detail_is_kept_short_and_as_text() -> None:
    """Structured details become JSON text; long ones are cut."""
    assert parse_email(
        {"message_id": "m", "type": "delivered", "detail": {"code": 250}}
    ).detail == ('{"code": 250}')
    long = parse_email({"message_id": "m", "type": "delivered", "detail": "x" * 2000})
    assert long.detail is not None and len(long.detail) == 500


def test_payloads_decode_from_json_or_forms() -> None:
    """JSON objects and form bodies both decode; the first value of a repeated field wins."""
    assert decode_payload(b'{"id": 1}', "application/json") == {"id": 1}
    assert decode_payload(b"id=1&status=2&id=3", "application/x-www-form-urlencoded") == {
        "id": "1",
        "status": "2",
    }
    assert decode_payload(b'{"id": 1}', None) == {"id": 1}
    assert form_fields(b"a=1&a=2&b=") == {"a": ["1", "2"], "b": [""]}
    with pytest.raises(InputError):
        decode_payload(b"[1, 2]", "application/json")
    with pytest.raises(InputError):
        decode_payload(b"\xff\xfe", "application/json")


def test_shared_secret_by_token_or_body_signature() -> None:
    """The token, a bare or sha256= hex HMAC of the body, or a fresh v1= signature authenticate."""
    body = b'{"id": 1}'
    digest = hmac.new(b"s3cret", body, hashlib.sha256).hexdigest()

    def check(**given: str | None) -> bool:
        fields: dict[str, str | None] = {"token": None, "signature": None, "timestamp": None}
        fields.update(given)
        return verify_shared_secret(
            "s3cret",
            body=body,
            token=fields["token"],
            signature=fields["signature"],
            timestamp=fields["timestamp"],
            now=NOW,
        )

    assert check(token="s3cret")
    assert not check(token="s3cre")
    assert check(signature=digest)
    assert check(signature="sha256=" + digest.upper())
    assert not check(signature=hmac.new(b"other", body, hashlib.sha256).hexdigest())
    ts = str(int(NOW))
    assert check(signature=sign(Secret("s3cret"), ts, body), timestamp=ts)
    old = str(int(NOW) - 3600)
    assert not check(signature=sign(Secret("s3cret"), old, body), timestamp=old)
    assert not check()
