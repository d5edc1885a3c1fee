"""Unit tests for the pure journey engine (touchline.journeys.engine).

Every test builds a spec from a dict, drives the engine with literal UTC
datetimes and asserts on the returned instance and commands.
"""

from __future__ import annotations

import copy
from collections import Counter
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, TypeVar

import pytest

from touchline.journeys.engine import (
    MAX_STEPS_PER_TURN,
    ClearWait,
    Command,
    Convert,
    End,
    EntryHistory,
    EventView,
    InstanceState,
    Listen,
    ListenerKind,
    Log,
    Outcome,
    ProfileView,
    ScheduleTimer,
    Send,
    SetTraits,
    StopListening,
    TimerKind,
    decide_entry,
    enter,
    entry_key,
    on_event,
    on_timer,
    pick_variant,
)
from touchline.journeys.spec import JourneySpec

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)  # a Wednesday
TRIGGER = "Cart Abandoned"
ORDER = "Order Completed"
INSTANCE_ID = 7

T = TypeVar("T")


# -- helpers ------------------------------------------------------------------------


def journey(steps: list[dict[str, Any]], **fields: Any) -> JourneySpec:
    """A validated spec triggered by ``Cart Abandoned``; ``fields`` add or override top-level keys."""
    document: dict[str, Any] = {
        "journey": "test-journey",
        "trigger": {"event": TRIGGER},
        "steps": steps,
    }
    document.update(fields)
    return JourneySpec.model_validate(document)


def send_step(template: str, **fields: Any) -> dict[str, Any]:
    return {"send": {"channel": "email", "template": template}, **fields}


def an_event(
    name: str = TRIGGER, *, at: datetime = NOW, event_id: int | None = None, **properties: Any
) -> EventView:
    return EventView(name=name, properties=properties, timestamp=at, id=event_id)


def a_customer(
    user_id: str | None = "u-1", *, timezone: str | None = None, **traits: Any
) -> ProfileView:
    return ProfileView(id=1, user_id=user_id, timezone=timezone, traits=dict(traits))


def fresh_instance(spec: JourneySpec, trigger: EventView, *, at: datetime = NOW) -> InstanceState:
    return InstanceState(
        id=INSTANCE_ID,
        journey=spec.journey,
        profile_id=1,
        entered_at=at,
        trigger=trigger.scope(),
    )


def start(
    spec: JourneySpec,
    *,
    trigger: EventView | None = None,
    customer: ProfileView | None = None,
    at: datetime = NOW,
    workspace_timezone: str = "UTC",
) -> Outcome:
    """Enter a fresh instance, as the store does once decide_entry said yes."""
    trigger = trigger or an_event(at=at, cart_id="c-1")
    return enter(
        spec,
        fresh_instance(spec, trigger, at=at),
        profile=customer or a_customer(),
        event=trigger,
        now=at,
        workspace_timezone=workspace_timezone,
    )


def fire(
    spec: JourneySpec,
    instance: InstanceState,
    *,
    at: datetime,
    kind: TimerKind = "resume",
    step_id: str | None = None,
    customer: ProfileView | None = None,
    workspace_timezone: str = "UTC",
) -> Outcome:
    """Fire a timer of ``instance``, by default for the step it waits at."""
    return on_timer(
        spec,
        instance,
        kind=kind,
        step_id=step_id or instance.step_id or "",
        profile=customer or a_customer(),
        now=at,
        workspace_timezone=workspace_timezone,
    )


def deliver(
    spec: JourneySpec,
    instance: InstanceState,
    event: EventView,
    *,
    kind: ListenerKind = "wait",
    step_id: str | None = None,
    customer: ProfileView | None = None,
) -> Outcome:
    """Deliver ``event`` to a listener of ``instance`` (``wait`` listeners name its current step)."""
    if kind == "wait" and step_id is None:
        step_id = instance.step_id
    return on_event(
        spec,
        instance,
        kind=kind,
        step_id=step_id,
        profile=customer or a_customer(),
        event=event,
        now=event.timestamp,
    )


def of_type(commands: list[Command], kind: type[T]) -> list[T]:
    return [c for c in commands if isinstance(c, kind)]


def only(commands: list[Command], kind: type[T]) -> T:
    found = of_type(commands, kind)
    assert len(found) == 1, f"expected one {kind.__name__}, got {found}"
    return found[0]


def templates(outcome: Outcome) -> list[str]:
    return [s.template for s in of_type(outcome.commands, Send)]


# -- wait ---------------------------------------------------------------------------


WAIT_THEN_SEND = journey(
    [
        {"id": "cool-off", "wait": "1h30m"},
        send_step("reminder", id="remind"),
    ]
)


def test_wait_schedules_a_resume_timer_at_now_plus_duration() -> None:
    """A wait step stops the turn with one resume timer due after its duration."""
    # given / when
    outcome = start(WAIT_THEN_SEND)

    # then
    assert outcome.instance.step_id == "cool-off"
    assert outcome.instance.status == "active"
    assert only(outcome.commands, ScheduleTimer) == ScheduleTimer(
        "cool-off", "resume", NOW + timedelta(hours=1, minutes=30)
    )
    assert of_type(outcome.commands, Send) == []


def test_resume_timer_goes_on_to_the_next_step() -> None:
    """When the resume timer fires, the wait is cleared and the following step runs."""
    # given
    waiting = start(WAIT_THEN_SEND).instance
    due = NOW + timedelta(hours=1, minutes=30)

    # when
    outcome = fire(WAIT_THEN_SEND, waiting, at=due)

    # then
    assert outcome.commands[0] == ClearWait()
    assert templates(outcome) == ["reminder"]
    assert only(outcome.commands, End) == End("completed", "reached the end", keep_goal=False)
    assert outcome.instance.status == "completed"


def test_wait_with_next_jumps_to_that_step() -> None:
    """A wait's ``next`` overrides the step below it."""
    # given
    spec = journey(
        [
            {"id": "pause", "wait": "1h", "next": "second"},
            send_step("first", id="first"),
            send_step("second", id="second"),
        ]
    )
    waiting = start(spec).instance

    # when
    outcome = fire(spec, waiting, at=NOW + timedelta(hours=1))

    # then
    assert templates(outcome) == ["second"]


def test_stale_timer_for_a_step_the_instance_left_does_nothing() -> None:
    """A timer for a step the instance has moved past changes nothing and emits nothing."""
    # given: the instance has moved on to the second wait
    spec = journey([{"id": "first-wait", "wait": "1h"}, {"id": "second-wait", "wait": "1d"}])
    waiting = start(spec).instance
    moved_on = fire(spec, waiting, at=NOW + timedelta(hours=1)).instance
    assert moved_on.step_id == "second-wait"

    # when: the first wait's timer fires again (e.g. a duplicate delivery)
    outcome = fire(spec, moved_on, at=NOW + timedelta(hours=2), step_id="first-wait")

    # then
    assert outcome.commands == []
    assert outcome.instance == moved_on


@pytest.mark.parametrize("status", ["completed", "exited"])
def test_timer_for_an_instance_that_is_no_longer_active_does_nothing(status: str) -> None:
    """A timer that fires after the instance ended (even at the same step) is ignored."""
    # given
    waiting = start(WAIT_THEN_SEND).instance
    ended = copy.deepcopy(waiting)
    ended.status = status  # type: ignore[assignment]

    # when
    outcome = fire(WAIT_THEN_SEND, ended, at=NOW + timedelta(hours=2), step_id="cool-off")

    # then
    assert outcome.commands == []
    assert outcome.instance == ended


# -- wait_until ---------------------------------------------------------------------


def wait_until_spec(time: str = "10:00", weekdays: list[str] | None = None) -> JourneySpec:
    wait: dict[str, Any] = {"time": time}
    if weekdays is not None:
        wait["weekdays"] = weekdays
    return journey([{"id": "morning", "wait_until": wait}, send_step("digest")])


def due_of(outcome: Outcome) -> datetime:
    return only(outcome.commands, ScheduleTimer).due_at


def test_wait_until_ends_at_the_next_local_time_in_the_customers_zone() -> None:
    """Past 10:00 in Lisbon, a 10:00 wait ends at 10:00 Lisbon time (WEST, UTC+1) the next day."""
    # given: 12:00 UTC = 13:00 in Lisbon
    customer = a_customer(timezone="Europe/Lisbon")

    # when
    outcome = start(wait_until_spec(), customer=customer, workspace_timezone="Asia/Tokyo")

    # then
    timer = only(outcome.commands, ScheduleTimer)
    assert timer == ScheduleTimer("morning", "resume", datetime(2024, 5, 2, 9, 0, tzinfo=UTC))


def test_wait_until_later_the_same_day_when_the_time_is_still_ahead() -> None:
    """Before 18:00 local, an 18:00 wait ends the same day."""
    # given: 12:00 UTC = 13:00 in Lisbon
    customer = a_customer(timezone="Europe/Lisbon")

    # when
    outcome = start(wait_until_spec("18:00"), customer=customer)

    # then
    assert due_of(outcome) == datetime(2024, 5, 1, 17, 0, tzinfo=UTC)


def test_wait_until_exactly_at_the_time_ends_at_once() -> None:
    """Entering exactly at the local time schedules the timer for now."""
    # given: 12:00 UTC = 14:00 in Berlin (CEST)
    customer = a_customer(timezone="Europe/Berlin")

    # when
    outcome = start(wait_until_spec("14:00"), customer=customer)

    # then
    assert due_of(outcome) == NOW


def test_wait_until_skips_days_outside_weekdays() -> None:
    """On a Friday afternoon a weekdays-only 09:00 wait ends on Monday at 09:00."""
    # given: Friday 2024-05-03 12:00 UTC, customer on UTC
    friday = datetime(2024, 5, 3, 12, 0, tzinfo=UTC)
    spec = wait_until_spec("09:00", ["mon", "tue", "wed", "thu", "fri"])

    # when
    outcome = start(spec, at=friday, customer=a_customer(timezone="UTC"))

    # then
    assert due_of(outcome) == datetime(2024, 5, 6, 9, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    "profile_timezone", [None, "", "Mars/Olympus_Mons"], ids=["missing", "empty", "unknown"]
)
def test_wait_until_uses_the_workspace_zone_without_a_usable_customer_zone(
    profile_timezone: str | None,
) -> None:
    """A customer with no or an unknown time zone waits by the workspace's zone."""
    # given: 12:00 UTC = 21:00 in Tokyo
    customer = a_customer(timezone=profile_timezone)

    # when
    outcome = start(wait_until_spec(), customer=customer, workspace_timezone="Asia/Tokyo")

    # then: 10:00 JST on 2 May
    assert due_of(outcome) == datetime(2024, 5, 2, 1, 0, tzinfo=UTC)


def test_wait_until_uses_utc_when_no_zone_is_usable() -> None:
    """With neither a usable customer zone nor workspace zone, local time is UTC."""
    # given
    customer = a_customer(timezone="Mars/Olympus_Mons")

    # when
    outcome = start(wait_until_spec(), customer=customer, workspace_timezone="Nowhere/Atall")

    # then
    assert due_of(outcome) == datetime(2024, 5, 2, 10, 0, tzinfo=UTC)


def test_wait_until_with_a_region_name_as_zone_falls_back_to_the_workspace_zone() -> None:
    """A customer time zone of 'America' (a region, not a zone) falls back like any unknown name."""
    # given
    customer = a_customer(timezone="America")

    # when
    outcome = start(wait_until_spec(), customer=customer, workspace_timezone="Asia/Tokyo")

    # then
    assert due_of(outcome) == datetime(2024, 5, 2, 1, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("zone_name", "entered_at", "expected"),
    [
        # Berlin springs forward 2024-03-31 02:00 CET -> 03:00 CEST
        (
            "Europe/Berlin",
            datetime(2024, 3, 30, 12, 0, tzinfo=UTC),
            datetime(2024, 3, 31, 8, 0, tzinfo=UTC),
        ),
        # Berlin falls back 2024-10-27 03:00 CEST -> 02:00 CET
        (
            "Europe/Berlin",
            datetime(2024, 10, 26, 12, 0, tzinfo=UTC),
            datetime(2024, 10, 27, 9, 0, tzinfo=UTC),
        ),
        # New York springs forward 2024-03-10 02:00 EST -> 03:00 EDT
        (
            "America/New_York",
            datetime(2024, 3, 9, 20, 0, tzinfo=UTC),
            datetime(2024, 3, 10, 14, 0, tzinfo=UTC),
        ),
        # New York falls back 2024-11-03 02:00 EDT -> 01:00 EST
        (
            "America/New_York",
            datetime(2024, 11, 2, 20, 0, tzinfo=UTC),
            datetime(2024, 11, 3, 15, 0, tzinfo=UTC),
        ),
    ],
    ids=["berlin-march", "berlin-october", "new-york-march", "new-york-november"],
)
def test_wait_until_across_a_dst_change_keeps_the_wall_clock_time(
    zone_name: str, entered_at: datetime, expected: datetime
) -> None:
    """Entered the day before a DST change, a 10:00 wait ends at 10:00 local on the day of it."""
    # given
    customer = a_customer(timezone=zone_name)

    # when
    outcome = start(wait_until_spec(), at=entered_at, customer=customer)

    # then
    assert due_of(outcome) == expected


def test_wait_until_on_the_skipped_hour_ends_past_the_gap() -> None:
    """A 02:30 wait on Berlin's spring-forward night ends at 03:30 CEST (01:30 UTC)."""
    # given
    customer = a_customer(timezone="Europe/Berlin")
    entered_at = datetime(2024, 3, 30, 12, 0, tzinfo=UTC)

    # when
    outcome = start(wait_until_spec("02:30"), at=entered_at, customer=customer)

    # then
    assert due_of(outcome) == datetime(2024, 3, 31, 1, 30, tzinfo=UTC)


def test_next_wait_until_uses_the_zone_the_customer_has_when_the_timer_fires() -> None:
    """A customer who moves from Berlin to New York gets the next local wait in New York time."""
    # given: two 10:00 waits; the first is computed in Berlin
    spec = journey(
        [
            {"id": "first", "wait_until": {"time": "10:00"}},
            send_step("one"),
            {"id": "second", "wait_until": {"time": "10:00"}},
            send_step("two"),
        ]
    )
    entered = start(spec, customer=a_customer(timezone="Europe/Berlin"))
    first_due = due_of(entered)
    assert first_due == datetime(2024, 5, 2, 8, 0, tzinfo=UTC)  # 10:00 CEST

    # when: the first timer fires after the customer's zone changed
    moved = a_customer(timezone="America/New_York")
    outcome = fire(spec, entered.instance, at=first_due, customer=moved)

    # then: 08:00 UTC is 04:00 EDT, so the next 10:00 is the same day in New York
    assert templates(outcome) == ["one"]
    assert only(outcome.commands, ScheduleTimer) == ScheduleTimer(
        "second", "resume", datetime(2024, 5, 2, 14, 0, tzinfo=UTC)
    )


def test_wait_until_timer_goes_on_to_the_next_step() -> None:
    """When a wait_until timer fires, the step after it runs."""
    # given
    entered = start(wait_until_spec())

    # when
    outcome = fire(wait_until_spec(), entered.instance, at=due_of(entered))

    # then
    assert templates(outcome) == ["digest"]
    assert outcome.instance.status == "completed"


# -- wait_for -----------------------------------------------------------------------


def wait_for_spec(**wait_for: Any) -> JourneySpec:
    fields: dict[str, Any] = {
        "event": ORDER,
        "match": "cart_id",
        "timeout": "1d",
        "on_event": "thanks",
        "on_timeout": "remind",
    }
    fields.update(wait_for)
    fields = {k: v for k, v in fields.items() if v is not None}
    return journey(
        [
            {"id": "await-order", "wait_for": fields},
            send_step("reminder", id="remind", next="exit"),
            send_step("thanks", id="thanks"),
        ]
    )


def test_wait_for_listens_for_the_event_and_schedules_the_timeout() -> None:
    """A wait_for step emits a wait listener keyed by the trigger's match value and a timeout timer."""
    # given
    spec = wait_for_spec()

    # when
    outcome = start(spec, trigger=an_event(cart_id="c-1"))

    # then
    expires = NOW + timedelta(days=1)
    assert only(outcome.commands, Listen) == Listen("wait", ORDER, "await-order", "c-1", expires)
    assert only(outcome.commands, ScheduleTimer) == ScheduleTimer("await-order", "timeout", expires)
    assert outcome.instance.step_id == "await-order"


def test_matching_event_goes_to_on_event() -> None:
    """The awaited event for the same key clears the wait and goes to ``on_event``."""
    # given
    spec = wait_for_spec()
    waiting = start(spec, trigger=an_event(cart_id="c-1")).instance

    # when
    outcome = deliver(spec, waiting, an_event(ORDER, at=NOW + timedelta(hours=3), cart_id="c-1"))

    # then
    assert outcome.commands[0] == ClearWait()
    assert templates(outcome) == ["thanks"]
    assert outcome.instance.status == "completed"


@pytest.mark.parametrize("properties", [{"cart_id": "c-2"}, {}], ids=["other-key", "missing-key"])
def test_awaited_event_for_another_key_is_ignored(properties: dict[str, Any]) -> None:
    """An awaited event whose match property differs from (or lacks) the trigger's does nothing."""
    # given
    spec = wait_for_spec()
    waiting = start(spec, trigger=an_event(cart_id="c-1")).instance

    # when
    outcome = deliver(spec, waiting, an_event(ORDER, at=NOW + timedelta(hours=3), **properties))

    # then
    assert outcome.commands == []
    assert outcome.instance == waiting


@pytest.mark.parametrize(
    ("trigger_value", "event_value"),
    [(42, "42"), ("42", 42), (42.0, "42"), (True, "true")],
    ids=["int-vs-text", "text-vs-int", "whole-float-vs-text", "bool-vs-text"],
)
def test_match_keys_compare_as_text(trigger_value: Any, event_value: Any) -> None:
    """A key sent once as 42 and once as "42" still matches."""
    # given
    spec = wait_for_spec()
    waiting = start(spec, trigger=an_event(cart_id=trigger_value)).instance

    # when
    outcome = deliver(spec, waiting, an_event(ORDER, cart_id=event_value))

    # then
    assert templates(outcome) == ["thanks"]


def test_trigger_without_the_match_property_matches_nothing() -> None:
    """When the trigger lacks the match property, no awaited event can match."""
    # given
    spec = wait_for_spec()
    entered = start(spec, trigger=an_event(other="x"))
    assert only(entered.commands, Listen).match_value is None

    # when
    outcome = deliver(spec, entered.instance, an_event(ORDER, cart_id="c-1"))

    # then
    assert outcome.commands == []


def test_wait_for_where_filters_awaited_events() -> None:
    """An awaited event that fails ``where`` is ignored; one that passes goes on."""
    # given
    spec = wait_for_spec(match=None, where="event.properties.template == 'cart-reminder-1'")
    waiting = start(spec).instance

    # when
    ignored = deliver(spec, waiting, an_event(ORDER, template="newsletter"))
    accepted = deliver(spec, waiting, an_event(ORDER, template="cart-reminder-1"))

    # then
    assert ignored.commands == []
    assert templates(accepted) == ["thanks"]


def test_event_of_another_name_at_a_wait_for_is_ignored() -> None:
    """A wait listener that receives an event other than the awaited one does nothing."""
    # given
    spec = wait_for_spec()
    waiting = start(spec).instance

    # when
    outcome = deliver(spec, waiting, an_event("Email Opened", cart_id="c-1"))

    # then
    assert outcome.commands == []


def test_awaited_event_for_a_step_the_instance_left_is_ignored() -> None:
    """A wait listener for a step the instance is no longer at cannot move it."""
    # given: the instance timed out and sits at a later wait
    spec = journey(
        [
            {"id": "await-order", "wait_for": {"event": ORDER, "timeout": "1h"}},
            {"id": "later", "wait": "1d"},
            send_step("late"),
        ]
    )
    waiting = start(spec).instance
    moved_on = fire(spec, waiting, at=NOW + timedelta(hours=1), kind="timeout").instance
    assert moved_on.step_id == "later"

    # when
    outcome = deliver(spec, moved_on, an_event(ORDER), step_id="await-order")

    # then
    assert outcome.commands == []
    assert outcome.instance == moved_on


def test_timeout_goes_to_on_timeout() -> None:
    """When the timeout fires first, the wait is cleared and ``on_timeout`` runs."""
    # given
    spec = wait_for_spec()
    waiting = start(spec).instance

    # when
    outcome = fire(spec, waiting, at=NOW + timedelta(days=1), kind="timeout")

    # then
    assert outcome.commands[0] == ClearWait()
    assert Log("await-order", "timeout") in outcome.commands
    assert templates(outcome) == ["reminder"]


@pytest.mark.parametrize("arrives", ["event", "timeout"])
def test_wait_for_without_targets_goes_to_the_next_step(arrives: str) -> None:
    """Without ``on_event``/``on_timeout`` both the event and the timeout lead to the next step."""
    # given
    spec = journey(
        [
            {"id": "await-order", "wait_for": {"event": ORDER, "timeout": "2h"}},
            send_step("next-one"),
            send_step("after-that"),
        ]
    )
    waiting = start(spec).instance

    # when
    if arrives == "event":
        outcome = deliver(spec, waiting, an_event(ORDER, at=NOW + timedelta(hours=1)))
    else:
        outcome = fire(spec, waiting, at=NOW + timedelta(hours=2), kind="timeout")

    # then
    assert templates(outcome) == ["next-one", "after-that"]


def test_wait_for_on_event_exit_ends_the_journey() -> None:
    """``on_event: exit`` ends the journey as completed without running later steps."""
    # given
    spec = wait_for_spec(on_event="exit")
    waiting = start(spec).instance

    # when
    outcome = deliver(spec, waiting, an_event(ORDER, cart_id="c-1"))

    # then
    assert templates(outcome) == []
    assert only(outcome.commands, End) == End("completed", "reached the end", keep_goal=False)


# -- branch -------------------------------------------------------------------------


BRANCHY = journey(
    [
        {
            "id": "route",
            "branch": {
                "cases": [
                    {"when": "profile.plan == 'pro'", "goto": "pro"},
                    {"when": "number(event.properties.total) >= 100", "goto": "big"},
                ],
                "otherwise": "small",
            },
        },
        send_step("pro", id="pro", next="exit"),
        send_step("big", id="big", next="exit"),
        send_step("small", id="small"),
    ]
)


@pytest.mark.parametrize(
    ("plan", "total", "expected", "logged"),
    [
        ("pro", "150", "pro", "pro"),
        ("free", "150", "big", "big"),
        ("free", "20", "small", "otherwise"),
    ],
    ids=["both-true-first-wins", "second-case", "otherwise"],
)
def test_branch_goes_to_the_first_true_case_else_otherwise(
    plan: str, total: str, expected: str, logged: str
) -> None:
    """A branch takes the first case whose condition holds, else ``otherwise``, and logs which."""
    # given
    trigger = an_event(total=total)

    # when
    outcome = start(BRANCHY, trigger=trigger, customer=a_customer(plan=plan))

    # then
    assert templates(outcome) == [expected]
    assert Log("route", "branch", logged) in outcome.commands


def test_branch_without_otherwise_goes_to_the_next_step() -> None:
    """When no case holds and there is no ``otherwise``, the step below runs."""
    # given
    spec = journey(
        [
            {"branch": {"cases": [{"when": "profile.vip == true", "goto": "vip"}]}},
            send_step("regular", next="exit"),
            send_step("vip", id="vip"),
        ]
    )

    # when
    outcome = start(spec, customer=a_customer(vip=False))

    # then
    assert templates(outcome) == ["regular"]


def test_branch_after_a_wait_reads_the_trigger_as_event() -> None:
    """After a timer, ``event`` in a branch is the trigger event."""
    # given
    spec = journey(
        [
            {"id": "pause", "wait": "1h"},
            {
                "branch": {
                    "cases": [{"when": "event.properties.total > 100", "goto": "big"}],
                    "otherwise": "small",
                }
            },
            send_step("big", id="big", next="exit"),
            send_step("small", id="small"),
        ]
    )
    waiting = start(spec, trigger=an_event(total=150)).instance

    # when
    outcome = fire(spec, waiting, at=NOW + timedelta(hours=1))

    # then
    assert templates(outcome) == ["big"]


def test_branch_after_wait_for_reads_the_awaited_event() -> None:
    """After an awaited event arrives, ``event`` in a branch is that event, ``trigger`` the trigger."""
    # given
    spec = journey(
        [
            {"id": "await-order", "wait_for": {"event": ORDER, "timeout": "1d"}},
            {
                "branch": {
                    "cases": [
                        {
                            "when": "event.properties.total > trigger.properties.total",
                            "goto": "upsold",
                        }
                    ],
                    "otherwise": "plain",
                }
            },
            send_step("upsold", id="upsold", next="exit"),
            send_step("plain", id="plain"),
        ]
    )
    waiting = start(spec, trigger=an_event(total=50)).instance

    # when
    outcome = deliver(spec, waiting, an_event(ORDER, at=NOW + timedelta(hours=1), total=80))

    # then
    assert templates(outcome) == ["upsold"]


# -- split --------------------------------------------------------------------------


SPLIT = journey(
    [
        send_step("before-split", id="intro"),
        {
            "id": "offer-test",
            "split": [
                {"name": "control", "percent": 10, "goto": "exit"},
                {"name": "reminder", "percent": 45, "goto": "plain"},
                {"name": "discount", "percent": 45, "goto": "discount"},
            ],
        },
        send_step("cart-reminder", id="plain", next="exit"),
        send_step("cart-discount", id="discount"),
    ]
)


def test_split_gives_the_same_customer_the_same_variant_every_time() -> None:
    """A customer's variant depends only on journey, step and customer: repeated entries agree."""
    # given
    customers = [a_customer(f"user-{n}") for n in range(50)]

    # when
    first = [start(SPLIT, customer=c).instance.context["variants"]["offer-test"] for c in customers]
    again = [start(SPLIT, customer=c).instance.context["variants"]["offer-test"] for c in customers]

    # then
    assert first == again
    assert len(set(first)) > 1  # the customers are really spread over variants


def test_split_distribution_over_many_customers_follows_the_percentages() -> None:
    """Over 10,000 customers each variant's share is within 2 points of its percentage."""
    # given
    variants = SPLIT.step("offer-test").split
    assert variants is not None

    # when
    counts = Counter(
        pick_variant(SPLIT.journey, "offer-test", f"user-{n}", variants).name for n in range(10_000)
    )

    # then
    for variant in variants:
        share = counts[variant.name] / 10_000 * 100
        assert abs(share - variant.percent) <= 2, (variant.name, share)


def test_split_records_the_variant_and_goes_to_its_target() -> None:
    """The chosen variant is kept in ``context.variants`` and decides where the customer goes."""
    # given
    customer = a_customer("user-3")
    variants = SPLIT.step("offer-test").split
    assert variants is not None
    expected = pick_variant(SPLIT.journey, "offer-test", customer.key, variants)

    # when
    outcome = start(SPLIT, customer=customer)

    # then
    assert outcome.instance.context["variants"] == {"offer-test": expected.name}
    assert Log("offer-test", "variant", expected.name) in outcome.commands
    by_variant = {"control": [], "reminder": ["cart-reminder"], "discount": ["cart-discount"]}
    assert templates(outcome)[1:] == by_variant[expected.name]


def test_send_after_a_split_carries_the_variant() -> None:
    """Sends after a split record the variant name; sends before it have none."""
    # given: a customer who does not land in the holdout
    customer = next(
        c
        for c in (a_customer(f"user-{n}") for n in range(100))
        if pick_variant(
            SPLIT.journey, "offer-test", c.key, SPLIT.step("offer-test").split or []
        ).name
        != "control"
    )

    # when
    outcome = start(SPLIT, customer=customer)

    # then
    before, after = of_type(outcome.commands, Send)
    assert before.variant is None
    assert after.variant == outcome.instance.context["variants"]["offer-test"]


def test_split_keys_a_customer_without_user_id_by_profile_id() -> None:
    """An anonymous customer is split by ``#<profile id>``, so they too keep their variant."""
    # given
    customer = ProfileView(id=5, user_id=None)
    variants = SPLIT.step("offer-test").split
    assert variants is not None

    # when
    outcome = start(SPLIT, customer=customer)

    # then
    expected = pick_variant(SPLIT.journey, "offer-test", "#5", variants)
    assert outcome.instance.context["variants"]["offer-test"] == expected.name


def test_branch_can_read_the_variant_from_context() -> None:
    """A later branch sees ``context.variants["<split id>"]`` set earlier in the same turn."""
    # given
    spec = journey(
        [
            {"id": "ab", "split": [{"name": "a", "percent": 50}, {"name": "b", "percent": 50}]},
            {
                "branch": {
                    "cases": [{"when": "context.variants['ab'] == 'a'", "goto": "got-a"}],
                    "otherwise": "got-b",
                }
            },
            send_step("got-a", id="got-a", next="exit"),
            send_step("got-b", id="got-b"),
        ]
    )

    # when
    outcome = start(spec, customer=a_customer("user-1"))

    # then
    variant = outcome.instance.context["variants"]["ab"]
    assert templates(outcome) == [f"got-{variant}"]


# -- send ---------------------------------------------------------------------------


def test_send_emits_the_message_with_a_per_visit_idempotency_key() -> None:
    """A send step emits channel, template, category and the key ``instance:step:visit``."""
    # given
    spec = journey([send_step("welcome", id="hello")])

    # when
    outcome = start(spec)

    # then
    assert only(outcome.commands, Send) == Send(
        step_id="hello",
        channel="email",
        template="welcome",
        purpose="marketing",
        category="engaging",
        idempotency_key=f"{INSTANCE_ID}:hello:1",
        variant=None,
        when_capped="skip",
    )


@pytest.mark.parametrize(
    ("category", "purpose", "expected"),
    [
        ("transactional", None, "transactional"),
        ("engaging", None, "marketing"),
        ("selling", None, "marketing"),
        ("transactional", "marketing", "marketing"),
        ("selling", "transactional", "transactional"),
    ],
    ids=[
        "transactional-default",
        "engaging-default",
        "selling-default",
        "explicit-marketing",
        "explicit-transactional",
    ],
)
def test_send_purpose_defaults_by_category(
    category: str, purpose: str | None, expected: str
) -> None:
    """Without ``purpose``, transactional journeys send transactional messages, others marketing."""
    # given
    send: dict[str, Any] = {"channel": "sms", "template": "t", "when_capped": "defer"}
    if purpose:
        send["purpose"] = purpose
    spec = journey([{"send": send}], category=category)

    # when
    message = only(start(spec).commands, Send)

    # then
    assert message.purpose == expected
    assert message.category == category
    assert message.when_capped == "defer"


def test_send_in_a_loop_gets_a_new_key_on_every_visit() -> None:
    """A send revisited through goto after a wait gets ``:1``, ``:2``, ``:3`` keys, never a repeat."""
    # given
    spec = journey([send_step("nudge", id="nudge"), {"id": "pause", "wait": "1d", "next": "nudge"}])
    outcome = start(spec)
    keys = [only(outcome.commands, Send).idempotency_key]

    # when
    for day in (1, 2):
        outcome = fire(spec, outcome.instance, at=NOW + timedelta(days=day))
        keys.append(only(outcome.commands, Send).idempotency_key)

    # then
    assert keys == [f"{INSTANCE_ID}:nudge:1", f"{INSTANCE_ID}:nudge:2", f"{INSTANCE_ID}:nudge:3"]
    assert outcome.instance.visits == {"nudge": 3, "pause": 3}


def test_replaying_the_same_turn_gives_the_same_idempotency_key() -> None:
    """Running the same input twice (a retried turn) produces the same key, so a resend is dropped."""
    # given
    spec = journey([{"id": "pause", "wait": "1h"}, send_step("welcome", id="hello")])
    waiting = start(spec).instance

    # when
    first = fire(spec, waiting, at=NOW + timedelta(hours=1))
    retried = fire(spec, waiting, at=NOW + timedelta(hours=1))

    # then
    assert only(first.commands, Send).idempotency_key == f"{INSTANCE_ID}:hello:1"
    assert first.commands == retried.commands


# -- update_profile -----------------------------------------------------------------


def test_update_profile_sets_computes_and_unsets_traits() -> None:
    """``set``, ``compute`` (dates as ISO text, durations as seconds) and ``unset`` become one SetTraits."""
    # given
    spec = journey(
        [
            {
                "update_profile": {
                    "set": {"vip": True, "tags": ["spring"]},
                    "compute": {
                        "last_total": "number(event.properties.total)",
                        "discount_expires_at": "now + 2d",
                        "grace": "2h",
                    },
                    "unset": ["churn_risk"],
                }
            }
        ]
    )

    # when
    outcome = start(spec, trigger=an_event(total="120"))

    # then
    assert only(outcome.commands, SetTraits) == SetTraits(
        {
            "vip": True,
            "tags": ["spring"],
            "last_total": 120,
            "discount_expires_at": "2024-05-03T12:00:00+00:00",
            "grace": 7200.0,
        },
        ("churn_risk",),
    )


def test_later_branch_in_the_same_turn_sees_a_set_trait() -> None:
    """A branch after update_profile reads the new value, by name and under ``traits``."""
    # given
    spec = journey(
        [
            {"update_profile": {"set": {"tier": "gold"}}},
            {
                "branch": {
                    "cases": [
                        {
                            "when": "profile.tier == 'gold' and profile.traits.tier == 'gold'",
                            "goto": "gold",
                        }
                    ],
                    "otherwise": "plain",
                }
            },
            send_step("gold", id="gold", next="exit"),
            send_step("plain", id="plain"),
        ]
    )

    # when
    outcome = start(spec, customer=a_customer(tier="silver"))

    # then
    assert templates(outcome) == ["gold"]


def test_later_branch_in_the_same_turn_sees_a_computed_trait() -> None:
    """A trait computed from the event is visible to a branch later in the same turn."""
    # given
    spec = journey(
        [
            {"update_profile": {"compute": {"spent": "number(event.properties.total) * 2"}}},
            {
                "branch": {
                    "cases": [{"when": "profile.spent == 240", "goto": "big"}],
                    "otherwise": "small",
                }
            },
            send_step("big", id="big", next="exit"),
            send_step("small", id="small"),
        ]
    )

    # when
    outcome = start(spec, trigger=an_event(total="120"))

    # then
    assert templates(outcome) == ["big"]


def test_later_branch_in_the_same_turn_does_not_see_an_unset_trait() -> None:
    """After ``unset``, ``exists(profile.x)`` is false for the rest of the turn."""
    # given
    spec = journey(
        [
            {"update_profile": {"unset": ["coupon"]}},
            {
                "branch": {
                    "cases": [{"when": "exists(profile.coupon)", "goto": "has"}],
                    "otherwise": "none",
                }
            },
            send_step("has", id="has", next="exit"),
            send_step("none", id="none"),
        ]
    )

    # when
    outcome = start(spec, customer=a_customer(coupon="SPRING10"))

    # then
    assert templates(outcome) == ["none"]


# -- exit step and the end ----------------------------------------------------------


def test_exit_step_with_text_ends_with_that_reason() -> None:
    """``exit: "<text>"`` ends the instance as exited with the text as its reason."""
    # given
    spec = journey([{"id": "no-consent", "exit": "no marketing consent"}, send_step("never-sent")])

    # when
    outcome = start(spec)

    # then
    assert only(outcome.commands, End) == End("exited", "no marketing consent", keep_goal=False)
    assert outcome.instance.status == "exited"
    assert outcome.instance.exit_reason == "no marketing consent"
    assert templates(outcome) == []


def test_exit_step_true_names_the_step_in_the_reason() -> None:
    """``exit: true`` ends the instance as exited with a reason naming the step."""
    # given
    spec = journey([{"id": "stop-here", "exit": True}])

    # when
    outcome = start(spec)

    # then
    assert only(outcome.commands, End) == End("exited", "exit step stop-here", keep_goal=False)


def test_passing_the_last_step_completes_the_journey() -> None:
    """After the last step the instance is completed."""
    # given
    spec = journey([send_step("only")])

    # when
    outcome = start(spec)

    # then
    assert outcome.instance.status == "completed"
    assert outcome.instance.exit_reason == "reached the end"
    assert outcome.commands[-1] == End("completed", "reached the end", keep_goal=False)


# -- exit_on ------------------------------------------------------------------------


def exit_on_spec(**fields: Any) -> JourneySpec:
    return journey(
        [{"id": "pause", "wait": "1d"}, send_step("reminder")],
        exit_on=[
            {"event": ORDER, "match": "cart_id"},
            {"event": "Unsubscribed", "where": "event.properties.reason != 'testing'"},
        ],
        **fields,
    )


def test_enter_listens_for_exit_events() -> None:
    """Entering emits an exit listener per ``exit_on`` item, keyed by the trigger's match value."""
    # given / when
    outcome = start(exit_on_spec(), trigger=an_event(cart_id="c-1"))

    # then
    assert of_type(outcome.commands, Listen) == [
        Listen("exit", ORDER, None, "c-1", None),
        Listen("exit", "Unsubscribed", None, None, None),
    ]


def test_exit_event_ends_a_waiting_instance_at_once() -> None:
    """An exit_on event ends the instance wherever it waits, without running further steps."""
    # given
    spec = exit_on_spec()
    waiting = start(spec).instance

    # when
    outcome = deliver(spec, waiting, an_event("Unsubscribed", reason="spam"), kind="exit")

    # then
    assert only(outcome.commands, End) == End("exited", "exit event: Unsubscribed", keep_goal=False)
    assert outcome.instance.status == "exited"
    assert outcome.instance.step_id == "pause"
    assert templates(outcome) == []


@pytest.mark.parametrize(
    "event",
    [an_event(ORDER, cart_id="c-2"), an_event("Unsubscribed", reason="testing")],
    ids=["other-cart", "where-false"],
)
def test_exit_event_that_does_not_match_is_ignored(event: EventView) -> None:
    """An exit event for another key, or failing its ``where``, leaves the instance alone."""
    # given
    spec = exit_on_spec()
    waiting = start(spec, trigger=an_event(cart_id="c-1")).instance

    # when
    outcome = deliver(spec, waiting, event, kind="exit")

    # then
    assert outcome.commands == []
    assert outcome.instance == waiting


def test_exit_event_matches_a_numeric_key_sent_as_text() -> None:
    """An exit event with cart_id "42" ends an instance whose trigger had cart_id 42."""
    # given
    spec = exit_on_spec()
    waiting = start(spec, trigger=an_event(cart_id=42)).instance

    # when
    outcome = deliver(spec, waiting, an_event(ORDER, cart_id="42"), kind="exit")

    # then
    assert only(outcome.commands, End).reason == f"exit event: {ORDER}"


def test_exit_event_after_the_instance_ended_does_nothing() -> None:
    """An exit event for an instance that already completed changes nothing."""
    # given
    spec = exit_on_spec()
    done = fire(spec, start(spec).instance, at=NOW + timedelta(days=1)).instance
    assert done.status == "completed"

    # when
    outcome = deliver(spec, done, an_event("Unsubscribed"), kind="exit")

    # then
    assert outcome.commands == []


def test_exit_event_keeps_the_goal_listener_while_the_goal_window_is_open() -> None:
    """Leaving through exit_on inside the goal window keeps the goal listener (keep_goal)."""
    # given
    spec = exit_on_spec(goal={"event": "Subscribed", "within": "7d"})
    waiting = start(spec).instance

    # when
    outcome = deliver(
        spec, waiting, an_event("Unsubscribed", at=NOW + timedelta(hours=2)), kind="exit"
    )

    # then
    assert only(outcome.commands, End).keep_goal is True


def test_exit_event_drops_the_goal_listener_once_the_goal_was_reached() -> None:
    """After the goal was reached, an exit does not keep a goal listener."""
    # given
    spec = exit_on_spec(goal={"event": "Subscribed", "within": "7d", "exit": False})
    waiting = start(spec).instance
    converted = deliver(spec, waiting, an_event("Subscribed"), kind="goal").instance

    # when
    outcome = deliver(spec, converted, an_event("Unsubscribed"), kind="exit")

    # then
    assert only(outcome.commands, End).keep_goal is False


def test_exit_event_after_the_goal_window_closed_drops_the_goal_listener() -> None:
    """An exit after the goal window has closed keeps no goal listener."""
    # given: a 1d goal window and a 2d wait
    spec = journey(
        [{"id": "pause", "wait": "2d"}, send_step("reminder")],
        exit_on=[{"event": "Unsubscribed"}],
        goal={"event": "Subscribed", "within": "1d"},
    )
    waiting = start(spec).instance

    # when
    outcome = deliver(
        spec, waiting, an_event("Unsubscribed", at=NOW + timedelta(days=1, hours=1)), kind="exit"
    )

    # then
    assert only(outcome.commands, End) == End("exited", "exit event: Unsubscribed", keep_goal=False)


# -- goal ---------------------------------------------------------------------------


def goal_spec(**goal: Any) -> JourneySpec:
    fields: dict[str, Any] = {"event": ORDER, "match": "cart_id", "within": "7d"}
    fields.update(goal)
    return journey([{"id": "pause", "wait": "1d"}, send_step("reminder")], goal=fields)


def test_enter_listens_for_the_goal_until_the_window_closes() -> None:
    """Entering emits a goal listener keyed by the trigger and expiring ``within`` after entry."""
    # given / when
    outcome = start(goal_spec(), trigger=an_event(cart_id="c-1"))

    # then
    assert only(outcome.commands, Listen) == Listen(
        "goal", ORDER, None, "c-1", NOW + timedelta(days=7)
    )


def test_goal_converts_with_revenue_and_ends_the_instance() -> None:
    """The goal event converts with its revenue, stops the goal listener and exits the instance."""
    # given
    spec = goal_spec()
    waiting = start(spec).instance
    at = NOW + timedelta(hours=5)

    # when
    outcome = deliver(
        spec, waiting, an_event(ORDER, at=at, event_id=99, cart_id="c-1", revenue=59.9), kind="goal"
    )

    # then
    assert only(outcome.commands, Convert) == Convert(99, ORDER, Decimal("59.90"), at)
    assert StopListening("goal") in outcome.commands
    assert only(outcome.commands, End) == End("exited", f"goal reached: {ORDER}", keep_goal=False)
    assert outcome.instance.goal_reached_at == at
    assert outcome.instance.status == "exited"


@pytest.mark.parametrize(
    ("properties", "expected"),
    [
        ({"revenue": 10, "total": 20, "value": 30}, Decimal("10.00")),
        ({"total": 20, "value": 30}, Decimal("20.00")),
        ({"value": "5.5"}, Decimal("5.50")),
        ({"revenue": "12.345"}, Decimal("12.34")),
        ({}, None),
        ({"revenue": "n/a"}, None),
        ({"revenue": True}, None),
        ({"revenue": "Infinity"}, None),
    ],
    ids=[
        "revenue-first",
        "then-total",
        "then-value",
        "rounded-to-cents",
        "none",
        "not-a-number",
        "boolean",
        "infinite",
    ],
)
def test_goal_value_defaults_to_revenue_then_total_then_value(
    properties: dict[str, Any], expected: Decimal | None
) -> None:
    """Without ``value``, the conversion is worth revenue, else total, else value; non-numbers are None."""
    # given
    spec = goal_spec(match=None)
    waiting = start(spec).instance

    # when
    outcome = deliver(spec, waiting, an_event(ORDER, **properties), kind="goal")

    # then
    assert only(outcome.commands, Convert).value == expected


def test_goal_value_of_nan_text_counts_without_value() -> None:
    """A revenue of "NaN" is not a number, so the conversion has no value."""
    # given
    spec = goal_spec(match=None)
    waiting = start(spec).instance

    # when
    outcome = deliver(spec, waiting, an_event(ORDER, revenue="NaN"), kind="goal")

    # then
    assert only(outcome.commands, Convert).value is None


def test_goal_value_expression_is_evaluated_on_the_event() -> None:
    """With ``value``, the conversion is worth the expression's result, rounded to cents."""
    # given
    spec = goal_spec(match=None, value="event.properties.mrr * 12")
    waiting = start(spec).instance

    # when
    outcome = deliver(spec, waiting, an_event(ORDER, mrr=9.99, revenue=1), kind="goal")

    # then
    assert only(outcome.commands, Convert).value == Decimal("119.88")


def test_goal_for_another_key_does_not_convert() -> None:
    """A goal event for another cart is not this journey's conversion."""
    # given
    spec = goal_spec()
    waiting = start(spec, trigger=an_event(cart_id="c-1")).instance

    # when
    outcome = deliver(spec, waiting, an_event(ORDER, cart_id="c-2"), kind="goal")

    # then
    assert outcome.commands == []
    assert outcome.instance.goal_reached_at is None


def test_goal_where_filters_conversions() -> None:
    """A goal event failing the goal's ``where`` does not convert."""
    # given
    spec = goal_spec(match=None, where="event.properties.total >= 50")
    waiting = start(spec).instance

    # when
    small = deliver(spec, waiting, an_event(ORDER, total=10), kind="goal")
    big = deliver(spec, waiting, an_event(ORDER, total=60), kind="goal")

    # then
    assert small.commands == []
    assert only(big.commands, Convert).value == Decimal("60.00")


def test_goal_after_the_instance_completed_still_converts_within_the_window() -> None:
    """A conversion after the last step, inside the window, counts and the instance stays completed."""
    # given
    spec = goal_spec()
    done = fire(spec, start(spec).instance, at=NOW + timedelta(days=1)).instance
    assert done.status == "completed"
    at = NOW + timedelta(days=3)

    # when
    outcome = deliver(spec, done, an_event(ORDER, at=at, cart_id="c-1", revenue=20), kind="goal")

    # then
    assert only(outcome.commands, Convert).at == at
    assert of_type(outcome.commands, End) == []
    assert outcome.instance.status == "completed"
    assert outcome.instance.goal_reached_at == at


def test_goal_after_an_exit_event_still_converts_within_the_window() -> None:
    """A customer who left through exit_on still converts inside the goal window."""
    # given
    spec = journey(
        [{"id": "pause", "wait": "1d"}, send_step("reminder")],
        exit_on=[{"event": "Unsubscribed"}],
        goal={"event": ORDER, "within": "7d"},
    )
    exited = deliver(spec, start(spec).instance, an_event("Unsubscribed"), kind="exit").instance

    # when
    outcome = deliver(spec, exited, an_event(ORDER, at=NOW + timedelta(days=2)), kind="goal")

    # then
    assert len(of_type(outcome.commands, Convert)) == 1
    assert outcome.instance.status == "exited"


@pytest.mark.parametrize(
    ("after", "converts"),
    [
        (timedelta(days=7), True),
        (timedelta(days=7, seconds=1), False),
    ],
    ids=["at-window-end", "just-after-window"],
)
def test_goal_counts_only_within_the_window(after: timedelta, converts: bool) -> None:
    """A conversion exactly ``within`` after entry counts; one second later it does not."""
    # given
    spec = goal_spec()
    done = fire(spec, start(spec).instance, at=NOW + timedelta(days=1)).instance

    # when
    outcome = deliver(spec, done, an_event(ORDER, at=NOW + after, cart_id="c-1"), kind="goal")

    # then
    assert bool(of_type(outcome.commands, Convert)) is converts
    assert (outcome.instance.goal_reached_at is not None) is converts


def test_goal_is_reached_only_once() -> None:
    """A second goal event after a conversion emits nothing."""
    # given
    spec = goal_spec(exit=False)
    waiting = start(spec).instance
    converted = deliver(spec, waiting, an_event(ORDER, cart_id="c-1"), kind="goal").instance

    # when
    outcome = deliver(
        spec, converted, an_event(ORDER, at=NOW + timedelta(hours=1), cart_id="c-1"), kind="goal"
    )

    # then
    assert outcome.commands == []
    assert outcome.instance.goal_reached_at == NOW


def test_goal_with_exit_false_converts_and_carries_on() -> None:
    """With ``goal.exit: false`` the conversion is recorded and the instance keeps waiting."""
    # given
    spec = goal_spec(exit=False)
    waiting = start(spec).instance

    # when
    outcome = deliver(spec, waiting, an_event(ORDER, cart_id="c-1", revenue=5), kind="goal")
    resumed = fire(spec, outcome.instance, at=NOW + timedelta(days=1))

    # then
    assert len(of_type(outcome.commands, Convert)) == 1
    assert of_type(outcome.commands, End) == []
    assert outcome.instance.status == "active"
    assert outcome.instance.step_id == "pause"
    assert templates(resumed) == ["reminder"]


# -- entry rules --------------------------------------------------------------------


def entry_spec(entry: dict[str, Any] | None = None, **fields: Any) -> JourneySpec:
    if entry is not None:
        fields["entry"] = entry
    return journey([send_step("hello")], **fields)


def decide(
    spec: JourneySpec,
    *,
    history: EntryHistory | None = None,
    event: EventView | None = None,
    customer: ProfileView | None = None,
    now: datetime = NOW,
) -> tuple[bool, str, str | None]:
    decision = decide_entry(
        spec,
        profile=customer or a_customer(),
        event=event or an_event(at=now, cart_id="c-1"),
        history=history or EntryHistory(),
        now=now,
    )
    return decision.enter, decision.reason, decision.entry_key


def test_first_trigger_enters() -> None:
    """A first-time customer with the trigger event enters under the default rule."""
    # given / when
    decision = decide(entry_spec())

    # then
    assert decision == (True, "entered", None)


def test_always_enters_even_while_already_inside() -> None:
    """``reentry: always`` admits every trigger, even while an instance is active."""
    # given
    spec = entry_spec({"reentry": "always"})
    history = EntryHistory(last_entered_at=NOW - timedelta(minutes=1), active=True)

    # when
    decision = decide(spec, history=history)

    # then
    assert decision[0] is True


@pytest.mark.parametrize(
    ("last_entered_at", "enters"),
    [(None, True), (NOW - timedelta(days=365), False)],
    ids=["first-time", "entered-a-year-ago"],
)
def test_never_admits_a_customer_only_once(last_entered_at: datetime | None, enters: bool) -> None:
    """``reentry: never`` admits a customer who never entered and no one who did."""
    # given
    spec = entry_spec({"reentry": "never"})

    # when
    decision = decide(spec, history=EntryHistory(last_entered_at=last_entered_at))

    # then
    assert decision[0] is enters
    if not enters:
        assert decision[1] == "re-entry is never allowed"


def test_not_within_refuses_while_inside() -> None:
    """Under ``not_within`` a customer with an active instance does not enter, however long ago."""
    # given
    spec = entry_spec({"reentry": "not_within", "not_within": "1h"})
    history = EntryHistory(last_entered_at=NOW - timedelta(days=30), active=True)

    # when
    decision = decide(spec, history=history)

    # then
    assert decision[:2] == (False, "already inside the journey")


@pytest.mark.parametrize(
    ("ago", "enters"),
    [
        (timedelta(days=1) - timedelta(seconds=1), False),
        (timedelta(days=1), True),
        (timedelta(days=2), True),
    ],
    ids=["just-inside-window", "at-window-edge", "outside-window"],
)
def test_not_within_default_window_is_one_day(ago: timedelta, enters: bool) -> None:
    """The default rule refuses entries less than 1d after the last and admits from 1d on."""
    # given
    spec = entry_spec()
    history = EntryHistory(last_entered_at=NOW - ago)

    # when
    decision = decide(spec, history=history)

    # then
    assert decision[0] is enters
    if not enters:
        assert decision[1] == "entered too recently"


@pytest.mark.parametrize(
    ("ago", "enters"),
    [(timedelta(days=13, hours=23), False), (timedelta(days=14), True)],
    ids=["inside", "edge"],
)
def test_not_within_uses_the_configured_window(ago: timedelta, enters: bool) -> None:
    """``not_within: 14d`` refuses for 14 days after the last entry."""
    # given
    spec = entry_spec({"reentry": "not_within", "not_within": "14d"})

    # when
    decision = decide(spec, history=EntryHistory(last_entered_at=NOW - ago))

    # then
    assert decision[0] is enters


def test_once_per_key_enters_a_new_key_and_names_it() -> None:
    """``once_per_key`` admits a key not seen before and reports it as the entry key."""
    # given
    spec = entry_spec({"reentry": "once_per_key", "key": "cart_id"})

    # when
    decision = decide(spec, event=an_event(cart_id=42), history=EntryHistory(key_seen=False))

    # then
    assert decision == (True, "entered", "42")


def test_once_per_key_refuses_a_key_seen_before() -> None:
    """``once_per_key`` refuses a key the customer already entered with."""
    # given
    spec = entry_spec({"reentry": "once_per_key", "key": "cart_id"})

    # when
    decision = decide(spec, history=EntryHistory(last_entered_at=NOW, key_seen=True))

    # then
    assert decision == (False, "already entered for cart_id=c-1", "c-1")


@pytest.mark.parametrize(
    "properties", [{}, {"cart_id": None}, {"cart_id": ""}, {"cart_id": {"nested": 1}}]
)
def test_once_per_key_refuses_a_trigger_without_the_key(properties: dict[str, Any]) -> None:
    """A trigger missing the key property (or with an unusable value) does not enter."""
    # given
    spec = entry_spec({"reentry": "once_per_key", "key": "cart_id"})

    # when
    decision = decide(spec, event=an_event(**properties))

    # then
    assert decision[0] is False
    assert decision[2] is None
    assert "cart_id" in decision[1]


def test_entry_key_is_none_without_a_configured_key() -> None:
    """Without ``entry.key`` no entry key is read, whatever the trigger carries."""
    # given
    spec = entry_spec()

    # when
    key = entry_key(spec, an_event(cart_id="c-1"))

    # then
    assert key is None


def test_paused_journey_admits_no_one() -> None:
    """A paused journey refuses even a first trigger under ``always``."""
    # given
    spec = entry_spec({"reentry": "always"}, status="paused")

    # when
    decision = decide(spec)

    # then
    assert decision[:2] == (False, "journey paused")


def test_other_events_do_not_enter() -> None:
    """Only the trigger event enters; names are compared exactly."""
    # given
    spec = entry_spec()

    # when
    decision = decide(spec, event=an_event("cart abandoned"))

    # then
    assert decision[:2] == (False, "not the trigger event")


@pytest.mark.parametrize(
    ("total", "orders", "enters"),
    [("120", 1, True), ("50", 1, False), ("120", 2, False)],
    ids=["matches", "event-fails", "profile-fails"],
)
def test_trigger_where_filters_entries(total: str, orders: int, enters: bool) -> None:
    """``trigger.where`` sees the event (as ``event`` and ``trigger``) and the profile."""
    # given
    spec = entry_spec(
        trigger={
            "event": TRIGGER,
            "where": (
                "number(event.properties.total) >= 100 and trigger.properties.total == "
                "event.properties.total and profile.orders_count == 1"
            ),
        }
    )

    # when
    decision = decide(spec, event=an_event(total=total), customer=a_customer(orders_count=orders))

    # then
    assert decision[0] is enters
    if not enters:
        assert decision[1] == "trigger filter did not match"


# -- loop guard ---------------------------------------------------------------------


def test_loop_without_a_wait_stops_at_the_step_limit() -> None:
    """A goto loop with no wait ends the instance with a step-limit reason instead of hanging."""
    # given
    spec = journey(
        [
            {"id": "ping", "branch": {"cases": [{"when": "true", "goto": "pong"}]}},
            {"id": "pong", "branch": {"cases": [{"when": "true", "goto": "ping"}]}},
        ]
    )

    # when
    outcome = start(spec)

    # then
    end = only(outcome.commands, End)
    assert end.status == "exited"
    assert f"more than {MAX_STEPS_PER_TURN} steps" in end.reason
    assert outcome.instance.status == "exited"
    assert sum(outcome.instance.visits.values()) == MAX_STEPS_PER_TURN


def test_loop_with_sends_stops_after_a_bounded_number_of_messages() -> None:
    """A send looping to itself without a wait emits at most the step limit of messages."""
    # given
    spec = journey([send_step("spam", id="spam", next="spam")])

    # when
    outcome = start(spec)

    # then
    assert len(of_type(outcome.commands, Send)) == MAX_STEPS_PER_TURN
    assert "steps without a wait" in only(outcome.commands, End).reason


def test_journey_just_under_the_step_limit_completes() -> None:
    """A straight journey of one step fewer than the limit completes normally."""
    # given
    spec = journey([{"update_profile": {"set": {"n": n}}} for n in range(MAX_STEPS_PER_TURN - 1)])

    # when
    outcome = start(spec)

    # then
    assert only(outcome.commands, End) == End("completed", "reached the end", keep_goal=False)


def test_journey_of_exactly_the_step_limit_completes() -> None:
    """A straight journey of exactly MAX_STEPS_PER_TURN steps has not passed *more* than the limit."""
    # given
    spec = journey([{"update_profile": {"set": {"n": n}}} for n in range(MAX_STEPS_PER_TURN)])

    # when
    outcome = start(spec)

    # then
    assert only(outcome.commands, End) == End("completed", "reached the end", keep_goal=False)


# -- purity -------------------------------------------------------------------------


PURITY = journey(
    [
        {"id": "ab", "split": [{"name": "a", "percent": 50}, {"name": "b", "percent": 50}]},
        {"update_profile": {"set": {"seen": True, "tags": ["x"]}, "unset": ["coupon"]}},
        send_step("hello", id="hello"),
        {"id": "await-order", "wait_for": {"event": ORDER, "timeout": "1d"}},
        {"update_profile": {"set": {"done": True}}},
        send_step("bye"),
    ],
    goal={"event": "Subscribed", "exit": False},
    exit_on=[{"event": "Unsubscribed"}],
)


def test_enter_does_not_mutate_its_inputs() -> None:
    """enter returns a new instance and leaves the given instance and profile untouched."""
    # given
    trigger = an_event(cart_id="c-1")
    instance = fresh_instance(PURITY, trigger)
    customer = a_customer(coupon="SPRING", tags=["old"])
    instance_before, customer_before = copy.deepcopy(instance), copy.deepcopy(customer)

    # when
    outcome = enter(PURITY, instance, profile=customer, event=trigger, now=NOW)

    # then
    assert outcome.instance is not instance
    assert outcome.instance.step_id == "await-order"
    assert instance == instance_before
    assert customer == customer_before


@pytest.mark.parametrize("kind", ["wait", "goal", "exit"])
def test_on_event_does_not_mutate_its_inputs(kind: ListenerKind) -> None:
    """on_event leaves the given instance and profile untouched for every listener kind."""
    # given
    waiting = start(PURITY).instance
    customer = a_customer(coupon="SPRING")
    instance_before, customer_before = copy.deepcopy(waiting), copy.deepcopy(customer)
    name = {"wait": ORDER, "goal": "Subscribed", "exit": "Unsubscribed"}[kind]

    # when
    outcome = deliver(PURITY, waiting, an_event(name), kind=kind, customer=customer)

    # then
    assert outcome.commands != []
    assert outcome.instance != waiting
    assert waiting == instance_before
    assert customer == customer_before


def test_on_timer_does_not_mutate_its_inputs() -> None:
    """on_timer leaves the given instance and profile untouched while running later steps."""
    # given
    waiting = start(PURITY).instance
    customer = a_customer()
    instance_before, customer_before = copy.deepcopy(waiting), copy.deepcopy(customer)

    # when
    outcome = fire(PURITY, waiting, at=NOW + timedelta(days=1), kind="timeout", customer=customer)

    # then
    assert outcome.instance.status == "completed"
    assert waiting == instance_before
    assert customer == customer_before
