"""Scale-out on PostgreSQL: 1, 2 and 4 ``touchline worker`` processes draining one backlog.

The backlog: N ``Order Completed`` events, one per customer, each entering
the transactional ``order-confirmation`` journey of :mod:`bench.e2e_smtp`
and leaving one email in the outbox, which the worker's dispatcher thread
renders and hands to the capture channel (no SMTP host is set). It is built
once (customers identified and processed, then the N orders stored as
pending events, then ``ANALYZE``) in a seed database, and each run starts
from a copy of it (``CREATE DATABASE ... TEMPLATE``), so every run drains
the same rows from the same state.

A run starts K workers (:mod:`bench.worker_probe`: the real command, with a
stopwatch on its claims) and ends when the outbox shows N messages sent.
**Throughput** is N over the time from the first non-empty claim to the
last ``sent_at``; **claim latency** is the duration of the workers' event
claims that returned rows (p50, p99).

Each K runs twice: as is, and beside a long read transaction: a separate
connection opens ``REPEATABLE READ``, reads ``events`` and holds its
snapshot until the backlog is drained. Rows that die meanwhile (every event
claimed and marked done, every outbox row claimed and settled) cannot be
vacuumed, so index scans step over more and more dead tuples. The backlog
must still drain; the row reports the slowdown.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from bench import e2e_smtp
from bench.common import PG_ADMIN_URL, Result, log
from bench.peers.procs import RssSampler, percentile, start_workers
from touchline.store.db import make_engine, migrate

NAME = "scale-out drain"
WORKER_COUNTS = (1, 2, 4)
# A drain that has not finished in this long is stuck, not slow.
DRAIN_TIMEOUT = 1800.0
MB = 1024 * 1024


@dataclass(frozen=True)
class Drain:
    """One run: K workers, with or without a held snapshot."""

    workers: int
    held_snapshot: bool
    count: int
    seconds: float
    claim_p50_ms: float
    claim_p99_ms: float
    claims: int
    rss_peak_mb: float
    dead_tuples: int  # events + outbox, when the drain ended

    @property
    def rate(self) -> float:
        return self.count / self.seconds


def _conninfo(url: str) -> str:
    return "postgresql://" + url.split("://", 1)[1]


def _url(database: str) -> str:
    return PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + database


def _admin() -> psycopg.Connection[Any]:
    return psycopg.connect(_conninfo(PG_ADMIN_URL), autocommit=True)


@contextmanager
def database(name: str, *, template: str | None = None) -> Iterator[str]:
    """A new PostgreSQL database (a copy of ``template`` if given), dropped on exit; its URL."""
    with _admin() as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else ""))
    try:
        yield _url(name)
    finally:
        with _admin() as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def seed(url: str, count: int) -> None:
    """Customers identified and processed, then ``count`` orders stored and left pending."""
    engine = make_engine(url)
    try:
        migrate(engine)
        ws = e2e_smtp.setup(engine, count)
        tracks = e2e_smtp.orders(count)
        bodies = [
            {"batch": tracks[i : i + e2e_smtp.BATCH_SIZE]}
            for i in range(0, count, e2e_smtp.BATCH_SIZE)
        ]
        e2e_smtp.ingest_orders(engine, ws, bodies)
    finally:
        engine.dispose()
    with psycopg.connect(_conninfo(url), autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")


def _sent(url: str) -> tuple[int, float | None]:
    with psycopg.connect(_conninfo(url)) as conn:
        row = conn.execute(
            "SELECT count(*), max(sent_at) FROM outbox WHERE status = 'sent'"
        ).fetchone()
    assert row is not None
    return int(row[0]), (row[1].timestamp() if row[1] is not None else None)


def _dead_tuples(url: str) -> int:
    with psycopg.connect(_conninfo(url), autocommit=True) as conn:
        row = conn.execute(
            "SELECT coalesce(sum(n_dead_tup), 0) FROM pg_stat_user_tables "
            "WHERE relname IN ('events', 'outbox')"
        ).fetchone()
    return int(row[0]) if row else 0


def drain(url: str, folder: Path, *, workers: int, count: int, held_snapshot: bool) -> Drain:
    """Start ``workers`` probed workers on ``url`` and wait until all ``count`` messages are sent."""
    label = f"scaleout-{workers}{'-held' if held_snapshot else ''}"
    reader: psycopg.Connection[Any] | None = None
    if held_snapshot:
        reader = psycopg.connect(_conninfo(url))
        reader.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        reader.execute("SELECT count(*) FROM events").fetchone()  # the snapshot is taken here
    outs = [folder / f"{label}-{i}.json" for i in range(workers)]
    env = {
        "TOUCHLINE_DATABASE_URL": url,
        "TOUCHLINE_LOG_LEVEL": "WARNING",
    }
    commands = [[sys.executable, "-m", "bench.worker_probe", str(out)] for out in outs]
    try:
        with start_workers(commands, env=env, folder=folder, label=label) as procs:
            sampler = RssSampler(procs.pids).start()
            deadline = time.monotonic() + DRAIN_TIMEOUT
            while True:
                time.sleep(0.5)
                procs.check_alive()
                sent, last_sent = _sent(url)
                if sent >= count:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{label}: {sent} of {count} sent after {DRAIN_TIMEOUT}s")
            peak = sampler.stop()
        dead = _dead_tuples(url)
    finally:
        if reader is not None:
            reader.rollback()
            reader.close()
    claims: list[tuple[float, float, int]] = []
    for out in outs:
        figures = json.loads(out.read_text())
        claims += [tuple(c) for c in figures["claims"]["events"]]  # type: ignore[misc]
    busy = [c for c in claims if c[2] > 0]
    if not busy or last_sent is None:
        raise RuntimeError(f"{label}: no claim returned rows")
    started = min(c[0] for c in busy)
    seconds = [c[1] * 1000 for c in busy]
    return Drain(
        workers=workers,
        held_snapshot=held_snapshot,
        count=count,
        seconds=last_sent - started,
        claim_p50_ms=statistics.median(seconds),
        claim_p99_ms=percentile(seconds, 0.99),
        claims=len(busy),
        rss_peak_mb=peak / MB,
        dead_tuples=dead,
    )


def measure(
    folder: Path,
    *,
    count: int,
    worker_counts: tuple[int, ...] = WORKER_COUNTS,
    snapshots: tuple[bool, ...] = (False, True),
) -> list[Drain]:
    """Every K, plain then beside a held snapshot, each from a fresh copy of one seed."""
    prefix = f"tl_bench_{os.getpid()}_scaleout"
    out = []
    with database(f"{prefix}_seed") as seed_url:
        log(f"scaleout: seeding a backlog of {count:,} orders (not timed)")
        seed(seed_url, count)
        seed_name = seed_url.rsplit("/", 1)[1]
        for workers in worker_counts:
            for held in snapshots:
                with database(f"{prefix}_run", template=seed_name) as url:
                    what = "beside a held snapshot" if held else "alone"
                    log(f"scaleout: {workers} worker(s) {what}")
                    result = drain(url, folder, workers=workers, count=count, held_snapshot=held)
                    log(
                        f"scaleout: {workers} worker(s) {what}: {result.rate:,.0f} msgs/s, claim "
                        f"p50 {result.claim_p50_ms:.1f} ms p99 {result.claim_p99_ms:.1f} ms, "
                        f"{result.dead_tuples:,} dead tuples"
                    )
                    out.append(result)
    return out


def describe(d: Drain) -> str:
    return (
        f"{d.workers} worker(s){' + held snapshot' if d.held_snapshot else ''}: "
        f"{d.seconds:.1f}s, {d.rate:,.0f} msgs/s ({d.rate / d.workers:,.0f} per worker), claim "
        f"p50 {d.claim_p50_ms:.1f} ms p99 {d.claim_p99_ms:.1f} ms over {d.claims} claims, "
        f"peak RSS {d.rss_peak_mb:,.0f} MB, {d.dead_tuples:,} dead tuples at the end"
    )


def rows(drains: list[Drain]) -> list[Result]:
    """Speed-up of K workers over one, and what a held snapshot leaves of each K's rate."""
    plain = {d.workers: d for d in drains if not d.held_snapshot}
    held = {d.workers: d for d in drains if d.held_snapshot}
    out = []
    one = plain.get(1)
    for workers, d in sorted(plain.items()):
        if one is not None and workers != 1:
            out.append(
                Result(
                    f"{NAME}, {workers} workers vs 1",
                    "postgresql",
                    touchline=d.rate,
                    baseline=one.rate,
                    unit="msgs/s",
                    notes=f"{describe(d)} | {describe(one)}",
                )
            )
        if workers in held:
            out.append(
                Result(
                    f"{NAME}, {workers} workers, held snapshot vs none",
                    "postgresql",
                    touchline=held[workers].rate,
                    baseline=d.rate,
                    unit="msgs/s",
                    notes=describe(held[workers]),
                )
            )
    return out


def run(folder: Path, *, count: int) -> list[Result]:
    return rows(measure(folder, count=count))


if __name__ == "__main__":
    import argparse

    from bench.common import workdir

    parser = argparse.ArgumentParser(
        prog="python -m bench.scaleout", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--count", type=int, default=20_000, help="events in the backlog")
    parser.add_argument("--workers", default="1,2,4", help="worker counts, comma-separated")
    args = parser.parse_args()
    with workdir() as folder:
        results = measure(
            folder, count=args.count, worker_counts=tuple(int(w) for w in args.workers.split(","))
        )
    for drained in results:
        print(describe(drained))
