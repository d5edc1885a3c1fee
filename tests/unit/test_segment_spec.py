"""Segment files: shape, located errors, normal form, trait conditions and the shipped templates."""

from __future__ import annotations

import textwrap
from datetime import timedelta
from pathlib import Path

import pytest

from touchline.audience.segment_spec import (
    SegmentError,
    SegmentSpec,
    load_segment_text,
    segment_checksum,
    segment_to_data,
)
from touchline.audience.segment_store import load_segment_dir
from touchline.audience.segment_templates import lifecycle_segments
from touchline.audience.segment_traits import TraitError, parse_trait_condition

PACK = Path(__file__).resolve().parents[2] / "examples" / "ecommerce"


def load(text: str) -> SegmentSpec:
    return load_segment_text(textwrap.dedent(text), file="s.yaml")


def problems(text: str) -> list[tuple[int | None, str, str]]:
    with pytest.raises(SegmentError) as caught:
        load(text)
    assert caught.value.code == "invalid_segment"
    return [(p.line, p.field, p.message) for p in caught.value.problems]


def test_a_list_under_match_means_all_of_it() -> None:
    """`match: [a, b]` is read as `match: {all: [a, b]}`."""
    spec = load(
        """
        segment: buyers
        match:
          - event: Order Completed
            within: 90d
            count: {at_least: 3}
          - consent: email
        """
    )
    assert spec.match.kind == "all"
    assert spec.match.all is not None
    first = spec.match.all[0]
    assert (first.event, first.within, first.count.at_least if first.count else None) == (
        "Order Completed",
        timedelta(days=90),
        3,
    )


def test_unknown_field_is_named_with_its_line_and_a_suggestion() -> None:
    """A typo inside the tree names the file's line, the dotted field and the likely word."""
    found = problems(
        """
        segment: buyers
        match:
          all:
            - event: Order Completed
              withn: 90d
        """
    )
    assert found == [(6, "match.all[0].withn", "unknown field 'withn'; did you mean 'within'?")]


def test_a_field_that_does_not_fit_the_kind_is_refused_where_it_is() -> None:
    """`before:` belongs to first/last; on an event condition it is an error at its line."""
    found = problems(
        """
        segment: buyers
        match:
          any:
            - consent: email
            - event: Order Completed
              before: 30d
        """
    )
    assert found[0][:2] == (7, "match.any[1].before")
    assert "does not go with event" in found[0][2]


def test_two_kinds_in_one_condition_are_refused() -> None:
    """A mapping with both event: and consent: is ambiguous."""
    found = problems(
        """
        segment: x
        match:
          event: Order Completed
          consent: email
        """
    )
    assert found[0][0] == 3  # the line of match:, the mapping that holds both
    assert "exactly one of" in found[0][2]


def test_first_and_last_need_exactly_one_bound() -> None:
    """`last:` needs within: or before:, not neither."""
    found = problems(
        """
        segment: x
        match:
          last: Order Completed
        """
    )
    assert found == [(3, "match", found[0][2])]
    assert "within:" in found[0][2] and "before:" in found[0][2]


def test_without_needs_a_window_and_bounds_need_a_number() -> None:
    """`without:` with no window, and a count with no bound, are both reported at once."""
    found = problems(
        """
        segment: x
        match:
          any:
            - event: Product Viewed
              without: Order Completed
            - event: Order Completed
              count: {}
        """
    )
    fields = {f for _, f, _ in found}
    assert "match.any[1].count" in fields


def test_trait_conditions_report_the_column_of_what_sql_cannot_answer() -> None:
    """`now` and other segments are outside what a trait condition may use."""
    found = problems(
        """
        segment: x
        match:
          profile: 'days_since(profile.traits.signed_up_at) > 3'
        """
    )
    assert found[0][:2] == (4, "match.profile")
    assert "column" in found[0][2]


@pytest.mark.parametrize(
    "source",
    [
        'profile.traits.city == "Moscow"',
        "profile.traits.age >= 30 and not (profile.tier in ['a', 'b'])",
        "exists(profile.email) or profile.user_id != null",
        "3 < profile.traits.orders",
        "profile.traits['first name'] == 'Ann'",
    ],
)
def test_trait_conditions_sql_can_answer_are_accepted(source: str) -> None:
    """Comparisons with fixed values, in-lists, exists() and logic parse."""
    assert parse_trait_condition(source) is not None


@pytest.mark.parametrize(
    ("source", "error"),
    [
        ("profile.traits.vip", TraitError),
        ("days_since(profile.traits.x) > 3", TraitError),
        ("profile.traits.a == profile.traits.b", TraitError),
        ('"x" in profile.traits.tags', TraitError),
        ("'vip' in profile.segments", TraitError),
        ("profile.traits.flag < true", TraitError),
        ("profile.email.domain == 'x'", TraitError),
    ],
)
def test_trait_conditions_sql_cannot_answer_are_refused(
    source: str, error: type[Exception]
) -> None:
    """Bare truthiness, time, field-to-field, containment and segment references fail early."""
    with pytest.raises(error):
        parse_trait_condition(source)


def test_normal_form_reads_back_equal_and_checksum_ignores_the_name() -> None:
    """Renaming a segment changes nothing about who is in it."""
    text = """
        segment: x
        name: {name}
        match:
          - event: Order Completed
            within: 1d12h
            sum: {{property: revenue, more_than: 10000}}
          - not: {{messages: [opened, clicked], channel: email, within: 60d}}
        """
    one, two = load(text.format(name="One")), load(text.format(name="Two"))
    assert SegmentSpec.model_validate(segment_to_data(one)) == one
    assert segment_to_data(one)["match"]["all"][0]["within"] == "1d12h"
    assert segment_checksum(one) == segment_checksum(two)
    changed = load(text.format(name="One").replace("10000", "20000"))
    assert segment_checksum(changed) != segment_checksum(one)


def test_lifecycle_templates_follow_their_thresholds() -> None:
    """The generated stages carry the given days, and bad thresholds are refused."""
    files = lifecycle_segments(new_days=7, active_days=20, sleeping_days=60)
    assert "within: 7d" in files["lifecycle-new.yaml"]
    assert "within: 60d" in files["lifecycle-churned.yaml"]
    assert {"rfm-r3.yaml", "rfm-f1.yaml", "rfm-m2.yaml", "email-unengaged.yaml"} <= set(files)
    with pytest.raises(Exception, match="sleeping"):
        lifecycle_segments(active_days=90, sleeping_days=30)


def test_the_example_pack_ships_the_default_templates() -> None:
    """examples/ecommerce/segments holds what `touchline segments lifecycle` prints, unchanged,
    beside the pack's own segments for its journeys."""
    shipped = {Path(s.path).name: s.source for s in load_segment_dir(PACK)}
    defaults = lifecycle_segments()
    assert {name: shipped.get(name) for name in defaults} == defaults
    assert set(shipped) - set(defaults) == {"lapsed-buyers.yaml"}


def test_a_folder_reports_every_file_and_duplicate_keys(tmp_path: Path) -> None:
    """Two files with one key, and a broken file, are all reported in one error."""
    folder = tmp_path / "segments"
    folder.mkdir()
    (folder / "a.yaml").write_text("segment: a\nmatch: {consent: email}\n")
    (folder / "b.yaml").write_text("segment: a\nmatch: {consent: email}\n")
    (folder / "c.yaml").write_text("segment: c\nmatch: {consent: pigeon}\n")
    with pytest.raises(SegmentError) as caught:
        load_segment_dir(tmp_path)
    messages = [str(p) for p in caught.value.problems]
    assert any("already used" in m for m in messages)
    assert any("c.yaml:2: match.consent" in m for m in messages)
