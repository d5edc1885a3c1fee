"""A split's ``winner:``: how journey files state it, and how a decided split is routed."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime

import pytest

from touchline.errors import SpecError
from touchline.journeys.engine import EventView, InstanceState, Log, ProfileView, Send, enter
from touchline.journeys.loader import load_journey_text, spec_checksum, spec_to_data
from touchline.journeys.spec import WINNER_MIN_SAMPLE, JourneySpec
from touchline.measure.winners import route_to_winners

NOW = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)

# Each field of the winner on its own line (9-12), so problems can be placed exactly.
AB = """\
journey: ab
trigger: {event: Cart Left}
goal: {event: Order Completed}
steps:
  - id: test
    split:
      - {name: a, percent: 50}
      - {name: b, percent: 50, goto: offer}
    winner:
      metric: conversion
      min_sample: 200
      confidence: 0.95
  - id: plain
    send: {channel: email, template: plain}
    next: exit
  - id: offer
    send: {channel: email, template: offer}
"""


def problems_of(text: str) -> list[tuple[int | None, str, str]]:
    """(line, field, message) of every problem the loader reports for ``text``."""
    with pytest.raises(SpecError) as caught:
        load_journey_text(text, file="ab.yaml")
    assert all(p.file == "ab.yaml" for p in caught.value.problems)
    return [(p.line, p.field, p.message) for p in caught.value.problems]


def test_a_winner_loads_with_its_fields_and_defaults() -> None:
    """metric, min_sample and confidence are read; metric and confidence have defaults."""
    # when
    spec = load_journey_text(AB, file="ab.yaml")
    short = load_journey_text(
        AB.replace("      metric: conversion\n", "").replace("      confidence: 0.95\n", ""),
        file="ab.yaml",
    )
    # then
    winner = spec.step("test").winner
    assert winner is not None
    assert (winner.metric, winner.min_sample, winner.confidence) == ("conversion", 200, 0.95)
    assert short.step("test").winner == winner


@pytest.mark.parametrize(
    ("old", "new", "line", "field", "message"),
    [
        (
            "metric: conversion",
            "metric: opens",
            10,
            "steps[0].winner.metric",
            "must be one of 'conversion', 'click' or 'revenue'",
        ),
        (
            "min_sample: 200",
            "min_sample: 20",
            11,
            "steps[0].winner.min_sample",
            f"must be greater than or equal to {WINNER_MIN_SAMPLE}",
        ),
        (
            "min_sample: 200",
            "min_sample: 200.5",
            11,
            "steps[0].winner.min_sample",
            "must be a whole number",
        ),
        (
            "min_sample: 200",
            "min_samples: 200",
            11,
            "steps[0].winner.min_samples",
            "unknown field 'min_samples'; did you mean 'min_sample'?",
        ),
        (
            "confidence: 0.95",
            "confidence: 95",
            12,
            "steps[0].winner.confidence",
            "confidence is a fraction such as 0.95, not a percentage (95)",
        ),
        (
            "confidence: 0.95",
            "confidence: 0.5",
            12,
            "steps[0].winner.confidence",
            "must be greater than or equal to 0.8",
        ),
    ],
)
def test_a_bad_winner_field_is_reported_on_its_line(
    old: str, new: str, line: int, field: str, message: str
) -> None:
    """Shape problems of winner: name the file, the field's own line and its path."""
    # when
    found = problems_of(AB.replace(old, new))
    # then
    assert (line, field, message) in found


def test_a_missing_min_sample_points_at_the_winner() -> None:
    """min_sample has no default: leaving it out is reported on the winner's line."""
    found = problems_of(AB.replace("      min_sample: 200\n", ""))
    assert found == [(9, "steps[0].winner.min_sample", "is required")]


def test_a_winner_on_a_step_that_does_not_split_is_refused() -> None:
    """winner: belongs to split steps; on a send step it is an error at that step's winner."""
    # given
    text = AB.replace(
        "    send: {channel: email, template: plain}\n",
        "    send: {channel: email, template: plain}\n    winner: {min_sample: 200}\n",
    )
    # then
    assert problems_of(text) == [
        (15, "steps[1].winner", "winner: belongs to a split step; this is a send step")
    ]


def test_a_winner_needs_two_variants() -> None:
    """A split of one variant has nothing to compare."""
    text = AB.replace("      - {name: a, percent: 50}\n", "").replace(
        "percent: 50,", "percent: 100,"
    )
    assert problems_of(text) == [
        (8, "steps[0].winner", "a winner needs at least two variants to compare")
    ]


@pytest.mark.parametrize("metric", ["conversion", "revenue"])
def test_a_goal_metric_needs_a_goal(metric: str) -> None:
    """conversion and revenue are the goal's figures; without goal: the metric is refused."""
    text = AB.replace("goal: {event: Order Completed}\n", "").replace("conversion", metric)
    assert problems_of(text) == [
        (
            9,
            "steps[0].winner.metric",
            f"metric {metric} is measured on the journey's goal; add goal: or use click",
        )
    ]


def test_a_click_metric_needs_a_message() -> None:
    """click counts clicks on messages; a journey that sends nothing cannot have them."""
    text = """\
journey: ab
trigger: {event: Cart Left}
steps:
  - id: test
    split:
      - {name: a, percent: 50}
      - {name: b, percent: 50}
    winner: {metric: click, min_sample: 200}
  - wait: 1h
"""
    assert problems_of(text) == [
        (8, "steps[0].winner.metric", "metric click counts clicks on messages, and no step sends")
    ]


def test_winner_changes_the_checksum_and_its_absence_leaves_the_normal_form_alone() -> None:
    """A spec without winner: has no trace of it in its normal form; adding one is a new version."""
    # given
    with_winner = load_journey_text(AB, file="ab.yaml")
    without = load_journey_text(
        AB.replace("    winner:\n      metric: conversion\n      min_sample: 200\n", "").replace(
            "      confidence: 0.95\n", ""
        ),
        file="ab.yaml",
    )
    # then
    assert all("winner" not in step for step in spec_to_data(without)["steps"])
    assert spec_to_data(with_winner)["steps"][0]["winner"] == {
        "metric": "conversion",
        "min_sample": 200,
        "confidence": 0.95,
    }
    assert spec_checksum(with_winner) != spec_checksum(without)


# -- routing ------------------------------------------------------------------------------


def entered_variant(spec: JourneySpec, user_id: str) -> tuple[str, tuple[str, ...]]:
    """The variant a new customer gets at split ``test``, and the steps their sends come from."""
    outcome = enter(
        spec,
        InstanceState(id=1, journey=spec.journey, profile_id=1, entered_at=NOW, trigger={}),
        profile=ProfileView(id=1, user_id=user_id),
        event=EventView(name="Cart Left", properties={}, timestamp=NOW),
        now=NOW,
    )
    logged = [c.detail for c in outcome.commands if isinstance(c, Log) and c.action == "variant"]
    assert logged == [outcome.instance.context["variants"]["test"]]  # the step log still says
    sends = tuple(c.step_id for c in outcome.commands if isinstance(c, Send))
    return outcome.instance.context["variants"]["test"], sends


def test_a_routed_split_sends_every_new_customer_to_the_winner_down_its_path() -> None:
    """Once b won, all customers get b, follow b's goto, and the variant is logged as usual."""
    # given
    spec = load_journey_text(AB, file="ab.yaml")
    users = [f"user-{n}" for n in range(60)]
    before = Counter(entered_variant(spec, u)[0] for u in users)
    assert before["a"] > 0 and before["b"] > 0  # unrouted, the customers really are split
    # when
    routed = route_to_winners(spec, {"test": "b"})
    # then
    assert {entered_variant(routed, u) for u in users} == {("b", ("offer",))}
    split = routed.step("test").split
    assert split is not None and [(v.name, v.percent, v.goto) for v in split] == [
        ("b", 100, "offer")
    ]


def test_routing_leaves_the_original_spec_and_its_checksum_alone() -> None:
    """The routed copy is new; the version's own spec keeps both variants and its checksum."""
    # given
    spec = load_journey_text(AB, file="ab.yaml")
    checksum = spec_checksum(spec)
    # when
    route_to_winners(spec, {"test": "a"})
    # then
    split = spec.step("test").split
    assert split is not None and [v.name for v in split] == ["a", "b"]
    assert spec_checksum(spec) == checksum


@pytest.mark.parametrize(
    ("text", "winners"),
    [
        (AB, {"test": "c"}),  # a name the split no longer has (a later version renamed it)
        (AB, {"other": "a"}),  # another step's winner
        (AB, {}),
        (
            AB.replace(
                "    winner:\n      metric: conversion\n      min_sample: 200\n", ""
            ).replace("      confidence: 0.95\n", ""),
            {"test": "b"},  # the version dropped winner: - routing stops for it
        ),
    ],
)
def test_routing_changes_nothing_it_does_not_apply_to(text: str, winners: dict[str, str]) -> None:
    """Without a matching winner on a split that carries winner:, the very same spec comes back."""
    spec = load_journey_text(text, file="ab.yaml")
    assert route_to_winners(spec, winners) is spec
