"""Date and schedule triggers as pure functions: occurrences, local times, cron, the format.

Every test uses literal datetimes; nothing reads a clock or a database.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from types import SimpleNamespace
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from touchline.audience.dates import (
    anniversary,
    date_message_id,
    date_properties,
    parse_date,
    plan,
    settle,
    trait_date,
)
from touchline.audience.schedules import check_cron, next_run, schedule_message_id
from touchline.errors import SpecError
from touchline.journeys.engine import (
    EntryHistory,
    EventView,
    InstanceState,
    Log,
    ProfileView,
    Send,
    Unsubscribe,
    decide_entry,
    enter,
)
from touchline.journeys.loader import load_journey_text
from touchline.journeys.spec import DATE_EVENT, SCHEDULE_EVENT, DateTrigger, JourneySpec

MOSCOW = ZoneInfo("Europe/Moscow")
NEW_YORK = ZoneInfo("America/New_York")
KAMCHATKA = ZoneInfo("Asia/Kamchatka")


def rule(**fields: Any) -> DateTrigger:
    return DateTrigger.model_validate({"trait": "birthday", "at": "10:00", **fields})


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)  # type: ignore[misc]


# -- the calendar ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("born", "year", "expected"),
    [
        (date(1992, 2, 29), 2028, date(2028, 2, 29)),  # a leap year keeps the day
        (date(1992, 2, 29), 2026, date(2026, 2, 28)),  # otherwise the last day of February
        (date(1991, 3, 13), 2026, date(2026, 3, 13)),
        (date(1990, 12, 31), 2027, date(2027, 12, 31)),
    ],
)
def test_anniversary_puts_29_february_on_the_28th_in_common_years(
    born: date, year: int, expected: date
) -> None:
    """A leap-day birthday stays in February: 28 February when the year has no 29th."""
    assert anniversary(born, year) == expected


def test_leap_day_birthday_fires_on_28_february_then_29_february() -> None:
    """Born on 29 February: greeted on 28 February 2027 and on 29 February 2028."""
    yearly = rule()
    first = plan(yearly, date(1996, 2, 29), tz=MOSCOW, handled=None, now=utc(2027, 1, 1))
    assert first is not None
    assert first.anchor == date(2027, 2, 28)
    assert first.due_at == utc(2027, 2, 28, 7, 0)  # 10:00 in Moscow (UTC+3)
    second = plan(yearly, date(1996, 2, 29), tz=MOSCOW, handled=first.anchor, now=first.due_at)
    assert second is not None and second.anchor == date(2028, 2, 29)


@pytest.mark.parametrize(
    ("tz", "due"),
    [
        (MOSCOW, utc(2026, 3, 10, 7, 0)),  # UTC+3 all year
        (NEW_YORK, utc(2026, 3, 10, 14, 0)),  # EDT (UTC-4) since 8 March
        (KAMCHATKA, utc(2026, 3, 9, 22, 0)),  # UTC+12: the day before, in UTC
    ],
)
def test_birthday_three_days_ahead_at_10_local_time(tz: ZoneInfo, due: datetime) -> None:
    """`offset: -3d, at: 10:00` is 10:00 on the customer's own clock, three days before."""
    found = plan(rule(offset="-3d"), date(1991, 3, 13), tz=tz, handled=None, now=utc(2026, 1, 5))

    assert found is not None
    assert (found.anchor, found.fire_on, found.due_at) == (
        date(2026, 3, 13),
        date(2026, 3, 10),
        due,
    )


def test_offset_crosses_the_new_year() -> None:
    """A birthday on 2 January, three days ahead, fires on 30 December of the year before."""
    found = plan(
        rule(offset="-3d"), date(1980, 1, 2), tz=MOSCOW, handled=None, now=utc(2026, 12, 1)
    )

    assert found is not None
    assert (found.anchor, found.fire_on) == (date(2027, 1, 2), date(2026, 12, 30))


def test_skipped_spring_hour_lands_past_the_change() -> None:
    """02:30 does not exist in New York on 8 March 2026: it becomes 03:30 EDT (07:30 UTC)."""
    found = plan(rule(at="02:30"), date(1985, 3, 8), tz=NEW_YORK, handled=None, now=utc(2026, 3, 1))

    assert found is not None and found.due_at == utc(2026, 3, 8, 7, 30)


def test_repeated_autumn_hour_fires_at_its_first_occurrence() -> None:
    """01:30 happens twice in New York on 1 November 2026: the first (EDT, 05:30 UTC) counts."""
    found = plan(
        rule(at="01:30"), date(1985, 11, 1), tz=NEW_YORK, handled=None, now=utc(2026, 10, 1)
    )

    assert found is not None and found.due_at == utc(2026, 11, 1, 5, 30)


def test_yearly_moves_to_next_year_once_handled() -> None:
    """After this year's birthday fired, the timer waits for next year's."""
    found = plan(
        rule(), date(1991, 3, 13), tz=MOSCOW, handled=date(2026, 3, 13), now=utc(2026, 3, 13, 7)
    )

    assert found is not None and found.anchor == date(2027, 3, 13)


def test_yearly_never_fires_on_the_date_itself() -> None:
    """Yearly counts anniversaries: a sign-up date's first occurrence is a year later."""
    found = plan(
        rule(trait="created_at"), date(2026, 5, 1), tz=MOSCOW, handled=None, now=utc(2026, 5, 1)
    )

    assert found is not None and found.anchor == date(2027, 5, 1)


def test_once_fires_a_week_after_sign_up_and_never_again() -> None:
    """`repeat: once, offset: 7d`: one occurrence, seven days after the date."""
    weekly = rule(trait="created_at", offset="1w", repeat="once")
    found = plan(weekly, date(2026, 5, 1), tz=MOSCOW, handled=None, now=utc(2026, 5, 1, 12))

    assert found is not None
    assert (found.fire_on, found.due_at) == (date(2026, 5, 8), utc(2026, 5, 8, 7))
    assert plan(weekly, date(2026, 5, 1), tz=MOSCOW, handled=found.anchor, now=found.due_at) is None


def test_an_occurrence_within_grace_is_still_due() -> None:
    """Twenty hours after 10:00 the birthday is still due (grace 1d); three days after it is not."""
    born = date(1991, 3, 13)
    late = plan(rule(), born, tz=MOSCOW, handled=None, now=utc(2026, 3, 14, 3))
    assert late is not None and late.anchor == date(2026, 3, 13)

    missed = plan(rule(), born, tz=MOSCOW, handled=None, now=utc(2026, 3, 16, 7))
    assert missed is not None and missed.anchor == date(2027, 3, 13)


def test_once_is_gone_after_its_grace() -> None:
    """A one-off date older than its grace leaves nothing to fire (a journey applied later)."""
    weekly = rule(trait="created_at", offset="7d", repeat="once", grace="2h")

    assert plan(weekly, date(2025, 1, 1), tz=MOSCOW, handled=None, now=utc(2026, 1, 1)) is None


def test_settle_records_an_occurrence_the_timer_held_too_long() -> None:
    """A valid timer whose due time went by more than the grace ago is `passed`, not fired."""
    held = (date(2026, 3, 13), utc(2026, 3, 13, 7))

    passed, current = settle(
        rule(), date(1991, 3, 13), tz=MOSCOW, handled=None, held=held, now=utc(2026, 3, 16)
    )

    assert passed == date(2026, 3, 13)
    assert current is not None and current.anchor == date(2027, 3, 13)


def test_settle_moves_a_timer_whose_data_changed_without_recording_a_skip() -> None:
    """A new zone (or birthday) moves the timer; the old due time was never owed."""
    held = (date(2026, 3, 13), utc(2026, 3, 13, 7))  # 10:00 Moscow

    passed, current = settle(
        rule(), date(1991, 3, 13), tz=NEW_YORK, handled=None, held=held, now=utc(2026, 3, 13, 8)
    )

    assert passed is None
    assert current is not None and current.due_at == utc(2026, 3, 13, 14)  # 10:00 EDT


def test_settle_fires_a_timer_within_grace() -> None:
    """A timer an hour late is simply due: `current` is the held occurrence."""
    held = (date(2026, 3, 13), utc(2026, 3, 13, 7))

    passed, current = settle(
        rule(), date(1991, 3, 13), tz=MOSCOW, handled=None, held=held, now=utc(2026, 3, 13, 8)
    )

    assert passed is None
    assert current is not None and current.due_at == held[1]


# -- reading dates from profiles ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "tz", "expected"),
    [
        ("1991-03-13", MOSCOW, date(1991, 3, 13)),
        ("2026-03-01T22:30:00Z", MOSCOW, date(2026, 3, 2)),  # 01:30 on the 2nd in Moscow
        ("2026-03-01T22:30:00Z", NEW_YORK, date(2026, 3, 1)),
        ("2026-03-01T22:30:00", MOSCOW, date(2026, 3, 1)),  # no offset: as written
        (date(2000, 1, 1), MOSCOW, date(2000, 1, 1)),
        ("soon", MOSCOW, None),
        ("2026-13-01", MOSCOW, None),
        (20260301, MOSCOW, None),
        (None, MOSCOW, None),
    ],
)
def test_parse_date(raw: Any, tz: ZoneInfo, expected: date | None) -> None:
    """ISO dates as written; moments with an offset on the customer's calendar; junk is no date."""
    assert parse_date(raw, tz) == expected


def test_trait_date_reads_columns_then_custom_traits() -> None:
    """birthday and created_at come from columns; any other name from the custom traits."""
    person = SimpleNamespace(
        birthday=date(1991, 3, 13),
        created_at=utc(2026, 5, 1, 21, 30),
        traits={"createdAt": "2020-02-02", "birthday": "1900-01-01"},
    )

    assert trait_date(person, "birthday", MOSCOW) == date(1991, 3, 13)
    assert trait_date(person, "created_at", MOSCOW) == date(2026, 5, 2)  # 00:30 in Moscow
    assert trait_date(person, "createdAt", MOSCOW) == date(2020, 2, 2)
    assert trait_date(person, "renewal", MOSCOW) is None


def test_event_ids_and_properties_are_stable() -> None:
    """The same occurrence always gives the same messageId, which is what makes firing once."""
    found = plan(
        rule(offset="-3d"), date(1991, 3, 13), tz=MOSCOW, handled=None, now=utc(2026, 1, 1)
    )
    assert found is not None

    assert date_message_id("birthday", 42, found.anchor) == "date:birthday:42:2026-03-13"
    assert date_properties(
        rule(offset="-3d"), journey="birthday", value=date(1991, 3, 13), found=found
    ) == {
        "journey": "birthday",
        "trait": "birthday",
        "date": "1991-03-13",
        "occurrence": "2026-03-13",
        "fire_on": "2026-03-10",
        "offset_days": -3,
        "years": 35,
    }
    assert (
        schedule_message_id("digest", utc(2026, 3, 2, 7), 42)
        == "schedule:digest:20260302T070000Z:42"
    )


# -- cron ---------------------------------------------------------------------------------------


def test_cron_runs_on_the_workspace_clock_across_spring_forward() -> None:
    """Mondays at 10:00 in New York: 15:00 UTC in winter, 14:00 UTC after 8 March."""
    first = next_run("0 10 * * MON", after=utc(2026, 3, 1), tz=NEW_YORK)
    second = next_run("0 10 * * MON", after=first, tz=NEW_YORK)

    assert first == utc(2026, 3, 2, 15)
    assert second == utc(2026, 3, 9, 14)


def test_cron_in_a_skipped_hour_runs_right_after_the_change() -> None:
    """02:30 daily: on 8 March 2026 (no 02:30 in New York) it runs at 03:00 EDT, like cron."""
    found = next_run("30 2 * * *", after=utc(2026, 3, 7, 12), tz=NEW_YORK)

    assert found == utc(2026, 3, 8, 7, 0)


def test_cron_in_a_repeated_hour_runs_once() -> None:
    """01:30 daily: on 1 November 2026 it runs once, at the first 01:30 (EDT)."""
    first = next_run("30 1 * * *", after=utc(2026, 10, 31, 12), tz=NEW_YORK)
    second = next_run("30 1 * * *", after=first, tz=NEW_YORK)

    assert first == utc(2026, 11, 1, 5, 30)
    assert second == utc(2026, 11, 2, 6, 30)  # EST from now on


def test_cron_is_strictly_after() -> None:
    """A run at exactly 10:00 is followed by the next day's, never by itself."""
    assert next_run("0 10 * * *", after=utc(2026, 3, 2, 7), tz=MOSCOW) == utc(2026, 3, 3, 7)


@pytest.mark.parametrize("bad", ["", "0 10 * *", "61 * * * *", "0 10 * * FUNDAY", "* * * * * *"])
def test_bad_cron_is_refused_with_a_reason(bad: str) -> None:
    """Five fields, each within range: anything else is a ValueError naming the expression."""
    with pytest.raises(ValueError, match="cron expression"):
        check_cron(bad)


# -- the journey format -----------------------------------------------------------------------


def load(trigger: str) -> JourneySpec:
    text = f"journey: j\ntrigger:\n{trigger}steps:\n  - send: {{channel: email, template: t}}\n"
    return load_journey_text(text, file="j.yaml")


def problems(trigger: str) -> list[tuple[int, str, str]]:
    with pytest.raises(SpecError) as info:
        load(trigger)
    return [(p.line, p.field, p.message) for p in info.value.problems]


def test_date_trigger_loads_and_names_its_event() -> None:
    """A date trigger is entered through `Date Reached`; defaults fill offset, repeat, grace."""
    spec = load("  date: {trait: birthday, at: '10:00'}\n")

    assert spec.trigger.kind == "date"
    assert spec.trigger.event_name == DATE_EVENT
    assert spec.trigger.date is not None
    assert spec.trigger.date.offset_days == 0
    assert spec.trigger.date.repeat == "yearly"
    assert spec.trigger.date.grace == timedelta(days=1)


def test_schedule_trigger_loads_and_normalises_its_cron() -> None:
    """A schedule is entered through `Schedule Reached`; the cron text is kept in normal form."""
    spec = load("  schedule: {cron: '0  10 * *   MON', audience: vip}\n")

    assert spec.trigger.event_name == SCHEDULE_EVENT
    assert spec.trigger.schedule is not None
    assert spec.trigger.schedule.cron == "0 10 * * MON"


@pytest.mark.parametrize(
    ("trigger", "field", "words"),
    [
        ("  date:\n    trait: birthday\n    at: '10:00'\n    offset: 3 days\n", "trigger.date.offset", "-3d"),
        ("  date:\n    trait: birth-day\n    at: '10:00'\n", "trigger.date.trait", "custom trait"),
        ("  date:\n    trait: birthday\n    at: '25:00'\n", "trigger.date.at", "HH:MM"),
        ("  date:\n    trait: birthday\n", "trigger.date.at", "required"),
        ("  date:\n    trait: birthday\n    at: '10:00'\n    grace: 60d\n", "trigger.date.grace", "30d"),
        ("  date:\n    trait: birthday\n    at: '10:00'\n    offset: 400d\n", "trigger.date.offset", "366"),
        ("  date:\n    trait: birthday\n    at: '10:00'\n    repeat: monthly\n", "trigger.date.repeat", "yearly"),
        ("  schedule:\n    cron: '0 25 * * *'\n    audience: all\n", "trigger.schedule.cron", "cron"),
        ("  schedule:\n    cron: '0 10 * * *'\n    audience: Big Spenders\n", "trigger.schedule.audience", "segment key"),
        ("  event: E\n  date: {trait: birthday, at: '10:00'}\n", "trigger", "exactly one"),
    ],
)  # fmt: skip
def test_bad_time_triggers_name_line_and_field(trigger: str, field: str, words: str) -> None:
    """Each mistake in a date or schedule trigger is placed on its field with a reason."""
    found = problems(trigger)

    assert len(found) == 1, found
    line, where, message = found[0]
    assert where == field
    assert line >= 2
    assert words in message


def test_unsubscribe_step_validates_its_channel() -> None:
    """`unsubscribe:` takes a consent channel; an unknown one is refused on its line."""
    text = (
        "journey: j\ntrigger: {event: E}\nsteps:\n"
        "  - unsubscribe:\n      channel: fax\n      reason: inactive\n"
    )
    with pytest.raises(SpecError) as info:
        load_journey_text(text, file="j.yaml")

    [problem] = info.value.problems
    assert (problem.line, problem.field) == (5, "steps[0].unsubscribe.channel")


# -- the engine -------------------------------------------------------------------------------


def spec_of(trigger: dict[str, Any], steps: list[dict[str, Any]]) -> JourneySpec:
    return JourneySpec.model_validate({"journey": "birthday", "trigger": trigger, "steps": steps})


def test_date_event_enters_only_the_journey_it_names() -> None:
    """`Date Reached` for another journey does not enter this one, even with the same trigger."""
    spec = spec_of({"date": {"trait": "birthday", "at": "10:00"}}, [{"exit": True}])
    person = ProfileView(id=1, user_id="u1")
    now = utc(2026, 3, 13, 7)

    def decide(journey: str) -> bool:
        event = EventView(DATE_EVENT, {"journey": journey, "trait": "birthday"}, now)
        return decide_entry(
            spec, profile=person, event=event, history=EntryHistory(), now=now
        ).enter

    assert decide("birthday") is True
    assert decide("anniversary") is False


def test_unsubscribe_step_emits_a_withdrawal_and_goes_on() -> None:
    """The step emits Unsubscribe (channel, reason, topic) and a log, then runs the next step."""
    spec = spec_of(
        {"event": "E"},
        [
            {"id": "clean", "unsubscribe": {"channel": "email", "reason": "inactive"}},
            {"id": "tell", "send": {"channel": "sms", "template": "bye"}},
        ],
    )
    now = utc(2026, 3, 13, 7)
    instance = InstanceState(id=5, journey="birthday", profile_id=1, entered_at=now, trigger={})

    outcome = enter(
        spec, instance, profile=ProfileView(id=1), event=EventView("E", {}, now), now=now
    )

    commands = outcome.commands
    assert Unsubscribe("clean", "email", "inactive", None) in commands
    assert Log("clean", "unsubscribed", "email: inactive") in commands
    assert [c.template for c in commands if isinstance(c, Send)] == ["bye"]
    assert outcome.instance.status == "completed"
