"""SMS through any HTTP gateway, described by configuration instead of code.

Most small SMS gateways take one request with the number and the text and
answer with an id. :class:`HttpSmsConfig` says where to send it, how to
authenticate, what the body looks like and where the id is in the answer, so a
workspace can plug in its gateway without a new adapter::

    HttpSmsConfig(
        url="https://sms.example/api/send",
        auth="bearer",
        token=Secret("..."),
        body_template={"to": "{to}", "text": "{text}", "from": "{sender}"},
        response_id_path="data.0.id",
        response_status_path="data.0.status",
        status_map={"ok": "sent", "delivered": "delivered", "rejected": "failed"},
        sender="Shop",
    )

Placeholders (``{to}``, ``{text}``, ``{sender}``, ``{idempotency_key}``) are
replaced in the *string leaves* of the parsed template, so a text with quotes
or braces never breaks the JSON. ``{to}`` is the E.164 number with ``+``;
``{to_digits}`` is the same without it, for gateways that want bare digits.

The shared pieces of every SMS channel live here too: :class:`DeliveryReport`
(what a status callback or a delivery receipt says) and :func:`prepare_sms`
(validate the number, analyse the text).
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx

from touchline.config import Secret
from touchline.errors import (
    ConfigError,
    InputError,
    PermanentDeliveryError,
    TransientDeliveryError,
)
from touchline.messaging.channels.base import OutgoingMessage, SendResult
from touchline.messaging.phone import DEFAULT_REGION, to_e164
from touchline.messaging.sms import SmsInfo, analyse

ReportStatus = Literal["delivered", "failed", "sent"]
REPORT_STATUSES: frozenset[str] = frozenset({"delivered", "failed", "sent"})

#: Statuses worth retrying besides 5xx: request timeout and rate limiting.
RETRYABLE_4XX = frozenset({408, 429})

_PLACEHOLDER = re.compile(r"\{(to|to_digits|text|sender|idempotency_key)\}")


@dataclass(frozen=True)
class DeliveryReport:
    """What a provider later said about a sent message.

    ``status`` is final (``delivered``, ``failed``) or not yet (``sent``: the
    provider or operator has it). ``provider_status`` keeps the provider's own
    word for audit; ``error`` its error code or text when it failed.
    """

    provider_id: str
    status: ReportStatus
    error: str | None = None
    provider_status: str | None = None


def prepare_sms(message: OutgoingMessage, *, region: str = DEFAULT_REGION) -> tuple[str, SmsInfo]:
    """(E.164 number, SmsInfo) for ``message``, or a PermanentDeliveryError.

    Raises ``invalid_number`` for a bad number and ``empty_message`` for a
    text with nothing to send (no parts, nothing to bill).
    """
    number = to_e164(message.to, region=region)
    info = analyse(message.text)
    if info.parts == 0:
        raise PermanentDeliveryError("SMS text is empty", code="empty_message")
    return number, info


def sms_detail(info: SmsInfo, **extra: Any) -> dict[str, Any]:
    """The ``SendResult.detail`` of an SMS: the SmsInfo as a plain dict, plus ``extra``."""
    return {"sms": dataclasses.asdict(info), **extra}


def dig(data: Any, path: str) -> Any:
    """The value at a dotted ``path`` (``data.0.id``) in parsed JSON, or None.

    Numeric segments index lists; anything missing gives None.
    """
    current = data
    for segment in path.split(".") if path else []:
        if isinstance(current, Mapping):
            current = current.get(segment)
        elif isinstance(current, list) and segment.lstrip("-").isdigit():
            index = int(segment)
            current = current[index] if -len(current) <= index < len(current) else None
        else:
            return None
        if current is None:
            return None
    return current


@dataclass(frozen=True)
class HttpSmsConfig:
    """One workspace's HTTP SMS gateway.

    ``auth`` is ``none``, ``bearer`` (``token``) or ``basic`` (``username`` and
    ``password``). ``body_template`` is JSON (a string or already parsed);
    ``body_format`` ``form`` sends its top-level keys form-encoded, and a
    ``GET`` sends them as the query string. ``status_map`` maps the provider's
    status words to ``delivered|failed|sent``; unknown words count as ``sent``.
    """

    url: str
    body_template: Any
    method: str = "POST"
    body_format: Literal["json", "form"] = "json"
    auth: Literal["none", "bearer", "basic"] = "none"
    token: Secret | None = None
    username: str | None = None
    password: Secret | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    sender: str = ""
    response_id_path: str = "id"
    response_status_path: str | None = None
    status_map: Mapping[str, ReportStatus] = field(default_factory=dict)
    callback_id_path: str = "id"
    callback_status_path: str = "status"
    callback_error_path: str | None = None
    #: Header carrying the message's idempotency key; None for gateways that reject unknown headers.
    idempotency_header: str | None = "Idempotency-Key"
    region: str = DEFAULT_REGION
    timeout: float = 10.0

    def __post_init__(self) -> None:
        if isinstance(self.body_template, str):
            try:
                object.__setattr__(self, "body_template", json.loads(self.body_template))
            except ValueError as exc:
                raise ConfigError(f"SMS body_template is not JSON: {exc}") from None
        if self.auth == "bearer" and self.token is None:
            raise ConfigError("SMS auth 'bearer' needs a token")
        if self.auth == "basic" and (self.username is None or self.password is None):
            raise ConfigError("SMS auth 'basic' needs a username and a password")
        if self.auth not in ("none", "bearer", "basic"):
            raise ConfigError(f"unknown SMS auth {self.auth!r}")
        bad = {k: v for k, v in self.status_map.items() if v not in REPORT_STATUSES}
        if bad:
            raise ConfigError(f"SMS status_map values must be delivered|failed|sent: {bad}")


def render_body(template: Any, values: Mapping[str, str]) -> Any:
    """``template`` with placeholders in its string leaves replaced by ``values``."""
    if isinstance(template, str):
        return _PLACEHOLDER.sub(lambda m: values[m.group(1)], template)
    if isinstance(template, Mapping):
        return {key: render_body(value, values) for key, value in template.items()}
    if isinstance(template, list):
        return [render_body(item, values) for item in template]
    return template  # numbers, booleans, null pass through


def map_status(config: HttpSmsConfig, raw: Any) -> ReportStatus:
    """The report status for the provider's status word ``raw`` (unknown: ``sent``)."""
    return config.status_map.get(str(raw), "sent") if raw is not None else "sent"


def parse_status_callback(config: HttpSmsConfig, payload: Mapping[str, Any]) -> DeliveryReport:
    """The DeliveryReport in a gateway's status callback; InputError if it has no id."""
    provider_id = dig(payload, config.callback_id_path)
    if provider_id is None or provider_id == "":
        raise InputError(f"status callback has no id at {config.callback_id_path!r}")
    raw = dig(payload, config.callback_status_path)
    status = map_status(config, raw)
    error = dig(payload, config.callback_error_path) if config.callback_error_path else None
    return DeliveryReport(
        provider_id=str(provider_id),
        status=status,
        error=str(error) if error not in (None, "") else None,
        provider_status=str(raw) if raw is not None else None,
    )


class HttpSmsChannel:
    """Send SMS through a gateway described by :class:`HttpSmsConfig`."""

    name = "sms"

    def __init__(self, client: httpx.AsyncClient, *, config: HttpSmsConfig) -> None:
        self._client = client
        self._config = config

    def __repr__(self) -> str:
        return f"HttpSmsChannel({self._config.url!r})"

    async def send(self, message: OutgoingMessage) -> SendResult:
        config = self._config
        number, info = prepare_sms(message, region=config.region)
        body = render_body(
            config.body_template,
            {
                "to": number,
                "to_digits": number.lstrip("+"),
                "text": message.text,
                "sender": config.sender,
                "idempotency_key": message.idempotency_key,
            },
        )
        headers = dict(config.headers)
        if config.idempotency_header:
            headers[config.idempotency_header] = message.idempotency_key
        if config.auth == "bearer" and config.token is not None:
            headers["Authorization"] = f"Bearer {config.token.reveal()}"
        auth = None
        if config.auth == "basic" and config.username is not None and config.password is not None:
            auth = httpx.BasicAuth(config.username, config.password.reveal())
        request: dict[str, Any] = {}
        if config.method.upper() == "GET":
            request["params"] = _flat(body)
        elif config.body_format == "form":
            request["data"] = _flat(body)
        else:
            request["json"] = body
        try:
            response = await self._client.request(
                config.method.upper(),
                config.url,
                headers=headers,
                auth=auth,
                timeout=config.timeout,
                **request,
            )
        except httpx.TransportError as exc:  # connect/read/write errors and timeouts
            raise TransientDeliveryError(
                f"SMS gateway unreachable: {type(exc).__name__}: {exc}", code="sms_unavailable"
            ) from None
        return self._result(response, info)

    async def aclose(self) -> None:
        """The client belongs to the caller, who closes it."""

    def _result(self, response: httpx.Response, info: SmsInfo) -> SendResult:
        status_code = response.status_code
        excerpt = response.text[:200]
        if status_code >= 500 or status_code in RETRYABLE_4XX:
            raise TransientDeliveryError(
                f"SMS gateway answered {status_code}: {excerpt}", code="sms_unavailable"
            )
        if status_code == 401:  # every message would fail alike until the key is fixed
            raise TransientDeliveryError(
                "SMS gateway refused the credentials (401)", code="sms_bad_credentials"
            )
        if not 200 <= status_code < 300:
            raise PermanentDeliveryError(
                f"SMS gateway answered {status_code}: {excerpt}", code="sms_rejected"
            )
        try:
            data = response.json()
        except ValueError:
            data = None
        provider_id = dig(data, self._config.response_id_path)
        raw_status = (
            dig(data, self._config.response_status_path)
            if self._config.response_status_path
            else None
        )
        status = map_status(self._config, raw_status)
        if status == "failed":
            raise PermanentDeliveryError(
                f"SMS gateway rejected the message: status {raw_status!r}", code="sms_rejected"
            )
        return SendResult(
            provider_id=str(provider_id) if provider_id is not None else None,
            status="delivered" if status == "delivered" else "accepted",
            detail=sms_detail(info, status_code=status_code, provider_status=raw_status),
        )


def _flat(body: Any) -> dict[str, str]:
    if not isinstance(body, Mapping):
        raise ConfigError("a form or GET SMS body_template must be a JSON object")
    return {
        str(key): value if isinstance(value, str) else json.dumps(value)
        for key, value in body.items()
    }
