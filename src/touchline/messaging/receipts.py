"""Applying a delivery report to its message: status, suppression, event — once.

A report (from a provider callback, see :mod:`touchline.web.api.callbacks`, or
an SMPP delivery receipt collected by the dispatcher) finds its message by
provider id among the workspace's messages on that channel and sets
``outbox.delivery_status`` and ``delivery_at``. A status only moves up
:data:`STATUS_RANK`, so repeats and late reports change nothing. A change also
suppresses the address when the report says it can never receive, and records
an event (``Message Delivered``, ``Message Bounced``...) with the message id
``delivery:{outbox id}:{status}``, so journeys can react and a retried report
never makes a second one.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import Connection, Engine, or_, select, update

from touchline.ingest.segment import IncomingEvent
from touchline.messaging.channels.sms_http import DeliveryReport
from touchline.store.consent import suppress
from touchline.store.db import run_in_transaction
from touchline.store.ingest import ingest_events
from touchline.store.tables import identities, journeys, outbox, profiles

log = logging.getLogger("touchline.receipts")

DeliveryStatus = Literal["delivered", "undelivered", "bounced", "complained"]

#: A status replaces another only if it ranks higher: reports arrive out of order.
STATUS_RANK: Mapping[str, int] = {"undelivered": 1, "delivered": 2, "bounced": 3, "complained": 4}
EVENT_NAMES: Mapping[str, str] = {
    "delivered": "Message Delivered",
    "undelivered": "Message Undelivered",
    "bounced": "Message Bounced",
    "complained": "Message Complained",
}


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
    # The message's own history and the report counters (an undelivered SMS is a failure);
    # imported here because engagement builds on this module.
    from touchline.measure.engagement import record_message_event
    from touchline.measure.rollups import bump_message

    kind = "failed" if receipt.status == "undelivered" else receipt.status
    detail = receipt.detail if kind != "failed" else f"undelivered: {receipt.detail or ''}"
    record_message_event(  # its customer event was emitted above
        conn,
        workspace_id=workspace_id,
        outbox_id=row.id,
        kind=kind,
        at=now,
        detail=detail,
        emit=False,
    )
    bump_message(conn, row.id, at=now, **{receipt.status: 1})
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
    emit_message_event(
        conn,
        workspace_id,
        outbox_id=row.id,
        profile_id=row.profile_id,
        message_id=f"delivery:{row.id}:{status}",
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
        now=now,
    )


def emit_message_event(
    conn: Connection,
    workspace_id: str,
    *,
    outbox_id: int,
    profile_id: int,
    message_id: str,
    name: str,
    properties: dict[str, Any],
    now: datetime,
) -> bool:
    """Record event ``name`` about message ``outbox_id`` for its customer; True if it is new.

    ``message_id`` deduplicates it like any event. A customer known only by
    an anonymous id gets it under that id; one with neither id gets none.
    ``last_seen_at`` is kept: a message's fate is not the customer showing up.
    """
    profile = conn.execute(
        select(profiles.c.user_id, profiles.c.last_seen_at).where(profiles.c.id == profile_id)
    ).first()
    if profile is None:
        log.warning("message %s: its customer %s is gone; no event", outbox_id, profile_id)
        return False
    anonymous_id = None
    if profile.user_id is None:
        anonymous_id = conn.execute(
            select(identities.c.value)
            .where(
                identities.c.workspace_id == workspace_id,
                identities.c.profile_id == profile_id,
                identities.c.kind == "anonymous_id",
            )
            .order_by(identities.c.value)
            .limit(1)
        ).scalar_one_or_none()
        if anonymous_id is None:
            log.warning("message %s: its customer has no id to record an event under", outbox_id)
            return False
    event = IncomingEvent(
        type="track",
        message_id=message_id,
        user_id=profile.user_id,
        anonymous_id=anonymous_id,
        name=name,
        properties=properties,
        traits=None,
        context={},
        timestamp=now,
        sent_at=None,
        received_at=now,
    )
    result = ingest_events(conn, workspace_id, [event], now=now)
    conn.execute(
        update(profiles)
        .where(profiles.c.id == profile_id)
        .values(last_seen_at=profile.last_seen_at)
    )
    return result.accepted > 0


__all__ = [
    "EVENT_NAMES",
    "STATUS_RANK",
    "DeliveryStatus",
    "Receipt",
    "emit_message_event",
    "receipt_from_report",
    "record_receipt",
]
