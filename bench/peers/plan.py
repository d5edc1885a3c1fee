"""The reminders every system runs: when each is due, which are cancelled and when.

One plan is drawn per benchmark run from a fixed seed and handed to all three
systems, so they face the same due times and the same cancellations. Times
are offsets in seconds from the run's origin ``T``, which each system fixes
when it is ready (see :mod:`bench.peers`).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

# Share of reminders whose order arrives before they are due.
CANCEL_SHARE = 0.10
# An order arrives at least this long before its reminder is due: a cancellation
# sent at the last moment would measure a race, not the system's cancel path.
CANCEL_MARGIN = 2.0
# The first reminder is due this long after the origin, so that every order,
# even the one for the earliest reminder, can arrive CANCEL_MARGIN ahead.
START = 5.0
SEED = 20261127


@dataclass(frozen=True)
class Reminder:
    """Reminder ``n``: due ``due`` seconds after the origin; cancelled at ``cancel`` if set."""

    n: int
    due: float
    cancel: float | None = None

    @property
    def user(self) -> str:
        return f"r-{self.n:06d}"

    @property
    def address(self) -> str:
        return f"{self.user}@peers.example.com"

    @property
    def cart(self) -> str:
        return f"cart-{self.n:06d}"


@dataclass(frozen=True)
class Plan:
    reminders: tuple[Reminder, ...]
    window: float

    @property
    def cancelled(self) -> frozenset[str]:
        return frozenset(r.address for r in self.reminders if r.cancel is not None)

    @property
    def expected(self) -> frozenset[str]:
        """Addresses that must get exactly one reminder."""
        return frozenset(r.address for r in self.reminders if r.cancel is None)

    def cancellations(self) -> list[Reminder]:
        """The cancelled reminders in the order their orders arrive."""
        return sorted((r for r in self.reminders if r.cancel is not None), key=_cancel_time)


def _cancel_time(reminder: Reminder) -> float:
    assert reminder.cancel is not None
    return reminder.cancel


def draw(count: int, window: float, *, seed: int = SEED) -> Plan:
    """``count`` reminders due uniformly over ``[START, START + window)``; 10 % cancelled.

    A cancelled reminder's order arrives uniformly between the origin and
    :data:`CANCEL_MARGIN` seconds before it is due.
    """
    rng = random.Random(seed)
    dues = [START + rng.uniform(0, window) for _ in range(count)]
    cancelled = set(rng.sample(range(count), round(count * CANCEL_SHARE)))
    reminders = []
    for n, due in enumerate(dues):
        cancel = None
        if n in cancelled:
            cancel = rng.uniform(0, due - CANCEL_MARGIN)
        reminders.append(Reminder(n, due, cancel))
    return Plan(tuple(reminders), window)
