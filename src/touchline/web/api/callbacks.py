"""Delivery reports from providers: ``POST /callbacks/{workspace_id}/{provider}``.

Providers cannot send an admin token, so these routes are public and each
call is authenticated against the workspace's channel settings instead:

* ``twilio``: the ``X-Twilio-Signature`` header, HMAC-SHA1 over the URL and
  the sorted form fields with the account's ``auth_token``
  (:func:`touchline.messaging.channels.twilio.validate_signature`);
* ``smsaero``, ``http`` and ``email``: the channel's ``callback_secret``,
  either as ``?token=<secret>`` in the callback URL, or as
  ``X-Touchline-Signature: <hex HMAC-SHA256(secret, body)>`` (a ``sha256=``
  prefix is allowed), or, with ``X-Touchline-Timestamp``, in the scheme
  touchline's own webhooks use (``v1=`` over ``timestamp + "." + body``).

Anything else answers ``401 unauthorized``. A report then finds its message
by provider id among the workspace's messages on that channel and sets
``outbox.delivery_status`` (``delivered`` | ``undelivered`` | ``bounced`` |
``complained``) and ``delivery_at``. Repeats change nothing: a status only
moves up :data:`STATUS_RANK` (a late "delivered" never hides a bounce). A
change also

* suppresses the address for good on a hard bounce, a complaint, or an SMS
  failure that means the number cannot receive (reason ``hard_bounce`` or
  ``complaint``), and
* records an event for the customer (``Message Delivered``, ``Message
  Undelivered``, ``Message Bounced``, ``Message Complained``) with the
  message id ``delivery:{outbox id}:{status}``, so journeys can react to it
  and a retried report never makes a second one.

An unknown provider id answers ``200 {"matched": false}`` (and is logged):
providers retry anything else for days. Reports that are not final yet
(Twilio's ``sent``, SMS Aero's "passed to operator") are acknowledged and
change nothing.

Replies customers send to the shop's number arrive at
``POST /callbacks/{workspace_id}/{provider}/inbound`` (``twilio``, ``smsaero``
or ``http``), authenticated the same way. Twilio posts its usual form
(``From``, ``To``, ``Body``, ``MessageSid``, and ``OptOutType`` with Advanced
Opt-Out); SMS Aero and generic gateways post ``{"from", "to", "text", "id"}``
as JSON or a form (SMS Aero's also under ``data``). What a reply does is
:func:`touchline.messaging.replies.record_reply`'s business. Twilio is answered
with an empty TwiML ``<Response/>``, which sends no reply back: it reads any
other answer as TwiML or as the text of a reply. The others get the outcome
as JSON, ``{"matched": false}`` for a number no customer has.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any
from urllib.parse import parse_qsl

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from sqlalchemy import Engine, select
from starlette.concurrency import run_in_threadpool

from touchline.errors import AuthError, InputError, NotFound, PayloadTooLarge
from touchline.messaging.channels import smsaero, twilio
from touchline.messaging.channels.sms_http import DeliveryReport, HttpSmsConfig
from touchline.messaging.channels.sms_http import (
    parse_status_callback as parse_http_report,
)
from touchline.messaging.channels.webhook import verify_signature
from touchline.messaging.phone import DEFAULT_REGION
from touchline.messaging.receipts import (
    EVENT_NAMES,
    DeliveryStatus,
    Receipt,
    receipt_from_report,
    record_receipt,
)
from touchline.messaging.registry import WorkspaceSettingsError, http_sms_config
from touchline.messaging.replies import MAX_PROVIDER_ID, InboundSms, record_reply
from touchline.messaging.settings import ChannelSettings, parse_channels, parse_sender
from touchline.store.tables import workspaces

log = logging.getLogger("touchline.callbacks")

router = APIRouter(prefix="/callbacks", tags=["callbacks"])

#: Each provider, and the channel whose settings hold its credentials.
PROVIDERS: Mapping[str, str] = {"smsaero": "sms", "twilio": "sms", "http": "sms", "email": "email"}
#: Larger bodies are refused unread: a delivery report is a few hundred bytes.
MAX_CALLBACK_BYTES = 64 * 1024
#: Longest provider detail kept on the event.
MAX_DETAIL = 500
#: The generic email webhook's ``type`` -> (delivery status, suppression reason).
EMAIL_TYPES: Mapping[str, tuple[DeliveryStatus, str | None]] = {
    "delivered": ("delivered", None),
    "hard_bounce": ("bounced", "hard_bounce"),
    "soft_bounce": ("undelivered", None),
    "complaint": ("complained", "complaint"),
}
#: Twilio error codes meaning the number can never receive SMS (unknown handset,
#: landline or unreachable carrier, invalid number): the address is suppressed.
TWILIO_PERMANENT_ERRORS = frozenset({"30005", "30006", "21211", "21614", "21217"})
#: Provider status words that mean "no such number" for a generic HTTP gateway, unless
#: its settings list others in ``permanent_statuses``.
DEFAULT_PERMANENT_STATUSES = ("invalid_number",)
SIGNATURE_HEADER = "X-Touchline-Signature"
TIMESTAMP_HEADER = "X-Touchline-Timestamp"
#: Providers that forward replies; all send SMS, so their settings are ``channels.sms``.
INBOUND_PROVIDERS = ("twilio", "smsaero", "http")
#: Twilio's answer to a reply: TwiML that sends nothing back.
EMPTY_TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response></Response>'


# -- parsing (pure) -----------------------------------------------------------------------


def parse_twilio(form: Mapping[str, str]) -> Receipt:
    """A Twilio status callback's form fields as a Receipt."""
    report = twilio.parse_status_callback(form)
    permanent = report.status == "failed" and report.error in TWILIO_PERMANENT_ERRORS
    return receipt_from_report(report, permanent=permanent)


def parse_smsaero(payload: Mapping[str, Any], *, permanent_statuses: Sequence[str]) -> Receipt:
    """An SMS Aero callback as a Receipt; failures whose code or extended status is listed suppress."""
    report = smsaero.parse_status_callback(payload)
    return receipt_from_report(report, permanent=_listed(report, permanent_statuses))


def parse_http(
    config: HttpSmsConfig, payload: Mapping[str, Any], *, permanent_statuses: Sequence[str]
) -> Receipt:
    """A generic gateway's ``{id, status}`` callback, read with its configured paths and map."""
    report = parse_http_report(config, payload)
    return receipt_from_report(report, permanent=_listed(report, permanent_statuses))


def parse_email(payload: Mapping[str, Any]) -> Receipt:
    """The generic email webhook: ``{message_id | provider_id, type, recipient, detail}``."""
    kind = payload.get("type")
    if not isinstance(kind, str) or kind not in EMAIL_TYPES:
        raise InputError(f"type: {kind!r} is not one of {', '.join(EMAIL_TYPES)}")
    ids: list[str] = []
    for key in ("message_id", "provider_id"):
        value = payload.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, str | int) or not str(value).strip():
            raise InputError(f"{key}: must be a non-empty string")
        text = str(value).strip()
        ids.extend(email_ids(text) if key == "message_id" else [text])
    if not ids:
        raise InputError("message_id: required (or provider_id)")
    recipient = payload.get("recipient")
    if recipient is not None and (not isinstance(recipient, str) or "@" not in recipient):
        raise InputError("recipient: must be an email address")
    status, reason = EMAIL_TYPES[kind]
    return Receipt(
        tuple(dict.fromkeys(ids)), status, _detail(payload.get("detail")), reason, recipient
    )


def parse_inbound_twilio(form: Mapping[str, str]) -> InboundSms:
    """A reply in Twilio's incoming-message form; ``OptOutType=STOP`` marks its own opt-outs."""
    sid = form.get("MessageSid") or form.get("SmsSid")
    return InboundSms(
        provider_id=_provider_id(sid, "MessageSid"),
        sender=_required(form.get("From"), "From"),
        recipient=_optional(form.get("To"), "To"),
        text=form.get("Body", ""),
        opt_out=(form.get("OptOutType") or "").strip().upper() == "STOP",
    )


def parse_inbound_smsaero(payload: Mapping[str, Any]) -> InboundSms:
    """A reply forwarded by SMS Aero: ``{from, to, text, id}`` at the top level or under ``data``."""
    nested = payload.get("data")
    return parse_inbound_http(nested if isinstance(nested, Mapping) else payload)


def parse_inbound_http(payload: Mapping[str, Any]) -> InboundSms:
    """A reply forwarded by a generic gateway: ``{"from", "to", "text", "id"}``.

    ``from`` is the customer's number (E.164, national, or international
    digits without ``+``), ``to`` the shop's number (optional), ``text`` the
    reply (may be empty), ``id`` the gateway's id for it, which makes a
    retried callback a duplicate.
    """
    text = payload.get("text")
    if not isinstance(text, str):
        raise InputError("text: required, a string (may be empty)")
    return InboundSms(
        provider_id=_provider_id(payload.get("id"), "id"),
        sender=_required(payload.get("from"), "from"),
        recipient=_optional(payload.get("to"), "to"),
        text=text,
    )


def _provider_id(value: Any, key: str) -> str:
    text = _required(value, key)
    if len(text) > MAX_PROVIDER_ID:
        raise InputError(f"{key}: longer than {MAX_PROVIDER_ID} characters")
    return text


def _required(value: Any, key: str) -> str:
    text = _optional(value, key)
    if text is None:
        raise InputError(f"{key}: required")
    return text


def _optional(value: Any, key: str) -> str | None:
    """A string or a number as stripped text; None when absent or blank."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise InputError(f"{key}: must be a string")
    return str(value).strip() or None


def email_ids(message_id: str) -> tuple[str, str]:
    """A Message-ID as stored (``<id@domain>``) and as bounce processors often quote it (bare)."""
    bare = message_id.strip().removeprefix("<").removesuffix(">")
    return f"<{bare}>", bare


def decode_payload(body: bytes, content_type: str | None) -> dict[str, Any]:
    """A JSON object, or a form (first value of each field); InputError otherwise.

    Without a telling ``Content-Type``, a body starting with ``{`` is JSON.
    """
    kind = (content_type or "").split(";", 1)[0].strip().lower()
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise InputError("the body is not UTF-8") from None
    is_form = kind == "application/x-www-form-urlencoded" or (
        kind != "application/json" and not text.lstrip().startswith("{")
    )
    if is_form:
        return {key: values[0] for key, values in form_fields(body).items()}
    try:
        data = json.loads(text)
    except ValueError:
        raise InputError("the body is not JSON") from None
    if not isinstance(data, dict):
        raise InputError("the body must be a JSON object")
    return data


def form_fields(body: bytes) -> dict[str, list[str]]:
    """Every value of every form field, as Twilio signs them."""
    fields: dict[str, list[str]] = {}
    for key, value in parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True):
        fields.setdefault(key, []).append(value)
    return fields


def verify_shared_secret(
    secret: str,
    *,
    body: bytes,
    token: str | None,
    signature: str | None,
    timestamp: str | None,
    now: float,
) -> bool:
    """Whether the request proves it knows ``secret`` (see the module docstring)."""
    if token is not None and hmac.compare_digest(token.encode(), secret.encode()):
        return True
    if not signature:
        return False
    if timestamp is not None:
        return verify_signature(secret, timestamp, body, signature, now=now)
    expected = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    given = signature.strip().removeprefix("sha256=")
    return hmac.compare_digest(expected, given.lower())


def _listed(report: DeliveryReport, words: Sequence[str]) -> bool:
    said = {report.provider_status, report.error} - {None}
    return report.status == "failed" and bool(said & set(words))


def _detail(value: Any) -> str | None:
    if value is None or value == "":
        return None
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return text[:MAX_DETAIL]


# -- the route ----------------------------------------------------------------------------


@router.post("/{workspace_id}/{provider}")
async def receive(request: Request, workspace_id: str, provider: str) -> dict[str, Any]:
    """Take one delivery report (see the module docstring)."""
    if provider not in PROVIDERS:
        raise NotFound(f"no callbacks for provider {provider!r}; use one of {', '.join(PROVIDERS)}")
    body = await _read_body(request)
    engine: Engine = request.app.state.engine
    now: datetime = request.app.state.clock.now()
    spec = await run_in_threadpool(callback_settings, engine, workspace_id, provider)
    _authenticate(request, spec, provider=provider, body=body, now=now)
    receipt = _parse(provider, spec, body, request.headers.get("content-type"))
    return await run_in_threadpool(
        record_receipt,
        engine,
        workspace_id,
        channel=spec.name,
        provider=provider,
        receipt=receipt,
        now=now,
    )


@router.post("/{workspace_id}/{provider}/inbound")
async def receive_inbound(request: Request, workspace_id: str, provider: str) -> Response:
    """Take one reply a customer sent to the shop's SMS number (see the module docstring)."""
    if provider not in INBOUND_PROVIDERS:
        raise NotFound(
            f"no inbound messages from provider {provider!r}; use one of "
            + ", ".join(INBOUND_PROVIDERS)
        )
    body = await _read_body(request)
    engine: Engine = request.app.state.engine
    now: datetime = request.app.state.clock.now()
    spec = await run_in_threadpool(callback_settings, engine, workspace_id, provider)
    _authenticate(request, spec, provider=provider, body=body, now=now)
    sms = parse_inbound(provider, decode_payload(body, request.headers.get("content-type")))
    result = await run_in_threadpool(
        record_reply,
        engine,
        workspace_id,
        provider=provider,
        sms=sms,
        region=str(spec.option("region", DEFAULT_REGION)),
        now=now,
    )
    if provider == "twilio":
        return Response(EMPTY_TWIML, media_type="text/xml")
    return JSONResponse(result)


def parse_inbound(provider: str, payload: Mapping[str, Any]) -> InboundSms:
    """The reply in ``provider``'s decoded payload; InputError naming a missing or bad field."""
    if provider == "twilio":
        return parse_inbound_twilio({k: str(v) for k, v in payload.items()})
    if provider == "smsaero":
        return parse_inbound_smsaero(payload)
    return parse_inbound_http(payload)


async def _read_body(request: Request) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_CALLBACK_BYTES:
            raise PayloadTooLarge(f"a callback body is at most {MAX_CALLBACK_BYTES} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def callback_settings(engine: Engine, workspace_id: str, provider: str) -> ChannelSettings:
    """The channel settings that authenticate ``provider``'s callbacks; AuthError when none do.

    Only the ``sender`` and ``channels`` sections are read, so a bad entry
    elsewhere in the document does not turn reports away.
    """
    with engine.connect() as conn:
        document = conn.execute(
            select(workspaces.c.settings).where(workspaces.c.id == workspace_id)
        ).scalar_one_or_none()
    channel = PROVIDERS[provider]
    not_set_up = AuthError(
        f"callbacks from {provider} are not set up for this workspace (see channels.{channel})"
    )
    if not isinstance(document, Mapping):
        raise not_set_up
    try:
        channels = parse_channels(
            document.get("channels"), sender=parse_sender(document.get("sender"))
        )
    except InputError as exc:
        raise WorkspaceSettingsError(
            f"workspace {workspace_id} has invalid settings: {exc.message}"
        ) from exc
    spec = channels.get(channel)
    if spec is None or (channel == "sms" and spec.provider != provider):
        raise not_set_up
    return spec


def _authenticate(
    request: Request, spec: ChannelSettings, *, provider: str, body: bytes, now: datetime
) -> None:
    if provider == "twilio":
        token = spec.secret("auth_token")
        signature = request.headers.get(twilio.SIGNATURE_HEADER)
        if token is None or not signature:
            raise AuthError(f"{twilio.SIGNATURE_HEADER} is required")
        fields = form_fields(body)
        if not any(
            twilio.validate_signature(token, url, fields, signature) for url in _urls(request)
        ):
            raise AuthError(f"{twilio.SIGNATURE_HEADER} does not match")
        return
    secret = spec.secret("callback_secret")
    if secret is None:
        raise AuthError(
            f"{spec.path}.callback_secret is not set, so callbacks cannot be authenticated"
        )
    if not verify_shared_secret(
        secret.reveal(),
        body=body,
        token=request.query_params.get("token"),
        signature=request.headers.get(SIGNATURE_HEADER),
        timestamp=request.headers.get(TIMESTAMP_HEADER),
        now=now.timestamp(),
    ):
        raise AuthError(f"a valid ?token= or {SIGNATURE_HEADER} is required")


def _urls(request: Request) -> list[str]:
    """The URLs Twilio may have signed: as we received it, and as seen from outside."""
    urls = [str(request.url)]
    public = getattr(request.app.state.settings, "public_url", None)
    if public:
        query = f"?{request.url.query}" if request.url.query else ""
        urls.append(f"{public.rstrip('/')}{request.url.path}{query}")
    return urls


def _parse(provider: str, spec: ChannelSettings, body: bytes, content_type: str | None) -> Receipt:
    payload = decode_payload(body, content_type)
    if provider == "email":
        return parse_email(payload)
    if provider == "twilio":
        return parse_twilio({k: str(v) for k, v in payload.items()})
    listed = [str(w) for w in spec.option("permanent_statuses", ())]
    if provider == "smsaero":
        return parse_smsaero(payload, permanent_statuses=listed)
    config = http_sms_config(spec, parse_sender(None))
    return parse_http(config, payload, permanent_statuses=listed or DEFAULT_PERMANENT_STATUSES)


# -- recording ----------------------------------------------------------------------------


__all__ = [
    "EVENT_NAMES",
    "EMPTY_TWIML",
    "INBOUND_PROVIDERS",
    "PROVIDERS",
    "Receipt",
    "callback_settings",
    "decode_payload",
    "email_ids",
    "form_fields",
    "parse_email",
    "parse_http",
    "parse_inbound",
    "parse_inbound_http",
    "parse_inbound_smsaero",
    "parse_inbound_twilio",
    "parse_smsaero",
    "parse_twilio",
    "receipt_from_report",
    "receive_inbound",
    "record_receipt",
    "router",
    "verify_shared_secret",
]
