"""Durations (``90m``, ``1h30m``, ``7d``, ``2w``) and times of day (``10:00``)."""

from __future__ import annotations

import re
from datetime import time, timedelta

_PART = re.compile(r"(\d+)\s*(w|d|h|m|s)")
_WHOLE = re.compile(r"^\s*(?:\d+\s*[wdhms]\s*)+$")
_UNITS = {"w": "weeks", "d": "days", "h": "hours", "m": "minutes", "s": "seconds"}
_TIME = re.compile(r"^([01]?\d|2[0-3]):([0-5]\d)$")
#: Longest duration read: a wait of centuries is a typo, and would overflow when added to a date.
MAX_DURATION = timedelta(days=100 * 365)


def parse_duration(text: str) -> timedelta:
    """Parse ``'1h30m'``-style text; raise ValueError with a readable reason."""
    if not isinstance(text, str) or not _WHOLE.match(text):
        raise ValueError(
            f"{text!r} is not a duration; write a number and a unit, e.g. 30m, 1h, 7d, 2w or 1h30m"
        )
    total = timedelta()
    try:
        for amount, unit in _PART.findall(text):
            total += timedelta(**{_UNITS[unit]: int(amount)})
    except OverflowError:
        total = MAX_DURATION + MAX_DURATION  # past any date; refused just below
    if total <= timedelta():
        raise ValueError(f"{text!r} must be longer than zero")
    if total > MAX_DURATION:
        raise ValueError(f"{text!r} is longer than {MAX_DURATION.days // 365} years")
    return total


def format_duration(delta: timedelta) -> str:
    """The shortest text :func:`parse_duration` reads back as ``delta``."""
    seconds = int(delta.total_seconds())
    out = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size:
            out.append(f"{seconds // size}{unit}")
            seconds %= size
    return "".join(out) or "0s"


def parse_time_of_day(text: str) -> time:
    """Parse ``'HH:MM'`` (24-hour clock)."""
    match = _TIME.match(text) if isinstance(text, str) else None
    if not match:
        raise ValueError(f"{text!r} is not a time of day; write HH:MM, e.g. 10:00 or 18:30")
    return time(int(match.group(1)), int(match.group(2)))
