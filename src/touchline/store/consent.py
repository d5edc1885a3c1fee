"""The consent ledger and the suppression list, as stored.

The ledger is append-only: a grant, a withdrawal or a confirmation is a new
row, never an update, so the history proves what the customer agreed to,
when, where (source, IP, user agent) and to which wording (``text_version``).
Whether consent holds *now* is decided by :func:`touchline.messaging.policies.consent_state`
over these rows.

Suppressions are keyed by address, not by profile: an address that bounced
hard or complained stays blocked whichever profile it turns up on.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, and_, delete, insert, or_, select

from touchline.errors import InputError
from touchline.messaging.policies import MARKETING, ConsentRecord, Suppression, consent_state
from touchline.store.db import insert_ignore
from touchline.store.tables import consents, suppressions

# "erased": the address of a customer erased on request, kept only as its pseudonym.
SUPPRESSION_REASONS = ("hard_bounce", "complaint", "unsubscribe", "stop_reply", "erased")
#: How a pseudonymised address starts (see :func:`pseudonym`).
PSEUDONYM_PREFIX = "sha256:"
#: Channels a customer can subscribe to; a grant for any other name is refused.
CONSENT_CHANNELS = frozenset({"email", "sms", "telegram", "push", "whatsapp", "viber", "call"})
#: Topics a customer may opt out of while keeping a channel: the non-transactional categories.
CONSENT_TOPICS = ("engaging", "selling")
#: Longest text kept for provenance fields; longer values are cut, not refused.
_SOURCE_MAX, _AGENT_MAX = 500, 500


@dataclass(frozen=True)
class Provenance:
    """Where a consent change came from: enough to prove it later."""

    source: str
    ip: str | None = None
    user_agent: str | None = None
    text_version: str | None = None


def record_consent(
    conn: Connection,
    *,
    workspace_id: str,
    profile_id: int,
    channel: str,
    granted: bool,
    at: datetime,
    provenance: Provenance,
    topic: str | None = None,
    confirmed: bool = True,
    address: str | None = None,
) -> int:
    """Append one row to the ledger and return its id."""
    if channel not in CONSENT_CHANNELS:
        raise InputError(
            f"channel: {channel!r} takes no consent; use one of {sorted(CONSENT_CHANNELS)}"
        )
    if not provenance.source:
        raise InputError("source: a consent change must say where it came from")
    row = {
        "workspace_id": workspace_id,
        "profile_id": profile_id,
        "channel": channel,
        "purpose": MARKETING,
        "topic": topic,
        "granted": granted,
        "confirmed": confirmed or not granted,
        "at": at,
        "source": provenance.source[:_SOURCE_MAX],
        "text_version": provenance.text_version,
        "address": address,
        "ip": provenance.ip,
        "user_agent": (provenance.user_agent or None) and provenance.user_agent[:_AGENT_MAX],
    }
    key = conn.execute(insert(consents).values(**row)).inserted_primary_key
    assert key is not None
    return int(key[0])


def load_consents(conn: Connection, workspace_id: str, profile_id: int) -> list[ConsentRecord]:
    """Every ledger row of one customer, oldest first, as the policies read them."""
    rows = conn.execute(
        select(consents)
        .where(consents.c.workspace_id == workspace_id, consents.c.profile_id == profile_id)
        .order_by(consents.c.at, consents.c.id)
    ).all()
    return [
        ConsentRecord(
            channel=r.channel,
            purpose=r.purpose,
            granted=r.granted,
            at=r.at,
            source=r.source,
            text_version=r.text_version,
            ip=r.ip,
            user_agent=r.user_agent,
            confirmed=r.confirmed,
            topic=r.topic,
        )
        for r in rows
    ]


def confirm_pending(
    conn: Connection,
    *,
    workspace_id: str,
    profile_id: int,
    channel: str,
    at: datetime,
    provenance: Provenance,
) -> bool:
    """Confirm a double opt-in: append a confirmed grant if one is pending.

    Returns ``False`` (and writes nothing) when there is nothing to confirm,
    so a confirmation link clicked twice records one confirmation.
    """
    records = load_consents(conn, workspace_id, profile_id)
    granted, record = consent_state(records, channel=channel, purpose=MARKETING)
    if granted or record is None or not record.granted or record.confirmed:
        return False
    pending = record
    record_consent(
        conn,
        workspace_id=workspace_id,
        profile_id=profile_id,
        channel=channel,
        granted=True,
        at=at,
        provenance=Provenance(
            source=provenance.source,
            ip=provenance.ip,
            user_agent=provenance.user_agent,
            text_version=provenance.text_version or pending.text_version,
        ),
    )
    return True


def ledger(conn: Connection, workspace_id: str, profile_id: int) -> list[dict[str, Any]]:
    """The customer's ledger as plain rows for export (JSON or CSV), oldest first."""
    rows = conn.execute(
        select(consents)
        .where(consents.c.workspace_id == workspace_id, consents.c.profile_id == profile_id)
        .order_by(consents.c.at, consents.c.id)
    ).all()
    return [
        {
            "id": r.id,
            "at": r.at.isoformat(),
            "channel": r.channel,
            "purpose": r.purpose,
            "topic": r.topic,
            "granted": r.granted,
            "confirmed": r.confirmed,
            "source": r.source,
            "text_version": r.text_version,
            "address": r.address,
            "ip": r.ip,
            "user_agent": r.user_agent,
        }
        for r in rows
    ]


LEDGER_FIELDS = (
    "id",
    "at",
    "channel",
    "purpose",
    "topic",
    "granted",
    "confirmed",
    "source",
    "text_version",
    "address",
    "ip",
    "user_agent",
)


def normal_address(address: str) -> str:
    """How suppressions compare addresses: stripped and case-folded."""
    return address.strip().casefold()


def pseudonym(workspace_id: str, value: str) -> str:
    """What erasure keeps of an address or id: a SHA-256 salted with the workspace.

    It cannot be read back, yet the same address always gives the same
    pseudonym, so a suppression or an import can still recognise it. Values
    already pseudonymised are returned as they are.
    """
    normal = normal_address(value)
    if normal.startswith(PSEUDONYM_PREFIX):
        return normal
    digest = hashlib.sha256(f"{workspace_id}\n{normal}".encode()).hexdigest()
    return PSEUDONYM_PREFIX + digest


def suppress(
    conn: Connection,
    *,
    workspace_id: str,
    channel: str,
    address: str,
    reason: str,
    at: datetime,
    profile_id: int | None = None,
    detail: str | None = None,
) -> bool:
    """Add an address to the suppression list; ``False`` if it was already there for ``reason``."""
    if reason not in SUPPRESSION_REASONS:
        raise InputError(f"reason: {reason!r} is not one of {list(SUPPRESSION_REASONS)}")
    address = normal_address(address)
    if not address:
        raise InputError("address: required")
    added = insert_ignore(
        conn,
        suppressions,
        {
            "workspace_id": workspace_id,
            "channel": channel,
            "address": address,
            "reason": reason,
            "profile_id": profile_id,
            "detail": detail,
            "at": at,
        },
        key=["workspace_id", "channel", "address", "reason"],
    )
    return added > 0


def load_suppressions(
    conn: Connection, workspace_id: str, pairs: Sequence[tuple[str, str]]
) -> list[Suppression]:
    """Suppressions matching any of the (channel, address) pairs."""
    if not pairs:
        return []
    # An erased customer's address is stored as its pseudonym; it still blocks the address.
    asked: dict[tuple[str, str], str] = {}
    for channel, a in pairs:
        plain = normal_address(a)
        asked[(channel, plain)] = plain
        asked[(channel, pseudonym(workspace_id, plain))] = plain
    match = or_(
        *(
            and_(suppressions.c.channel == channel, suppressions.c.address == a)
            for channel, a in asked
        )
    )
    rows = conn.execute(
        select(suppressions).where(suppressions.c.workspace_id == workspace_id, match)
    ).all()
    return [
        Suppression(r.channel, asked.get((r.channel, r.address), r.address), r.reason, r.at)
        for r in rows
    ]


def list_suppressions(
    conn: Connection, workspace_id: str, *, channel: str | None = None, limit: int = 100
) -> list[dict[str, Any]]:
    """The newest suppressions of a workspace, for the admin API."""
    stmt = select(suppressions).where(suppressions.c.workspace_id == workspace_id)
    if channel:
        stmt = stmt.where(suppressions.c.channel == channel)
    rows = conn.execute(stmt.order_by(suppressions.c.at.desc()).limit(limit)).all()
    return [
        {
            "channel": r.channel,
            "address": r.address,
            "reason": r.reason,
            "profile_id": r.profile_id,
            "detail": r.detail,
            "at": r.at.isoformat(),
        }
        for r in rows
    ]


def unsubscribe(
    conn: Connection,
    *,
    workspace_id: str,
    profile_id: int,
    channel: str,
    address: str | None,
    at: datetime,
    provenance: Provenance,
    topic: str | None = None,
) -> bool:
    """Withdraw marketing consent (for a channel, or one topic of it). Idempotent.

    A channel-wide unsubscribe also suppresses the address, so the same address
    on another profile is not mailed either. Returns ``False`` when the
    customer was already unsubscribed (nothing is written then).
    """
    records = load_consents(conn, workspace_id, profile_id)
    granted, latest = consent_state(records, channel=channel, purpose=MARKETING, topic=topic)
    already = latest is not None and not latest.granted
    if topic is None and address:
        suppressed = suppress(
            conn,
            workspace_id=workspace_id,
            channel=channel,
            address=address,
            reason="unsubscribe",
            at=at,
            profile_id=profile_id,
            detail=provenance.source,
        )
        already = already and not suppressed
    if already:
        return False
    record_consent(
        conn,
        workspace_id=workspace_id,
        profile_id=profile_id,
        channel=channel,
        granted=False,
        at=at,
        provenance=provenance,
        topic=topic,
        address=address,
    )
    return True


def consent_from_identify(
    conn: Connection,
    *,
    workspace_id: str,
    profile_id: int,
    traits: Mapping[str, Any],
    context: Mapping[str, Any] | None,
    at: datetime,
    double_opt_in: frozenset[str] = frozenset(),
    addresses: Mapping[str, str | None] | None = None,
) -> list[str]:
    """Record what an ``identify`` call's ``consent`` trait says; returns channels awaiting confirmation.

    The trait maps a channel to ``true``/``false`` or to an object
    ``{"granted": bool, "text": "<consent text version>", "topics": {"selling": false}}``.
    Provenance comes from the call's context: ``page.url`` as the source,
    ``ip`` and ``userAgent``. Only changes are written — an identify that
    repeats the current state adds nothing. A grant on a channel in
    ``double_opt_in`` is recorded unconfirmed; it counts once confirmed.
    """
    value = traits.get("consent")
    if not isinstance(value, Mapping):
        return []
    ctx = context or {}
    page = ctx.get("page") if isinstance(ctx.get("page"), Mapping) else {}
    url = page.get("url") if isinstance(page, Mapping) else None
    source = f"identify from {url}" if isinstance(url, str) and url else "identify"
    ip = ctx.get("ip") if isinstance(ctx.get("ip"), str) else None
    agent = ctx.get("userAgent") if isinstance(ctx.get("userAgent"), str) else None
    records = load_consents(conn, workspace_id, profile_id)
    awaiting: list[str] = []
    for channel, raw in value.items():
        if channel not in CONSENT_CHANNELS:
            continue
        granted, text_version, topics = _consent_value(raw)
        provenance = Provenance(source=source, ip=ip, user_agent=agent, text_version=text_version)
        address = (addresses or {}).get(channel)
        if granted is not None:
            held, latest = consent_state(records, channel=channel, purpose=MARKETING)
            pending = not held and latest is not None and latest.granted
            confirm = channel in double_opt_in
            if granted and not held and not (pending and confirm):
                record_consent(
                    conn,
                    workspace_id=workspace_id,
                    profile_id=profile_id,
                    channel=channel,
                    granted=True,
                    at=at,
                    provenance=provenance,
                    confirmed=not confirm,
                    address=address,
                )
                if confirm:
                    awaiting.append(channel)
            elif not granted and (held or pending):
                record_consent(
                    conn,
                    workspace_id=workspace_id,
                    profile_id=profile_id,
                    channel=channel,
                    granted=False,
                    at=at,
                    provenance=provenance,
                    address=address,
                )
        for topic, on in topics.items():
            held, latest = consent_state(records, channel=channel, purpose=MARKETING, topic=topic)
            opted_out = latest is not None and not latest.granted
            if on == opted_out:  # a change: opting back in, or out
                record_consent(
                    conn,
                    workspace_id=workspace_id,
                    profile_id=profile_id,
                    channel=channel,
                    granted=on,
                    at=at,
                    provenance=provenance,
                    topic=topic,
                    address=address,
                )
    return awaiting


#: The event asking a journey to send a double opt-in confirmation (see the example pack).
CONFIRMATION_REQUESTED = "Consent Confirmation Requested"


def request_confirmation(
    conn: Connection, event_row: Any, *, channels: Sequence[str], now: datetime
) -> None:
    """Emit one :data:`CONFIRMATION_REQUESTED` event per channel awaiting double opt-in.

    The event carries ``channel`` and a signed ``confirm_token``; the
    dispatcher turns the token into ``links.confirm_url`` for the message a
    (transactional) journey triggered by this event sends. It is stored in the
    caller's transaction with a message id derived from the identify call, so
    the identify processed again emits nothing new.
    """
    from touchline.ingest.segment import IncomingEvent
    from touchline.messaging.links import make_token, workspace_link_secret
    from touchline.store.ingest import ingest_events

    secret = workspace_link_secret(conn, event_row.workspace_id)
    emitted = [
        IncomingEvent(
            type="track",
            message_id=f"consent-confirm:{event_row.message_id}:{channel}"[:200],
            user_id=event_row.user_id,
            anonymous_id=event_row.anonymous_id,
            name=CONFIRMATION_REQUESTED,
            properties={
                "channel": channel,
                "confirm_token": make_token(
                    secret,
                    kind="confirm",
                    workspace_id=event_row.workspace_id,
                    profile_id=event_row.profile_id,
                    channel=channel,
                    issued_at=now,
                ),
            },
            traits=None,
            context={},
            timestamp=event_row.timestamp,
            sent_at=None,
            received_at=now,
        )
        for channel in channels
    ]
    ingest_events(conn, event_row.workspace_id, emitted, now=now)


def _consent_value(raw: Any) -> tuple[bool | None, str | None, dict[str, bool]]:
    """(granted, text version, topic switches) from one channel's entry of the trait."""
    if isinstance(raw, bool):
        return raw, None, {}
    if not isinstance(raw, Mapping):
        return None, None, {}
    granted = raw.get("granted") if isinstance(raw.get("granted"), bool) else None
    text = raw.get("text")
    topics_raw = raw.get("topics")
    topics = (
        {str(k): v for k, v in topics_raw.items() if isinstance(v, bool)}
        if isinstance(topics_raw, Mapping)
        else {}
    )
    return granted, str(text)[:200] if text is not None else None, topics


def remove_suppression(
    conn: Connection, *, workspace_id: str, channel: str, address: str, reason: str
) -> bool:
    """Lift one suppression (e.g. a bounce recorded by mistake); ``False`` if there was none.

    The row is deleted: the suppression list holds what blocks sending now,
    while the consent ledger keeps the history of what customers agreed to.
    """
    if reason not in SUPPRESSION_REASONS:
        raise InputError(f"reason: {reason!r} is not one of {list(SUPPRESSION_REASONS)}")
    removed = conn.execute(
        delete(suppressions).where(
            suppressions.c.workspace_id == workspace_id,
            suppressions.c.channel == channel,
            suppressions.c.address.in_([normal_address(address), pseudonym(workspace_id, address)]),
            suppressions.c.reason == reason,
        )
    )
    return removed.rowcount > 0


__all__ = [
    "CONFIRMATION_REQUESTED",
    "CONSENT_CHANNELS",
    "request_confirmation",
    "CONSENT_TOPICS",
    "remove_suppression",
    "consent_from_identify",
    "LEDGER_FIELDS",
    "Provenance",
    "SUPPRESSION_REASONS",
    "confirm_pending",
    "ledger",
    "list_suppressions",
    "load_consents",
    "load_suppressions",
    "normal_address",
    "pseudonym",
    "record_consent",
    "suppress",
    "unsubscribe",
]
