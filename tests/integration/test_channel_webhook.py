"""WebhookChannel: a real local HTTP receiver, mock transports for status mapping."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from touchline.config import Secret
from touchline.errors import PermanentDeliveryError, TransientDeliveryError
from touchline.messaging.channels.base import OutgoingMessage, SendResult
from touchline.messaging.channels.webhook import (
    WebhookChannel,
    WebhookRetryLater,
    sign,
    verify_signature,
)

SECRET = Secret("whsec_test")
NOW = 1_709_285_400


def outgoing(to: str = "https://hooks.example/touchline", **overrides: Any) -> OutgoingMessage:
    fields: dict[str, Any] = {
        "idempotency_key": "msg-42",
        "channel": "webhook",
        "to": to,
        "subject": "Заказ",
        "text": "Ваш заказ отправлен",
        "html": None,
        "metadata": {"order_id": 7},
    }
    fields.update(overrides)
    return OutgoingMessage(**fields)


def send_with(
    handler: Callable[[httpx.Request], httpx.Response], message: OutgoingMessage
) -> SendResult:
    async def run() -> SendResult:
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
            return await WebhookChannel(client, secret=SECRET, clock=lambda: NOW).send(message)

    return asyncio.run(run())


class Receiver:
    """A threaded HTTP server that records requests and answers 200 with an id."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict[str, str], bytes]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.requests.append((self.path, dict(self.headers.items()), body))
                reply = json.dumps({"id": "rcv-1"}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    receiver = Receiver()
    receiver.thread.start()
    yield receiver
    receiver.server.shutdown()
    receiver.server.server_close()
    receiver.thread.join()


def test_real_receiver_gets_a_verifiable_signed_body(receiver: Receiver) -> None:
    """A local HTTP server receives the JSON body whose signature verify_signature accepts."""

    # given
    async def run() -> SendResult:
        async with httpx.AsyncClient(trust_env=False) as client:
            channel = WebhookChannel(client, secret=SECRET, clock=lambda: NOW)
            return await channel.send(outgoing(to=receiver.url + "/hook"))

    # when
    result = asyncio.run(run())
    # then
    [(path, headers, body)] = receiver.requests
    assert path == "/hook"
    assert result.provider_id == "rcv-1"
    assert headers["Content-Type"] == "application/json"
    assert headers["Idempotency-Key"] == "msg-42"
    assert headers["X-Touchline-Timestamp"] == str(NOW)
    assert verify_signature(
        SECRET,
        headers["X-Touchline-Timestamp"],
        body,
        headers["X-Touchline-Signature"],
        now=NOW + 10,
    )
    assert json.loads(body) == {
        "id": "msg-42",
        "to": receiver.url + "/hook",
        "subject": "Заказ",
        "text": "Ваш заказ отправлен",
        "html": None,
        "metadata": {"order_id": 7},
    }


def test_connection_refused_is_transient() -> None:
    """Nothing listening at the URL is a transient failure (the receiver may come back)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    port = server.server_address[1]
    server.server_close()

    async def run() -> None:
        async with httpx.AsyncClient(trust_env=False) as client:
            await WebhookChannel(client, secret=SECRET).send(
                outgoing(to=f"http://127.0.0.1:{port}/")
            )

    with pytest.raises(TransientDeliveryError):
        asyncio.run(run())


def test_request_id_header_wins_as_provider_id() -> None:
    """X-Request-Id from the receiver becomes the provider id, ahead of a JSON id."""
    result = send_with(
        lambda request: httpx.Response(202, headers={"X-Request-Id": "req-9"}, json={"id": "x"}),
        outgoing(),
    )
    assert result.provider_id == "req-9"


def test_empty_2xx_is_accepted_without_provider_id() -> None:
    """A 204 with no body is success with no provider id."""
    assert send_with(lambda request: httpx.Response(204), outgoing()).provider_id is None


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503])
def test_retryable_statuses_are_transient(status: int) -> None:
    """408, 429 and 5xx answers raise a transient error carrying the status."""
    with pytest.raises(WebhookRetryLater) as info:
        send_with(lambda request: httpx.Response(status, text="busy"), outgoing())
    assert info.value.status_code == status


def test_retry_after_header_is_kept() -> None:
    """A numeric Retry-After on a 429 is exposed as retry_after seconds."""
    with pytest.raises(WebhookRetryLater) as info:
        send_with(lambda request: httpx.Response(429, headers={"Retry-After": "30"}), outgoing())
    assert info.value.retry_after == 30.0


@pytest.mark.parametrize("status", [301, 400, 401, 404, 410, 422])
def test_other_non_2xx_are_permanent(status: int) -> None:
    """Redirects and 4xx other than 408/429 raise a permanent error."""
    with pytest.raises(PermanentDeliveryError):
        send_with(lambda request: httpx.Response(status), outgoing())


def test_timeout_is_transient() -> None:
    """A read timeout from the transport is a transient failure."""

    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow", request=request)

    with pytest.raises(TransientDeliveryError):
        send_with(handler, outgoing())


def test_non_http_url_is_permanent() -> None:
    """A recipient that is not an http(s) URL fails permanently without a request."""
    calls: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return httpx.Response(200)

    with pytest.raises(PermanentDeliveryError):
        send_with(handler, outgoing(to="ftp://hooks.example/x"))
    assert calls == []


def test_signature_outside_replay_window_is_rejected() -> None:
    """A correct signature older (or newer) than the tolerance does not verify."""
    body = b'{"id":"m"}'
    signature = sign(SECRET, NOW, body)
    assert verify_signature(SECRET, NOW, body, signature, now=NOW + 300)
    assert not verify_signature(SECRET, NOW, body, signature, now=NOW + 301)
    assert not verify_signature(SECRET, NOW, body, signature, now=NOW - 301)
    assert verify_signature(SECRET, NOW, body, signature, now=NOW + 3600, tolerance=3600)


def test_tampered_body_wrong_secret_or_bad_timestamp_is_rejected() -> None:
    """Changing the body, the secret, or the timestamp invalidates the signature."""
    body = b'{"id":"m"}'
    signature = sign(SECRET, NOW, body)
    assert not verify_signature(SECRET, NOW, b'{"id":"n"}', signature, now=NOW)
    assert not verify_signature(Secret("other"), NOW, body, signature, now=NOW)
    assert not verify_signature(SECRET, NOW + 1, body, signature, now=NOW)
    assert not verify_signature(SECRET, "soon", body, signature, now=NOW)


def test_any_of_several_signatures_may_match() -> None:
    """During secret rotation a comma-separated list verifies if one entry matches."""
    body = b"{}"
    header = f"{sign(Secret('old'), NOW, body)}, {sign(SECRET, NOW, body)}"
    assert verify_signature(SECRET, NOW, body, header, now=NOW)
