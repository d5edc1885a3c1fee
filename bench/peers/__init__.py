"""Delayed reminders run by touchline, Celery (Redis, ETA tasks) and procrastinate (PostgreSQL).

The workload (:mod:`bench.peers.plan`): N cart reminders due uniformly over
a window after the origin, 10 % of them cancelled by an order before they
are due. Every system gets the same plan, the same number of worker
processes (:data:`bench.peers.systems.WORKERS`, one job at a time each) and
sends to the same SMTP sink (:mod:`bench.peers.sink`), which notes who got
a message and when. Per system:

* **lateness** p50 and p99: the sink's accept time minus the due time, over
  the first send of each reminder that was not cancelled;
* **duplicates**: sends beyond the first to one customer;
* **cancelled sent**: cancelled reminders that were sent anyway;
* **missing**: reminders not cancelled and never sent;
* **peak RSS**: the most the worker processes (with their children) held at
  once, sampled four times a second through scheduling and running;
* **schedule**: how long handing over every reminder took, and **wall**:
  from the origin to the end of the run (the last due time plus the
  settling wait, or the last straggler).

``python -m bench.peers [--count N] [--window 10m] [--only touchline,celery]``
runs it alone; ``python -m bench.run --only peers`` adds its rows to the report.
"""

from __future__ import annotations

import argparse
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from bench.common import Result, log, workdir
from bench.peers.plan import Plan, draw
from bench.peers.procs import percentile
from bench.peers.sink import sink
from bench.peers.systems import SYSTEMS, WORKERS, Outcome

FULL_COUNT = 100_000
FULL_WINDOW = 600.0
QUICK_COUNT = 5_000
QUICK_WINDOW = 60.0
MB = 1024 * 1024


@dataclass(frozen=True)
class Figures:
    """What one system did with the plan."""

    system: str
    setup: str
    count: int
    p50: float  # seconds late
    p99: float
    worst: float
    duplicates: int
    cancelled_sent: int
    missing: int
    scheduled_late: int
    cancels_late: int
    rss_peak_mb: float
    schedule_seconds: float
    wall_seconds: float
    detail: str = ""

    @property
    def correct(self) -> bool:
        return not (self.duplicates or self.cancelled_sent or self.missing)


def judge(plan: Plan, outcome: Outcome) -> Figures:
    """Lateness, duplicates, wrong and missing sends from what the sink received."""
    due = {r.address: outcome.origin + r.due for r in plan.reminders}
    per_address = Counter(rcpt for _, rcpt in outcome.sends)
    first: dict[str, float] = {}
    for at, rcpt in sorted(outcome.sends):
        first.setdefault(rcpt, at)
    expected = plan.expected
    lateness = [first[a] - due[a] for a in expected if a in first]
    return Figures(
        system=outcome.system,
        setup=outcome.setup,
        count=len(plan.reminders),
        p50=percentile(lateness, 0.50),
        p99=percentile(lateness, 0.99),
        worst=max(lateness, default=0.0),
        duplicates=sum(n - 1 for n in per_address.values() if n > 1),
        cancelled_sent=sum(1 for a in plan.cancelled if a in per_address),
        missing=sum(1 for a in expected if a not in per_address),
        scheduled_late=outcome.scheduled_late,
        cancels_late=outcome.cancels_late,
        rss_peak_mb=outcome.rss_peak / MB,
        schedule_seconds=outcome.schedule_seconds,
        wall_seconds=outcome.ended - outcome.origin,
        detail=outcome.detail,
    )


def measure(
    folder: Path,
    *,
    count: int,
    window: float,
    systems: tuple[str, ...] = tuple(SYSTEMS),
    cancel_mode: str = "revoke",
) -> list[Figures]:
    """Run the plan through each system in turn, one sink for all."""
    plan = draw(count, window)
    out = []
    with sink(folder) as the_sink:
        for name in systems:
            log(f"peers/{name}: {count:,} reminders over {window:.0f}s, {WORKERS} workers")
            kwargs = {"cancel_mode": cancel_mode} if name == "celery" else {}
            the_sink.take()
            outcome = SYSTEMS[name](plan, folder, the_sink, **kwargs)
            figures = judge(plan, outcome)
            log(
                f"peers/{name}: p50 {figures.p50 * 1000:.0f} ms, p99 {figures.p99 * 1000:.0f} ms, "
                f"dup {figures.duplicates}, cancelled sent {figures.cancelled_sent}, "
                f"missing {figures.missing}, peak RSS {figures.rss_peak_mb:.0f} MB"
            )
            out.append(figures)
    return out


def describe(f: Figures) -> str:
    return (
        f"{f.system}: p50 {f.p50 * 1000:,.0f} ms, p99 {f.p99 * 1000:,.0f} ms, worst "
        f"{f.worst:,.1f}s; duplicates {f.duplicates}, cancelled sent {f.cancelled_sent}, "
        f"missing {f.missing}; peak RSS {f.rss_peak_mb:,.0f} MB; schedule "
        f"{f.schedule_seconds:,.1f}s, wall {f.wall_seconds:,.0f}s"
        + (f"; {f.scheduled_late} scheduled after due" if f.scheduled_late else "")
        + (f"; {f.cancels_late} cancels after due" if f.cancels_late else "")
        + (f"; {f.detail}" if f.detail else "")
        + f" [{f.setup}]"
    )


def rows(figures: list[Figures]) -> list[Result]:
    """Report rows: touchline against each peer, on p99 lateness and peak worker memory.

    Both are "lower is better", so a ratio under 1 favours touchline. The
    notes carry every figure of every system.
    """
    by_system = {f.system: f for f in figures}
    ours = by_system.get("touchline")
    out: list[Result] = []
    if ours is None:
        return out
    for peer in (f for f in figures if f.system != "touchline"):
        label = f"vs {peer.system}"
        out.append(
            Result(
                "reminders p99 lateness (lower better)",
                label,
                touchline=ours.p99 * 1000,
                baseline=max(peer.p99 * 1000, 1e-3),
                unit="ms",
                notes=f"{describe(ours)} | {describe(peer)}",
            )
        )
        out.append(
            Result(
                "reminders peak worker RSS (lower better)",
                label,
                touchline=ours.rss_peak_mb,
                baseline=peer.rss_peak_mb,
                unit="MB",
            )
        )
    return out


def run(folder: Path, *, count: int, window: float) -> list[Result]:
    return rows(measure(folder, count=count, window=window))


def _duration(text: str) -> float:
    units = {"s": 1, "m": 60, "h": 3600}
    if text and text[-1] in units:
        return float(text[:-1]) * units[text[-1]]
    return float(text)


def table(figures: list[Figures]) -> str:
    header = (
        "system", "p50 ms", "p99 ms", "dup", "cancelled sent", "missing", "peak RSS MB",
        "schedule s", "wall s", "queued late", "cancels late",
    )  # fmt: skip
    body = [
        (
            f.system,
            f"{f.p50 * 1000:,.0f}",
            f"{f.p99 * 1000:,.0f}",
            str(f.duplicates),
            str(f.cancelled_sent),
            str(f.missing),
            f"{f.rss_peak_mb:,.0f}",
            f"{f.schedule_seconds:,.1f}",
            f"{f.wall_seconds:,.0f}",
            str(f.scheduled_late),
            str(f.cancels_late),
        )
        for f in figures
    ]
    widths = [max(len(r[i]) for r in (header, *body)) for i in range(len(header))]
    lines = [
        "  ".join(
            c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))
        )
        for r in (header, *body)
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    notes = [f"{f.system}: {f.setup}" + (f"; {f.detail}" if f.detail else "") for f in figures]
    return "\n".join([*lines, "", *notes])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.peers", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--count", type=int, default=FULL_COUNT, help="reminders (default 100000)")
    parser.add_argument(
        "--window", type=_duration, default=FULL_WINDOW, help="due over, e.g. 60s, 10m"
    )
    parser.add_argument(
        "--only", default=",".join(SYSTEMS), help="comma-separated: touchline,celery,procrastinate"
    )
    parser.add_argument(
        "--celery-cancel", choices=("revoke", "check"), default="revoke", help="Celery cancellation"
    )
    args = parser.parse_args(argv)
    systems = tuple(s.strip() for s in args.only.split(",") if s.strip())
    unknown = set(systems) - set(SYSTEMS)
    if unknown:
        parser.error(f"unknown systems: {', '.join(sorted(unknown))}")
    with workdir() as folder:
        figures = measure(
            folder,
            count=args.count,
            window=args.window,
            systems=systems,
            cancel_mode=args.celery_cancel,
        )
    print(
        f"{args.count:,} reminders due over {args.window:.0f}s, 10% cancelled; {WORKERS} worker processes each\n"
    )
    print(table(figures))
    return 0 if all(f.correct for f in figures) else 1
