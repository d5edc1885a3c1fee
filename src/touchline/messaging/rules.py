"""Delivery rules against the store: load a message's facts, decide, remember the verdict.

:mod:`touchline.messaging.policies` decides; this module gathers what it
decides on — the customer's consent ledger, suppressions of the address, the
customer's recent marketing sends, the workspace policy — and applies the
verdict to the outbox row. The dispatcher and the simulator share it, so a
simulation shows exactly what the dispatcher would do.

**Caps under concurrency.** Two dispatchers deciding two messages for one
customer at once could each see the other's send as not yet made and both
pass a cap. A decision therefore runs in a write transaction that first takes
the customer's lock (a transaction-level advisory lock keyed by the profile id
on PostgreSQL; SQLite has one writer), and a message judged "send" is marked
``sending`` with its ``sent_at`` before that transaction commits, so the next
decision for the customer counts it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, func, select, text, update

from touchline.errors import InputError
from touchline.messaging.policies import (
    DEFAULT_POLICY,
    MARKETING,
    TRANSACTIONAL,
    Candidate,
    Decision,
    Policy,
    SentRecord,
    cap_window_start,
    decide,
)
from touchline.store.consent import load_consents, load_suppressions
from touchline.store.tables import journeys, outbox, workspaces

#: Workspace settings are re-read this often, so an edited cap applies within seconds.
POLICY_TTL_SECONDS = 10.0
#: Which profile field each channel delivers to; other channels use the user id.
ADDRESS_FIELDS = {"email": "email", "sms": "phone", "smpp": "phone"}
#: Outbox statuses that count as "sent" for caps: delivered to a provider, or about to be.
COUNTED_STATUSES = ("sent", "sending")


class PolicyCache:
    """Each workspace's :class:`Policy`, built from its settings and re-read every few seconds.

    Settings that fail to parse fall back to the defaults *for that workspace*
    and are reported by :meth:`problem`, so one bad document never stops
    delivery for everyone (the admin API refuses such documents in the first place).
    """

    def __init__(self, *, ttl: float = POLICY_TTL_SECONDS) -> None:
        self.ttl = ttl
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[float, Policy, str | None]] = {}

    def get(self, conn: Connection, workspace_id: str) -> Policy:
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(workspace_id)
        if hit is not None and now - hit[0] < self.ttl:
            return hit[1]
        row = conn.execute(
            select(workspaces.c.settings, workspaces.c.timezone).where(
                workspaces.c.id == workspace_id
            )
        ).first()
        settings: Mapping[str, Any] = dict(row.settings or {}) if row else {}
        if row is not None and "default_timezone" not in settings:
            settings = {**settings, "default_timezone": row.timezone}
        problem: str | None = None
        try:
            policy = Policy.from_settings(settings)
        except InputError as exc:
            policy, problem = DEFAULT_POLICY, exc.message
        with self._lock:
            self._cache[workspace_id] = (now, policy, problem)
        return policy

    def problem(self, workspace_id: str) -> str | None:
        hit = self._cache.get(workspace_id)
        return hit[2] if hit else None


def address_of(channel: str, profile: Any) -> str | None:
    """Where a message on ``channel`` goes for this profile row, or None when unknown."""
    field = ADDRESS_FIELDS.get(channel)
    if field is None:
        return str(profile.user_id) if profile.user_id else f"#{profile.id}"
    value = getattr(profile, field, None)
    return str(value) if value else None


def unreachable(row: Any, profile: Any) -> Decision | None:
    """A skip when the customer has no usable address for the row's channel, else None."""
    address = address_of(row.channel, profile)
    if not address:
        field = ADDRESS_FIELDS.get(row.channel, "user_id")
        return Decision("skip", f"no_{field}", None, f"the customer has no {field}")
    if row.channel == "sms" and profile.phone_valid is False:
        return Decision("skip", "invalid_phone", None, f"{address} is not a valid number")
    return None


def lock_customer(conn: Connection, profile_id: int) -> None:
    """Serialise decisions for one customer until the transaction ends (see module doc)."""
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": int(profile_id)})


def judge(
    conn: Connection,
    row: Any,
    profile: Any,
    *,
    journey_key: str,
    policy: Policy,
    now: datetime,
) -> Decision:
    """Decide one outbox row for its customer, reading the facts in ``conn``.

    ``row`` is an outbox row and ``profile`` its customer's row. Call
    :func:`lock_customer` first inside a write transaction when the verdict
    will be acted on.
    """
    payload = row.payload or {}
    address = address_of(row.channel, profile) or ""
    purpose = row.purpose if row.purpose in (MARKETING, TRANSACTIONAL) else MARKETING
    candidate = Candidate(
        channel=row.channel,
        purpose=purpose,
        category=row.category,
        journey=journey_key,
        address=address,
        timezone=profile.timezone,
        cap_exempt=bool(payload.get("cap_exempt")),
        when_capped="defer" if payload.get("when_capped") == "defer" else "skip",
        topic=row.category if purpose == MARKETING else None,
        customer=profile.user_id or f"#{profile.id}",
    )
    consents = load_consents(conn, row.workspace_id, profile.id) if purpose == MARKETING else []
    suppressions = load_suppressions(conn, row.workspace_id, [(row.channel, address)])
    sent: list[SentRecord] = []
    if purpose == MARKETING and not candidate.cap_exempt and policy.caps:
        sent = recent_sends(
            conn,
            row.workspace_id,
            profile.id,
            since=now - cap_window_start(policy.caps),
            excluding=row.id,
        )
    return decide(
        candidate,
        consents=consents,
        suppressions=suppressions,
        sent=sent,
        policy=policy,
        now=now,
    )


def recent_sends(
    conn: Connection, workspace_id: str, profile_id: int, *, since: datetime, excluding: int
) -> list[SentRecord]:
    """The customer's messages sent (or being sent) after ``since``, for caps."""
    rows = conn.execute(
        select(
            outbox.c.channel, outbox.c.purpose, outbox.c.category, journeys.c.key, outbox.c.sent_at
        )
        .join(journeys, journeys.c.id == outbox.c.journey_id)
        .where(
            outbox.c.workspace_id == workspace_id,
            outbox.c.profile_id == profile_id,
            outbox.c.status.in_(COUNTED_STATUSES),
            outbox.c.sent_at > since,
            outbox.c.id != excluding,
        )
    ).all()
    return [SentRecord(r.channel, r.purpose, r.category, r.key, r.sent_at) for r in rows]


def apply_verdict(
    conn: Connection, row_id: int, decision: Decision, *, now: datetime, owner: str | None
) -> str:
    """Write a decision onto the outbox row; returns the row's new status.

    ``send`` marks the row ``sending`` (counted by caps from now on); ``skip``
    settles it as ``skipped`` with the reason; ``defer`` returns it to
    ``pending`` until ``not_before``, remembering why, without using up one of
    its delivery attempts. With ``owner`` the write only lands while that
    dispatcher's lease holds.
    """
    where = [outbox.c.id == row_id]
    if owner is not None:
        where.append(outbox.c.lease_owner == owner)
    if decision.outcome == "send":
        values: dict[str, Any] = {"status": "sending", "sent_at": now}
        status = "sending"
    elif decision.outcome == "skip":
        values = {
            "status": "skipped",
            "reason": decision.reason,
            "error": decision.detail,
            "lease_owner": None,
            "lease_until": None,
        }
        status = "skipped"
    else:
        assert decision.not_before is not None
        values = {
            "status": "pending",
            "available_at": decision.not_before,
            "deferred_reason": decision.reason,
            "deferrals": outbox.c.deferrals + 1,
            "attempts": func.max(outbox.c.attempts - 1, 0)
            if conn.dialect.name == "sqlite"
            else func.greatest(outbox.c.attempts - 1, 0),
            "lease_owner": None,
            "lease_until": None,
        }
        status = "pending"
    conn.execute(update(outbox).where(*where).values(**values))
    return status


__all__ = [
    "ADDRESS_FIELDS",
    "PolicyCache",
    "address_of",
    "apply_verdict",
    "judge",
    "lock_customer",
    "recent_sends",
    "unreachable",
]
