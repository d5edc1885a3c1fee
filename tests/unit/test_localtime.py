"""Unit tests for local times of day across time zones and DST (touchline.journeys.localtime)."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from touchline.journeys.localtime import local_to_utc, next_local_time, zone

BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")
TOKYO = ZoneInfo("Asia/Tokyo")
TEN = time(10, 0)


# -- zone ---------------------------------------------------------------------------


def test_zone_returns_the_named_zone() -> None:
    """A known IANA name gives that zone, not the fallback."""
    # given / when
    tz = zone("Europe/Berlin", "Asia/Tokyo")

    # then
    assert tz == BERLIN


@pytest.mark.parametrize("name", [None, ""], ids=["none", "empty"])
def test_zone_without_a_name_gives_the_fallback(name: str | None) -> None:
    """A missing or empty name gives the fallback zone."""
    # given / when
    tz = zone(name, "Asia/Tokyo")

    # then
    assert tz == TOKYO


@pytest.mark.parametrize(
    "name",
    ["Mars/Olympus_Mons", "europe/berlin", "Europe/Berlin ", "../../etc/passwd", "/etc/localtime"],
    ids=["unknown", "wrong-case", "trailing-space", "relative-path", "absolute-path"],
)
def test_zone_with_an_unknown_name_gives_the_fallback(name: str) -> None:
    """A name zoneinfo cannot load (unknown, mistyped, a path) gives the fallback, never an error."""
    # given / when
    tz = zone(name, "Asia/Tokyo")

    # then
    assert tz == TOKYO


@pytest.mark.parametrize("fallback", ["Nowhere/Atall", ""], ids=["unknown", "empty"])
def test_zone_falls_back_to_utc_when_the_fallback_is_unusable_too(fallback: str) -> None:
    """When neither the name nor the fallback loads, the zone is UTC."""
    # given / when
    tz = zone("Mars/Olympus_Mons", fallback)

    # then
    assert tz == ZoneInfo("UTC")


def test_zone_fallback_defaults_to_utc() -> None:
    """Without an explicit fallback an unknown name gives UTC."""
    # given / when
    tz = zone("Mars/Olympus_Mons")

    # then
    assert tz == ZoneInfo("UTC")


@pytest.mark.parametrize("name", ["Europe", "America"])
def test_zone_with_a_region_folder_name_gives_the_fallback(name: str) -> None:
    """A region name that is a tzdata folder, not a zone, gives the fallback like any unknown name."""
    # given / when
    tz = zone(name, "Asia/Tokyo")

    # then
    assert tz == TOKYO


# -- local_to_utc -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("day", "expected"),
    [
        (date(2024, 1, 15), datetime(2024, 1, 15, 9, 0, tzinfo=UTC)),
        (date(2024, 7, 15), datetime(2024, 7, 15, 8, 0, tzinfo=UTC)),
    ],
    ids=["winter-cet", "summer-cest"],
)
def test_local_to_utc_applies_the_offset_in_force_on_that_day(
    day: date, expected: datetime
) -> None:
    """10:00 in Berlin is 09:00 UTC in winter and 08:00 UTC in summer."""
    # given / when
    instant = local_to_utc(day, TEN, BERLIN)

    # then
    assert instant == expected
    assert instant.tzinfo is UTC


def test_local_to_utc_resolves_a_skipped_time_past_the_spring_gap() -> None:
    """02:30 on Berlin's spring-forward night (02:00 -> 03:00) is 03:30 CEST, 01:30 UTC."""
    # given
    day = date(2024, 3, 31)

    # when
    instant = local_to_utc(day, time(2, 30), BERLIN)

    # then
    assert instant == datetime(2024, 3, 31, 1, 30, tzinfo=UTC)
    assert instant.astimezone(BERLIN).time() == time(3, 30)


def test_local_to_utc_resolves_a_repeated_time_to_its_first_occurrence() -> None:
    """02:30 on Berlin's fall-back night happens twice; the first (CEST, 00:30 UTC) is used."""
    # given
    day = date(2024, 10, 27)

    # when
    instant = local_to_utc(day, time(2, 30), BERLIN)

    # then
    assert instant == datetime(2024, 10, 27, 0, 30, tzinfo=UTC)


def test_local_to_utc_handles_new_york_spring_gap() -> None:
    """02:30 on New York's spring-forward night is 03:30 EDT, 07:30 UTC."""
    # given
    day = date(2024, 3, 10)

    # when
    instant = local_to_utc(day, time(2, 30), NEW_YORK)

    # then
    assert instant == datetime(2024, 3, 10, 7, 30, tzinfo=UTC)


# -- next_local_time ----------------------------------------------------------------


def test_next_local_time_later_today() -> None:
    """Before the time of day, the wait ends at that time the same local day."""
    # given: 09:00 in Berlin (CEST) on Wednesday 2024-05-01
    now = datetime(2024, 5, 1, 7, 0, tzinfo=UTC)

    # when
    due = next_local_time(now, TEN, tz=BERLIN)

    # then
    assert due == datetime(2024, 5, 1, 8, 0, tzinfo=UTC)


def test_next_local_time_exactly_at_the_time_is_now() -> None:
    """Exactly at the local time, the wait ends at once (the result equals now)."""
    # given: 10:00:00 in Berlin
    now = datetime(2024, 5, 1, 8, 0, tzinfo=UTC)

    # when
    due = next_local_time(now, TEN, tz=BERLIN)

    # then
    assert due == now


def test_next_local_time_just_after_the_time_is_tomorrow() -> None:
    """One microsecond past the local time, the wait ends at that time the next day."""
    # given
    now = datetime(2024, 5, 1, 8, 0, 0, 1, tzinfo=UTC)

    # when
    due = next_local_time(now, TEN, tz=BERLIN)

    # then
    assert due == datetime(2024, 5, 2, 8, 0, tzinfo=UTC)


def test_next_local_time_returns_aware_utc() -> None:
    """The result is an aware datetime in UTC whatever the customer's zone."""
    # given
    now = datetime(2024, 5, 1, 7, 0, tzinfo=UTC)

    # when
    due = next_local_time(now, TEN, tz=TOKYO)

    # then
    assert due.tzinfo is UTC
    assert due.astimezone(TOKYO).time() == TEN


def test_next_local_time_accepts_now_in_any_offset() -> None:
    """The same instant written with another offset gives the same result."""
    # given
    now_utc = datetime(2024, 5, 1, 7, 0, tzinfo=UTC)
    now_elsewhere = now_utc.astimezone(timezone(timedelta(hours=-7)))

    # when
    due_utc = next_local_time(now_utc, TEN, tz=BERLIN)
    due_elsewhere = next_local_time(now_elsewhere, TEN, tz=BERLIN)

    # then
    assert due_elsewhere == due_utc == datetime(2024, 5, 1, 8, 0, tzinfo=UTC)


def test_next_local_time_skips_days_not_allowed() -> None:
    """On a Friday afternoon with weekdays mon-fri, the wait ends Monday morning."""
    # given: Friday 2024-05-03 14:00 UTC
    now = datetime(2024, 5, 3, 14, 0, tzinfo=UTC)

    # when
    due = next_local_time(
        now, time(9, 0), tz=ZoneInfo("UTC"), weekdays=["mon", "tue", "wed", "thu", "fri"]
    )

    # then
    assert due == datetime(2024, 5, 6, 9, 0, tzinfo=UTC)


def test_next_local_time_allowed_day_before_the_time_is_today() -> None:
    """On an allowed day before the time, the wait ends the same day."""
    # given: Wednesday 2024-05-01 06:00 UTC
    now = datetime(2024, 5, 1, 6, 0, tzinfo=UTC)

    # when
    due = next_local_time(now, time(9, 0), tz=ZoneInfo("UTC"), weekdays=["wed"])

    # then
    assert due == datetime(2024, 5, 1, 9, 0, tzinfo=UTC)


def test_next_local_time_wraps_a_full_week_to_the_same_weekday() -> None:
    """On the only allowed weekday after the time has passed, the wait ends seven days later."""
    # given: Saturday 2024-05-04 11:00 UTC, only Saturdays allowed
    now = datetime(2024, 5, 4, 11, 0, tzinfo=UTC)

    # when
    due = next_local_time(now, TEN, tz=ZoneInfo("UTC"), weekdays=["sat"])

    # then
    assert due == datetime(2024, 5, 11, 10, 0, tzinfo=UTC)


def test_next_local_time_wraps_from_sunday_to_monday() -> None:
    """The week wraps: late on Sunday with only Mondays allowed, the wait ends the next day."""
    # given: Sunday 2024-05-05 20:00 UTC
    now = datetime(2024, 5, 5, 20, 0, tzinfo=UTC)

    # when
    due = next_local_time(now, TEN, tz=ZoneInfo("UTC"), weekdays=["mon"])

    # then
    assert due == datetime(2024, 5, 6, 10, 0, tzinfo=UTC)


def test_next_local_time_judges_the_weekday_in_the_local_zone() -> None:
    """Sunday 23:30 UTC is already Monday in Tokyo, so Monday 09:00 JST is hours away, not a week."""
    # given: Sunday 2024-05-05 23:30 UTC = Monday 08:30 JST
    now = datetime(2024, 5, 5, 23, 30, tzinfo=UTC)

    # when
    due = next_local_time(now, time(9, 0), tz=TOKYO, weekdays=["mon"])

    # then
    assert due == datetime(2024, 5, 6, 0, 0, tzinfo=UTC)


def test_next_local_time_on_a_skipped_hour_lands_past_the_gap() -> None:
    """Waiting for 02:30 on Berlin's spring-forward night ends at 03:30 CEST (01:30 UTC)."""
    # given: Saturday 2024-03-30 12:00 UTC, the day before the change
    now = datetime(2024, 3, 30, 12, 0, tzinfo=UTC)

    # when
    due = next_local_time(now, time(2, 30), tz=BERLIN)

    # then
    assert due == datetime(2024, 3, 31, 1, 30, tzinfo=UTC)


def test_next_local_time_inside_the_spring_gap_lands_past_it() -> None:
    """At 03:15 CEST right after the jump, a 02:30 wait ends 15 minutes later at 03:30 CEST."""
    # given: 01:15 UTC on 2024-03-31 = 03:15 CEST
    now = datetime(2024, 3, 31, 1, 15, tzinfo=UTC)

    # when
    due = next_local_time(now, time(2, 30), tz=BERLIN)

    # then
    assert due == datetime(2024, 3, 31, 1, 30, tzinfo=UTC)


def test_next_local_time_on_a_repeated_hour_takes_the_first_occurrence() -> None:
    """Waiting for 02:30 on Berlin's fall-back night ends at the first 02:30 (CEST, 00:30 UTC)."""
    # given: Saturday 2024-10-26 12:00 UTC
    now = datetime(2024, 10, 26, 12, 0, tzinfo=UTC)

    # when
    due = next_local_time(now, time(2, 30), tz=BERLIN)

    # then
    assert due == datetime(2024, 10, 27, 0, 30, tzinfo=UTC)


def test_next_local_time_after_the_first_repeated_occurrence_waits_a_day() -> None:
    """Once the first 02:30 has passed, the second 02:30 that night does not count again."""
    # given: 00:45 UTC on 2024-10-27 = 02:45 CEST, after the first 02:30
    now = datetime(2024, 10, 27, 0, 45, tzinfo=UTC)

    # when
    due = next_local_time(now, time(2, 30), tz=BERLIN)

    # then: 02:30 CET on the 28th
    assert due == datetime(2024, 10, 28, 1, 30, tzinfo=UTC)


@pytest.mark.parametrize(
    ("tz", "now", "expected"),
    [
        (
            BERLIN,
            datetime(2024, 3, 30, 12, 0, tzinfo=UTC),
            datetime(2024, 3, 31, 8, 0, tzinfo=UTC),
        ),
        (
            BERLIN,
            datetime(2024, 10, 26, 12, 0, tzinfo=UTC),
            datetime(2024, 10, 27, 9, 0, tzinfo=UTC),
        ),
        (
            NEW_YORK,
            datetime(2024, 3, 9, 20, 0, tzinfo=UTC),
            datetime(2024, 3, 10, 14, 0, tzinfo=UTC),
        ),
        (
            NEW_YORK,
            datetime(2024, 11, 2, 20, 0, tzinfo=UTC),
            datetime(2024, 11, 3, 15, 0, tzinfo=UTC),
        ),
    ],
    ids=["berlin-spring", "berlin-autumn", "new-york-spring", "new-york-autumn"],
)
def test_next_local_time_keeps_wall_clock_across_dst(
    tz: ZoneInfo, now: datetime, expected: datetime
) -> None:
    """10:00 the morning after a DST change is still 10:00 on the wall clock (UTC shifts by an hour)."""
    # given / when
    due = next_local_time(now, TEN, tz=tz)

    # then
    assert due == expected
    assert due.astimezone(tz).time() == TEN
