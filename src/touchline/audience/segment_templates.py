"""Ready-made segments: lifecycle stages, RFM scores and email engagement.

They are ordinary segment files (``touchline segments lifecycle`` prints or
writes them; the example pack ships them), generated from a few thresholds so
a shop can shift them to its own buying cycle. Activity means an order or a
product view, the Segment e-commerce spec's ``Order Completed`` and
``Product Viewed``.

Stages, for ``new_days`` N, ``active_days`` A and ``sleeping_days`` S (A < S):

* ``lifecycle-new`` — signed up within N days and never ordered;
* ``lifecycle-active`` — ordered or viewed a product within A days;
* ``lifecycle-sleeping`` — no activity within A days, some within S days;
* ``lifecycle-churned`` — ordered once at least, no activity within S days.

RFM over the last year: each of recency (R), frequency (F) and monetary value
(M) scores 1-3, and each score is a segment (``rfm-r3`` ...), so journeys
combine them: ``"rfm-r3" in profile.segments and "rfm-f3" in profile.segments``.

* R3: last order within 30 days; R2: within 90 days, not 30; R1: ordered, not within 90;
* F3: 5+ orders in 365 days; F2: 2-4; F1: 1;
* M3: 30 000+ revenue in 365 days; M2: 10 000 up to 30 000; M1: above 0, under 10 000.

Engagement: ``email-unengaged`` received email within 60 days but opened and
clicked none (machine opens do not count); ``email-reachable`` may receive
marketing email now.
"""

from __future__ import annotations

from touchline.audience.segment_spec import load_segment_text
from touchline.errors import InputError

__all__ = ["lifecycle_segments"]

_ACTIVITY = ("Order Completed", "Product Viewed")


def _activity(days: int) -> str:
    lines = [f"        - event: {name}\n          within: {days}d" for name in _ACTIVITY]
    return "      any:\n" + "\n".join(lines)


def lifecycle_segments(
    *,
    new_days: int = 14,
    active_days: int = 30,
    sleeping_days: int = 90,
    currency_high: int = 30_000,
    currency_mid: int = 10_000,
) -> dict[str, str]:
    """File name → YAML text of every ready-made segment, validated."""
    if not 0 < new_days <= 365 or not 0 < active_days < sleeping_days <= 3650:
        raise InputError(
            "thresholds: need 0 < new days <= 365 and 0 < active days < sleeping days <= 3650"
        )
    a, s = active_days, sleeping_days
    files = {
        "lifecycle-new.yaml": f"""\
segment: lifecycle-new
name: New customers
description: Signed up within {new_days} days and have not ordered yet.
match:
  - first: Signed Up
    within: {new_days}d
  - not:
      event: Order Completed
""",
        "lifecycle-active.yaml": f"""\
segment: lifecycle-active
name: Active customers
description: Ordered or viewed a product within {a} days.
match:
  any:
    - event: Order Completed
      within: {a}d
    - event: Product Viewed
      within: {a}d
""",
        "lifecycle-sleeping.yaml": f"""\
segment: lifecycle-sleeping
name: Sleeping customers
description: Silent for {a} days, but active within {s} days.
match:
  - not:
{_activity(a)}
  - any:
    - event: Order Completed
      within: {s}d
    - event: Product Viewed
      within: {s}d
""",
        "lifecycle-churned.yaml": f"""\
segment: lifecycle-churned
name: Churned customers
description: Ordered before, and silent for more than {s} days.
match:
  - event: Order Completed
  - not:
{_activity(s)}
""",
        "rfm-r3.yaml": _rfm(
            "r3", "Recency 3: last order within 30 days", "last: Order Completed\n  within: 30d"
        ),
        "rfm-r2.yaml": _rfm(
            "r2",
            "Recency 2: last order within 90 days, not within 30",
            "- last: Order Completed\n    within: 90d\n  - last: Order Completed\n    before: 30d",
        ),
        "rfm-r1.yaml": _rfm(
            "r1",
            "Recency 1: ordered, but not within 90 days",
            "last: Order Completed\n  before: 90d",
        ),
        "rfm-f3.yaml": _rfm(
            "f3", "Frequency 3: 5 or more orders in 365 days", _orders("at_least: 5")
        ),
        "rfm-f2.yaml": _rfm(
            "f2", "Frequency 2: 2 to 4 orders in 365 days", _orders("at_least: 2, at_most: 4")
        ),
        "rfm-f1.yaml": _rfm("f1", "Frequency 1: one order in 365 days", _orders("exactly: 1")),
        "rfm-m3.yaml": _rfm(
            "m3",
            f"Monetary 3: {currency_high}+ revenue in 365 days",
            _revenue(f"at_least: {currency_high}"),
        ),
        "rfm-m2.yaml": _rfm(
            "m2",
            f"Monetary 2: {currency_mid} up to {currency_high} revenue in 365 days",
            _revenue(f"at_least: {currency_mid}, less_than: {currency_high}"),
        ),
        "rfm-m1.yaml": _rfm(
            "m1",
            f"Monetary 1: some revenue, under {currency_mid}, in 365 days",
            _revenue(f"more_than: 0, less_than: {currency_mid}"),
        ),
        "email-unengaged.yaml": """\
segment: email-unengaged
name: Stopped opening email
description: Received email within 60 days, opened and clicked none (machine opens excluded).
match:
  - messages: sent
    channel: email
    within: 60d
  - messages: [opened, clicked]
    channel: email
    within: 60d
    count: {exactly: 0}
""",
        "email-reachable.yaml": """\
segment: email-reachable
name: Reachable by marketing email
description: Marketing email consent holds and the address is not suppressed.
match:
  consent: email
""",
    }
    for name, text in files.items():
        load_segment_text(text, file=name)  # a template that does not load is a bug here
    return files


def _rfm(score: str, description: str, body: str) -> str:
    return f"""\
segment: rfm-{score}
name: RFM {score.upper()}
description: "{description}."
match:
  {body}
"""


def _orders(bounds: str) -> str:
    return f"event: Order Completed\n  within: 365d\n  count: {{{bounds}}}"


def _revenue(bounds: str) -> str:
    return f"event: Order Completed\n  within: 365d\n  sum: {{property: revenue, {bounds}}}"
