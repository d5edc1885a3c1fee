"""TelegramChannel against a local fake Bot API, plus mock-transport edge cases."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from touchline.config import Secret
from touchline.errors import PermanentDeliveryError, TransientDeliveryError
from touchline.messaging.channels.base import OutgoingMessage, SendResult
from touchline.messaging.channels.telegram import TelegramChannel, TelegramRateLimited

TOKEN = "123456:AAE-test_TOKEN-value"

#: chat id -> (HTTP status, Bot API body) the fake server answers for it.
FAILURES: dict[str, tuple[int, dict[str, Any]]] = {
    "404404": (400, {"ok": False, "error_code": 400, "description": "Bad Request: chat not found"}),
    "403403": (
        403,
        {"ok": False, "error_code": 403, "description": "Forbidden: bot was blocked by the user"},
    ),
    "429429": (
        429,
        {
            "ok": False,
            "error_code": 429,
            "description": "Too Many Requests: retry after 7",
            "parameters": {"retry_after": 7},
        },
    ),
}


class FakeBotApi:
    """A threaded HTTP server implementing ``/bot<TOKEN>/sendMessage``."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if self.path != f"/bot{TOKEN}/sendMessage":
                    self._answer(404, {"ok": False, "error_code": 404, "description": "Not Found"})
                    return
                chat_id = str(body["chat_id"])
                if chat_id in FAILURES:
                    self._answer(*FAILURES[chat_id])
                    return
                fake.received.append(body)
                result = {"message_id": 1000 + len(fake.received), "chat": {"id": chat_id}}
                self._answer(200, {"ok": True, "result": result})

            def _answer(self, status: int, payload: dict[str, Any]) -> None:
                reply = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"


@pytest.fixture
def bot_api() -> Iterator[FakeBotApi]:
    fake = FakeBotApi()
    thread = threading.Thread(
        target=fake.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    yield fake
    fake.server.shutdown()
    fake.server.server_close()
    thread.join()


def outgoing(chat_id: str = "42", **overrides: Any) -> OutgoingMessage:
    fields: dict[str, Any] = {
        "idempotency_key": "tg-1",
        "channel": "telegram",
        "to": chat_id,
        "text": "Заказ отправлен",
        "html": "<b>Заказ</b> отправлен",
    }
    fields.update(overrides)
    return OutgoingMessage(**fields)


def send_real(base_url: str, message: OutgoingMessage, *, token: str = TOKEN) -> SendResult:
    async def run() -> SendResult:
        async with httpx.AsyncClient(trust_env=False) as client:
            channel = TelegramChannel(client, token=Secret(token), base_url=base_url)
            return await channel.send(message)

    return asyncio.run(run())


def send_mock(
    handler: Callable[[httpx.Request], httpx.Response], message: OutgoingMessage
) -> SendResult:
    async def run() -> SendResult:
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
            return await TelegramChannel(client, token=Secret(TOKEN)).send(message)

    return asyncio.run(run())


def test_send_message_returns_message_id(bot_api: FakeBotApi) -> None:
    """sendMessage posts chat_id and plain text; the Bot API message_id is the provider id."""
    result = send_real(bot_api.url, outgoing())
    assert result.provider_id == "1001"
    assert bot_api.received == [{"chat_id": "42", "text": "Заказ отправлен"}]


def test_html_is_sent_only_when_metadata_asks(bot_api: FakeBotApi) -> None:
    """With metadata parse_mode=html the html body goes out with parse_mode HTML."""
    send_real(bot_api.url, outgoing(metadata={"parse_mode": "html"}))
    assert bot_api.received == [
        {"chat_id": "42", "text": "<b>Заказ</b> отправлен", "parse_mode": "HTML"}
    ]


def test_chat_not_found_is_permanent(bot_api: FakeBotApi) -> None:
    """400 chat not found raises PermanentDeliveryError with Telegram's description."""
    with pytest.raises(PermanentDeliveryError, match="chat not found"):
        send_real(bot_api.url, outgoing("404404"))


def test_blocked_bot_is_permanent(bot_api: FakeBotApi) -> None:
    """403 bot blocked by the user raises PermanentDeliveryError."""
    with pytest.raises(PermanentDeliveryError, match="blocked"):
        send_real(bot_api.url, outgoing("403403"))


def test_rate_limit_is_transient_with_retry_after(bot_api: FakeBotApi) -> None:
    """429 raises TelegramRateLimited carrying parameters.retry_after."""
    with pytest.raises(TelegramRateLimited) as info:
        send_real(bot_api.url, outgoing("429429"))
    assert isinstance(info.value, TransientDeliveryError)
    assert info.value.retry_after == 7.0


def test_wrong_token_is_transient_and_never_shown(
    bot_api: FakeBotApi, caplog: pytest.LogCaptureFixture
) -> None:
    """A rejected token is a transient config error; neither token appears in errors or logs."""
    caplog.set_level(logging.DEBUG)
    bad_token = "999:WRONG-secret"
    with pytest.raises(TransientDeliveryError) as info:
        send_real(bot_api.url, outgoing(), token=bad_token)
    send_real(bot_api.url, outgoing())
    assert info.value.code == "telegram_bad_token"
    assert bad_token not in str(info.value)
    assert "/bot<redacted>/sendMessage" in caplog.text
    assert bad_token not in caplog.text
    assert TOKEN not in caplog.text


def test_unreachable_api_is_transient_without_token() -> None:
    """Connection refused is transient and the message does not reveal the token."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    port = server.server_address[1]
    server.server_close()
    with pytest.raises(TransientDeliveryError) as info:
        send_real(f"http://127.0.0.1:{port}", outgoing())
    assert TOKEN not in str(info.value)
    assert info.value.__cause__ is None


@pytest.mark.parametrize("status", [500, 502])
def test_server_errors_are_transient(status: int) -> None:
    """Bot API 5xx (with or without a JSON body) is transient."""
    body = {"ok": False, "error_code": status, "description": "Internal"}
    with pytest.raises(TransientDeliveryError):
        send_mock(lambda request: httpx.Response(status, json=body), outgoing())
    with pytest.raises(TransientDeliveryError):
        send_mock(
            lambda request: httpx.Response(status, text="<html>bad gateway</html>"), outgoing()
        )


def test_timeout_is_transient() -> None:
    """A timeout talking to the Bot API is a transient failure."""

    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectTimeout("slow", request=request)

    with pytest.raises(TransientDeliveryError):
        send_mock(handler, outgoing())


def test_html_metadata_without_html_body_sends_text() -> None:
    """parse_mode=html with no html body falls back to plain text without parse_mode."""
    seen: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(json.loads(request.content))
        return httpx.Response(200, json={"ok": True, "result": {"message_id": 5}})

    result = send_mock(handler, outgoing(html=None, metadata={"parse_mode": "html"}))
    assert result.provider_id == "5"
    assert seen == [{"chat_id": "42", "text": "Заказ отправлен"}]


def test_repr_hides_the_token() -> None:
    """The channel's repr names the API base URL, not the token."""

    async def run() -> str:
        async with httpx.AsyncClient() as client:
            return repr(TelegramChannel(client, token=Secret(TOKEN)))

    assert TOKEN not in asyncio.run(run())
