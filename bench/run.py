"""``python -m bench.run [--quick] [--store sqlite|postgresql|both]``: the benchmark report.

Each row compares touchline with a baseline doing the same work in the same
run (see :mod:`bench.ingest`, :mod:`bench.latency`, :mod:`bench.timers`, :mod:`bench.e2e_smtp`,
:mod:`bench.reports`, :mod:`bench.peers`, :mod:`bench.scaleout`,
:mod:`bench.timers_1m` and :mod:`bench.segments`), and prints the ratio
touchline / baseline. The ratio, not the absolute rate, is what to compare
between runs and machines. ``docs/benchmarks.md`` explains each row.

The benchmarks at a million rows (``reports``, ``timers1m``, ``segments``)
run on ``--big-store`` (PostgreSQL by default, the store for that size);
``--big-store both`` runs them on SQLite too, which roughly doubles their
time. ``--out FILE`` appends each row to FILE as JSON lines as soon as it is
measured, so a long run that is stopped keeps what it measured. A benchmark
that raises is logged and reported as failed, and the run goes on to the
next; the exit status is then 1.

``--profile DIR`` also runs touchline's side under cProfile, writes the
``.prof`` files to DIR and prints the top functions; its rates are slowed by
the profiler and say nothing about speed.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import pstats
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from bench import e2e_smtp, ingest, latency, peers, reports, scaleout, segments, timers, timers_1m
from bench.common import STORES, Result, log, machine, render, workdir

BENCHMARKS = (
    "ingest",
    "latency",
    "timers",
    "e2e",
    "reports",
    "peers",
    "scaleout",
    "timers1m",
    "segments",
)
# Benchmarks that run on PostgreSQL only, once whatever --store says.
PG_ONLY = ("peers", "scaleout")
# Benchmarks at a million rows, which run on --big-store.
BIG = ("reports", "timers1m", "segments")
# Functions shown per profile, by own time and by cumulative time.
PROFILE_TOP = 25


@dataclass(frozen=True)
class Scale:
    ingest_events: int
    ingest_users: int
    latency: latency.Scale
    timers: int
    e2e_orders: int
    report_events: int
    rollup_facts: int
    rollup_orders: int
    peers_reminders: int
    peers_window: float  # seconds
    scaleout_events: int
    timers1m: timers_1m.Scale
    segments: segments.Scale


FULL = Scale(
    ingest_events=50_000,
    ingest_users=5_000,
    latency=latency.FULL,
    timers=100_000,
    e2e_orders=2_000,
    report_events=10_000_000,
    rollup_facts=3_000,
    rollup_orders=1_000,
    peers_reminders=peers.FULL_COUNT,
    peers_window=peers.FULL_WINDOW,
    scaleout_events=20_000,
    timers1m=timers_1m.FULL,
    segments=segments.FULL,
)
# Small enough for a smoke run in under two minutes on two cores, both stores.
QUICK = Scale(
    ingest_events=10_000,
    ingest_users=1_000,
    latency=latency.QUICK,
    timers=20_000,
    e2e_orders=300,
    report_events=1_000_000,
    rollup_facts=500,
    rollup_orders=200,
    peers_reminders=2_000,
    peers_window=30.0,
    scaleout_events=1_000,
    timers1m=timers_1m.QUICK,
    segments=segments.QUICK,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller workloads, for a smoke run")
    parser.add_argument("--store", choices=(*STORES, "both"), default="both")
    parser.add_argument(
        "--big-store",
        choices=(*STORES, "both"),
        default="postgresql",
        help=f"store(s) for {', '.join(BIG)} (default postgresql)",
    )
    parser.add_argument("--only", choices=BENCHMARKS, help="run one benchmark")
    parser.add_argument(
        "--out", type=Path, metavar="FILE", help="append each row to FILE (JSON lines)"
    )
    parser.add_argument("--profile", type=Path, metavar="DIR", help="profile touchline's side")
    parser.add_argument(
        "--no-analyze",
        dest="analyze",
        action="store_false",
        help="ingest: skip PostgreSQL's ANALYZE after the identify phase (a store filled from empty)",
    )
    args = parser.parse_args(argv)

    scale = QUICK if args.quick else FULL
    stores = STORES if args.store == "both" else (args.store,)
    big_stores = STORES if args.big_store == "both" else (args.big_store,)
    chosen = (args.only,) if args.only else BENCHMARKS
    if args.profile is not None:
        args.profile.mkdir(parents=True, exist_ok=True)
    facts = machine(stores)
    facts.append(("workload", "quick" if args.quick else "full"))
    facts.append(("1M-row benchmarks on", ", ".join(big_stores)))

    results: list[Result] = []
    failed: list[str] = []

    def keep(found: list[Result]) -> None:
        results.extend(found)
        if args.out is not None:
            with args.out.open("a", encoding="utf-8") as out:
                for row in found:
                    out.write(json.dumps(dataclasses.asdict(row)) + "\n")

    with workdir() as folder:
        for name in chosen:
            if name in PG_ONLY:
                runs: tuple[str | None, ...] = (None,)
            else:
                runs = big_stores if name in BIG else stores
            for kind in runs:
                label = name if kind is None else f"{name}/{kind}"
                started = time.monotonic()
                try:
                    found = _run_one(name, kind, folder, scale, args)
                except Exception:
                    log(f"{label}: FAILED\n{traceback.format_exc()}")
                    failed.append(label)
                    continue
                for row in found:
                    log(f"{label}: {row.name} {row.store}: ratio {row.ratio:.3g}")
                log(f"{label}: done in {time.monotonic() - started:.0f} s")
                keep(found)

    title = (
        "touchline benchmarks (ratio = touchline / baseline, same run; "
        "higher is better unless the row says lower)"
    )
    if args.profile is not None:
        title += "\nPROFILED RUN: rates are slowed by cProfile and not comparable"
    if not args.analyze:
        title += "\nNO ANALYZE: PostgreSQL planned the ingest store with empty-table statistics"
    if failed:
        title += "\nFAILED (see the log): " + ", ".join(failed)
    print(render(results, facts, title=title))
    if args.profile is not None:
        for path in sorted(args.profile.glob("*.prof")):
            print(f"\n== {path.name} ==")
            print(top_functions(path))
    return 1 if failed else 0


def _run_one(
    name: str, kind: str | None, folder: Path, scale: Scale, args: argparse.Namespace
) -> list[Result]:
    """One benchmark on one store (None: PostgreSQL-only), its headline row last."""
    if name == "peers":
        return peers.run(folder, count=scale.peers_reminders, window=scale.peers_window)
    if name == "scaleout":
        return scaleout.run(folder, count=scale.scaleout_events)
    assert kind is not None
    prof = args.profile / f"{name}-{kind}" if args.profile else None
    if name == "ingest":
        return [
            ingest.run(
                kind,
                folder,
                events_count=scale.ingest_events,
                users_count=scale.ingest_users,
                analyze=args.analyze,
                profile_to=prof,
            )
        ]
    if name == "latency":
        return latency.run(kind, folder, scale=scale.latency)
    if name == "timers":
        return [
            timers.run(
                kind,
                folder,
                count=scale.timers,
                profile_to=prof.with_suffix(".prof") if prof else None,
            )
        ]
    if name == "e2e":
        return [e2e_smtp.run(kind, folder, count=scale.e2e_orders, profile_to=prof)]
    if name == "timers1m":
        return timers_1m.run(kind, folder, scale=scale.timers1m)
    if name == "segments":
        return segments.run(kind, folder, scale=scale.segments, profile_to=args.profile)
    return list(
        reports.run(
            kind,
            folder,
            events=scale.report_events,
            facts=scale.rollup_facts,
            orders=scale.rollup_orders,
        )
    )


def top_functions(path: Path) -> str:
    out = io.StringIO()
    stats = pstats.Stats(str(path), stream=out)
    stats.strip_dirs()
    out.write("-- by own time --\n")
    stats.sort_stats("tottime").print_stats(PROFILE_TOP)
    out.write("-- by cumulative time --\n")
    stats.sort_stats("cumulative").print_stats(PROFILE_TOP)
    return out.getvalue()


if __name__ == "__main__":
    sys.exit(main())
