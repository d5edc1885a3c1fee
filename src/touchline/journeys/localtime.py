"""Local times of day in a customer's IANA time zone, correct across DST."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

WEEKDAY_INDEX = {"mon": 0, "tue": 1, "wed": 2, "thu": 3, "fri": 4, "sat": 5, "sun": 6}


@lru_cache(maxsize=1024)
def zone(name: str | None, fallback: str = "UTC") -> ZoneInfo:
    """The ZoneInfo for ``name``; an unknown or empty name gives ``fallback``."""
    for candidate in (name, fallback, "UTC"):
        if not candidate:
            continue
        try:
            return ZoneInfo(candidate)
        except (ZoneInfoNotFoundError, ValueError, OSError):  # OSError: a tzdata folder name
            continue
    return ZoneInfo("UTC")


def local_to_utc(day: date, at: time, tz: ZoneInfo) -> datetime:
    """The UTC instant of wall-clock ``at`` on ``day`` in ``tz``.

    A wall time skipped by a spring-forward change resolves to the same
    distance past the change (02:30 on a skipped hour is 03:30); a repeated
    wall time in autumn resolves to its first occurrence.
    """
    # PEP 495: fold=0 reads a skipped wall time with the offset in force before
    # the change, which lands past it; a repeated wall time gets its first instant.
    return datetime.combine(day, at).replace(tzinfo=tz, fold=0).astimezone(UTC)


def next_local_time(
    now: datetime, at: time, *, tz: ZoneInfo, weekdays: Sequence[str] | None = None
) -> datetime:
    """The first instant at or after ``now`` that is ``at`` local time on an allowed weekday."""
    allowed = {WEEKDAY_INDEX[d] for d in weekdays} if weekdays else set(range(7))
    local_day = now.astimezone(tz).date()
    for offset in range(8):
        day = local_day + timedelta(days=offset)
        if day.weekday() not in allowed:
            continue
        candidate = local_to_utc(day, at, tz)
        if candidate >= now:
            return candidate
    raise AssertionError("a week always contains an allowed weekday")
