"""The pure rules of broadcasts: validation, draws, time-zone groups and throttle slots."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, time, timedelta

import pytest

from touchline.audience.broadcast_spec import (
    BroadcastSpec,
    journey_spec,
    load_broadcast_data,
    load_broadcast_text,
    next_slot,
    phase_groups,
    recipient_lot,
)
from touchline.errors import InputError, SpecError
from touchline.journeys.spec import JourneySpec

AB = {
    "broadcast": "spring",
    "audience": "all",
    "channel": "email",
    "ab_test": {
        "variants": [{"name": "a", "template": "t-a"}, {"name": "b", "template": "t-b"}],
        "sample": 20,
    },
}


def test_the_sample_and_the_variants_are_drawn_stably_and_in_proportion() -> None:
    """About 20 % take the test, split evenly; the same customer always draws the same."""
    spec = load_broadcast_data(AB)
    lots = [recipient_lot(spec, 7, pid) for pid in range(20_000)]
    phases = Counter(lot.phase for lot in lots)
    variants = Counter(lot.variant for lot in lots if lot.phase == "test")
    assert 3700 < phases["test"] < 4300
    assert abs(variants["a"] - variants["b"]) < 300
    assert [recipient_lot(spec, 7, pid) for pid in range(100)] == lots[:100]
    assert {lot.variant for lot in lots if lot.phase == "main"} == {None}


def test_without_a_test_everyone_is_in_the_main_phase() -> None:
    """A plain broadcast has no sample and no variants."""
    spec = load_broadcast_data({**AB, "ab_test": None, "template": "t"})
    assert {recipient_lot(spec, 1, pid).phase for pid in range(100)} == {"main"}


def test_zone_groups_start_at_the_next_local_time_earliest_first_across_dst() -> None:
    """11:00 local: Vladivostok before Moscow; New York's 11:00 moves an hour with its DST."""
    start = datetime(2026, 3, 7, 20, 0, tzinfo=UTC)  # New York changes clocks on 8 March
    groups = phase_groups(
        ["Europe/Moscow", "America/New_York", "Asia/Vladivostok"],
        start=start,
        local_time=time(11, 0),
        default_zone="UTC",
    )
    assert groups == [
        ("Asia/Vladivostok", datetime(2026, 3, 8, 1, 0, tzinfo=UTC)),
        ("Europe/Moscow", datetime(2026, 3, 8, 8, 0, tzinfo=UTC)),
        ("America/New_York", datetime(2026, 3, 8, 15, 0, tzinfo=UTC)),  # EDT, -4
    ]
    assert phase_groups(["x"], start=start, local_time=None, default_zone="UTC") == [("", start)]


def test_slots_follow_the_rate_and_never_precede_their_group() -> None:
    """120 a minute is half a second apart; a later group starts at its own time."""
    t = datetime(2026, 3, 2, 6, 0, tzinfo=UTC)
    assert next_slot(t, None, rate=120) == t
    assert next_slot(t, t, rate=120) == t + timedelta(milliseconds=500)
    assert next_slot(t + timedelta(hours=1), t, rate=120) == t + timedelta(hours=1)
    assert next_slot(t, t, rate=None) == t


def test_the_registered_journey_spec_is_a_valid_journey() -> None:
    """A split with one send step per variant; the plain form has a single send step."""
    spec = load_broadcast_data(
        {
            **AB,
            "ab_test": {
                **AB["ab_test"],
                "variants": [  # type: ignore[dict-item]
                    {"name": n, "template": f"t-{n}"} for n in "abc"
                ],
            },
        }
    )
    journey = JourneySpec.model_validate(journey_spec(spec))
    assert [s.id for s in journey.steps] == ["split", "send-1", "send-2", "send-3"]
    assert journey.steps[0].split is not None
    assert sum(v.percent for v in journey.steps[0].split) == pytest.approx(100)
    plain = load_broadcast_data({**AB, "ab_test": None, "template": "t"})
    assert [s.id for s in JourneySpec.model_validate(journey_spec(plain)).steps] == ["send"]


def test_json_errors_name_the_field() -> None:
    """Each bad field is named in the one message."""
    with pytest.raises(InputError) as caught:
        load_broadcast_data({**AB, "rate": -1, "purpose": "spam"})
    assert caught.value.code == "invalid_broadcast"
    assert "rate:" in caught.value.message and "purpose:" in caught.value.message


def test_yaml_errors_name_file_line_and_field() -> None:
    """A bad wait and a missing channel are placed on their lines."""
    text = "broadcast: spring\naudience: all\ntemplate: t\nlocal_time: '9am'\n"
    with pytest.raises(SpecError) as caught:
        load_broadcast_text(text, file="spring.yaml")
    found = {(p.line, p.field) for p in caught.value.problems}
    assert (4, "local_time") in found
    assert (1, "channel") in found


def test_normal_form_round_trips() -> None:
    """What is stored reads back as the same broadcast."""
    spec = load_broadcast_data(
        {**AB, "local_time": "11:00", "send_at": "2026-03-02T06:00:00", "rate": 10}
    )
    again = BroadcastSpec.model_validate(spec.to_data())
    assert again == spec
    assert spec.send_at == datetime(2026, 3, 2, 6, 0, tzinfo=UTC)
