"""Telegram through the Bot API ``sendMessage`` method.

``message.to`` is the chat id. The plain ``text`` is sent unless the message's
metadata says ``parse_mode: "html"`` and an ``html`` body is present: email
HTML is not the Telegram HTML subset, so it is opt-in per template.

The bot token sits in the URL path (``/bot<token>/sendMessage``). It never
appears in our errors, and a filter on the ``httpx`` logger rewrites it to
``/bot<redacted>/`` in httpx's request log lines.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import httpx

from touchline.config import Secret
from touchline.errors import PermanentDeliveryError, TransientDeliveryError
from touchline.messaging.channels.base import OutgoingMessage, SendResult

DEFAULT_BASE_URL = "https://api.telegram.org"

#: Bot API statuses that mean the token (not the chat) is wrong: every message
#: would fail alike, so they are retried until the configuration is fixed.
BAD_TOKEN_CODES = frozenset({401, 404})

_TOKEN_IN_PATH = re.compile(r"/bot[^/\s\"']+/")


class TelegramRateLimited(TransientDeliveryError):
    """Bot API 429; ``retry_after`` is the number of seconds Telegram asked for."""

    code = "telegram_rate_limited"

    def __init__(self, message: str, *, retry_after: float | None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def redact_token(text: str) -> str:
    """Replace any ``/bot<token>/`` path segment with ``/bot<redacted>/``."""
    return _TOKEN_IN_PATH.sub("/bot<redacted>/", text)


class _RedactBotToken(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if "/bot" in text:
            record.msg, record.args = redact_token(text), None
        return True


def _install_log_redaction() -> None:
    logger = logging.getLogger("httpx")
    if not any(isinstance(f, _RedactBotToken) for f in logger.filters):
        logger.addFilter(_RedactBotToken())


class TelegramChannel:
    """Send chat messages as a Telegram bot."""

    name = "telegram"

    def __init__(
        self,
        client: httpx.AsyncClient,
        *,
        token: Secret,
        base_url: str = DEFAULT_BASE_URL,
        timeout: float = 10.0,
    ) -> None:
        _install_log_redaction()
        self._client = client
        self._token = token
        self._base_url = base_url.rstrip("/")
        self._timeout = timeout

    def __repr__(self) -> str:
        return f"TelegramChannel({self._base_url!r})"

    async def send(self, message: OutgoingMessage) -> SendResult:
        payload: dict[str, Any] = {"chat_id": message.to, "text": message.text}
        if str(message.metadata.get("parse_mode", "")).lower() == "html" and message.html:
            payload["text"] = message.html
            payload["parse_mode"] = "HTML"
        url = f"{self._base_url}/bot{self._token.reveal()}/sendMessage"
        try:
            response = await self._client.post(url, json=payload, timeout=self._timeout)
        except httpx.HTTPError as exc:
            # `from None`: the chained exception can carry the URL, i.e. the token.
            raise TransientDeliveryError(
                f"Telegram unreachable: {type(exc).__name__}: {self._redact(str(exc))}",
                code="telegram_unavailable",
            ) from None
        return _result(response)

    async def aclose(self) -> None:
        """The client belongs to the caller, who closes it."""

    def _redact(self, text: str) -> str:
        return redact_token(text).replace(self._token.reveal(), "<redacted>")


def _result(response: httpx.Response) -> SendResult:
    try:
        data = response.json()
    except ValueError:
        data = None
    if not isinstance(data, dict):
        # A proxy or load balancer answered, not the Bot API.
        raise TransientDeliveryError(
            f"Telegram answered {response.status_code} without a Bot API body",
            code="telegram_unavailable",
        )
    if data.get("ok") is True:
        result = data.get("result") or {}
        message_id = result.get("message_id") if isinstance(result, dict) else None
        return SendResult(
            provider_id=str(message_id) if message_id is not None else None, status="accepted"
        )
    code = data.get("error_code")
    if not isinstance(code, int):
        code = response.status_code
    description = str(data.get("description", ""))
    parameters = data.get("parameters") or {}
    detail = f"Telegram {code}: {description}"
    if code == 429:
        retry_after = parameters.get("retry_after")
        raise TelegramRateLimited(
            detail, retry_after=float(retry_after) if retry_after is not None else None
        )
    if code >= 500:
        raise TransientDeliveryError(detail, code="telegram_unavailable")
    if code in BAD_TOKEN_CODES:
        raise TransientDeliveryError(detail + " (check the bot token)", code="telegram_bad_token")
    if 400 <= code < 500:
        if "migrate_to_chat_id" in parameters:  # group became a supergroup
            detail += f" (chat moved to {parameters['migrate_to_chat_id']})"
        raise PermanentDeliveryError(detail, code="telegram_rejected")
    raise TransientDeliveryError(detail, code="telegram_unavailable")
