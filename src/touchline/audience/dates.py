"""Date triggers: when a date a profile holds is due, in the customer's local time (pure).

A journey with ``trigger: {date: {trait: birthday, at: "10:00", offset: -3d}}``
fires for each customer at 10:00 of *their* wall clock (``profiles.timezone``,
else the workspace's zone), three days before each birthday. This module
answers, with no database and no clock of its own:

* which date a profile holds for a trait (:func:`trait_date`): the
  ``birthday`` and ``created_at`` columns, or a custom trait written as an ISO
  date or date-time;
* the occurrences of that date (:func:`anchors`): the date itself for
  ``repeat: once``; each later anniversary for ``repeat: yearly``, where a
  29 February falls on 28 February in years without one (the day still
  belongs to that year; 1 March would move a birthday into the next month);
* the occurrence a timer should wait for now (:func:`plan`): the first one not
  yet handled whose due instant is not older than the trigger's ``grace``.

Local times go through :func:`touchline.journeys.localtime.local_to_utc`, as
``wait_until`` does: a time skipped by a spring daylight-saving change lands
the same distance past the change (02:30 becomes 03:30), and a time repeated
in autumn is taken at its first occurrence, so a customer never gets two.
"""

from __future__ import annotations

import calendar
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from touchline.journeys.localtime import local_to_utc
from touchline.journeys.spec import DATE_EVENT, DateTrigger

#: Traits read from a ``profiles`` column rather than from the custom traits.
COLUMN_TRAITS = ("birthday", "created_at")
__all__ = ["DATE_EVENT", "Occurrence", "anniversary", "anchors", "plan", "settle", "trait_date"]

# An offset is at most a year (spec.DateTrigger), so the occurrence due around any
# instant lies within this many years of it.
_YEARS_AROUND = 2


@dataclass(frozen=True)
class Occurrence:
    """One due date of a trigger for one customer."""

    anchor: date  # the day the trait names in that year (the birthday itself)
    fire_on: date  # anchor + offset, on the customer's calendar
    due_at: datetime  # ``at`` on ``fire_on`` in the customer's zone, in UTC


def parse_date(value: Any, tz: ZoneInfo) -> date | None:
    """A calendar date from a trait value, or None when it holds none.

    A date, or ISO text ``YYYY-MM-DD``, is taken as written. A date-time with
    an offset (or ``Z``) is a moment, read on the customer's calendar; one
    without an offset gives its date as written.
    """
    if isinstance(value, datetime):
        return value.astimezone(tz).date() if value.tzinfo is not None else value.date()
    if isinstance(value, date):
        return value
    if not isinstance(value, str) or not 10 <= len(value.strip()) <= 40:
        return None
    text = value.strip()
    try:
        if len(text) == 10:
            return date.fromisoformat(text)
        return parse_date(datetime.fromisoformat(text.replace("Z", "+00:00")), tz)
    except ValueError:
        return None


def trait_date(profile: Any, trait: str, tz: ZoneInfo) -> date | None:
    """The date a ``profiles`` row holds for ``trait`` (a column, else a custom trait)."""
    if trait in COLUMN_TRAITS:
        return parse_date(getattr(profile, trait), tz)
    traits = profile.traits
    if not isinstance(traits, Mapping):
        return None
    return parse_date(traits.get(trait), tz)


def anniversary(value: date, year: int) -> date:
    """``value``'s day and month in ``year``; 29 February becomes 28 February off leap years."""
    if value.month == 2 and value.day == 29 and not calendar.isleap(year):
        return date(year, 2, 28)
    return value.replace(year=year)


def anchors(rule: DateTrigger, value: date, *, around: date) -> Iterator[date]:
    """The occurrences of ``value`` worth checking near ``around``, in order.

    ``once`` has one: the date itself. ``yearly`` has each anniversary after the
    date's own year (the day itself is the event, not its anniversary): from a
    couple of years before ``around`` on, since an offset moves a due day by at
    most a year.
    """
    if rule.repeat == "once":
        yield value
        return
    first = max(value.year + 1, around.year - _YEARS_AROUND)
    for year in range(first, max(first, around.year + _YEARS_AROUND) + 1):
        if year > date.max.year:
            return
        yield anniversary(value, year)


def occurrence(rule: DateTrigger, anchor: date, tz: ZoneInfo) -> Occurrence | None:
    """When ``anchor`` is due: ``at`` local time, ``offset`` days from it; None off the calendar."""
    try:
        fire_on = anchor + timedelta(days=rule.offset_days)
    except OverflowError:
        return None
    return Occurrence(anchor=anchor, fire_on=fire_on, due_at=local_to_utc(fire_on, rule.at, tz))


def plan(
    rule: DateTrigger, value: date, *, tz: ZoneInfo, handled: date | None, now: datetime
) -> Occurrence | None:
    """The occurrence a customer's timer waits for at ``now``, or None if none is left.

    That is the first occurrence after ``handled`` (the last one fired or
    skipped; ``once`` has nothing left once one was) whose due instant is no
    older than ``now - grace``. So a timer computed a little after its due
    time still fires, late; one older than the grace is passed over.
    """
    if rule.repeat == "once" and handled is not None:
        return None
    earliest = now - rule.grace
    for anchor in anchors(rule, value, around=now.astimezone(tz).date()):
        if handled is not None and anchor <= handled:
            continue
        found = occurrence(rule, anchor, tz)
        if found is not None and found.due_at >= earliest:
            return found
    return None


def settle(
    rule: DateTrigger,
    value: date | None,
    *,
    tz: ZoneInfo,
    handled: date | None,
    held: tuple[date, datetime] | None,
    now: datetime,
) -> tuple[date | None, Occurrence | None]:
    """``(passed, current)`` for a customer's timer at ``now``.

    ``held`` is the ``(occurrence, due_at)`` the timer waited for. If it went by
    more than ``grace`` ago and still follows from the customer's data, it is
    ``passed``: never fired, to be recorded as late. ``current`` is what the
    timer holds from now on; when its ``due_at`` is not after ``now`` it is
    due, and the caller fires it. A timer whose data changed (another
    birthday, another zone) simply moves to ``current``.
    """
    if value is None:
        return None, None
    passed = None
    if held is not None and now - held[1] > rule.grace:
        was = plan(rule, value, tz=tz, handled=handled, now=held[1])
        if was is not None and (was.anchor, was.due_at) == held:
            passed = handled = was.anchor
    return passed, plan(rule, value, tz=tz, handled=handled, now=now)


def date_message_id(journey: str, profile_id: int, anchor: date) -> str:
    """The ``messageId`` of the event one occurrence stores: the same however often it is tried."""
    return f"date:{journey}:{profile_id}:{anchor.isoformat()}"


def date_properties(
    rule: DateTrigger, *, journey: str, value: date, found: Occurrence
) -> dict[str, Any]:
    """What the stored event says: the journey, the trait, its date and this occurrence."""
    properties: dict[str, Any] = {
        "journey": journey,
        "trait": rule.trait,
        "date": value.isoformat(),
        "occurrence": found.anchor.isoformat(),
        "fire_on": found.fire_on.isoformat(),
        "offset_days": rule.offset_days,
    }
    if rule.repeat == "yearly":
        properties["years"] = found.anchor.year - value.year  # an age, or years as a customer
    return properties
