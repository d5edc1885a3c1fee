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
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal
from urllib.parse import parse_qsl

from fastapi import APIRouter, Request
from sqlalchemy import Connection, Engine, or_, select, update
from starlette.concurrency import run_in_threadpool

from touchline.errors import AuthError, InputError, NotFound, PayloadTooLarge
from touchline.ingest.segment import IncomingEvent
from touchline.messaging.channels import smsaero, twilio
from touchline.messaging.channels.sms_http import DeliveryReport, HttpSmsConfig
from touchline.messaging.channels.sms_http import (
    parse_status_callback as parse_http_report,
)
from touchline.messaging.channels.webhook import verify_signature
from touchline.messaging.registry import WorkspaceSettingsError, http_sms_config
from touchline.messaging.settings import ChannelSettings, parse_channels, parse_sender
from touchline.store.consent import suppress
from touchline.store.db import run_in_transaction
from touchline.store.ingest import ingest_events
from touchline.store.tables import identities, journeys, outbox, profiles, workspaces

log = logging.getLogger("touchline.callbacks")

router = APIRouter(prefix="/callbacks", tags=["callbacks"])

DeliveryStatus = Literal["delivered", "undelivered", "bounced", "complained"]

#: Each provider, and the channel whose settings hold its credentials.
PROVIDERS: Mapping[str, str] = {"smsaero": "sms", "twilio": "sms", "http": "sms", "email": "email"}
#: Larger bodies are refused unread: a delivery report is a few hundred bytes.
MAX_CALLBACK_BYTES = 64 * 1024
#: Longest provider detail kept on the event.
MAX_DETAIL = 500
#: A status replaces another only if it ranks higher: reports arrive out of order.
STATUS_RANK: Mapping[str, int] = {"undelivered": 1, "delivered": 2, "bounced": 3, "complained": 4}
EVENT_NAMES: Mapping[str, str] = {
    "delivered": "Message Delivered",
    "undelivered": "Message Undelivered",
    "bounced": "Message Bounced",
    "complained": "Message Complained",
}
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


@dataclass(frozen=True)
class Receipt:
    """What one report says, in touchline's terms.

    ``provider_ids`` are the ids the message may be stored under (an email's
    Message-ID with and without angle brackets); ``status`` is None while the
    message is not final yet; ``suppress`` is the suppression reason, if any.
    """

    provider_ids: tuple[str, ...]
    status: DeliveryStatus | None
    detail: str | None = None
    suppress: str | None = None
    recipient: str | None = None


# -- parsing (pure) -----------------------------------------------------------------------


def receipt_from_report(report: DeliveryReport, *, permanent: bool) -> Receipt:
    """An SMS :class:`DeliveryReport` as a Receipt; ``permanent`` failures suppress the number."""
    detail = report.error or report.provider_status
    if report.status == "delivered":
        return Receipt((report.provider_id,), "delivered", detail)
    if report.status == "failed":
        if permanent:
            return Receipt((report.provider_id,), "bounced", detail, suppress="hard_bounce")
        return Receipt((report.provider_id,), "undelivered", detail)
    return Receipt((report.provider_id,), None, detail)


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


def record_receipt(
    engine: Engine,
    workspace_id: str,
    *,
    channel: str,
    provider: str,
    receipt: Receipt,
    now: datetime,
) -> dict[str, Any]:
    """Apply a receipt to the workspace's message on ``channel``, once (see the module docstring).

    One transaction: the status, the suppression and the event land together.
    """
    result = run_in_transaction(
        engine,
        lambda conn: _record(conn, workspace_id, channel=channel, receipt=receipt, now=now),
    )
    if not result["matched"]:
        log.warning(
            "%s callback for workspace %s: no %s message with provider id %s",
            provider,
            workspace_id,
            channel,
            receipt.provider_ids[0],
        )
    return result


def _record(
    conn: Connection, workspace_id: str, *, channel: str, receipt: Receipt, now: datetime
) -> dict[str, Any]:
    row = conn.execute(
        select(
            outbox.c.id,
            outbox.c.profile_id,
            outbox.c.channel,
            outbox.c.step_id,
            outbox.c.template,
            outbox.c.address,
            outbox.c.provider_id,
            outbox.c.delivery_status,
            journeys.c.key.label("journey"),
        )
        .join(journeys, journeys.c.id == outbox.c.journey_id, isouter=True)
        .where(
            outbox.c.workspace_id == workspace_id,
            outbox.c.channel == channel,
            outbox.c.provider_id.in_(receipt.provider_ids),
        )
        .order_by(outbox.c.id.desc())
        .limit(1)
    ).first()
    if row is None:
        return {"matched": False}
    unchanged = {
        "matched": True,
        "message_id": row.id,
        "status": row.delivery_status,
        "changed": False,
    }
    if receipt.status is None:
        return unchanged
    below = [status for status, rank in STATUS_RANK.items() if rank < STATUS_RANK[receipt.status]]
    moved = conn.execute(
        update(outbox)
        .where(
            outbox.c.id == row.id,
            or_(outbox.c.delivery_status.is_(None), outbox.c.delivery_status.in_(below)),
        )
        .values(delivery_status=receipt.status, delivery_at=now)
    ).rowcount
    if not moved:
        return unchanged
    address = row.address or receipt.recipient
    if receipt.suppress is not None and address:
        suppress(
            conn,
            workspace_id=workspace_id,
            channel=row.channel,
            address=address,
            reason=receipt.suppress,
            at=now,
            profile_id=row.profile_id,
            detail=receipt.detail,
        )
    _emit(conn, workspace_id, row, receipt=receipt, status=receipt.status, now=now)
    return {"matched": True, "message_id": row.id, "status": receipt.status, "changed": True}


def _emit(
    conn: Connection,
    workspace_id: str,
    row: Any,
    *,
    receipt: Receipt,
    status: DeliveryStatus,
    now: datetime,
) -> None:
    """Record the delivery event for the message's customer, once per message and status."""
    profile = conn.execute(
        select(profiles.c.user_id, profiles.c.last_seen_at).where(profiles.c.id == row.profile_id)
    ).first()
    if profile is None:
        log.warning("message %s: its customer %s is gone; no event", row.id, row.profile_id)
        return
    anonymous_id = None
    if profile.user_id is None:
        anonymous_id = conn.execute(
            select(identities.c.value)
            .where(
                identities.c.workspace_id == workspace_id,
                identities.c.profile_id == row.profile_id,
                identities.c.kind == "anonymous_id",
            )
            .order_by(identities.c.value)
            .limit(1)
        ).scalar_one_or_none()
        if anonymous_id is None:
            log.warning("message %s: its customer has no id to record an event under", row.id)
            return
    event = IncomingEvent(
        type="track",
        message_id=f"delivery:{row.id}:{status}",
        user_id=profile.user_id,
        anonymous_id=anonymous_id,
        name=EVENT_NAMES[status],
        properties={
            "message_id": row.id,
            "channel": row.channel,
            "journey": row.journey,
            "step": row.step_id,
            "template": row.template,
            "provider_id": row.provider_id,
            "status": status,
            "detail": receipt.detail,
        },
        traits=None,
        context={},
        timestamp=now,
        sent_at=None,
        received_at=now,
    )
    ingest_events(conn, workspace_id, [event], now=now)
    # A provider's report is not the customer showing up: keep last_seen_at as it was.
    conn.execute(
        update(profiles)
        .where(profiles.c.id == row.profile_id)
        .values(last_seen_at=profile.last_seen_at)
    )


__all__ = [
    "EVENT_NAMES",
    "PROVIDERS",
    "Receipt",
    "callback_settings",
    "decode_payload",
    "email_ids",
    "form_fields",
    "parse_email",
    "parse_http",
    "parse_smsaero",
    "parse_twilio",
    "receipt_from_report",
    "record_receipt",
    "router",
    "verify_shared_secret",
]
