"""Cron schedules in a workspace's time zone (pure).

A journey with ``trigger: {schedule: {cron: "0 10 * * MON", audience: ...}}``
enters its audience at each instant the cron expression names, read on the
workspace's wall clock. The expression is evaluated by ``cronsim``, which
follows Debian cron across daylight-saving changes:

* a time the spring change skips (02:30 on the night clocks jump from 02:00
  to 03:00) runs once, right after the change (03:00);
* a time the autumn change repeats (01:30 twice) runs once, at its first
  occurrence.

Every function takes ``after`` (or ``now``) as a parameter; nothing here
reads a clock.
"""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from cronsim import CronSim, CronSimError

#: ``audience:`` naming every customer of the workspace rather than a segment.
EVERYONE = "all"


def check_cron(expression: str) -> str:
    """``expression`` with its fields normalised to single spaces; ValueError says what is wrong.

    Five fields (minute, hour, day of month, month, day of week) as cron reads
    them, with names (``MON``, ``JAN``), ranges, steps, ``L`` and ``#``.
    """
    fields = expression.split()
    if len(fields) != 5:
        raise ValueError(
            f"{expression!r} is not a cron expression: it needs 5 fields "
            "(minute hour day-of-month month day-of-week), e.g. '0 10 * * MON'"
        )
    normal = " ".join(fields)
    try:
        CronSim(normal, datetime(2000, 1, 1, tzinfo=UTC))
    except CronSimError as exc:
        raise ValueError(f"{expression!r} is not a cron expression: {exc}") from None
    return normal


def next_run(expression: str, *, after: datetime, tz: ZoneInfo) -> datetime:
    """The first instant strictly after ``after`` that the expression names in ``tz``, in UTC."""
    local = after.astimezone(tz)
    found = next(CronSim(expression, local))
    return found.astimezone(UTC)


def schedule_message_id(journey: str, run_at: datetime, profile_id: int) -> str:
    """The ``messageId`` of one customer's event for one run: the same on every retry."""
    return f"schedule:{journey}:{run_at.astimezone(UTC):%Y%m%dT%H%M%SZ}:{profile_id}"
