"""SMS Aero (gate.smsaero.ru) through its API v2.

One request per message::

    POST https://gate.smsaero.ru/v2/sms/send
    Authorization: Basic base64(email:api_key)
    {"number": "79161234567", "text": "...", "sign": "SMS Aero", "callbackUrl": "..."}

    200 {"success": true, "data": {"id": 123, "status": 8, "extendStatus": "moderation", ...}}
    400 {"success": false, "data": {"number": ["..."]}, "message": "Validation error."}

Numbers go as bare digits (E.164 without ``+``). SMS Aero takes no
idempotency key, so a resend after a crash between its answer and our commit
is sent twice; the key is kept in ``detail`` for reconciliation.

Status codes, in send answers and in callbacks, and what we make of them:

====  ===================  ==============
code  SMS Aero meaning     DeliveryReport
====  ===================  ==============
0     in queue             sent
1     delivered            delivered
2     not delivered        failed
3     passed to operator   sent
4     awaiting status      sent
6     rejected             failed
8     on moderation        sent
====  ===================  ==============

Unknown codes count as ``sent`` (not final) rather than guessing a failure.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from touchline.config import Secret
from touchline.errors import InputError, PermanentDeliveryError, TransientDeliveryError
from touchline.messaging.channels.base import OutgoingMessage, SendResult
from touchline.messaging.channels.sms_http import (
    DeliveryReport,
    ReportStatus,
    prepare_sms,
    sms_detail,
)
from touchline.messaging.phone import DEFAULT_REGION, INVALID_NUMBER
from touchline.messaging.sms import SmsInfo

DEFAULT_BASE_URL = "https://gate.smsaero.ru/v2"

STATUS_MAP: Mapping[int, ReportStatus] = {
    0: "sent",
    1: "delivered",
    2: "failed",
    3: "sent",
    4: "sent",
    6: "failed",
    8: "sent",
}

#: Statuses worth retrying besides 5xx: request timeout and rate limiting.
RETRYABLE_4XX = frozenset({408, 429})


@dataclass(frozen=True)
class SmsAeroConfig:
    """A workspace's SMS Aero account: login ``email``, ``api_key``, and sender name ``sign``."""

    email: str
    api_key: Secret
    sign: str = "SMS Aero"
    callback_url: str | None = None
    base_url: str = DEFAULT_BASE_URL
    region: str = DEFAULT_REGION
    timeout: float = 10.0


def report_status(code: Any) -> ReportStatus:
    """The DeliveryReport status for an SMS Aero status code (unknown: ``sent``)."""
    try:
        return STATUS_MAP.get(int(code), "sent")
    except (TypeError, ValueError):
        return "sent"


def parse_status_callback(payload: Mapping[str, Any]) -> DeliveryReport:
    """The DeliveryReport in an SMS Aero callback (form or JSON; ``id``, ``status``).

    Accepts the fields at the top level or under ``data`` as in API answers.
    InputError when there is no id.
    """
    nested = payload.get("data")
    data: Mapping[str, Any] = nested if isinstance(nested, Mapping) else payload
    provider_id = data.get("id")
    if provider_id in (None, ""):
        raise InputError("SMS Aero callback has no id")
    raw = data.get("status")
    status = report_status(raw)
    extended = data.get("extendStatus")
    return DeliveryReport(
        provider_id=str(provider_id),
        status=status,
        error=str(extended or raw) if status == "failed" else None,
        provider_status=str(raw) if raw is not None else None,
    )


class SmsAeroChannel:
    """Send SMS through an SMS Aero account."""

    name = "sms"

    def __init__(self, client: httpx.AsyncClient, *, config: SmsAeroConfig) -> None:
        self._client = client
        self._config = config

    def __repr__(self) -> str:
        return f"SmsAeroChannel({self._config.email!r})"

    async def send(self, message: OutgoingMessage) -> SendResult:
        config = self._config
        number, info = prepare_sms(message, region=config.region)
        payload: dict[str, Any] = {
            "number": number.lstrip("+"),
            "text": message.text,
            "sign": config.sign,
        }
        if config.callback_url:
            payload["callbackUrl"] = config.callback_url
        try:
            response = await self._client.post(
                f"{config.base_url.rstrip('/')}/sms/send",
                json=payload,
                auth=httpx.BasicAuth(config.email, config.api_key.reveal()),
                timeout=config.timeout,
            )
        except httpx.TransportError as exc:
            raise TransientDeliveryError(
                f"SMS Aero unreachable: {type(exc).__name__}: {exc}", code="smsaero_unavailable"
            ) from None
        return _result(response, info, idempotency_key=message.idempotency_key)

    async def aclose(self) -> None:
        """The client belongs to the caller, who closes it."""


def _result(response: httpx.Response, info: SmsInfo, *, idempotency_key: str) -> SendResult:
    status_code = response.status_code
    try:
        body = response.json()
    except ValueError:
        body = None
    if status_code >= 500 or status_code in RETRYABLE_4XX:
        raise TransientDeliveryError(f"SMS Aero answered {status_code}", code="smsaero_unavailable")
    if status_code == 401:  # every message would fail alike until the key is fixed
        raise TransientDeliveryError(
            "SMS Aero refused the email/API key (401)", code="smsaero_bad_credentials"
        )
    if not isinstance(body, dict):
        # A proxy answered, not the API: it may be back soon.
        raise TransientDeliveryError(
            f"SMS Aero answered {status_code} without an API body", code="smsaero_unavailable"
        )
    data = body.get("data")
    if body.get("success") is not True:
        text = str(body.get("message") or f"HTTP {status_code}")
        if isinstance(data, Mapping) and data.get("number"):
            raise PermanentDeliveryError(
                f"SMS Aero refused the number: {data['number']}", code=INVALID_NUMBER
            )
        raise PermanentDeliveryError(
            f"SMS Aero refused the message: {text}", code="smsaero_rejected"
        )
    if not isinstance(data, Mapping) or data.get("id") is None:
        raise TransientDeliveryError(
            "SMS Aero answered success without a message id", code="smsaero_unavailable"
        )
    raw = data.get("status")
    status = report_status(raw)
    if status == "failed":
        raise PermanentDeliveryError(
            f"SMS Aero rejected the message: status {raw} {data.get('extendStatus') or ''}".strip(),
            code="smsaero_rejected",
        )
    return SendResult(
        provider_id=str(data["id"]),
        status="delivered" if status == "delivered" else "queued",
        detail=sms_detail(info, provider_status=raw, idempotency_key=idempotency_key),
    )
