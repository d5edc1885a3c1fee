"""A million pending waits: disk, worker memory, firing rate and lateness at a steady rate.

**The store.** One journey, ``Product Added`` → ``wait: 30d`` → ``send``
email. The first customer goes through the real path (ingest, one worker
round); the rows that produced — profile, identity, instance with its
``state``, timer, step log (and listeners, had the journey any) — are the
template for every other customer, bulk-inserted in chunks with explicit
ids (:func:`seed`). The store grows in levels (full: 100k, 500k and 1M
pending waits, due in 30 days).

**Per level**, with two worker processes running throughout
(:mod:`bench.worker_probe` ``--journeys-only``: the journey loop of
``touchline worker`` without its dispatcher thread, so that firing is
measured apart from delivery; each fire still writes its outbox row):

* **disk**: the timers table with its indexes, and the instances and
  listeners tables (PostgreSQL ``pg_total_relation_size`` after ``VACUUM``;
  SQLite pages per table and index from ``dbstat``);
* **steady firing**: a band of extra waits is made due at a steady rate
  (full: 1,000/s for 60 s) starting a few seconds ahead; each fired timer's
  **lateness** is its batch's commit time minus its due time;
* **worker memory**: the peak RSS of both worker processes during the band.

**At 1M**, after the workers stop: a backlog of due timers (full: 20,000)
is fired by ``Worker.run_once`` in this process until none is left
(**firing rate at depth**).

**Baselines**, on a bare table ``timers_raw (id, due_at)`` with an index
on ``due_at`` holding as many rows: its disk size; a plain DBAPI loop of
``SELECT id ... WHERE due_at <= now ORDER BY due_at LIMIT 200`` and
``DELETE ... WHERE id IN (...)``, one transaction per batch, emptying the
same backlog (rate), and polling every 200 ms (touchline's default
``TOUCHLINE_POLL_MS``) through a band at the same steady rate (lateness).
"""

from __future__ import annotations

import json
import sqlite3
import statistics
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from psycopg.types.json import Jsonb
from sqlalchemy import Engine, Table, bindparam, func, select, text, update

from bench.common import Result, Scratch, log, scratch_store
from bench.peers.procs import RssSampler, percentile, start_workers
from touchline.clock import SystemClock
from touchline.journeys.loader import LoadedJourney, load_journey_text
from touchline.messaging.template_files import load_template_text
from touchline.store.db import transaction
from touchline.store.journeys import apply_journeys
from touchline.store.tables import identities, instances, listeners, profiles, step_log, timers
from touchline.store.templates import apply_templates
from touchline.store.workspaces import create_workspace
from touchline.testing import FrozenClock, identify, send_events, track
from touchline.worker.loop import Worker

MB = 1024 * 1024
# Timers per claim and per baseline transaction: touchline's default batch.
BATCH = 200
# Customers generated and inserted per executemany: bounds the seeding memory.
SEED_CHUNK = 5000
# The baseline's poll interval when idle: touchline's default TOUCHLINE_POLL_MS.
POLL = 0.2
WORKERS = 2
# How long after a band's last due time its timers may take to fire before the
# level's measurement is cut short (the lateness then shows the workers did not
# keep up); the rest of the band is fired, unmeasured, before the next level.
BAND_GRACE = 240.0
# A band's first timer is due this long after its due times are written, plus a
# second per 5,000 timers (writing them takes that long on a busy machine).
BAND_LEAD = 3.0
FAR = timedelta(days=30)
TABLES: tuple[Table, ...] = (profiles, identities, instances, timers, step_log, listeners)
JOURNEY = textwrap.dedent(
    """
    journey: bench-long-wait
    category: transactional
    trigger:
      event: Product Added
    steps:
      - id: wait-30d
        wait: 30d
      - id: reminder
        send: {channel: email, template: bench-long-wait}
    """
)
TEMPLATE = textwrap.dedent(
    """
    template: bench-long-wait
    channel: email
    subject: Still thinking about it?
    html: <p>Your {{ event.properties.sku }} is still in your cart.</p>
    """
)


@dataclass(frozen=True)
class Scale:
    levels: tuple[int, ...]
    rate: int  # fires/s in the steady band
    seconds: int  # length of the steady band
    backlog: int  # due timers fired at depth for the rate


FULL = Scale(levels=(100_000, 500_000, 1_000_000), rate=1000, seconds=60, backlog=20_000)
QUICK = Scale(levels=(5_000, 10_000, 20_000), rate=200, seconds=10, backlog=2_000)


@dataclass
class Level:
    """What one level measured."""

    pending: int
    disk: dict[str, int]  # table -> bytes with its indexes
    band: int
    timer_rows: int = 0  # timers in the store when its disk was measured
    fired: int = 0
    lateness: list[float] = field(default_factory=list)
    rss_peak: int = 0
    origin: float = 0.0
    ended: float = 0.0

    @property
    def p50(self) -> float:
        return percentile(self.lateness, 0.5)

    @property
    def p99(self) -> float:
        return percentile(self.lateness, 0.99)


@dataclass(frozen=True)
class Template:
    """The calibration customer's rows, by table name."""

    workspace_id: str
    rows: dict[str, list[dict[str, Any]]]

    def one(self, table: str) -> dict[str, Any]:
        return self.rows[table][0]


# -- seeding ----------------------------------------------------------------------


def calibrate(engine: Engine) -> Template:
    """One customer through the real path; its rows are the template of every other."""
    now = SystemClock().now()
    ws = create_workspace(engine, "bench", now=now).id
    with transaction(engine) as conn:
        spec = load_journey_text(JOURNEY, file="bench.yaml")
        apply_journeys(conn, ws, [LoadedJourney("bench.yaml", spec, JOURNEY)], now=now)
        apply_templates(conn, ws, [load_template_text(TEMPLATE, file="t.yaml")], now=now)
    user = _user(0)
    send_events(
        engine,
        ws,
        [identify(user, email=_email(0)), track(user, "Product Added", _product(0))],
        now=now,
    )
    Worker(engine, clock=FrozenClock(now), owner="calibrate").run_once(now)
    with engine.connect() as conn:
        rows = {t.name: [dict(r._mapping) for r in conn.execute(select(t))] for t in TABLES}
    if len(rows["instances"]) != 1 or len(rows["timers"]) != 1:
        raise RuntimeError(f"the calibration customer did not wait: {rows}")
    return Template(ws, rows)


def _user(n: int) -> str:
    return f"user-{n:07d}"


def _email(n: int) -> str:
    return f"{_user(n)}@example.com"


def _product(n: int) -> dict[str, Any]:
    return {"cart_id": f"cart-{n:07d}", "sku": f"SKU-{n % 5000:05d}", "price": 89.9}


def _customer_rows(tmpl: Template, n: int, due: datetime) -> dict[str, list[dict[str, Any]]]:
    """Customer ``n``'s rows, copied from the template with its own ids, names and due time."""
    profile, instance, timer = tmpl.one("profiles"), tmpl.one("instances"), tmpl.one("timers")
    pid, iid = profile["id"] + n, instance["id"] + n
    state = dict(instance["state"])
    state["trigger"] = {**state["trigger"], "properties": _product(n)}
    logged = tmpl.rows["step_log"]
    return {
        "profiles": [{**profile, "id": pid, "user_id": _user(n), "email": _email(n)}],
        "identities": [{**tmpl.one("identities"), "value": _user(n), "profile_id": pid}],
        "instances": [{**instance, "id": iid, "profile_id": pid, "state": state}],
        "timers": [
            {**timer, "id": timer["id"] + n, "instance_id": iid, "profile_id": pid, "due_at": due}
        ],
        # Step log and listener rows take fresh ids: workers add rows to both meanwhile.
        "step_log": [_without_id(entry, instance_id=iid) for entry in logged],
        "listeners": [
            _without_id(entry, instance_id=iid, profile_id=pid) for entry in tmpl.rows["listeners"]
        ],
    }


def _without_id(row: dict[str, Any], **changes: Any) -> dict[str, Any]:
    return {**{k: v for k, v in row.items() if k != "id"}, **changes}


def seed(
    engine: Engine, tmpl: Template, start: int, stop: int, due: Callable[[int], datetime]
) -> None:
    """Insert customers ``[start, stop)`` waiting at the journey's wait, due at ``due(n)``."""
    by_name = {t.name: t for t in TABLES}
    for first in range(start, stop, SEED_CHUNK):
        rows: dict[str, list[dict[str, Any]]] = {t.name: [] for t in TABLES}
        for n in range(first, min(first + SEED_CHUNK, stop)):
            for name, table_rows in _customer_rows(tmpl, n, due(n)).items():
                rows[name] += table_rows
        with transaction(engine) as conn:
            for name, table_rows in rows.items():
                if not table_rows:
                    continue
                if conn.dialect.name == "postgresql":
                    _copy(conn, name, table_rows)
                else:
                    conn.execute(by_name[name].insert(), table_rows)
    if engine.dialect.name == "postgresql":
        with transaction(engine) as conn:
            for t in TABLES:
                if t.name in ("profiles", "instances", "timers"):
                    conn.execute(
                        text(
                            f"SELECT setval(pg_get_serial_sequence('{t.name}', 'id'), "
                            f"(SELECT coalesce(max(id), 1) FROM {t.name}))"
                        )
                    )


def _copy(conn: Any, table: str, rows: list[dict[str, Any]]) -> None:
    """PostgreSQL: the rows through ``COPY`` on the transaction's own connection.

    Ten times faster than ``executemany`` for a million customers. JSON
    values go as ``jsonb``; everything else as psycopg adapts it, which is
    what SQLAlchemy hands psycopg for these columns too.
    """
    columns = list(rows[0])
    driver = conn.connection.driver_connection
    with (
        driver.cursor() as cursor,
        cursor.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy,
    ):
        for row in rows:
            copy.write_row(
                [Jsonb(v) if isinstance(v, dict | list) else v for v in (row[c] for c in columns)]
            )


def make_due(
    engine: Engine, tmpl: Template, start: int, stop: int, *, origin: float, rate: float
) -> None:
    """Customers ``[start, stop)`` fall due one after the other at ``rate``/s from ``origin``."""
    first_timer = tmpl.one("timers")["id"]
    moves = [
        {"tid": first_timer + n, "due": datetime.fromtimestamp(origin + (n - start) / rate, UTC)}
        for n in range(start, stop)
    ]
    with transaction(engine) as conn:
        conn.execute(
            update(timers).where(timers.c.id == bindparam("tid")).values(due_at=bindparam("due")),
            moves,
        )


# -- disk -------------------------------------------------------------------------


def disk(store: Scratch, names: tuple[str, ...]) -> dict[str, int]:
    """Bytes of each table with its indexes."""
    if store.sqlite_path is None:
        conn = store.raw()
        try:
            conn.autocommit = True
            for name in names:
                conn.execute(f"VACUUM {name}")
            return {
                name: int(conn.execute("SELECT pg_total_relation_size(%s)", (name,)).fetchone()[0])
                for name in names
            }
        finally:
            conn.close()
    lite = sqlite3.connect(store.sqlite_path)
    try:
        owner: dict[str, str] = dict(lite.execute("SELECT name, tbl_name FROM sqlite_master"))
        sizes = dict.fromkeys(names, 0)
        for name, size in lite.execute("SELECT name, pgsize FROM dbstat WHERE aggregate = TRUE"):
            table = owner.get(name, name)
            if table in sizes:
                sizes[table] += int(size)
        return sizes
    finally:
        lite.close()


# -- the baseline -----------------------------------------------------------------


def _sqlite_time(value: datetime) -> str:
    return value.astimezone(UTC).replace(tzinfo=None).isoformat(sep=" ", timespec="microseconds")


class RawTimers:
    """The bare ``timers_raw (id, due_at)`` table and its select-and-delete loop."""

    def __init__(self, store: Scratch) -> None:
        self.store = store
        self.pg = store.sqlite_path is None
        self.conn = store.raw()
        mark = "%s" if self.pg else "?"
        self.pick = (
            f"SELECT id, due_at FROM timers_raw WHERE due_at <= {mark} ORDER BY due_at LIMIT {mark}"
        )
        if self.pg:
            self.conn.execute(
                "CREATE TABLE timers_raw (id bigserial PRIMARY KEY, due_at timestamptz NOT NULL)"
            )
        else:
            self.conn.execute(
                "CREATE TABLE timers_raw (id INTEGER PRIMARY KEY, due_at TIMESTAMP NOT NULL)"
            )
        self.conn.execute("CREATE INDEX ix_timers_raw_due ON timers_raw (due_at)")
        self._commit()

    def _value(self, at: datetime) -> Any:
        return at if self.pg else _sqlite_time(at)

    def _begin(self) -> None:
        if not self.pg:
            self.conn.execute("BEGIN IMMEDIATE")

    def _commit(self) -> None:
        if self.pg:
            self.conn.commit()
        elif self.conn.in_transaction:
            self.conn.execute("COMMIT")

    def add(self, dues: list[datetime]) -> None:
        mark = "%s" if self.pg else "?"
        for first in range(0, len(dues), SEED_CHUNK * 4):
            chunk = [(self._value(d),) for d in dues[first : first + SEED_CHUNK * 4]]
            self._begin()
            if self.pg:
                with self.conn.cursor() as cursor:
                    cursor.executemany(f"INSERT INTO timers_raw (due_at) VALUES ({mark})", chunk)
            else:
                self.conn.executemany(f"INSERT INTO timers_raw (due_at) VALUES ({mark})", chunk)
            self._commit()
        if self.pg:
            self.conn.execute("ANALYZE timers_raw")
            self._commit()

    def fire_once(self, now: datetime) -> list[Any]:
        """One batch: due ids picked and deleted in one transaction; their due times."""
        self._begin()
        rows = self.conn.execute(self.pick, (self._value(now), BATCH)).fetchall()
        if rows:
            marks = ", ".join(["%s" if self.pg else "?"] * len(rows))
            self.conn.execute(f"DELETE FROM timers_raw WHERE id IN ({marks})", [r[0] for r in rows])
        self._commit()
        return [r[1] for r in rows]

    def drain(self, now: datetime) -> tuple[int, float]:
        """Fire everything due at ``now`` as fast as possible: (fired, seconds)."""
        started = time.perf_counter()
        fired = 0
        while batch := self.fire_once(now):
            fired += len(batch)
        return fired, time.perf_counter() - started

    def steady(self, count: int, *, rate: float) -> list[float]:
        """``count`` rows due at ``rate``/s from a second ahead; each one's lateness at commit."""
        origin = time.time() + 1.0
        self.add([datetime.fromtimestamp(origin + i / rate, UTC) for i in range(count)])
        lateness: list[float] = []
        end = origin + count / rate + BAND_GRACE
        while len(lateness) < count and time.time() < end:
            dues = self.fire_once(datetime.now(UTC))
            committed = time.time()
            for due in dues:
                when = due if isinstance(due, datetime) else datetime.fromisoformat(due)
                if when.tzinfo is None:
                    when = when.replace(tzinfo=UTC)
                lateness.append(committed - when.timestamp())
            if not dues:
                time.sleep(POLL)
        return lateness

    def size(self) -> int:
        return disk(self.store, ("timers_raw",))["timers_raw"]

    def close(self) -> None:
        self.conn.close()


# -- the benchmark ----------------------------------------------------------------


def _probe_figures(outs: list[Path]) -> list[tuple[float, list[float]]]:
    """(commit time, lateness of its timers) per committed batch, all workers."""
    batches: list[tuple[float, list[float]]] = []
    for out in outs:
        figures = json.loads(out.read_text())
        lateness = iter(figures["lateness"])
        for committed, processed in figures["fired_at"]:
            batches.append((committed, [next(lateness) for _ in range(processed)]))
    return batches


def _wait_until(check: Callable[[], bool], *, until: float, alive: Callable[[], None]) -> bool:
    while time.time() < until:
        alive()
        if check():
            return True
        time.sleep(0.5)
    return check()


def measure(kind: str, folder: Path, *, scale: Scale) -> tuple[list[Level], dict[str, Any]]:
    """Every level with the workers running, then the firing rate at depth, then baselines."""
    band = scale.rate * scale.seconds
    levels: list[Level] = []
    extra: dict[str, Any] = {}
    with scratch_store(kind, "timers1m", folder) as store:
        engine = store.engine()
        try:
            tmpl = calibrate(engine)
            t0 = tmpl.one("instances")["entered_at"]
            far = t0 + FAR
            outs = [folder / f"timers1m-{kind}-{i}.json" for i in range(WORKERS)]
            env = {"TOUCHLINE_DATABASE_URL": store.url, "TOUCHLINE_LOG_LEVEL": "WARNING"}
            commands = [
                [sys.executable, "-m", "bench.worker_probe", "--journeys-only", str(o)]
                for o in outs
            ]
            # Customers 0..seeded-1 exist (0 is the template); those of earlier
            # bands have fired, so the store holds seeded - banded pending waits.
            seeded, banded = 1, 0
            with start_workers(commands, env=env, folder=folder, label=f"timers1m-{kind}") as procs:
                for pending in scale.levels:
                    log(f"timers1m/{kind}: seeding up to {pending:,} pending waits (not timed)")
                    top = pending + banded
                    seed(engine, tmpl, seeded, top, lambda n: far + timedelta(seconds=n))
                    seeded = top
                    store.analyze()
                    level = Level(pending, disk(store, ("timers", "instances", "listeners")), band)
                    with engine.connect() as conn:
                        level.timer_rows = conn.execute(
                            select(func.count()).select_from(timers)
                        ).scalar_one()
                    seed(engine, tmpl, seeded, seeded + band, lambda n: far)
                    level.origin = time.time() + BAND_LEAD + band / 5_000
                    make_due(
                        engine, tmpl, seeded, seeded + band, origin=level.origin, rate=scale.rate
                    )
                    first_band, seeded, banded = seeded, seeded + band, banded + band
                    log(f"timers1m/{kind}: {band:,} waits due at {scale.rate:,}/s over {pending:,}")
                    sampler = RssSampler(procs.pids).start()
                    first_id = tmpl.one("timers")["id"] + first_band

                    def band_fired(first: int = first_id) -> bool:
                        with engine.connect() as conn:
                            left = conn.execute(
                                select(func.count())
                                .select_from(timers)
                                .where(timers.c.id >= first, timers.c.id < first + band)
                            ).scalar_one()
                        return int(left) == 0

                    _wait_until(
                        band_fired,
                        until=level.origin + scale.seconds + BAND_GRACE,
                        alive=procs.check_alive,
                    )
                    level.ended = time.time()
                    level.rss_peak = sampler.stop()
                    levels.append(level)
                    if not _wait_until(
                        band_fired, until=time.time() + 3600, alive=procs.check_alive
                    ):
                        raise RuntimeError(f"the band of level {pending:,} never finished firing")
            for committed, lateness in _probe_figures(outs):
                for level in levels:
                    if level.origin <= committed <= level.ended:
                        level.lateness += lateness
                        level.fired += len(lateness)
            depth = seeded - banded
            log(f"timers1m/{kind}: firing a backlog of {scale.backlog:,} at depth {depth:,}")
            now = SystemClock().now()
            seed(engine, tmpl, seeded, seeded + scale.backlog, lambda n: now - timedelta(hours=1))
            store.analyze()
            worker = Worker(engine, clock=SystemClock(), owner="bench-depth", batch=BATCH)
            started = time.perf_counter()
            while worker.run_once(now):
                pass
            extra["fire_seconds"] = time.perf_counter() - started
            extra["fired"] = worker.totals.timers
            if worker.totals.timers != scale.backlog or worker.totals.failed:
                raise RuntimeError(f"fired {worker.totals.timers} of {scale.backlog}")
        finally:
            engine.dispose()
    with scratch_store(kind, "timers1m_raw", folder) as raw_store:
        raw = RawTimers(raw_store)
        try:
            depth = scale.levels[-1]
            log(f"timers1m/{kind}: bare table of {depth:,} rows; raw loops")
            base = datetime.now(UTC) + FAR
            raw.add([base + timedelta(seconds=n) for n in range(depth)])
            extra["raw_disk"] = raw.size()
            past = datetime.now(UTC) - timedelta(hours=1)
            raw.add([past] * scale.backlog)
            fired, seconds = raw.drain(datetime.now(UTC))
            if fired != scale.backlog:
                raise RuntimeError(f"the raw loop fired {fired} of {scale.backlog}")
            extra["raw_fire_seconds"] = seconds
            extra["raw_lateness"] = raw.steady(band, rate=scale.rate)
        finally:
            raw.close()
    return levels, extra


def rows(kind: str, levels: list[Level], extra: dict[str, Any], *, scale: Scale) -> list[Result]:
    top, bottom = levels[-1], levels[0]
    timers_mb = top.disk["timers"] / MB
    raw_mb = extra["raw_disk"] / MB
    raw_lateness = extra["raw_lateness"]
    per_level = "; ".join(
        f"{lv.pending:,}: RSS {lv.rss_peak / MB:,.0f} MB, p50 {lv.p50 * 1000:,.0f} ms, "
        f"p99 {lv.p99 * 1000:,.0f} ms, fired {lv.fired:,}/{lv.band:,} in "
        f"{lv.ended - lv.origin:,.0f}s, disk timers {lv.disk['timers'] / MB:,.0f} MB + instances "
        f"{lv.disk['instances'] / MB:,.0f} MB"
        for lv in levels
    )
    n = f"{top.pending:,}"
    return [
        Result(
            f"{n} waits: timers disk (lower better)",
            kind,
            touchline=timers_mb,
            baseline=raw_mb,
            unit="MB",
            notes=(
                f"timers {top.disk['timers'] / top.pending:,.0f} B/wait with 3 indexes; instances "
                f"{top.disk['instances'] / MB:,.0f} MB ({top.disk['instances'] / top.pending:,.0f} "
                f"B/wait), listeners {top.disk['listeners'] / MB:,.1f} MB; bare (id, due_at) + "
                f"index {extra['raw_disk'] / top.pending:,.0f} B/row"
            ),
        ),
        Result(
            f"{n} waits: worker RSS vs {bottom.pending:,} (lower better)",
            kind,
            touchline=top.rss_peak / MB,
            baseline=bottom.rss_peak / MB,
            unit="MB",
            notes=f"{WORKERS} worker processes, peak during each band; {per_level}",
        ),
        Result(
            f"{n} waits: firing at depth",
            kind,
            touchline=extra["fired"] / extra["fire_seconds"],
            baseline=scale.backlog / extra["raw_fire_seconds"],
            unit="timers/s",
            notes=(
                f"{scale.backlog:,} due; touchline {extra['fire_seconds']:.1f}s (one in-process "
                f"worker), raw {extra['raw_fire_seconds']:.2f}s"
            ),
        ),
        Result(
            f"{n} waits: p99 lateness at {scale.rate:,}/s (lower better)",
            kind,
            touchline=top.p99 * 1000,
            baseline=max(percentile(raw_lateness, 0.99) * 1000, 1e-3),
            unit="ms",
            notes=(
                f"touchline fired {top.fired:,} of {top.band:,}, p50 {top.p50 * 1000:,.0f} ms; raw "
                f"loop polling every {POLL * 1000:.0f} ms p50 "
                f"{statistics.median(raw_lateness) * 1000 if raw_lateness else 0:,.0f} ms"
            ),
        ),
    ]


def run(kind: str, folder: Path, *, scale: Scale) -> list[Result]:
    levels, extra = measure(kind, folder, scale=scale)
    return rows(kind, levels, extra, scale=scale)


def _iter_results(results: list[Result]) -> Iterator[str]:
    for r in results:
        yield f"{r.name} / {r.store}: touchline {r.touchline:,.1f} {r.unit}, baseline {r.baseline:,.1f} {r.unit}, ratio {r.ratio:.3g}"
        if r.notes:
            yield f"    {r.notes}"


if __name__ == "__main__":
    import argparse

    from bench.common import workdir

    parser = argparse.ArgumentParser(
        prog="python -m bench.timers_1m", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--store", choices=("sqlite", "postgresql"), default="postgresql")
    args = parser.parse_args()
    with workdir() as folder:
        found = run(args.store, folder, scale=QUICK if args.quick else FULL)
    print("\n".join(_iter_results(found)))
