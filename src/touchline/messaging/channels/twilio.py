"""Twilio Programmable Messaging through the Messages resource.

One form-encoded request per message::

    POST https://api.twilio.com/2010-04-01/Accounts/{AccountSid}/Messages.json
    Authorization: Basic base64(AccountSid:AuthToken)
    I-Twilio-Idempotency-Token: <message.idempotency_key>
    To=+79161234567&From=+15017122661&Body=...&StatusCallback=https://...

    201 {"sid": "SM...", "status": "queued", ...}
    400 {"code": 21211, "message": "The 'To' number ... is not a valid phone number.", ...}

Twilio then POSTs status callbacks (form fields ``MessageSid``,
``MessageStatus``, ``ErrorCode``) to ``StatusCallback``, signed with
``X-Twilio-Signature``; check them with :func:`validate_signature` before
trusting them, then read them with :func:`parse_status_callback`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

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
    ReportStatus,
    prepare_sms,
    sms_detail,
)
from touchline.messaging.phone import DEFAULT_REGION, INVALID_NUMBER
from touchline.messaging.sms import SmsInfo

DEFAULT_BASE_URL = "https://api.twilio.com"
SIGNATURE_HEADER = "X-Twilio-Signature"
IDEMPOTENCY_HEADER = "I-Twilio-Idempotency-Token"

#: Twilio error codes that mean the recipient number itself is unusable.
INVALID_NUMBER_CODES = frozenset(
    {
        21211,  # invalid 'To' phone number
        21614,  # 'To' number is not a valid mobile number
        21217,  # phone number does not appear to be valid
    }
)
#: The recipient replied STOP: sending again is refused until they opt back in.
UNSUBSCRIBED_CODES = frozenset({21610})

#: Statuses worth retrying besides 5xx: request timeout and rate limiting.
RETRYABLE_4XX = frozenset({408, 429})

_FINAL_STATUSES: Mapping[str, ReportStatus] = {
    "delivered": "delivered",
    "read": "delivered",  # channels with read receipts report past delivery
    "undelivered": "failed",
    "failed": "failed",
    "canceled": "failed",
}
_QUEUED = frozenset({"accepted", "scheduled", "queued"})


@dataclass(frozen=True)
class TwilioConfig:
    """A workspace's Twilio account and the sender: ``from_number`` or ``messaging_service_sid``."""

    account_sid: str
    auth_token: Secret
    from_number: str | None = None
    messaging_service_sid: str | None = None
    status_callback: str | None = None
    base_url: str = DEFAULT_BASE_URL
    region: str = DEFAULT_REGION
    timeout: float = 10.0

    def __post_init__(self) -> None:
        if not (self.from_number or self.messaging_service_sid):
            raise ConfigError("Twilio needs from_number or messaging_service_sid")


def report_status(raw: str | None) -> ReportStatus:
    """The DeliveryReport status for a Twilio MessageStatus (non-final ones: ``sent``)."""
    return _FINAL_STATUSES.get((raw or "").lower(), "sent")


def parse_status_callback(form: Mapping[str, str]) -> DeliveryReport:
    """The DeliveryReport in a Twilio status callback; InputError without MessageSid."""
    sid = form.get("MessageSid") or form.get("SmsSid")
    if not sid:
        raise InputError("Twilio callback has no MessageSid")
    raw = form.get("MessageStatus") or form.get("SmsStatus")
    return DeliveryReport(
        provider_id=sid,
        status=report_status(raw),
        error=form.get("ErrorCode") or None,
        provider_status=raw,
    )


def compute_signature(
    auth_token: Secret | str, url: str, params: Mapping[str, str | Sequence[str]]
) -> str:
    """Twilio's request signature: base64(HMAC-SHA1(token, url + sorted key+value pairs)).

    ``url`` is the full URL Twilio called, query string included; ``params`` the
    POSTed form fields (empty for GET). Keys are sorted case-sensitively, and a
    repeated key contributes each of its values, sorted.
    """
    data = url
    for key in sorted(params):
        value = params[key]
        values = [value] if isinstance(value, str) else sorted(value)
        for item in values:
            data += key + item
    key_bytes = (auth_token.reveal() if isinstance(auth_token, Secret) else auth_token).encode(
        "utf-8"
    )
    digest = hmac.new(key_bytes, data.encode("utf-8"), hashlib.sha1).digest()
    return base64.b64encode(digest).decode("ascii")


def validate_signature(
    auth_token: Secret | str,
    url: str,
    params: Mapping[str, str | Sequence[str]],
    signature: str,
) -> bool:
    """True when ``signature`` (the ``X-Twilio-Signature`` header) signs ``url`` and ``params``.

    Behind a proxy the URL Twilio signed may or may not carry the default port
    (``:443``), so both forms are tried. Comparison is constant-time.
    """
    matches = [
        hmac.compare_digest(compute_signature(auth_token, candidate, params), signature)
        for candidate in _url_variants(url)
    ]
    return any(matches)


def _url_variants(url: str) -> list[str]:
    parts = urlsplit(url)
    default = {"https": 443, "http": 80}.get(parts.scheme)
    host = parts.hostname or ""
    variants = [url]
    if default is not None and parts.port in (None, default):
        userinfo = parts.netloc.rpartition("@")[0]
        prefix = userinfo + "@" if userinfo else ""
        without = urlunsplit(parts._replace(netloc=f"{prefix}{host}"))
        with_port = urlunsplit(parts._replace(netloc=f"{prefix}{host}:{default}"))
        variants += [v for v in (without, with_port) if v != url]
    return variants


class TwilioChannel:
    """Send SMS through a Twilio account."""

    name = "sms"

    def __init__(self, client: httpx.AsyncClient, *, config: TwilioConfig) -> None:
        self._client = client
        self._config = config

    def __repr__(self) -> str:
        return f"TwilioChannel({self._config.account_sid!r})"

    async def send(self, message: OutgoingMessage) -> SendResult:
        config = self._config
        number, info = prepare_sms(message, region=config.region)
        form = {"To": number, "Body": message.text}
        if config.messaging_service_sid:
            form["MessagingServiceSid"] = config.messaging_service_sid
        else:
            form["From"] = config.from_number or ""
        if config.status_callback:
            form["StatusCallback"] = config.status_callback
        url = (
            f"{config.base_url.rstrip('/')}/2010-04-01/Accounts/{config.account_sid}/Messages.json"
        )
        try:
            response = await self._client.post(
                url,
                data=form,
                headers={IDEMPOTENCY_HEADER: message.idempotency_key},
                auth=httpx.BasicAuth(config.account_sid, config.auth_token.reveal()),
                timeout=config.timeout,
            )
        except httpx.TransportError as exc:
            raise TransientDeliveryError(
                f"Twilio unreachable: {type(exc).__name__}: {exc}", code="twilio_unavailable"
            ) from None
        return _result(response, info)

    async def aclose(self) -> None:
        """The client belongs to the caller, who closes it."""


def _result(response: httpx.Response, info: SmsInfo) -> SendResult:
    status_code = response.status_code
    try:
        body: Any = response.json()
    except ValueError:
        body = None
    if 200 <= status_code < 300 and isinstance(body, dict) and body.get("sid"):
        raw = str(body.get("status") or "")
        status = report_status(raw)
        if status == "failed":
            raise PermanentDeliveryError(
                f"Twilio took the message as {raw}: {body.get('error_message') or ''}".strip(),
                code="twilio_rejected",
            )
        return SendResult(
            provider_id=str(body["sid"]),
            status="delivered"
            if status == "delivered"
            else ("queued" if raw in _QUEUED else "accepted"),
            detail=sms_detail(info, provider_status=raw),
        )
    code = body.get("code") if isinstance(body, dict) else None
    text = body.get("message") if isinstance(body, dict) else None
    detail = f"Twilio {status_code} (error {code}): {text or response.text[:200]}"
    if status_code >= 500 or status_code in RETRYABLE_4XX or 200 <= status_code < 300:
        # 2xx without a sid: a proxy, not Twilio, answered.
        raise TransientDeliveryError(detail, code="twilio_unavailable")
    if status_code == 401:  # every message would fail alike until the token is fixed
        raise TransientDeliveryError(detail, code="twilio_bad_credentials")
    if code in INVALID_NUMBER_CODES:
        raise PermanentDeliveryError(detail, code=INVALID_NUMBER)
    if code in UNSUBSCRIBED_CODES:
        raise PermanentDeliveryError(detail, code="recipient_unsubscribed")
    raise PermanentDeliveryError(detail, code="twilio_rejected")
