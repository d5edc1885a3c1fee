"""Parsing and validating Segment HTTP Tracking API payloads (pure).

The accepted shapes are those of Segment's HTTP Tracking API
(https://segment.com/docs/connections/sources/catalog/libraries/server/http-api/):
``identify``, ``track``, ``page``, ``screen``, ``group``, ``alias`` and
``batch`` (whose items carry their own ``type``). A body becomes a list of
:class:`IncomingEvent` values; nothing here touches the database.

Contract, in the order checks run:

* Size: one event may serialise to at most :data:`MAX_EVENT_BYTES` (32 KB), a
  batch body to at most :data:`MAX_BATCH_BYTES` (500 KB); over that is
  :class:`~touchline.errors.PayloadTooLarge` (``payload_too_large``, HTTP 413).
* The body must be UTF-8 JSON holding an object, nested at most
  :data:`~touchline.nesting.MAX_JSON_DEPTH` (64) levels deep, else
  :class:`~touchline.errors.NestedTooDeep` (``nested_too_deep``, HTTP 400);
  ``NaN``/``Infinity`` and strings the store cannot keep (NUL characters,
  unpaired surrogates) are refused. Wrong field types are :class:`~touchline.errors.InputError` whose
  message names the field, with the batch index when there is one:
  ``batch[3].userId must be a string``.
* Identity: every message needs ``userId`` or ``anonymousId`` (numbers are
  accepted and turned into strings); ``alias`` needs ``previousId`` and
  ``userId``. Otherwise the code is ``missing_identity``. ``track`` needs
  ``event``; ``group`` needs ``groupId``. Ids and names are at most
  :data:`MAX_ID_LENGTH` characters, the width of the store's columns.
* ``messageId``: when absent, a deterministic one is derived from the SHA-256
  of the canonical message (for a batch item, plus the batch's ``sentAt`` and
  the item's index), so a client that retries the same body is deduplicated by
  the store while two identical items of one batch stay two events.
* Time: the client's clock is not trusted. With ``timestamp`` (or, failing
  that, ``originalTimestamp``) and ``sentAt`` both given, the event time is
  ``receivedAt - (sentAt - timestamp)``; with no ``sentAt`` it is the given
  time; with neither it is ``receivedAt``. A batch-level ``sentAt`` applies to
  items that lack their own. ISO-8601 with ``Z`` or offsets is accepted; naive
  values are taken as UTC. Every time in an :class:`IncomingEvent` is aware UTC.

Event naming (journeys trigger on ``(type, name)``):

* ``track``: ``name`` is the ``event`` field, e.g. ``"Order Completed"``.
* ``page`` / ``screen``: ``name`` is the page or screen name — the message's
  ``name`` field, else ``properties.name`` — and may be ``None``. ``name`` and
  ``category`` are also copied into ``properties`` when not already there, as
  analytics.js does, so conditions can read them.
* ``identify``, ``group``, ``alias``: ``name`` is ``None``; the type says it all.

A single-event endpoint decides the type; a ``type`` inside its body is ignored.
A batch-level ``context`` is a default under each item's own ``context``.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from touchline.clock import utc
from touchline.errors import InputError, PayloadTooLarge
from touchline.nesting import check_depth

EVENT_TYPES = ("identify", "track", "page", "screen", "group", "alias")
BATCH = "batch"
# Segment's own limits: 32 KB per message, 500 KB per batch request.
MAX_EVENT_BYTES = 32 * 1024
MAX_BATCH_BYTES = 500 * 1024
# Width of the store's id and name columns (user_id, message_id, events.name).
MAX_ID_LENGTH = 200
MISSING_IDENTITY = "missing_identity"

# Only bodies containing these escapes can hold a NUL or a lone surrogate, which
# PostgreSQL's jsonb and UTF-8 encoding refuse; others skip the full walk.
_RISKY_ESCAPE = re.compile(r"\\u(?:0000|[dD][89a-fA-F])")


@dataclass(frozen=True)
class IncomingEvent:
    """One normalised Segment message, ready to store.

    ``properties`` and ``context`` are always dicts (possibly empty);
    ``traits`` is a dict for ``identify`` and ``group`` and ``None`` otherwise.
    ``timestamp`` is the skew-corrected event time. The dicts are shared with
    the parsed body: treat them as read-only.
    """

    type: str
    message_id: str
    user_id: str | None
    anonymous_id: str | None
    name: str | None
    properties: dict[str, Any]
    traits: dict[str, Any] | None
    context: dict[str, Any]
    timestamp: datetime
    sent_at: datetime | None
    received_at: datetime
    previous_id: str | None = None
    group_id: str | None = None


@dataclass(frozen=True)
class ParsedRequest:
    """A whole request body: the ``writeKey`` it carried (if any) and its events."""

    write_key: str | None
    events: list[IncomingEvent]


def parse_request(body: bytes, *, kind: str, received_at: datetime) -> ParsedRequest:
    """Decode and validate a request body posted to the ``kind`` endpoint."""
    payload = decode_body(body, kind=kind)
    return ParsedRequest(
        write_key=write_key_of(payload),
        events=parse_payload(payload, kind=kind, received_at=received_at),
    )


def decode_body(body: bytes, *, kind: str) -> dict[str, Any]:
    """The JSON object in ``body``, after the size limit for ``kind`` is checked.

    ``kind`` is an event type or ``"batch"``; it decides the size limit.
    """
    _check_kind(kind)
    limit = MAX_BATCH_BYTES if kind == BATCH else MAX_EVENT_BYTES
    if len(body) > limit:
        what = "a batch" if kind == BATCH else "one event"
        raise PayloadTooLarge(
            f"the body is {len(body)} bytes; the limit for {what} is {limit // 1024} KB"
        )
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise InputError("the body is not valid UTF-8") from None
    check_depth(text)
    try:
        payload = json.loads(text, parse_constant=_refuse_constant)
    except json.JSONDecodeError as exc:
        raise InputError(
            f"the body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    except RecursionError:
        raise InputError("the body is not valid JSON: nested too deeply") from None
    if not isinstance(payload, dict):
        raise InputError("the body must be a JSON object")
    if _RISKY_ESCAPE.search(text):
        _check_storable(payload, "")
    return payload


def write_key_of(payload: Mapping[str, Any]) -> str | None:
    """The ``writeKey`` field of a decoded body, or ``None`` when absent or empty."""
    key = payload.get("writeKey")
    if key is None or key == "":
        return None
    if not isinstance(key, str):
        raise InputError("writeKey must be a string")
    return key


def parse_payload(
    payload: Mapping[str, Any], *, kind: str, received_at: datetime
) -> list[IncomingEvent]:
    """Validate a decoded body posted to ``kind`` and normalise its messages.

    ``received_at`` is when the server got the request (from its Clock); it
    anchors the clock-skew correction described in the module docstring.
    """
    _check_kind(kind)
    received = utc(received_at)
    if kind != BATCH:
        return [_parse_message(payload, kind=kind, where="", received_at=received)]

    items = payload.get("batch")
    if not isinstance(items, list):
        raise InputError("batch must be an array of messages")
    batch_sent_at = _time(payload, "sentAt", "")
    batch_context = _object(payload, "context", "") or {}
    sent_text = payload.get("sentAt") if isinstance(payload.get("sentAt"), str) else ""
    events = []
    for index, item in enumerate(items):
        where = f"batch[{index}]."
        if not isinstance(item, dict):
            raise InputError(f"batch[{index}] must be an object")
        item_type = item.get("type")
        if item_type not in EVENT_TYPES:
            raise InputError(f"{where}type must be one of {', '.join(EVENT_TYPES)}")
        canonical = _canonical(item)
        if len(canonical) > MAX_EVENT_BYTES:
            raise PayloadTooLarge(
                f"batch[{index}] is {len(canonical)} bytes; the limit for one event is "
                f"{MAX_EVENT_BYTES // 1024} KB"
            )
        events.append(
            _parse_message(
                item,
                kind=item_type,
                where=where,
                received_at=received,
                default_sent_at=batch_sent_at,
                default_context=batch_context,
                canonical=canonical,
                salt=f"{sent_text}#{index}",
            )
        )
    return events


def _parse_message(
    item: Mapping[str, Any],
    *,
    kind: str,
    where: str,
    received_at: datetime,
    default_sent_at: datetime | None = None,
    default_context: Mapping[str, Any] | None = None,
    canonical: bytes | None = None,
    salt: str | None = None,
) -> IncomingEvent:
    user_id = _id(item, "userId", where)
    anonymous_id = _id(item, "anonymousId", where)
    previous_id = _id(item, "previousId", where)
    group_id = _id(item, "groupId", where)
    if kind == "alias":
        if previous_id is None or user_id is None:
            raise InputError(
                f"{where}alias needs both previousId and userId", code=MISSING_IDENTITY
            )
    elif user_id is None and anonymous_id is None:
        raise InputError(f"{where}userId or anonymousId is required", code=MISSING_IDENTITY)
    if kind == "group" and group_id is None:
        raise InputError(f"{where}groupId is required for group")

    properties = _object(item, "properties", where) or {}
    traits = _object(item, "traits", where)
    context = _object(item, "context", where) or {}
    if default_context:
        context = {**default_context, **context}

    name: str | None = None
    if kind == "track":
        name = _name(item, "event", where)
        if name is None:
            raise InputError(f"{where}event is required for track")
    elif kind in ("page", "screen"):
        name = _name(item, "name", where)
        category = _name(item, "category", where)
        if name is None and isinstance(properties.get("name"), str):
            name = properties["name"][:MAX_ID_LENGTH] or None
        if name is not None or category is not None:
            properties = dict(properties)
            if name is not None:
                properties.setdefault("name", name)
            if category is not None:
                properties.setdefault("category", category)

    message_id = _id(item, "messageId", where)
    if message_id is None:
        body = canonical if canonical is not None else _canonical(item)
        digest = hashlib.sha256(f"{kind}\n{salt or ''}\n".encode() + body).hexdigest()
        message_id = f"tl_{digest[:40]}"

    client_time = _time(item, "timestamp", where) or _time(item, "originalTimestamp", where)
    sent_at = _time(item, "sentAt", where) or default_sent_at
    timestamp = _event_time(client_time, sent_at, received_at, where)

    return IncomingEvent(
        type=kind,
        message_id=message_id,
        user_id=user_id,
        anonymous_id=anonymous_id,
        name=name,
        properties=properties,
        traits=(traits or {}) if kind in ("identify", "group") else None,
        context=context,
        timestamp=timestamp,
        sent_at=sent_at,
        received_at=received_at,
        previous_id=previous_id,
        group_id=group_id,
    )


def _event_time(
    client_time: datetime | None, sent_at: datetime | None, received_at: datetime, where: str
) -> datetime:
    if client_time is None:
        return received_at
    if sent_at is None:
        return client_time
    try:
        return received_at - (sent_at - client_time)
    except OverflowError:
        raise InputError(f"{where}timestamp and sentAt are too far apart") from None


def _check_kind(kind: str) -> None:
    if kind != BATCH and kind not in EVENT_TYPES:
        raise ValueError(f"unknown endpoint kind {kind!r}")


def _canonical(item: Mapping[str, Any]) -> bytes:
    return json.dumps(item, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _refuse_constant(name: str) -> Any:
    raise InputError(f"the body is not valid JSON: {name} is not a number JSON allows")


def _id(item: Mapping[str, Any], field: str, where: str) -> str | None:
    """An identifier field: a string or an integer, empty meaning absent."""
    value = item.get(field)
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise InputError(f"{where}{field} must be a string")
    text = str(value)
    if len(text) > MAX_ID_LENGTH:
        raise InputError(f"{where}{field} is longer than {MAX_ID_LENGTH} characters")
    return text


def _name(item: Mapping[str, Any], field: str, where: str) -> str | None:
    """A non-blank string field of at most MAX_ID_LENGTH characters, or None."""
    value = item.get(field)
    if value is None:
        return None
    if not isinstance(value, str):
        raise InputError(f"{where}{field} must be a string")
    if not value.strip():
        return None
    if len(value) > MAX_ID_LENGTH:
        raise InputError(f"{where}{field} is longer than {MAX_ID_LENGTH} characters")
    return value


def _object(item: Mapping[str, Any], field: str, where: str) -> dict[str, Any] | None:
    value = item.get(field)
    if value is None:
        return None
    if not isinstance(value, dict):
        raise InputError(f"{where}{field} must be an object")
    return value


def _time(item: Mapping[str, Any], field: str, where: str) -> datetime | None:
    value = item.get(field)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise InputError(f"{where}{field} must be an ISO-8601 date-time string")
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        shown = value if len(value) <= 40 else value[:40] + "..."
        raise InputError(f"{where}{field} is not an ISO-8601 date-time: {shown!r}") from None
    try:
        return utc(parsed)
    except OverflowError:
        raise InputError(f"{where}{field} is out of range") from None


def _check_storable(value: Any, path: str) -> None:
    """Refuse strings with NUL or unpaired surrogates, naming where they are."""
    if isinstance(value, str):
        if "\x00" in value:
            raise InputError(f"{path or 'a value'} contains a NUL character")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise InputError(f"{path or 'a value'} contains an unpaired surrogate") from None
    elif isinstance(value, dict):
        for key, child in value.items():
            child_path = f"{path}.{key}" if path else str(key)
            _check_storable(key, f"{child_path} (key)")
            _check_storable(child, child_path)
    elif isinstance(value, list):
        for index, child in enumerate(value):
            _check_storable(child, f"{path}[{index}]")


__all__ = [
    "BATCH",
    "EVENT_TYPES",
    "MAX_BATCH_BYTES",
    "MAX_EVENT_BYTES",
    "MAX_ID_LENGTH",
    "IncomingEvent",
    "ParsedRequest",
    "decode_body",
    "parse_payload",
    "parse_request",
    "write_key_of",
]
