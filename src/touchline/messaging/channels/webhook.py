"""Webhooks: POST a signed JSON body to the URL in ``message.to``.

The signature scheme (the same one receivers check with
:func:`verify_signature`)::

    X-Touchline-Timestamp: 1709285400
    X-Touchline-Signature: v1=<hex HMAC-SHA256(secret, "1709285400." + body)>

Signing the timestamp with the body lets receivers refuse replays older than
a tolerance window. ``Idempotency-Key`` carries the message's key so a resend
after a crash can be dropped by the receiver.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Callable
from typing import Any

import httpx

from touchline.config import Secret
from touchline.errors import PermanentDeliveryError, TransientDeliveryError
from touchline.messaging.channels.base import OutgoingMessage, SendResult

SIGNATURE_VERSION = "v1"

#: Default replay window for receivers: five minutes absorbs clock skew and
#: queueing without leaving a captured request replayable for long.
DEFAULT_TOLERANCE = 300

#: Statuses worth retrying besides 5xx: request timeout and rate limiting.
RETRYABLE_4XX = frozenset({408, 429})


class WebhookRetryLater(TransientDeliveryError):
    """The receiver answered with a retryable status; ``retry_after`` in seconds if it said."""

    code = "webhook_transient"

    def __init__(self, message: str, *, status_code: int | None, retry_after: float | None = None):
        super().__init__(message)
        self.status_code = status_code
        self.retry_after = retry_after


def sign(secret: Secret | str, timestamp: int | str, body: bytes) -> str:
    """The ``X-Touchline-Signature`` value for ``body`` sent at ``timestamp``."""
    key = (secret.reveal() if isinstance(secret, Secret) else secret).encode("utf-8")
    digest = hmac.new(key, f"{timestamp}.".encode("ascii") + body, hashlib.sha256).hexdigest()
    return f"{SIGNATURE_VERSION}={digest}"


def verify_signature(
    secret: Secret | str,
    timestamp: int | str,
    body: bytes | str,
    signature: str,
    *,
    now: float,
    tolerance: float = DEFAULT_TOLERANCE,
) -> bool:
    """True when ``signature`` signs ``body`` at ``timestamp`` and it is fresh.

    ``signature`` may list several comma-separated ``v1=`` values (sent while a
    secret is rotated); one match is enough. Comparison is constant-time.
    """
    try:
        ts = int(timestamp)
    except (TypeError, ValueError):
        return False
    if abs(now - ts) > tolerance:
        return False
    raw = body.encode("utf-8") if isinstance(body, str) else body
    expected = sign(secret, ts, raw)
    candidates = [part.strip() for part in signature.split(",")]
    # Compare against every candidate so timing does not reveal which matched.
    matches = [hmac.compare_digest(expected, c) for c in candidates]
    return any(matches)


def webhook_body(message: OutgoingMessage) -> bytes:
    """The JSON body posted for ``message`` (compact, UTF-8)."""
    payload: dict[str, Any] = {
        "id": message.idempotency_key,
        "to": message.to,
        "subject": message.subject,
        "text": message.text,
        "html": message.html,
        "metadata": dict(message.metadata),
    }
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":"), default=str).encode()


class WebhookChannel:
    """POST messages to customer endpoints, signed with the workspace secret."""

    name = "webhook"

    def __init__(
        self,
        client: httpx.AsyncClient,
        *,
        secret: Secret,
        timeout: float = 10.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._client = client
        self._secret = secret
        self._timeout = timeout
        self._clock = clock

    async def send(self, message: OutgoingMessage) -> SendResult:
        url = message.to
        if not url.startswith(("http://", "https://")):
            raise PermanentDeliveryError(f"not an http(s) URL: {url!r}", code="invalid_url")
        body = webhook_body(message)
        timestamp = str(int(self._clock()))
        headers = {
            **message.headers,
            "Content-Type": "application/json",
            "Idempotency-Key": message.idempotency_key,
            "X-Touchline-Timestamp": timestamp,
            "X-Touchline-Signature": sign(self._secret, timestamp, body),
        }
        try:
            response = await self._client.post(
                url, content=body, headers=headers, timeout=self._timeout
            )
        except (httpx.UnsupportedProtocol, httpx.InvalidURL) as exc:
            raise PermanentDeliveryError(f"bad webhook URL: {exc}", code="invalid_url") from exc
        except httpx.TransportError as exc:  # connect/read/write errors and timeouts
            raise WebhookRetryLater(
                f"webhook {url}: {type(exc).__name__}: {exc}", status_code=None
            ) from exc
        return _result(url, response)

    async def aclose(self) -> None:
        """The client belongs to the caller, who closes it."""


def _result(url: str, response: httpx.Response) -> SendResult:
    status = response.status_code
    if 200 <= status < 300:
        return SendResult(
            provider_id=_provider_id(response), status="accepted", detail={"status": status}
        )
    excerpt = response.text[:200]
    if status >= 500 or status in RETRYABLE_4XX:
        raise WebhookRetryLater(
            f"webhook {url} answered {status}: {excerpt}",
            status_code=status,
            retry_after=_retry_after(response),
        )
    # 3xx (redirects are not followed: the endpoint should be updated) and other 4xx.
    raise PermanentDeliveryError(
        f"webhook {url} answered {status}: {excerpt}", code="webhook_rejected"
    )


def _provider_id(response: httpx.Response) -> str | None:
    if request_id := response.headers.get("X-Request-Id"):
        return str(request_id)
    try:
        data = response.json()
    except ValueError:
        return None
    if isinstance(data, dict) and data.get("id") is not None:
        return str(data["id"])
    return None


def _retry_after(response: httpx.Response) -> float | None:
    try:
        return float(response.headers["Retry-After"])
    except (KeyError, ValueError):
        return None  # absent, or an HTTP date we do not bother to parse
