"""Unit tests for funnel definitions, parsing and the per-customer walk (touchline.measure.funnels)."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from touchline.errors import ConditionError, InputError
from touchline.measure.funnels import (
    DEFAULT_PERIOD,
    MAX_STEPS,
    MAX_WINDOW,
    Funnel,
    FunnelReport,
    FunnelStep,
    build_funnel,
    parse_steps,
    parse_window,
    render_table,
    resolve_period,
    summarize,
    trace_attempt,
)

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
SINCE, UNTIL = T0, T0 + timedelta(days=14)
VIEW, ADD, CHECKOUT, ORDER = (
    "Product Viewed",
    "Product Added",
    "Checkout Started",
    "Order Completed",
)
SHOP = build_funnel([(VIEW, None), (ADD, None), (CHECKOUT, None), (ORDER, None)], window="7d")
H = timedelta(hours=1)


@dataclass(frozen=True)
class Ev:
    """An event row as the store streams it."""

    name: str
    timestamp: datetime
    properties: dict[str, Any] = field(default_factory=dict)
    type: str = "track"


def trace(funnel: Funnel, *rows: Ev) -> list[datetime]:
    return trace_attempt(funnel, rows, since=SINCE, until=UNTIL)


# -- steps and funnels --------------------------------------------------------------


def test_a_step_matches_its_event_name_and_condition() -> None:
    """A step with ``where`` matches only events of its name meeting the condition."""
    # given
    step = FunnelStep(ORDER, "event.properties.total >= 100")
    # then
    assert step.matches(Ev(ORDER, T0, {"total": 150}))
    assert not step.matches(Ev(ORDER, T0, {"total": 50}))
    assert not step.matches(Ev(ORDER, T0, {}))
    assert not step.matches(Ev(VIEW, T0, {"total": 150}))


def test_a_step_condition_sees_the_event_type_and_time() -> None:
    """``where`` can read ``event.type`` and ``event.timestamp``, not only properties."""
    # given
    page_only = FunnelStep("Checkout", "event.type == 'page'")
    # then
    assert page_only.matches(Ev("Checkout", T0, type="page"))
    assert not page_only.matches(Ev("Checkout", T0, type="track"))


def test_a_blank_condition_means_none() -> None:
    """An empty or blank ``where`` is no condition, so every event of the name matches."""
    # given
    step = FunnelStep(VIEW, "   ")
    # then
    assert step.where is None
    assert step.matches(Ev(VIEW, T0))


@pytest.mark.parametrize("name", ["", "   ", "x" * 201])
def test_a_step_refuses_a_bad_event_name(name: str) -> None:
    """An empty or over-long event name is refused."""
    with pytest.raises(InputError):
        FunnelStep(name)


def test_a_step_condition_may_only_read_the_event() -> None:
    """A condition naming ``profile`` does not compile: a step sees the event alone."""
    with pytest.raises(ConditionError, match="expected one of: event"):
        FunnelStep(VIEW, "profile.traits.vip == true")


@pytest.mark.parametrize("count", [0, 1, MAX_STEPS + 1])
def test_a_funnel_has_two_to_max_steps(count: int) -> None:
    """Fewer than two steps, or more than MAX_STEPS, is refused."""
    with pytest.raises(InputError, match="2 to"):
        Funnel([FunnelStep(VIEW)] * count, timedelta(days=1))


@pytest.mark.parametrize("window", [timedelta(), -H, MAX_WINDOW + timedelta(seconds=1)])
def test_a_funnel_window_is_positive_and_bounded(window: timedelta) -> None:
    """A zero, negative or longer-than-MAX_WINDOW window is refused."""
    with pytest.raises(InputError, match="window"):
        Funnel([FunnelStep(VIEW), FunnelStep(ADD)], window)


def test_a_funnel_keeps_its_steps_as_a_tuple() -> None:
    """Steps given as a list are stored as a tuple, so a funnel cannot change after checks."""
    steps = [FunnelStep(VIEW), FunnelStep(ADD)]
    funnel = Funnel(steps, timedelta(days=1))
    steps.append(FunnelStep(ORDER))
    assert funnel.steps == (FunnelStep(VIEW), FunnelStep(ADD))


# -- parsing ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [("7d", timedelta(days=7)), ("36h", timedelta(hours=36)), ("1d12h", timedelta(hours=36))],
)
def test_parse_window_reads_durations(text: str, expected: timedelta) -> None:
    """Windows are written like journey durations."""
    assert parse_window(text) == expected


@pytest.mark.parametrize("text", ["", "7", "seven days", "7 days", "0d", "367d", "99999999999w"])
def test_parse_window_refuses_bad_text(text: str) -> None:
    """Text that is not a positive duration up to MAX_WINDOW is an InputError naming the window."""
    with pytest.raises(InputError, match="^window: "):
        parse_window(text)


def test_build_funnel_names_the_step_at_fault() -> None:
    """Errors from build_funnel say which step (1-based) is wrong."""
    with pytest.raises(InputError, match="^step 2: "):
        build_funnel([(VIEW, None), ("", None)], window="7d")
    with pytest.raises(ConditionError, match="^step 3 where: ") as caught:
        build_funnel([(VIEW, None), (ADD, None), (ORDER, "event.properties.total >")], window="7d")
    assert caught.value.column is not None


def test_parse_steps_splits_names_and_places_conditions() -> None:
    """Comma-separated names are trimmed; N=CONDITION gives step N its where."""
    # when
    pairs = parse_steps(
        f" {VIEW} ,{ADD},{ORDER}", ["3=event.properties.total == 5", "1=event.type=='track'"]
    )
    # then
    assert pairs == [
        (VIEW, "event.type=='track'"),
        (ADD, None),
        (ORDER, "event.properties.total == 5"),
    ]


@pytest.mark.parametrize(
    ("names", "conditions", "message"),
    [
        (f"{VIEW},,{ADD}", [], "empty event name"),
        (f"{VIEW},{ADD}", ["event.properties.x == 1"], "N=CONDITION"),
        (f"{VIEW},{ADD}", ["x=event.properties.x == 1"], "N=CONDITION"),
        (f"{VIEW},{ADD}", ["2="], "N=CONDITION"),
        (f"{VIEW},{ADD}", ["3=event.properties.x == 1"], "no step 3"),
        (f"{VIEW},{ADD}", ["0=event.properties.x == 1"], "no step 0"),
        (f"{VIEW},{ADD}", ["2=event.type == 'a'", "2=event.type == 'b'"], "two conditions"),
    ],
)
def test_parse_steps_refuses_bad_text(names: str, conditions: list[str], message: str) -> None:
    """Empty names, malformed or repeated conditions and unknown step numbers are refused."""
    with pytest.raises(InputError, match=message):
        parse_steps(names, conditions)


def test_resolve_period_defaults_to_the_month_before_now() -> None:
    """Without times the period ends now and starts DEFAULT_PERIOD earlier."""
    assert resolve_period(None, None, now=T0) == (T0 - DEFAULT_PERIOD, T0)


def test_resolve_period_reads_naive_times_as_utc() -> None:
    """Naive times are UTC, and ``since`` alone is kept with ``until`` at now."""
    since, until = resolve_period(datetime(2026, 3, 1), None, now=T0)
    assert since == datetime(2026, 3, 1, tzinfo=UTC) and until == T0


@pytest.mark.parametrize(
    ("since", "until"),
    [
        (None, datetime(1, 1, 2, tzinfo=UTC)),
        (None, datetime(9999, 6, 1, tzinfo=UTC)),
        (T0, datetime(9999, 12, 31, 23, 59, tzinfo=UTC)),
    ],
)
def test_resolve_period_refuses_times_at_the_calendar_edges(
    since: datetime | None, until: datetime
) -> None:
    """Periods that would leave the calendar, before or with the window after, are InputErrors."""
    with pytest.raises(InputError):
        resolve_period(since, until, now=T0)


def test_resolve_period_refuses_an_empty_period() -> None:
    """``since`` must come before ``until``."""
    with pytest.raises(InputError, match="since must be before until"):
        resolve_period(T0, T0, now=T0)


# -- one customer's attempt ------------------------------------------------------------


def test_every_step_in_order_reaches_the_end() -> None:
    """Steps in order within the window are each reached, at their own times."""
    times = trace(
        SHOP, Ev(VIEW, T0), Ev(ADD, T0 + H), Ev(CHECKOUT, T0 + 2 * H), Ev(ORDER, T0 + 3 * H)
    )
    assert times == [T0, T0 + H, T0 + 2 * H, T0 + 3 * H]


def test_a_step_before_the_previous_one_does_not_count() -> None:
    """An order placed before checkout started leaves the customer at checkout."""
    times = trace(
        SHOP, Ev(ADD, T0), Ev(VIEW, T0 + H), Ev(ORDER, T0 + 2 * H), Ev(CHECKOUT, T0 + 3 * H)
    )
    assert times == [T0 + H]


def test_a_skipped_step_stops_the_attempt_there() -> None:
    """Later steps do not count when one in between never happened."""
    times = trace(SHOP, Ev(VIEW, T0), Ev(ADD, T0 + H), Ev(ORDER, T0 + 2 * H))
    assert times == [T0, T0 + H]


def test_the_window_is_inclusive_and_measured_from_step_one() -> None:
    """A step exactly ``window`` after step 1 counts; one second later does not."""
    week = timedelta(days=7)
    at_edge = trace(SHOP, Ev(VIEW, T0), Ev(ADD, T0 + H), Ev(CHECKOUT, T0 + week))
    past_edge = trace(
        SHOP, Ev(VIEW, T0), Ev(ADD, T0 + H), Ev(CHECKOUT, T0 + week + timedelta(seconds=1))
    )
    assert len(at_edge) == 3
    assert len(past_edge) == 2


def test_repeating_step_one_does_not_restart_the_attempt() -> None:
    """The first step-1 event starts the attempt; a later one does not move its window."""
    times = trace(
        SHOP, Ev(VIEW, T0), Ev(VIEW, T0 + timedelta(days=6)), Ev(ADD, T0 + timedelta(days=8))
    )
    assert times == [T0]


def test_only_a_start_inside_the_period_counts() -> None:
    """Step 1 before ``since`` or at ``until`` starts nothing; later steps may pass ``until``."""
    before = trace(SHOP, Ev(VIEW, SINCE - H), Ev(ADD, SINCE + H))
    at_end = trace(SHOP, Ev(VIEW, UNTIL), Ev(ADD, UNTIL + H))
    late = trace(SHOP, Ev(VIEW, UNTIL - H), Ev(ADD, UNTIL + H))
    assert before == [] and at_end == []
    assert late == [UNTIL - H, UNTIL + H]


def test_equal_timestamps_are_taken_in_funnel_order() -> None:
    """Events sharing a timestamp count in funnel order whatever order they arrived in."""
    times = trace(SHOP, Ev(ORDER, T0), Ev(CHECKOUT, T0), Ev(ADD, T0), Ev(VIEW, T0))
    assert times == [T0] * 4


def test_one_event_satisfies_one_step_only() -> None:
    """A funnel naming an event twice needs two such events, even at the same time."""
    twice = build_funnel([(VIEW, None), (VIEW, None)], window="1d")
    assert trace(twice, Ev(VIEW, T0)) == [T0]
    assert trace(twice, Ev(VIEW, T0), Ev(VIEW, T0)) == [T0, T0]


def test_a_condition_on_step_one_picks_the_first_matching_event() -> None:
    """With a where on step 1, the attempt starts at the first event meeting it."""
    funnel = build_funnel([(VIEW, "event.properties.sku == 'b'"), (ADD, None)], window="1d")
    times = trace(
        funnel,
        Ev(VIEW, T0, {"sku": "a"}),
        Ev(ADD, T0 + H),
        Ev(VIEW, T0 + 2 * H, {"sku": "b"}),
        Ev(ADD, T0 + 3 * H),
    )
    assert times == [T0 + 2 * H, T0 + 3 * H]


def test_no_events_means_no_attempt() -> None:
    """A customer with no step-1 event never started."""
    assert trace(SHOP, Ev(ADD, T0), Ev(ORDER, T0 + H)) == []


# -- figures -------------------------------------------------------------------------------


def test_summarize_gives_conversions_and_median_gaps() -> None:
    """Counts, conversion from the previous and the first step, and median time between steps."""
    # given three customers: all four steps; three steps; one step
    attempts = [
        [T0, T0 + H, T0 + 2 * H, T0 + 3 * H],
        [T0, T0 + 3 * H, T0 + 4 * H],
        [T0],
        [],
    ]
    # when
    figures = summarize(SHOP, attempts)
    # then
    assert [s.customers for s in figures.steps] == [3, 2, 2, 1]
    assert [s.from_previous for s in figures.steps] == [None, 2 / 3, 1.0, 0.5]
    assert [s.from_first for s in figures.steps] == [1.0, 2 / 3, 2 / 3, 1 / 3]
    medians = [s.median_from_previous for s in figures.steps]
    assert medians == [None, 2 * H, H, H]  # step 2: the mean of 1h and 3h


def test_summarize_of_nobody_has_no_ratios() -> None:
    """With no customers, counts are zero and ratios and medians are None, not errors."""
    figures = summarize(SHOP, [])
    assert [s.customers for s in figures.steps] == [0, 0, 0, 0]
    assert all(s.from_previous is None and s.from_first is None for s in figures.steps)
    assert all(s.median_from_previous is None for s in figures.steps)


def test_a_drop_to_zero_leaves_the_next_ratio_undefined() -> None:
    """After a step nobody reached, the next step's conversion from previous is None."""
    figures = summarize(SHOP, [[T0]])
    assert [s.from_previous for s in figures.steps] == [None, 0.0, None, None]


def _report(*groups: tuple[str, list[list[datetime]]]) -> FunnelReport:
    return FunnelReport(
        funnel=SHOP,
        since=SINCE,
        until=UNTIL,
        journey="abandoned-cart",
        groups=tuple(summarize(SHOP, attempts, group=name) for name, attempts in groups),
    )


def test_a_report_as_json_names_groups_steps_and_rounds_ratios() -> None:
    """as_dict carries the definition, the period and per-group step figures in seconds."""
    # given
    report = _report(("all", [[T0, T0 + H], [T0]]), ("in_journey", [[T0, T0 + H]]))
    # when
    data = report.as_dict()
    # then
    assert data["window"] == "7d" and data["split_by_journey"] == "abandoned-cart"
    assert data["since"] == "2026-03-02T09:00:00+00:00"
    assert [g["group"] for g in data["groups"]] == ["all", "in_journey"]
    second = data["groups"][0]["steps"][1]
    assert second == {
        "step": 2,
        "event": ADD,
        "where": None,
        "customers": 1,
        "conversion_from_previous": 0.5,
        "conversion_from_first": 0.5,
        "median_seconds_from_previous": 3600.0,
    }
    assert data["groups"][1]["steps"][1]["conversion_from_previous"] == 1.0


def test_a_report_as_csv_has_one_row_per_group_and_step() -> None:
    """The CSV has a header and group x step rows, with empty cells for undefined values."""
    # given
    report = _report(("all", [[T0, T0 + H], [T0]]), ("in_journey", []))
    # when
    rows = list(csv.DictReader(io.StringIO(report.to_csv())))
    # then
    assert len(rows) == 8
    assert rows[0]["group"] == "all" and rows[0]["event"] == VIEW
    assert rows[0]["conversion_from_previous"] == ""
    assert rows[1]["median_seconds_from_previous"] == "3600.0"
    assert rows[4]["group"] == "in_journey" and rows[4]["customers"] == "0"


def test_render_table_prints_every_group_with_percentages() -> None:
    """The table shows each group's heading, step names, counts and percentages."""
    # given
    report = _report(("all", [[T0, T0 + H], [T0]]), ("not_in_journey", [[T0]]))
    out = io.StringIO()
    # when
    render_table(report, out)
    # then
    text = out.getvalue()
    assert "All customers" in text and "Not in journey abandoned-cart" in text
    assert VIEW in text and "50.0%" in text and "1h" in text
