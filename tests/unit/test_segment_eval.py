"""Evaluating a segment over loaded facts, and when its answer can next change: pure."""

from __future__ import annotations

import textwrap
from datetime import UTC, datetime, timedelta

from touchline.audience.segment_eval import (
    EventAgg,
    EventTime,
    Facts,
    compile_segment,
    holds,
    next_change,
)
from touchline.audience.segment_spec import load_segment_text

NOW = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


def segment(text: str):  # type: ignore[no-untyped-def]
    return compile_segment(load_segment_text(textwrap.dedent(text), file="s.yaml"))


def test_count_in_window_holds_and_expires_with_its_oldest_event() -> None:
    """3 orders in 90 days holds; the timer is when the oldest of them leaves the window."""
    seg = segment(
        """
        segment: s
        match: {event: Order Completed, within: 90d, count: {at_least: 3}}
        """
    )
    (leaf,) = seg.of(EventAgg)
    oldest = NOW - timedelta(days=80)
    facts = Facts(aggregates={leaf.sig: (3, oldest)})
    assert holds(seg.root, facts, NOW)
    assert next_change(seg, facts, NOW) == oldest + timedelta(days=90)
    assert not holds(seg.root, Facts(aggregates={leaf.sig: (2, oldest)}), NOW)


def test_last_before_turns_true_exactly_when_the_span_has_passed() -> None:
    """'Last order more than 30 days ago' is false at 29 days and true from 30 days on."""
    seg = segment(
        """
        segment: s
        match: {last: Order Completed, before: 30d}
        """
    )
    (leaf,) = seg.of(EventTime)
    last = NOW - timedelta(days=29)
    facts = Facts(times={leaf.sig: last})
    assert not holds(seg.root, facts, NOW)
    flip = next_change(seg, facts, NOW)
    assert flip == last + timedelta(days=30)
    assert holds(seg.root, facts, flip)
    assert not holds(seg.root, Facts(), NOW)  # never ordered: not "lapsed"


def test_without_is_the_second_event_absent_from_the_same_window() -> None:
    """Viewed within 7 days but not ordered within 7 days."""
    seg = segment(
        """
        segment: s
        match: {event: Product Viewed, within: 7d, without: Order Completed}
        """
    )
    viewed, ordered = sorted(seg.of(EventAgg), key=lambda leaf: leaf.name != "Product Viewed")
    seen = NOW - timedelta(days=2)
    assert holds(seg.root, Facts(aggregates={viewed.sig: (1, seen)}), NOW)
    both = Facts(aggregates={viewed.sig: (1, seen), ordered.sig: (1, NOW - timedelta(days=1))})
    assert not holds(seg.root, both, NOW)
    assert next_change(seg, both, NOW) == seen + timedelta(days=7)


def test_trait_conditions_use_the_expression_language_and_need_a_profile() -> None:
    """A merged or missing profile (no profile facts) is never a member."""
    seg = segment(
        """
        segment: s
        match: {profile: 'profile.traits.city == "Moscow" and profile.email != null'}
        """
    )
    profile = {"traits": {"city": "Moscow"}, "city": "Moscow", "email": "a@b.ru"}
    assert holds(seg.root, Facts(profile=profile), NOW)
    assert not holds(seg.root, Facts(profile={**profile, "email": None}), NOW)
    assert not holds(seg.root, Facts(), NOW)
    assert next_change(seg, Facts(profile=profile), NOW) is None
    assert not seg.timed


def test_sums_compare_decimals_from_the_database_as_numbers() -> None:
    """PostgreSQL sums come back as Decimal; 10000.50 is more than 10000."""
    from decimal import Decimal

    seg = segment(
        """
        segment: s
        match: {event: Order Completed, sum: {property: revenue, more_than: 10000}}
        """
    )
    (leaf,) = seg.of(EventAgg)
    assert holds(seg.root, Facts(aggregates={leaf.sig: (Decimal("10000.50"), None)}), NOW)
    assert not holds(seg.root, Facts(aggregates={leaf.sig: (Decimal("10000"), None)}), NOW)
