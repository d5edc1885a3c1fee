"""What else an event changes before journeys see it.

A worker runs every claimed event through :func:`observe_event` inside the same
savepoint as the journeys, so segment membership, catalog interest and date
triggers move in one transaction with the journey state: a crash leaves all of
them as they were, and the event is simply processed again.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from sqlalchemy import Connection

Observer = Callable[..., None]


def _observers() -> tuple[Observer, ...]:
    # Imported here so that each audience module can import the store freely.
    from touchline.audience.date_timers import observe_identify
    from touchline.audience.interest import observe_catalog
    from touchline.audience.segments import observe as observe_segments

    return (observe_catalog, observe_identify, observe_segments)


def observe_event(conn: Connection, row: Any, *, now: datetime) -> None:
    """Let every audience module see one event row (already stored, not yet journeyed)."""
    for observer in _observers():
        observer(conn, row, now=now)
