"""Which message earned an order: last touch within per-channel windows.

When a conversion event (``Order Completed`` unless the workspace names
others) is processed, the customer's latest *touch* before it wins the order:

* a click on any message, within 5 days;
* an email open, within 1 day;
* an SMS delivered (or, where the provider sends no receipts, sent), within 12 hours.

Machine opens and bot clicks (see :mod:`touchline.measure.machines`) are no
touch. The order is attributed once — ``attributions.event_id`` is unique, so
the same event processed again attributes nothing — and its value (``revenue``,
else ``total``) goes to that message's journey, step, variant and channel in
the report rollups. Windows and events are set in the workspace settings::

    attribution:
      events: [Order Completed]
      click: 5d
      open: 1d
      sms: 12h
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, select

from touchline.errors import InputError
from touchline.journeys.durations import parse_duration
from touchline.measure.rollups import bump
from touchline.store.db import insert_ignore
from touchline.store.tables import attributions, message_events, outbox

DEFAULT_EVENTS = ("Order Completed",)
DEFAULT_WINDOWS = {
    "click": timedelta(days=5),
    "open": timedelta(days=1),
    "sms": timedelta(hours=12),
}
#: Longest window a workspace may set: beyond a month "last touch" means little.
MAX_WINDOW = timedelta(days=30)


@dataclass(frozen=True)
class AttributionRules:
    """Which events convert, and how long each kind of touch counts."""

    events: frozenset[str] = frozenset(DEFAULT_EVENTS)
    click: timedelta = DEFAULT_WINDOWS["click"]
    open: timedelta = DEFAULT_WINDOWS["open"]
    sms: timedelta = DEFAULT_WINDOWS["sms"]

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> AttributionRules:
        """Read the ``attribution`` section; InputError naming the field on bad input."""
        section = settings.get("attribution")
        if section is None:
            return cls()
        if not isinstance(section, Mapping):
            raise InputError("attribution: must be an object")
        unknown = set(section) - {"events", "click", "open", "sms"}
        if unknown:
            raise InputError(f"attribution.{sorted(unknown)[0]}: unknown field")
        events = section.get("events", list(DEFAULT_EVENTS))
        if (
            not isinstance(events, list)
            or not events
            or not all(isinstance(e, str) and e for e in events)
        ):
            raise InputError("attribution.events: must be a non-empty list of event names")
        windows: dict[str, timedelta] = {}
        for name in ("click", "open", "sms"):
            raw = section.get(name)
            if raw is None:
                windows[name] = DEFAULT_WINDOWS[name]
                continue
            try:
                window = parse_duration(raw)
            except ValueError as exc:
                raise InputError(f"attribution.{name}: {exc}") from None
            if not timedelta() < window <= MAX_WINDOW:
                raise InputError(f"attribution.{name}: must be longer than 0 and at most 30d")
            windows[name] = window
        return cls(events=frozenset(events), **windows)

    @property
    def longest(self) -> timedelta:
        return max(self.click, self.open, self.sms)

    def counts(self, kind: str, channel: str, age: timedelta) -> bool:
        """Whether a touch of ``kind`` on ``channel``, ``age`` before the order, earns it."""
        if kind == "clicked":
            return age <= self.click
        if kind == "opened":
            return channel == "email" and age <= self.open
        if kind in ("delivered", "sent"):
            return channel == "sms" and age <= self.sms
        return False


@dataclass(frozen=True)
class Attribution:
    outbox_id: int
    touch: str
    touched_at: datetime


def attribute(
    conn: Connection,
    *,
    workspace_id: str,
    profile_id: int,
    event_id: int,
    at: datetime,
    value: Decimal | None,
    rules: AttributionRules,
) -> Attribution | None:
    """Give the order ``event_id`` to the customer's last qualifying touch; None if there is none.

    Runs in the caller's transaction (the one processing the event), so the
    attribution commits with the event's other effects, exactly once.
    """
    touches = conn.execute(
        select(
            message_events.c.outbox_id,
            message_events.c.kind,
            message_events.c.channel,
            message_events.c.at,
        )
        .where(
            message_events.c.workspace_id == workspace_id,
            message_events.c.profile_id == profile_id,
            message_events.c.at >= at - rules.longest,
            message_events.c.at <= at,
            message_events.c.kind.in_(("clicked", "opened", "delivered", "sent")),
            message_events.c.machine.is_(False),
        )
        .order_by(message_events.c.at.desc(), message_events.c.id.desc())
    ).all()
    for touch in touches:
        if not rules.counts(touch.kind, touch.channel, at - touch.at):
            continue
        message = conn.execute(
            select(outbox.c.journey_id, outbox.c.step_id, outbox.c.variant, outbox.c.channel).where(
                outbox.c.id == touch.outbox_id
            )
        ).first()
        if message is None:
            continue
        added = insert_ignore(
            conn,
            attributions,
            {
                "workspace_id": workspace_id,
                "event_id": event_id,
                "outbox_id": touch.outbox_id,
                "profile_id": profile_id,
                "journey_id": message.journey_id,
                "step_id": message.step_id,
                "variant": message.variant,
                "channel": message.channel,
                "touch": touch.kind,
                "touched_at": touch.at,
                "value": value,
                "at": at,
            },
            key=["event_id"],
        )
        if not added:
            return None
        bump(
            conn,
            workspace_id=workspace_id,
            at=at,
            journey_id=message.journey_id,
            step_id=message.step_id,
            variant=message.variant,
            channel=message.channel,
            attributed=1,
            attributed_revenue=value or Decimal(0),
        )
        return Attribution(touch.outbox_id, touch.kind, touch.at)
    return None


__all__ = [
    "DEFAULT_EVENTS",
    "DEFAULT_WINDOWS",
    "Attribution",
    "AttributionRules",
    "attribute",
]
