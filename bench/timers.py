"""Firing due timers: ``Worker.run_once`` until none are left, against a raw delete loop.

touchline side: a fresh migrated store with one journey (``Product Added`` →
``wait: 1h`` → ``send`` email) and N instances waiting at the ``wait``, one
per customer. The first customer goes through the real path (ingest, then a
worker round) and the rows it produced — profile, identity, instance with
its ``state`` (``trigger``, ``context``, ``visits``), timer, step log — are
the template for the other N-1, bulk-inserted with SQLAlchemy Core
executemany and explicit ids (PostgreSQL sequences are moved past them).
Entries are spread over one hour, so timers are due over one hour.
PostgreSQL is ``ANALYZE``d after seeding, as for ingest. The clock is then frozen past the last due time and ``Worker.run_once`` is
called until it does nothing; the timed part is that loop only. Afterwards
the outbox must hold N messages, the timers table must be empty and every
instance completed.

Baseline: a bare table ``timers_raw (id, due_at)`` with an index on
``due_at``, holding the same N due times, emptied by a plain DBAPI loop of
``SELECT id ... WHERE due_at <= ? ORDER BY due_at LIMIT 200`` and
``DELETE ... WHERE id IN (...)``, one transaction per batch. It is the
least work any timer store can do per fire: find, remove, commit.
"""

from __future__ import annotations

import copy
import cProfile
import statistics
import textwrap
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, Table, func, select, text

from bench.common import Result, Scratch, log, scratch_store, spread
from touchline.journeys.loader import LoadedJourney, load_journey_text
from touchline.store.db import transaction
from touchline.store.journeys import apply_journeys
from touchline.store.tables import identities, instances, outbox, profiles, step_log, timers
from touchline.store.workspaces import create_workspace
from touchline.testing import FrozenClock, identify, send_events, track
from touchline.worker.loop import Worker

NAME = "timer firing"
# Timers per claim, and per baseline transaction: the worker's default batch.
BATCH = 200
# The raw loop takes a fraction of a second, so one hiccup would swing it; the
# median of this many runs is reported.
RAW_REPEATS = 5
# Rows per executemany while seeding: bounds memory, keeps statements large.
SEED_CHUNK = 5000
T0 = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)
# Entries are spread over this span, so timers fall due over it too.
SPREAD = timedelta(hours=1)
JOURNEY = textwrap.dedent(
    """
    journey: bench-cart-reminder
    trigger:
      event: Product Added
    steps:
      - id: wait-1h
        wait: 1h
      - id: reminder
        send: {channel: email, template: cart-1}
    """
)


# -- seeding ----------------------------------------------------------------------


def seed(engine: Engine, count: int) -> datetime:
    """N waiting instances (see the module docstring); returns when the last timer is due."""
    ws = create_workspace(engine, "bench", now=T0).id
    with transaction(engine) as conn:
        spec = load_journey_text(JOURNEY, file="bench.yaml")
        apply_journeys(conn, ws, [LoadedJourney("bench.yaml", spec, JOURNEY)], now=T0)
    first = "user-000000"
    send_events(
        engine,
        ws,
        [
            identify(first, email=f"{first}@example.com", firstName="Anna"),
            track(first, "Product Added", _product(0)),
        ],
        now=T0,
    )
    Worker(engine, clock=FrozenClock(T0), owner="seed").run_once(T0)
    with engine.connect() as conn:
        template = {
            table.name: [dict(r._mapping) for r in conn.execute(select(table))]
            for table in (profiles, identities, instances, timers, step_log)
        }
    if not (len(template["instances"]) == len(template["timers"]) == 1):
        raise RuntimeError(f"the calibration customer did not wait: {template}")
    profile, instance, timer = (template[n][0] for n in ("profiles", "instances", "timers"))
    logged = template["step_log"]

    step = SPREAD / count
    rows: dict[str, list[dict[str, Any]]] = {name: [] for name in template}
    last_due = timer["due_at"]
    for n in range(1, count):
        user = f"user-{n:06d}"
        pid, iid = profile["id"] + n, instance["id"] + n
        entered = T0 + step * n
        last_due = entered + (timer["due_at"] - instance["entered_at"])
        rows["profiles"].append(
            {**profile, "id": pid, "user_id": user, "email": f"{user}@example.com"}
        )
        rows["identities"].append({**template["identities"][0], "value": user, "profile_id": pid})
        state = copy.deepcopy(instance["state"])
        state["trigger"]["properties"] = _product(n)
        state["trigger"]["timestamp"] = entered.isoformat()
        rows["instances"].append(
            {
                **instance,
                "id": iid,
                "profile_id": pid,
                "state": state,
                "entered_at": entered,
                "updated_at": entered,
            }
        )
        rows["timers"].append(
            {
                **timer,
                "id": timer["id"] + n,
                "instance_id": iid,
                "profile_id": pid,
                "due_at": last_due,
            }
        )
        rows["step_log"] += [
            {**entry, "id": entry["id"] + len(logged) * n, "instance_id": iid, "at": entered}
            for entry in logged
        ]
    tables: dict[str, Table] = {
        t.name: t for t in (profiles, identities, instances, timers, step_log)
    }
    for name, table_rows in rows.items():
        with transaction(engine) as conn:
            for start in range(0, len(table_rows), SEED_CHUNK):
                conn.execute(tables[name].insert(), table_rows[start : start + SEED_CHUNK])
            if conn.dialect.name == "postgresql" and "id" in tables[name].c:
                conn.execute(
                    text(
                        f"SELECT setval(pg_get_serial_sequence('{name}', 'id'), "
                        f"(SELECT max(id) FROM {name}))"
                    )
                )
    return last_due


def _product(n: int) -> dict[str, Any]:
    return {
        "cart_id": f"cart-{n:06d}",
        "product_id": f"p-{n % 5000:05d}",
        "sku": f"SKU-{n % 5000:05d}-M",
        "name": f"Northwind Sneaker {n % 5000}",
        "category": "Shoes",
        "price": 89.9,
        "quantity": 1,
        "currency": "EUR",
    }


def fire_all(engine: Engine, *, now: datetime, profile_to: Path | None = None) -> tuple[int, float]:
    """Run the worker at ``now`` until idle; (timers fired, seconds)."""
    worker = Worker(engine, clock=FrozenClock(now), owner="bench", batch=BATCH)
    profiler = cProfile.Profile() if profile_to is not None else None
    started = time.perf_counter()
    if profiler is not None:
        profiler.enable()
    while worker.run_once(now):
        pass
    if profiler is not None:
        profiler.disable()
    elapsed = time.perf_counter() - started
    if profiler is not None and profile_to is not None:
        profiler.dump_stats(profile_to)
    if worker.totals.failed:
        raise RuntimeError(f"{worker.totals.failed} timers failed")
    return worker.totals.timers, elapsed


def check_fired(engine: Engine, count: int) -> None:
    with engine.connect() as conn:
        sent = conn.execute(select(func.count()).select_from(outbox)).scalar_one()
        left = conn.execute(select(func.count()).select_from(timers)).scalar_one()
        done = conn.execute(
            select(func.count()).select_from(instances).where(instances.c.status == "completed")
        ).scalar_one()
    if (sent, left, done) != (count, 0, count):
        raise RuntimeError(
            f"expected {count} sends; outbox {sent}, timers left {left}, done {done}"
        )


# -- the baseline -----------------------------------------------------------------


def raw_delete_loop(store: Scratch, due_times: list[datetime], *, now: datetime) -> float:
    """(Re)create and fill ``timers_raw`` (not timed), then empty it BATCH at a time; seconds."""
    pg = store.kind == "postgresql"
    conn = store.raw()
    try:
        conn.execute("DROP TABLE IF EXISTS timers_raw")
        if pg:
            conn.execute(
                "CREATE TABLE timers_raw (id bigserial PRIMARY KEY, due_at timestamptz NOT NULL)"
            )
            conn.execute("CREATE INDEX ix_timers_raw_due ON timers_raw (due_at)")
            with conn.cursor() as cursor:
                cursor.executemany(
                    "INSERT INTO timers_raw (due_at) VALUES (%s)", [(d,) for d in due_times]
                )
            conn.commit()
            conn.execute("ANALYZE timers_raw")
            conn.commit()
            pick = "SELECT id FROM timers_raw WHERE due_at <= %s ORDER BY due_at LIMIT %s"
            until: Any = now
        else:
            conn.execute(
                "CREATE TABLE timers_raw (id INTEGER PRIMARY KEY, due_at TIMESTAMP NOT NULL)"
            )
            conn.execute("CREATE INDEX ix_timers_raw_due ON timers_raw (due_at)")
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(  # stored as touchline's SQLite columns store them: naive UTC text
                "INSERT INTO timers_raw (due_at) VALUES (?)",
                [(_sqlite_time(d),) for d in due_times],
            )
            conn.execute("COMMIT")
            pick = "SELECT id FROM timers_raw WHERE due_at <= ? ORDER BY due_at LIMIT ?"
            until = _sqlite_time(now)
        started = time.perf_counter()
        deleted = 0
        while True:
            if not pg:
                conn.execute("BEGIN IMMEDIATE")
            ids = [row[0] for row in conn.execute(pick, (until, BATCH)).fetchall()]
            if ids:
                marks = ", ".join(["%s" if pg else "?"] * len(ids))
                conn.execute(f"DELETE FROM timers_raw WHERE id IN ({marks})", ids)
            if pg:
                conn.commit()
            else:
                conn.execute("COMMIT")
            if not ids:
                break
            deleted += len(ids)
        elapsed = time.perf_counter() - started
    finally:
        conn.close()
    if deleted != len(due_times):
        raise RuntimeError(f"the baseline deleted {deleted} of {len(due_times)}")
    return elapsed


def _sqlite_time(value: datetime) -> str:
    return value.astimezone(UTC).replace(tzinfo=None).isoformat(sep=" ", timespec="microseconds")


# -- the benchmark ----------------------------------------------------------------


def run(kind: str, folder: Path, *, count: int, profile_to: Path | None = None) -> Result:
    with scratch_store(kind, "timers", folder) as store:
        engine = store.engine()
        log(f"timers/{kind}: seeding {count:,} waiting instances (not timed)")
        last_due = seed(engine, count)
        store.analyze()
        with engine.connect() as conn:
            due_times = list(conn.execute(select(timers.c.due_at).order_by(timers.c.id)).scalars())
        fire_at = last_due + timedelta(minutes=1)
        log(f"timers/{kind}: firing {count:,} timers")
        fired, elapsed = fire_all(engine, now=fire_at, profile_to=profile_to)
        check_fired(engine, count)
        engine.dispose()
    if fired != count:
        raise RuntimeError(f"the worker fired {fired} of {count}")

    with scratch_store(kind, "timers_raw", folder) as raw_store:
        log(f"timers/{kind}: raw select-and-delete of {count:,} rows, {RAW_REPEATS} times")
        raw_runs = [raw_delete_loop(raw_store, due_times, now=fire_at) for _ in range(RAW_REPEATS)]
    raw_elapsed = statistics.median(raw_runs)

    return Result(
        NAME,
        kind,
        touchline=count / elapsed,
        baseline=count / raw_elapsed,
        unit="timers/s",
        notes=(
            f"{count:,} timers, batch {BATCH}; touchline {elapsed:.1f}s; raw {spread(raw_runs)}"
        ),
    )
