"""Single-event ``POST /v1/track`` latency at a steady load, against a bare ASGI endpoint.

touchline side: a fresh migrated store with one workspace; touchline's HTTP
API as a separate uvicorn process (:func:`bench.ingest.server`); the
customers identified first through ``/v1/batch`` (not timed; on PostgreSQL
the store is then ``ANALYZE``d, as in the ingest row). Then an open-loop
load: request ``i`` is due at ``start + i / rate``, and :data:`THREADS`
client threads (keep-alive ``httpx.Client`` each) take the due requests in
turn, each one event of the ingest row's shop traffic. A request's latency
runs from its due time to its answer, so a server that falls behind is
charged for the wait (no coordinated omission). The first second of requests
is a warm-up and not counted; every answer must be 200 and every event
stored.

Baseline: the same load, the same events, against :mod:`bench.bare_ingest`
served by the same uvicorn command on a second fresh store: one plain
``INSERT`` and commit per request, no authentication, validation or profile.

Rows (lower is better): p50 and p99 of each.
"""

from __future__ import annotations

import json
import random
import statistics
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
from sqlalchemy import func, select

from bench.common import Result, log, scratch_store
from bench.ingest import (
    BATCH_SIZE,
    T0,
    encode_batches,
    identify_messages,
    post_all,
    server,
    track_messages,
    user_ids,
)
from touchline.store.tables import events
from touchline.store.workspaces import create_workspace

NAME = "single POST"
# Client threads sharing the schedule: a slow answer does not hold back the next request.
THREADS = 4
WARMUP_SECONDS = 1.0


@dataclass(frozen=True)
class Scale:
    rate: int  # requests a second
    seconds: float
    users: int


FULL = Scale(rate=100, seconds=60.0, users=5_000)
QUICK = Scale(rate=50, seconds=10.0, users=1_000)


def steady_load(
    base: str, bodies: list[bytes], *, rate: int, auth: tuple[str, str] | None
) -> list[float]:
    """POST ``bodies`` to ``/v1/track`` at ``rate`` a second; each one's latency from its due time."""
    latencies: list[float] = [0.0] * len(bodies)
    failures: list[str] = []
    start = time.perf_counter() + 0.2

    def run(first: int) -> None:
        headers = {"content-type": "application/json"}
        with httpx.Client(base_url=base, auth=auth, timeout=60.0) as client:
            for i in range(first, len(bodies), THREADS):
                due = start + i / rate
                pause = due - time.perf_counter()
                if pause > 0:
                    time.sleep(pause)
                response = client.post("/v1/track", content=bodies[i], headers=headers)
                latencies[i] = time.perf_counter() - due
                if response.status_code != 200:
                    failures.append(f"{response.status_code} {response.text[:300]}")
                    return

    threads = [threading.Thread(target=run, args=(k,), name=f"load-{k}") for k in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise RuntimeError(f"a request failed: {failures[0]}")
    return latencies[int(rate * WARMUP_SECONDS) :]


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def run(kind: str, folder: Path, *, scale: Scale) -> list[Result]:
    """The p50 and p99 rows for one store."""
    rng = random.Random(20261128)
    users = user_ids(scale.users)
    identify_bodies = encode_batches(identify_messages(users, rng), size=BATCH_SIZE)
    count = int(scale.rate * scale.seconds)
    tracks = track_messages(count, users, rng)
    bodies = [json.dumps(t).encode() for t in tracks]

    with scratch_store(kind, "latency", folder) as store:
        engine = store.engine()
        workspace = create_workspace(engine, "bench", now=T0)
        with server(store.url, folder) as base:
            log(f"latency/{kind}: identifying {scale.users:,} customers (not timed)")
            post_all(base, workspace.write_key, identify_bodies, clients=2)
            store.analyze()
            log(f"latency/{kind}: {count:,} single events at {scale.rate}/s")
            ours = steady_load(base, bodies, rate=scale.rate, auth=(workspace.write_key, ""))
        with engine.connect() as conn:
            stored = conn.execute(
                select(func.count()).select_from(events).where(events.c.type == "track")
            ).scalar_one()
        engine.dispose()
        if stored != count:
            raise RuntimeError(f"touchline stored {stored} of {count} events")

    with scratch_store(kind, "latency_bare", folder) as bare:
        target = f"sqlite:{bare.sqlite_path}" if bare.sqlite_path else str(bare.pg_conninfo)
        with server(
            bare.url,
            folder,
            factory="bench.bare_ingest:app_from_env",
            env={"BARE_INGEST_TARGET": target},
        ) as base:
            log(f"latency/{kind}: the same events to a bare endpoint")
            theirs = steady_load(base, bodies, rate=scale.rate, auth=None)
        conn = bare.raw()
        try:
            kept = conn.execute("SELECT count(*) FROM raw_events").fetchone()[0]
        finally:
            conn.close()
        if kept != count:
            raise RuntimeError(f"the bare endpoint stored {kept} of {count} events")

    note = (
        f"{count:,} events at {scale.rate}/s over {scale.seconds:.0f}s, {THREADS} client threads, "
        f"first {WARMUP_SECONDS:.0f}s not counted; touchline mean {statistics.mean(ours) * 1000:.1f} "
        f"ms, max {max(ours) * 1000:.0f} ms; bare mean {statistics.mean(theirs) * 1000:.1f} ms"
    )
    rows = []
    for label, share in (("p50", 0.50), ("p99", 0.99)):
        rows.append(
            Result(
                f"{NAME} {label} (lower better)",
                kind,
                touchline=percentile(ours, share) * 1000,
                baseline=percentile(theirs, share) * 1000,
                unit="ms",
                notes=note if label == "p99" else "",
            )
        )
    log(
        f"latency/{kind}: p50 {rows[0].touchline:.1f} ms vs {rows[0].baseline:.1f} ms, "
        f"p99 {rows[1].touchline:.1f} ms vs {rows[1].baseline:.1f} ms"
    )
    return rows
