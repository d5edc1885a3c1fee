"""What happened to each message: the ``message_events`` ledger and its counts.

Every fact about a message is a row: ``sent``, ``failed``, ``delivered``,
``bounced``, ``complained``, ``unsubscribed`` (written by the dispatcher, the
delivery receipts and the unsubscribe page through
:func:`record_message_event`), and every single ``opened`` and ``clicked``
fetch (written by the tracking routes through :func:`record_hit`). Repeats
are kept as rows; reports count messages, not rows (:func:`engagement`).

Opens and clicks are judged by :mod:`touchline.measure.machines` and a
machine's is stored with ``machine`` set and the rule's name in ``detail``.
A person's first open and first click of a message also become an ordinary
event for the customer (:data:`HIT_EVENTS`), with the message id
``open:{outbox id}`` or ``click:{outbox id}`` so later ones are duplicates,
so journeys can ``wait_for: Email Opened``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, and_, bindparam, case, distinct, func, select, update

from touchline.measure.machines import BURST_WINDOW, HitKind, PriorHit, machine_reason
from touchline.measure.rollups import bump_message
from touchline.messaging.receipts import emit_message_event
from touchline.store.tables import journeys, listeners, message_events, outbox

log = logging.getLogger("touchline.engagement")

#: Every kind of row in ``message_events``.
MESSAGE_EVENT_KINDS = (
    "sent",
    "delivered",
    "opened",
    "clicked",
    "bounced",
    "complained",
    "unsubscribed",
    "failed",
)
#: The kinds :func:`record_message_event` writes; opens and clicks go through :func:`record_hit`.
OUTCOME_KINDS = frozenset(MESSAGE_EVENT_KINDS) - {"opened", "clicked"}
#: Customer events for a message's own outcomes; delivery reports emit theirs in
#: :mod:`touchline.messaging.receipts`, opens and clicks in :func:`record_hit`.
OUTCOME_EVENTS: dict[str, str] = {
    "sent": "Message Sent",
    "failed": "Message Failed",
    "unsubscribed": "Message Unsubscribed",
}
#: Customer event names for a person's first open or click, by hit kind and channel.
HIT_EVENTS: dict[tuple[str, str], str] = {
    ("opened", "email"): "Email Opened",
    ("clicked", "email"): "Email Link Clicked",
    ("clicked", "sms"): "SMS Link Clicked",
}
#: The event name for a click on a message of a channel not in :data:`HIT_EVENTS`.
OTHER_CLICK_EVENT = "Message Link Clicked"
#: Longest user agent kept, as the column allows.
MAX_AGENT_CHARS = 500
_MESSAGE_ID_PREFIX = {"opened": "open", "clicked": "click"}


@dataclass(frozen=True)
class Hit:
    """One fetch of an open pixel or a click link, as the web saw it."""

    kind: HitKind
    workspace_id: str
    outbox_id: int
    at: datetime
    url: str | None = None
    ip: str | None = None
    user_agent: str | None = None


@dataclass(frozen=True)
class HitResult:
    """How a hit was recorded: its row, whether a machine's, whether it made an event."""

    event_id: int
    machine: bool
    reason: str | None
    emitted: bool


@dataclass(frozen=True)
class Engagement:
    """Counts of messages (not rows) over a period; rates leave machines out."""

    sent: int
    delivered: int
    opened: int
    clicked: int
    machine_opened: int
    machine_clicked: int

    @property
    def open_rate(self) -> float | None:
        """Messages a person opened, per message sent; None when nothing was sent."""
        return self.opened / self.sent if self.sent else None

    @property
    def click_rate(self) -> float | None:
        """Messages a person clicked through, per message sent; None when nothing was sent."""
        return self.clicked / self.sent if self.sent else None


def record_message_event(
    conn: Connection,
    *,
    workspace_id: str,
    outbox_id: int,
    kind: str,
    at: datetime,
    detail: str | None = None,
    emit: bool = True,
) -> bool:
    """Add a ``kind`` row for message ``outbox_id`` inside the caller's transaction.

    ``kind`` is one of :data:`OUTCOME_KINDS`. The customer, journey and
    channel are copied from the message. Sent, failed and unsubscribed also
    become customer events (:data:`OUTCOME_EVENTS`, once per message) that
    journeys can wait for, unless ``emit`` is False because the caller
    emitted its own; ``Message Sent`` only when a journey awaits it (see
    :func:`_awaited`). Returns False (and logs) when the workspace has no such
    message; nothing is written then.
    """
    if kind not in OUTCOME_KINDS:
        raise ValueError(f"unknown message event kind {kind!r}")
    message = _message(conn, workspace_id, outbox_id)
    if message is None:
        log.warning("no message %s in workspace %s; %s not recorded", outbox_id, workspace_id, kind)
        return False
    conn.execute(
        _INSERT_MESSAGE_EVENT,
        {
            "workspace_id": workspace_id,
            "outbox_id": outbox_id,
            "profile_id": message.profile_id,
            "journey_id": message.journey_id,
            "channel": message.channel,
            "kind": kind,
            "at": at,
            "machine": False,
            "detail": detail,
        },
    )
    name = OUTCOME_EVENTS.get(kind)
    if (
        emit
        and name is not None
        and (kind != "sent" or _awaited(conn, workspace_id, message, name))
    ):
        emit_message_event(
            conn,
            workspace_id,
            outbox_id=outbox_id,
            profile_id=message.profile_id,
            message_id=f"{kind}:{outbox_id}",
            name=name,
            properties={
                "message_id": outbox_id,
                "journey": message.journey,
                "step": message.step_id,
                "template": message.template,
                "channel": message.channel,
                "detail": detail,
            },
            now=at,
        )
    return True


def record_hit(conn: Connection, hit: Hit) -> HitResult | None:
    """Record one open or click inside the caller's write transaction.

    The hit is judged against the message's ``sent_at`` and its earlier
    clicks; a burst of clicks marks the earlier ones of the burst as
    machine too. A person's hit emits the customer event (once per message
    and kind, see the module docstring). Returns None (and logs) when the
    workspace has no such message.
    """
    message = _message(conn, hit.workspace_id, hit.outbox_id)
    if message is None:
        log.warning("%s for unknown message %s in %s", hit.kind, hit.outbox_id, hit.workspace_id)
        return None
    recent: list[Any] = []
    if hit.kind == "clicked":
        recent = list(
            conn.execute(
                select(message_events.c.id, message_events.c.at, message_events.c.url).where(
                    message_events.c.workspace_id == hit.workspace_id,
                    message_events.c.outbox_id == hit.outbox_id,
                    message_events.c.kind == "clicked",
                    message_events.c.at >= hit.at - BURST_WINDOW,
                    message_events.c.at <= hit.at + BURST_WINDOW,
                )
            )
        )
    # People's hits of this kind on this message so far: the rollup counts a message
    # as opened (clicked) while it has at least one.
    human_before = conn.execute(
        select(func.count()).where(
            message_events.c.workspace_id == hit.workspace_id,
            message_events.c.outbox_id == hit.outbox_id,
            message_events.c.kind == hit.kind,
            message_events.c.machine.is_(False),
        )
    ).scalar_one()
    agent = hit.user_agent[:MAX_AGENT_CHARS] if hit.user_agent else None
    reason = machine_reason(
        hit.kind,
        sent_at=message.sent_at,
        at=hit.at,
        user_agent=agent,
        ip=hit.ip,
        recent=[PriorHit(row.at, row.url) for row in recent],
        url=hit.url,
    )
    event_id = conn.execute(
        message_events.insert()
        .values(
            workspace_id=hit.workspace_id,
            outbox_id=hit.outbox_id,
            profile_id=message.profile_id,
            journey_id=message.journey_id,
            channel=message.channel,
            kind=hit.kind,
            at=hit.at,
            url=hit.url,
            ip=hit.ip[:64] if hit.ip else None,
            user_agent=agent,
            machine=reason is not None,
            detail=reason,
        )
        .returning(message_events.c.id)
    ).scalar_one()
    counters: dict[str, int] = {}
    if reason == "burst":
        others = [row.id for row in recent if row.url != hit.url]
        remarked = conn.execute(
            update(message_events)
            .where(message_events.c.id.in_(others), message_events.c.machine.is_(False))
            .values(machine=True, detail="burst")
        ).rowcount
        if remarked:  # what looked like a person was a scanner after all
            counters[f"machine_{hit.kind}"] = remarked
            if human_before and human_before == remarked:
                counters[hit.kind] = -1
    if reason is not None:
        counters[f"machine_{hit.kind}"] = counters.get(f"machine_{hit.kind}", 0) + 1
    elif not human_before:  # the first time a person opened, or clicked, this message
        counters[hit.kind] = 1
    bump_message(conn, hit.outbox_id, at=hit.at, **counters)
    emitted = False
    if reason is None:
        emitted = emit_message_event(
            conn,
            hit.workspace_id,
            outbox_id=hit.outbox_id,
            profile_id=message.profile_id,
            message_id=f"{_MESSAGE_ID_PREFIX[hit.kind]}:{hit.outbox_id}",
            name=hit_event_name(hit.kind, message.channel),
            properties={
                "message_id": hit.outbox_id,
                "journey": message.journey,
                "step": message.step_id,
                "template": message.template,
                "channel": message.channel,
                "url": hit.url,
            },
            now=hit.at,
        )
    return HitResult(event_id=event_id, machine=reason is not None, reason=reason, emitted=emitted)


def hit_event_name(kind: HitKind, channel: str) -> str:
    """The customer event a person's open or click of a ``channel`` message becomes."""
    name = HIT_EVENTS.get((kind, channel))
    if name is not None:
        return name
    return OTHER_CLICK_EVENT if kind == "clicked" else f"{channel.capitalize()} Opened"


def engagement(
    conn: Connection,
    workspace_id: str,
    *,
    since: datetime,
    until: datetime,
    journey_id: int | None = None,
) -> Engagement:
    """How many messages sent in ``[since, until)`` were delivered, opened and clicked.

    Counts distinct messages. A message counts as opened or clicked when a
    person did (``machine`` false); ``machine_*`` count messages that only
    machines opened or clicked. Opens and clicks are counted whenever they
    happened, so a report for last week includes this week's late opens of
    last week's messages.
    """
    sent = (
        select(message_events.c.outbox_id)
        .where(
            message_events.c.workspace_id == workspace_id,
            message_events.c.kind == "sent",
            message_events.c.at >= since,
            message_events.c.at < until,
        )
        .distinct()
    )
    if journey_id is not None:
        sent = sent.where(message_events.c.journey_id == journey_id)
    sent_ids = sent.subquery()
    e = message_events.alias("e")

    def messages(kind: str, *, machine: bool | None = None) -> Any:
        condition = e.c.kind == kind
        if machine is not None:
            condition = and_(condition, e.c.machine.is_(machine))
        return func.count(distinct(case((condition, e.c.outbox_id))))

    row = conn.execute(
        select(
            func.count(distinct(sent_ids.c.outbox_id)).label("sent"),
            messages("delivered").label("delivered"),
            messages("opened", machine=False).label("opened"),
            messages("clicked", machine=False).label("clicked"),
            messages("opened").label("any_opened"),
            messages("clicked").label("any_clicked"),
        )
        .select_from(sent_ids)
        .join(
            e,
            and_(e.c.workspace_id == workspace_id, e.c.outbox_id == sent_ids.c.outbox_id),
            isouter=True,
        )
    ).one()
    return Engagement(
        sent=row.sent,
        delivered=row.delivered,
        opened=row.opened,
        clicked=row.clicked,
        machine_opened=row.any_opened - row.opened,
        machine_clicked=row.any_clicked - row.clicked,
    )


# Statements of the per-message path, built once.
_LISTENING = (
    select(listeners.c.id)
    .where(
        listeners.c.workspace_id == bindparam("ws"),
        listeners.c.profile_id == bindparam("pid"),
        listeners.c.event_name == bindparam("name"),
    )
    .limit(1)
)
_TRIGGERED = (
    select(journeys.c.id)
    .where(
        journeys.c.workspace_id == bindparam("ws"),
        journeys.c.trigger_event == bindparam("name"),
        journeys.c.status == "active",
    )
    .limit(1)
)
_MESSAGE = (
    select(
        outbox.c.profile_id,
        outbox.c.journey_id,
        outbox.c.channel,
        outbox.c.step_id,
        outbox.c.template,
        outbox.c.sent_at,
        journeys.c.key.label("journey"),
    )
    .join(journeys, journeys.c.id == outbox.c.journey_id, isouter=True)
    .where(outbox.c.workspace_id == bindparam("ws"), outbox.c.id == bindparam("oid"))
)
_INSERT_MESSAGE_EVENT = message_events.insert()


def _awaited(conn: Connection, workspace_id: str, message: Any, name: str) -> bool:
    """Whether a journey starts on event ``name`` or the message's customer has one waiting
    for it (or exiting, or converting on it).

    ``Message Sent`` is stored only then: it would otherwise double the events of every
    send, to be ingested and run past the journeys for nothing. Two indexed lookups.
    """
    params = {"ws": workspace_id, "pid": message.profile_id, "name": name}
    if conn.execute(_LISTENING, params).first() is not None:
        return True
    return conn.execute(_TRIGGERED, params).first() is not None


def _message(conn: Connection, workspace_id: str, outbox_id: int) -> Any:
    return conn.execute(_MESSAGE, {"ws": workspace_id, "oid": outbox_id}).first()


__all__ = [
    "HIT_EVENTS",
    "MESSAGE_EVENT_KINDS",
    "OUTCOME_EVENTS",
    "OUTCOME_KINDS",
    "Engagement",
    "Hit",
    "HitResult",
    "engagement",
    "hit_event_name",
    "record_hit",
    "record_message_event",
]
