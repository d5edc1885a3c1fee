"""HTTP SMS channels (generic, SMS Aero, Twilio): local fake providers, mock transports for errors."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import hmac
import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest

from touchline.config import Secret
from touchline.errors import (
    ConfigError,
    InputError,
    PermanentDeliveryError,
    TransientDeliveryError,
)
from touchline.messaging.channels.base import OutgoingMessage, SendResult
from touchline.messaging.channels.sms_http import (
    DeliveryReport,
    HttpSmsChannel,
    HttpSmsConfig,
    parse_status_callback,
)
from touchline.messaging.channels.smsaero import SmsAeroChannel, SmsAeroConfig
from touchline.messaging.channels.smsaero import (
    parse_status_callback as parse_smsaero_callback,
)
from touchline.messaging.channels.twilio import (
    TwilioChannel,
    TwilioConfig,
    compute_signature,
    validate_signature,
)
from touchline.messaging.channels.twilio import (
    parse_status_callback as parse_twilio_callback,
)

CYRILLIC_LONG = "Ваш заказ №42 отправлен. Трек-номер придёт отдельным сообщением, спасибо!!"  # over 70 UTF-16 units: two parts


def outgoing(to: str = "8 916 123-45-67", text: str = "Hello", **overrides: Any) -> OutgoingMessage:
    fields: dict[str, Any] = {
        "idempotency_key": "msg-42",
        "channel": "sms",
        "to": to,
        "text": text,
    }
    fields.update(overrides)
    return OutgoingMessage(**fields)


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


Responder = Callable[[Recorded], tuple[int, Any]]


class FakeProvider:
    """A threaded HTTP server that records requests and answers what ``responder`` says."""

    def __init__(self, responder: Responder) -> None:
        self.requests: list[Recorded] = []
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                recorded = Recorded(
                    self.command, self.path, dict(self.headers.items()), self.rfile.read(length)
                )
                provider.requests.append(recorded)
                status, payload = responder(recorded)
                reply = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            do_GET = do_POST = _handle

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )


@pytest.fixture
def provider_factory() -> Iterator[Callable[[Responder], FakeProvider]]:
    started: list[FakeProvider] = []

    def start(responder: Responder) -> FakeProvider:
        provider = FakeProvider(responder)
        provider.thread.start()
        started.append(provider)
        return provider

    yield start
    for provider in started:
        provider.server.shutdown()
        provider.server.server_close()
        provider.thread.join()


def send_real(make: Callable[[httpx.AsyncClient], Any], message: OutgoingMessage) -> SendResult:
    async def run() -> SendResult:
        async with httpx.AsyncClient(trust_env=False) as client:
            result: SendResult = await make(client).send(message)
            return result

    return asyncio.run(run())


def send_mock(
    make: Callable[[httpx.AsyncClient], Any],
    handler: Callable[[httpx.Request], httpx.Response],
    message: OutgoingMessage,
) -> SendResult:
    async def run() -> SendResult:
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
            result: SendResult = await make(client).send(message)
            return result

    return asyncio.run(run())


# --- generic HTTP gateway -------------------------------------------------------------------

GENERIC = HttpSmsConfig(
    url="https://sms.example/api/send",
    auth="bearer",
    token=Secret("tok-1"),
    body_template='{"messages": [{"to": "{to}", "body": "{text}", "from": "{sender}"}],'
    ' "ref": "{idempotency_key}", "flash": false}',
    response_id_path="data.0.id",
    response_status_path="data.0.status",
    status_map={"ok": "sent", "done": "delivered", "blocked": "failed"},
    callback_error_path="error",
    sender="Shop",
)


def generic(config: HttpSmsConfig = GENERIC) -> Callable[[httpx.AsyncClient], HttpSmsChannel]:
    return lambda client: HttpSmsChannel(client, config=config)


def test_generic_gateway_receives_rendered_json_from_a_real_server(
    provider_factory: Callable[[Responder], FakeProvider],
) -> None:
    """A local gateway gets the templated JSON, bearer token and key; the id path and SmsInfo come back."""
    # given
    provider = provider_factory(lambda r: (200, {"data": [{"id": "g-7", "status": "ok"}]}))
    config = dataclasses.replace(GENERIC, url=provider.url + "/api/send")
    text = 'Цитата "в кавычках" и {скобки}' + CYRILLIC_LONG
    # when
    result = send_real(generic(config), outgoing(text=text))
    # then
    [request] = provider.requests
    assert request.path == "/api/send"
    assert request.headers["Authorization"] == "Bearer tok-1"
    assert request.headers["Idempotency-Key"] == "msg-42"
    assert json.loads(request.body) == {
        "messages": [{"to": "+79161234567", "body": text, "from": "Shop"}],
        "ref": "msg-42",
        "flash": False,
    }
    assert result.provider_id == "g-7"
    assert result.status == "accepted"
    assert result.detail["sms"]["encoding"] == "UCS-2"
    assert result.detail["sms"]["parts"] == 2  # 104 UTF-16 units: 67 + 37


def test_generic_form_body_with_basic_auth() -> None:
    """body_format form sends the top-level keys form-encoded with HTTP basic auth."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"id": 5})

    config = HttpSmsConfig(
        url="https://sms.example/send",
        body_format="form",
        auth="basic",
        username="acme",
        password=Secret("pw"),
        body_template={"phone": "{to_digits}", "msg": "{text}"},
        idempotency_header=None,
    )
    result = send_mock(generic(config), handler, outgoing())
    [request] = seen
    assert request.headers["Authorization"] == basic("acme", "pw")
    assert "Idempotency-Key" not in request.headers
    assert parse_qs(request.content.decode()) == {"phone": ["79161234567"], "msg": ["Hello"]}
    assert result.provider_id == "5"


def test_invalid_number_fails_permanently_without_a_request() -> None:
    """A recipient that is not a phone number raises invalid_number and sends nothing."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200)

    with pytest.raises(PermanentDeliveryError) as info:
        send_mock(generic(), handler, outgoing(to="not a number"))
    assert info.value.code == "invalid_number"
    assert seen == []


def test_empty_text_fails_permanently() -> None:
    """A text with no parts is refused as empty_message before any request."""
    with pytest.raises(PermanentDeliveryError) as info:
        send_mock(generic(), lambda r: httpx.Response(200), outgoing(text=""))
    assert info.value.code == "empty_message"


@pytest.mark.parametrize(
    ("status", "error", "code"),
    [
        (500, TransientDeliveryError, "sms_unavailable"),
        (503, TransientDeliveryError, "sms_unavailable"),
        (429, TransientDeliveryError, "sms_unavailable"),
        (401, TransientDeliveryError, "sms_bad_credentials"),
        (400, PermanentDeliveryError, "sms_rejected"),
        (403, PermanentDeliveryError, "sms_rejected"),
    ],
)
def test_generic_status_codes_map_to_error_kinds(
    status: int, error: type[Exception], code: str
) -> None:
    """5xx/429/401 are transient, other 4xx permanent, each with a stable code."""
    with pytest.raises(error) as info:
        send_mock(generic(), lambda r: httpx.Response(status, text="no"), outgoing())
    assert getattr(info.value, "code", None) == code


def test_generic_timeout_is_transient() -> None:
    """A read timeout is a transient failure."""

    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow", request=request)

    with pytest.raises(TransientDeliveryError):
        send_mock(generic(), handler, outgoing())


def test_generic_failed_status_in_answer_is_permanent() -> None:
    """A 200 whose status maps to failed is a permanent rejection."""
    with pytest.raises(PermanentDeliveryError):
        send_mock(
            generic(),
            lambda r: httpx.Response(200, json={"data": [{"id": "x", "status": "blocked"}]}),
            outgoing(),
        )


def test_generic_callback_maps_statuses() -> None:
    """Callbacks map through status_map; unknown words are sent; the error is kept."""
    assert parse_status_callback(GENERIC, {"id": 9, "status": "done"}) == DeliveryReport(
        "9", "delivered", None, "done"
    )
    assert parse_status_callback(
        GENERIC, {"id": "9", "status": "blocked", "error": "spam"}
    ) == DeliveryReport("9", "failed", "spam", "blocked")
    assert parse_status_callback(GENERIC, {"id": "9", "status": "weird"}).status == "sent"


def test_generic_callback_without_id_is_input_error() -> None:
    """A callback without an id at the configured path is refused as bad input."""
    with pytest.raises(InputError):
        parse_status_callback(GENERIC, {"status": "done"})


def test_generic_config_refuses_incomplete_auth_and_bad_json() -> None:
    """Bearer without a token, a non-JSON template and unknown mapped statuses are ConfigErrors."""
    with pytest.raises(ConfigError):
        HttpSmsConfig(url="u", body_template={}, auth="bearer")
    with pytest.raises(ConfigError):
        HttpSmsConfig(url="u", body_template="{not json")
    with pytest.raises(ConfigError):
        HttpSmsConfig(url="u", body_template={}, status_map={"x": "gone"})  # type: ignore[dict-item]


# --- SMS Aero -------------------------------------------------------------------------------


def smsaero(base_url: str = "https://gate.smsaero.ru/v2") -> Callable[[httpx.AsyncClient], Any]:
    config = SmsAeroConfig(
        email="shop@example.com",
        api_key=Secret("aero-key"),
        sign="SHOP",
        callback_url="https://touchline.example/cb/smsaero",
        base_url=base_url,
    )
    return lambda client: SmsAeroChannel(client, config=config)


def test_smsaero_real_server_gets_basic_auth_and_fields(
    provider_factory: Callable[[Responder], FakeProvider],
) -> None:
    """A local SMS Aero look-alike gets basic auth, bare-digit number, sign and callbackUrl."""
    provider = provider_factory(
        lambda r: (200, {"success": True, "data": {"id": 123, "status": 8}, "message": None})
    )
    result = send_real(smsaero(provider.url + "/v2"), outgoing(text=CYRILLIC_LONG))
    [request] = provider.requests
    assert (request.method, request.path) == ("POST", "/v2/sms/send")
    assert request.headers["Authorization"] == basic("shop@example.com", "aero-key")
    assert json.loads(request.body) == {
        "number": "79161234567",
        "text": CYRILLIC_LONG,
        "sign": "SHOP",
        "callbackUrl": "https://touchline.example/cb/smsaero",
    }
    assert result.provider_id == "123"
    assert result.status == "queued"
    assert result.detail["sms"]["parts"] == 2


def test_smsaero_number_validation_error_is_invalid_number() -> None:
    """success:false naming the number field is a permanent invalid_number."""
    body = {"success": False, "data": {"number": ["invalid"]}, "message": "Validation error."}
    with pytest.raises(PermanentDeliveryError) as info:
        send_mock(smsaero(), lambda r: httpx.Response(400, json=body), outgoing())
    assert info.value.code == "invalid_number"


def test_smsaero_other_refusal_is_permanent() -> None:
    """success:false for another reason is a permanent smsaero_rejected."""
    body = {"success": False, "data": None, "message": "Sign is not approved"}
    with pytest.raises(PermanentDeliveryError) as info:
        send_mock(smsaero(), lambda r: httpx.Response(200, json=body), outgoing())
    assert info.value.code == "smsaero_rejected"


def test_smsaero_rejected_status_in_answer_is_permanent() -> None:
    """A send answer carrying status 6 (rejected) fails permanently."""
    body = {"success": True, "data": {"id": 1, "status": 6, "extendStatus": "reject"}}
    with pytest.raises(PermanentDeliveryError):
        send_mock(smsaero(), lambda r: httpx.Response(200, json=body), outgoing())


@pytest.mark.parametrize("status", [500, 502, 429])
def test_smsaero_server_errors_are_transient(status: int) -> None:
    """5xx and 429 from SMS Aero are transient."""
    with pytest.raises(TransientDeliveryError):
        send_mock(smsaero(), lambda r: httpx.Response(status, text="oops"), outgoing())


def test_smsaero_timeout_is_transient() -> None:
    """A connect timeout to SMS Aero is transient."""

    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectTimeout("slow", request=request)

    with pytest.raises(TransientDeliveryError):
        send_mock(smsaero(), handler, outgoing())


@pytest.mark.parametrize(
    ("code", "status"),
    [
        (0, "sent"),
        (1, "delivered"),
        (2, "failed"),
        (3, "sent"),
        (6, "failed"),
        (8, "sent"),
        (99, "sent"),
    ],
)
def test_smsaero_callback_status_mapping(code: int, status: str) -> None:
    """SMS Aero status codes map to delivered/failed/sent as documented in the module."""
    report = parse_smsaero_callback({"id": "123", "status": str(code)})
    assert (report.provider_id, report.status) == ("123", status)


def test_smsaero_callback_under_data_and_without_id() -> None:
    """A callback nested under data parses; one without an id is an InputError."""
    report = parse_smsaero_callback({"data": {"id": 5, "status": 2, "extendStatus": "expired"}})
    assert report == DeliveryReport("5", "failed", "expired", "2")
    with pytest.raises(InputError):
        parse_smsaero_callback({"status": 1})


# --- Twilio ---------------------------------------------------------------------------------

SID = "AC0123456789abcdef0123456789abcdef"


def twilio(
    base_url: str = "https://api.twilio.com", **overrides: Any
) -> Callable[[httpx.AsyncClient], Any]:
    fields: dict[str, Any] = {
        "account_sid": SID,
        "auth_token": Secret("tw-token"),
        "from_number": "+15017122661",
        "status_callback": "https://touchline.example/cb/twilio",
        "base_url": base_url,
    }
    fields.update(overrides)
    config = TwilioConfig(**fields)
    return lambda client: TwilioChannel(client, config=config)


def test_twilio_real_server_gets_form_auth_and_idempotency_token(
    provider_factory: Callable[[Responder], FakeProvider],
) -> None:
    """A local Twilio look-alike gets the Messages.json form, basic auth and the idempotency token."""
    provider = provider_factory(lambda r: (201, {"sid": "SM123", "status": "queued"}))
    result = send_real(twilio(provider.url), outgoing(text="Hi {there} €"))
    [request] = provider.requests
    assert request.path == f"/2010-04-01/Accounts/{SID}/Messages.json"
    assert request.headers["Authorization"] == basic(SID, "tw-token")
    assert request.headers["I-Twilio-Idempotency-Token"] == "msg-42"
    assert parse_qs(request.body.decode()) == {
        "To": ["+79161234567"],
        "From": ["+15017122661"],
        "Body": ["Hi {there} €"],
        "StatusCallback": ["https://touchline.example/cb/twilio"],
    }
    assert result.provider_id == "SM123"
    assert result.status == "queued"
    assert result.detail["sms"]["encoding"] == "GSM-7"


def test_twilio_messaging_service_replaces_from() -> None:
    """With a messaging service configured, MessagingServiceSid is sent instead of From."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(201, json={"sid": "SM1", "status": "accepted"})

    send_mock(twilio(from_number=None, messaging_service_sid="MG1"), handler, outgoing())
    form = parse_qs(seen[0].content.decode())
    assert form["MessagingServiceSid"] == ["MG1"]
    assert "From" not in form


def test_twilio_needs_a_sender() -> None:
    """A Twilio config with neither From nor a messaging service is a ConfigError."""
    with pytest.raises(ConfigError):
        TwilioConfig(account_sid=SID, auth_token=Secret("t"))


@pytest.mark.parametrize(
    ("status", "body", "error", "code"),
    [
        (400, {"code": 21211, "message": "invalid To"}, PermanentDeliveryError, "invalid_number"),
        (400, {"code": 21614, "message": "not mobile"}, PermanentDeliveryError, "invalid_number"),
        (400, {"code": 21610, "message": "STOP"}, PermanentDeliveryError, "recipient_unsubscribed"),
        (400, {"code": 21606, "message": "bad From"}, PermanentDeliveryError, "twilio_rejected"),
        (401, {"code": 20003, "message": "auth"}, TransientDeliveryError, "twilio_bad_credentials"),
        (
            429,
            {"code": 20429, "message": "slow down"},
            TransientDeliveryError,
            "twilio_unavailable",
        ),
        (500, {"code": 20500, "message": "oops"}, TransientDeliveryError, "twilio_unavailable"),
        (503, None, TransientDeliveryError, "twilio_unavailable"),
    ],
)
def test_twilio_errors_map_to_error_kinds(
    status: int, body: Any, error: type[Exception], code: str
) -> None:
    """Twilio error answers become permanent or transient errors with stable codes."""

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, json=body) if body else httpx.Response(status, text="x")

    with pytest.raises(error) as info:
        send_mock(twilio(), handler, outgoing())
    assert getattr(info.value, "code", None) == code


def test_twilio_transport_error_is_transient() -> None:
    """A dropped connection to Twilio is transient."""

    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.RemoteProtocolError("eof", request=request)

    with pytest.raises(TransientDeliveryError):
        send_mock(twilio(), handler, outgoing())


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        ("delivered", "delivered"),
        ("undelivered", "failed"),
        ("failed", "failed"),
        ("sent", "sent"),
        ("queued", "sent"),
    ],
)
def test_twilio_callback_status_mapping(raw: str, status: str) -> None:
    """MessageStatus maps to delivered/failed/sent."""
    report = parse_twilio_callback({"MessageSid": "SM1", "MessageStatus": raw})
    assert (report.provider_id, report.status) == ("SM1", status)


def test_twilio_callback_keeps_error_code_and_needs_sid() -> None:
    """ErrorCode is carried into the report; a callback without MessageSid is an InputError."""
    report = parse_twilio_callback(
        {"MessageSid": "SM1", "MessageStatus": "undelivered", "ErrorCode": "30003"}
    )
    assert report.error == "30003"
    with pytest.raises(InputError):
        parse_twilio_callback({"MessageStatus": "sent"})


CALLBACK_URL = "https://touchline.example/cb/twilio?ws=7"
CALLBACK_FORM = {
    "MessageSid": "SM1",
    "MessageStatus": "delivered",
    "AccountSid": SID,
    "To": "+79161234567",
}


def independent_signature(token: str, url: str, params: dict[str, str]) -> str:
    # Twilio's documented recipe, written out separately from the module under test.
    message = url + "".join(name + params[name] for name in sorted(params))
    return base64.b64encode(
        hmac.new(token.encode(), message.encode(), hashlib.sha1).digest()
    ).decode()


def test_twilio_signature_matches_an_independent_computation() -> None:
    """compute_signature equals the documented HMAC-SHA1/base64 recipe computed in the test."""
    expected = independent_signature("tw-token", CALLBACK_URL, CALLBACK_FORM)
    assert compute_signature(Secret("tw-token"), CALLBACK_URL, CALLBACK_FORM) == expected
    assert validate_signature("tw-token", CALLBACK_URL, CALLBACK_FORM, expected)


def test_twilio_signature_rejects_tampering() -> None:
    """A changed parameter, URL or token does not validate."""
    signature = independent_signature("tw-token", CALLBACK_URL, CALLBACK_FORM)
    tampered = {**CALLBACK_FORM, "MessageStatus": "failed"}
    assert not validate_signature("tw-token", CALLBACK_URL, tampered, signature)
    assert not validate_signature("tw-token", CALLBACK_URL + "&x=1", CALLBACK_FORM, signature)
    assert not validate_signature("other", CALLBACK_URL, CALLBACK_FORM, signature)


def test_twilio_signature_tolerates_the_default_port() -> None:
    """A signature over the URL with :443 validates against the URL without it, and back."""
    with_port = "https://touchline.example:443/cb/twilio?ws=7"
    signed_with_port = independent_signature("tw-token", with_port, CALLBACK_FORM)
    assert validate_signature("tw-token", CALLBACK_URL, CALLBACK_FORM, signed_with_port)
    signed_without = independent_signature("tw-token", CALLBACK_URL, CALLBACK_FORM)
    assert validate_signature("tw-token", with_port, CALLBACK_FORM, signed_without)


def test_twilio_signature_repeated_keys_use_sorted_values() -> None:
    """A repeated form key contributes each of its values in sorted order."""
    params = {"Media": ["b", "a"], "To": "+1"}
    message = CALLBACK_URL + "Mediaa" + "Mediab" + "To+1"
    expected = base64.b64encode(hmac.new(b"k", message.encode(), hashlib.sha1).digest()).decode()
    assert compute_signature("k", CALLBACK_URL, params) == expected
