"""Segments over a big audience: full builds against a hand-written query, and the cost per event.

**The store.** A fresh migrated store with one workspace, filled by SQL
inside the database (:func:`generate`): ``generate_series`` on PostgreSQL, a
recursive CTE on SQLite, a chunk of ids per statement, with the filled
tables' secondary indexes dropped for the load and rebuilt after it
(PostgreSQL is then ``VACUUM ANALYZE``d, as autovacuum would have done;
SQLite keeps no statistics, as touchline runs it). Every value is an
integer hash of a row number, so both stores hold the very same rows:

* C customers (profiles with a user id and an email); each has a day of last
  activity (the square of a uniform draw over the year, so about 29 % were
  active within 30 days and half within 90) and a sign-up day between it and
  a year ago; 70 % have a marketing email consent;
* one ``Signed Up`` event per customer and E − C more events over each
  customer's active span: pages 45 %, ``Product Viewed`` 30 %,
  ``Product Added`` 10 %, ``Cart Viewed`` 5 %, ``Checkout Started`` 5 %,
  ``Order Completed`` 5 % (revenue 500-10,000); who does them is the product
  of two uniform draws, so a tenth of the customers do a third of the events
  and some do none;
* two marketing emails (``sent``) within 75 days to 60 % of the customers,
  about a third of them ``opened``.

**Full build** (per segment, default ``lifecycle-sleeping``,
``lifecycle-active`` and ``rfm-m2`` of ``touchline segments lifecycle``):

* touchline: :func:`~touchline.audience.segment_runtime.build_segment` —
  the first build (everyone qualifying enters, changes and timers are
  written), then a rebuild of the unchanged data (no difference to write;
  the timers are rewritten);
* baseline: one hand-written query returning the same profile ids (the
  ``GROUP BY`` over ``events`` a DBA would write, :data:`HAND_QUERIES`),
  median of :data:`RUNS`.

The members after the build must equal the hand query's answer (asserted).
The notes give the segment's own member query alone, summed over the build's
ranges of profile ids.

**Per event.** All 15 lifecycle, RFM and email segments are installed. A
sample of new events (the same mix, for customers drawn at random) is
processed by the worker's own :func:`~touchline.worker.claims.process_events`
in batches of the worker's size, twice each: once with the segments and once
with them archived (the observer then finds none), the order alternating per
batch so neither side always meets a warm cache. Per event it records the
segment observer's time and the event's processing (the audience observers
plus the journeys' ``handle_event``, no journeys installed); the batch's wall
time gives the rate. Before that, each sampled customer is brought to the
state a build gives (one evaluation against every segment) and the segments
are marked built, so changes are announced as in a running workspace.
"""

from __future__ import annotations

import contextlib
import cProfile
import random
import re
import sqlite3
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from unittest.mock import patch

import psycopg
from sqlalchemy import Engine, bindparam, func, insert, select, text, update

from bench.common import Result, Scratch, log, scratch_store, spread
from touchline.audience import segments as segments_api
from touchline.audience.segment_runtime import BUILD_CHUNK, CACHE, build_segment, evaluate_profile
from touchline.audience.segment_sql import member_query
from touchline.audience.segment_store import LoadedSegment, compiled
from touchline.audience.segment_templates import lifecycle_segments
from touchline.store.db import transaction
from touchline.store.runtime import Runtime
from touchline.store.tables import EVENT_PENDING, events, profiles, segments
from touchline.store.types import UTCDateTime
from touchline.store.workspaces import create_workspace
from touchline.worker import claims

BUILD_NAME = "segment build"
REBUILD_NAME = "segment rebuild"
EVENT_NAME = "event with 15 segments"
# Timed runs of the hand-written query; the median counts.
RUNS = 3
SEED = 20261201
# The instant every figure is computed at; the generated history is the year before it.
NOW = datetime(2026, 12, 1, tzinfo=UTC)
DAY = 86_400
# Ids generated per INSERT ... SELECT (one transaction each, a progress line each).
GEN_CHUNK = 1_000_000
# Events per worker batch: touchline's default TOUCHLINE_CLAIM_BATCH.
BATCH = 200
OWNER = "bench-segments"
LEASE = timedelta(minutes=5)
# Odd 32-bit multipliers: hash(k, x) = x * MULT[k] mod 2^32, the same in both stores.
MULT = (
    2654435761,
    2246822519,
    3266489917,
    2869860233,
    3432918353,
    2970697373,
    3339675911,
    2284105051,
    3735928559,
    2899628479,
    3624381079,
    2447445413,
    3977326529,
)
TABLES = ("profiles", "events", "consents", "message_events")
MEASURED = ("lifecycle-sleeping", "lifecycle-active", "rfm-m2")

# Share of each kind of event in 100 (generated and sampled alike), cumulative.
MIX = (
    (45, "page", "Catalog"),
    (75, "track", "Product Viewed"),
    (85, "track", "Product Added"),
    (90, "track", "Cart Viewed"),
    (95, "track", "Checkout Started"),
    (100, "track", "Order Completed"),
)
ACTIVITY = "('Order Completed', 'Product Viewed')"
REVENUE = {
    "sqlite": "json_extract(properties, '$.revenue')",
    "postgresql": "(properties ->> 'revenue')::numeric",
}
# What a DBA would write for each measured segment: the profile ids, nothing else.
HAND_QUERIES = {
    "lifecycle-sleeping": (
        "SELECT profile_id FROM events "
        f"WHERE workspace_id = :ws AND name IN {ACTIVITY} AND timestamp > :since_90d "
        "GROUP BY profile_id HAVING max(timestamp) <= :since_30d"
    ),
    "lifecycle-active": (
        "SELECT DISTINCT profile_id FROM events "
        f"WHERE workspace_id = :ws AND name IN {ACTIVITY} AND timestamp > :since_30d"
    ),
    "rfm-m2": (
        "SELECT profile_id FROM events "
        "WHERE workspace_id = :ws AND name = 'Order Completed' AND timestamp > :since_365d "
        "GROUP BY profile_id HAVING sum({revenue}) >= 10000 AND sum({revenue}) < 30000"
    ),
}


@dataclass(frozen=True)
class Scale:
    customers: int
    events: int  # including one Signed Up per customer
    sample: int  # events processed per side in the per-event measurement


FULL = Scale(customers=1_000_000, events=10_000_000, sample=5_000)
QUICK = Scale(customers=20_000, events=200_000, sample=1_000)


# -- generation ---------------------------------------------------------------------


def _h(k: int, x: str) -> str:
    return f"({x} * {MULT[k]} % 4294967296)"


def _u16(k: int, x: str) -> str:
    """A uniform draw in 0..65535."""
    return f"({_h(k, x)} / 65536)"


def _customer(p: str) -> tuple[str, str]:
    """Seconds before NOW of the customer's last activity and of their sign-up."""
    days = f"({_u16(1, p)} * {_u16(1, p)} * 365 / 4294967296)"
    last = f"({days} * {DAY} + {_u16(2, p)} * {DAY} / 65536)"
    signup = f"(({days} + {_u16(3, p)} * (366 - {days}) / 65536) * {DAY} + {DAY})"
    return last, signup


class Dialect:
    """The few SQL spellings the generator needs, per store."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.pg = kind == "postgresql"

    def ids(self, low: int, high: int) -> tuple[str, str]:
        """A CTE prefix and the FROM clause yielding ``i`` from low to high."""
        if self.pg:
            return "", f"generate_series({low}::bigint, {high}::bigint) AS s(i)"
        return (
            f"RECURSIVE s(i) AS (SELECT {low} UNION ALL SELECT i + 1 FROM s WHERE i < {high}), ",
            "s",
        )

    def at(self, seconds_ago: str) -> str:
        epoch = int(NOW.timestamp())
        if self.pg:
            return f"to_timestamp({epoch} - ({seconds_ago}))"
        return f"strftime('%Y-%m-%d %H:%M:%S', {epoch} - ({seconds_ago}), 'unixepoch') || '.000000'"

    def obj(self, *pairs: str) -> str:
        return f"{'jsonb_build_object' if self.pg else 'json_object'}({', '.join(pairs)})"

    @property
    def empty(self) -> str:
        return "'{}'::jsonb" if self.pg else "'{}'"


def _profiles_sql(d: Dialect, ws: str, low: int, high: int) -> str:
    prefix, source = d.ids(low, high)
    last, signup = _customer("i")
    return (
        f"WITH {prefix}c AS (SELECT i, {last} AS r, {signup} AS sp FROM {source}) "
        "INSERT INTO profiles (id, workspace_id, user_id, email, traits, created_at, "
        "updated_at, last_seen_at) "
        f"SELECT i, '{ws}', 'u' || i, 'u' || i || '@example.com', {d.empty}, {d.at('sp')}, "
        f"{d.at('r')}, {d.at('r')} FROM c"
    )


_EVENT_COLUMNS = (
    "workspace_id, message_id, type, name, profile_id, user_id, properties, context, "
    "timestamp, received_at, status, attempts"
)


def _signups_sql(d: Dialect, ws: str, low: int, high: int) -> str:
    prefix, source = d.ids(low, high)
    _, signup = _customer("i")
    return (
        f"WITH {prefix}c AS (SELECT i, {signup} AS sp FROM {source}) "
        f"INSERT INTO events ({_EVENT_COLUMNS}) "
        f"SELECT '{ws}', 's' || i, 'track', 'Signed Up', i, 'u' || i, {d.empty}, {d.empty}, "
        f"{d.at('sp')}, {d.at('sp')}, 1, 0 FROM c"
    )


def _events_sql(d: Dialect, ws: str, low: int, high: int, customers: int) -> str:
    prefix, source = d.ids(low, high)
    last, signup = _customer("p")
    pick = f"1 + ({_h(4, 'i')} % {customers}) * ({_h(5, 'i')} % 1000) / 1000"
    product = "'p' || (i % 5000)"
    price = "100 + i % 900"

    def by_kind(values: list[str]) -> str:
        arms = " ".join(
            f"WHEN k < {bound} THEN {value}"
            for (bound, _, _), value in zip(MIX[:-1], values[:-1], strict=True)
        )
        return f"CASE {arms} ELSE {values[-1]} END"

    properties = by_kind(
        [
            d.obj("'path'", "'/catalog/' || (i % 200)"),
            d.obj("'product_id'", product, "'price'", price),
            d.obj("'product_id'", product, "'price'", price, "'quantity'", "1"),
            d.empty,
            d.empty,
            d.obj(
                "'order_id'",
                "'o' || i",
                "'revenue'",
                f"500 + {_h(7, 'i')} % 9501",
                "'currency'",
                "'USD'",
            ),
        ]
    )
    kinds = by_kind([f"'{kind}'" for _, kind, _ in MIX])
    names = by_kind([f"'{name}'" for _, _, name in MIX])
    at = d.at(f"r + {_h(8, 'i')} % (sp - r)")
    return (
        f"WITH {prefix}picked AS (SELECT i, {pick} AS p, {_h(6, 'i')} % 100 AS k FROM {source}), "
        f"c AS (SELECT i, p, k, {last} AS r, {signup} AS sp FROM picked) "
        f"INSERT INTO events ({_EVENT_COLUMNS}) "
        f"SELECT '{ws}', 'e' || i, {kinds}, {names}, p, 'u' || p, {properties}, {d.empty}, "
        f"{at}, {at}, 1, 0 FROM c"
    )


def _consents_sql(d: Dialect, ws: str, low: int, high: int) -> str:
    prefix, source = d.ids(low, high)
    _, signup = _customer("i")
    return (
        f"WITH {prefix}c AS (SELECT i, {signup} AS sp FROM {source} "
        f"WHERE {_h(9, 'i')} % 10 < 7) "
        "INSERT INTO consents (workspace_id, profile_id, channel, purpose, topic, granted, "
        "confirmed, at, source, address) "
        f"SELECT '{ws}', i, 'email', 'marketing', NULL, TRUE, TRUE, {d.at('sp')}, "
        "'signup form', 'u' || i || '@example.com' FROM c"
    )


def _messages_sql(d: Dialect, ws: str, low: int, high: int) -> str:
    """Two sent emails each to 60 % of the customers, a third of them opened an hour later."""
    prefix, source = d.ids(low, high)
    sent = f"({_h(11, 'm')} % ({75 * DAY}))"
    return (
        f"WITH {prefix}m AS (SELECT 2 * i + j AS m, i AS p FROM {source} "
        f"CROSS JOIN (SELECT 0 AS j UNION ALL SELECT 1) AS two WHERE {_h(10, 'i')} % 10 < 6), "
        f"facts AS (SELECT m, p, 'sent' AS kind, {sent} AS ago FROM m UNION ALL "
        f"SELECT m, p, 'opened', {sent} - 3600 FROM m WHERE {_h(12, 'm')} % 3 = 0) "
        "INSERT INTO message_events (workspace_id, outbox_id, profile_id, channel, kind, at, "
        "machine) "
        f"SELECT '{ws}', m, p, 'email', kind, {d.at('ago')}, FALSE FROM facts"
    )


@dataclass
class Generated:
    """How long filling the store took, and what it holds."""

    insert: float = 0.0
    indexes: float = 0.0
    analyze: float = 0.0
    rows: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> float:
        return self.insert + self.indexes + self.analyze

    def describe(self) -> str:
        counts = ", ".join(f"{n:,} {t}" for t, n in self.rows.items())
        return (
            f"generated in {self.total:.1f}s (insert {self.insert:.1f}s, indexes "
            f"{self.indexes:.1f}s, analyze {self.analyze:.1f}s): {counts}"
        )


def _chunks(total: int, size: int, start: int = 1) -> Iterator[tuple[int, int]]:
    for low in range(start, start + total, size):
        yield low, min(low + size - 1, start + total - 1)


def generate(store: Scratch, engine: Engine, workspace_id: str, *, scale: Scale) -> Generated:
    """Fill profiles, events, consents and message events by SQL; return the time it took."""
    if not re.fullmatch(r"[\w-]+", workspace_id):
        raise ValueError(f"unexpected workspace id {workspace_id!r}")
    if scale.events < scale.customers:
        raise ValueError("need at least one event per customer (their Signed Up)")
    engine.dispose()  # SQLite changes its journal mode only with no other connection open
    d = Dialect(store.kind)
    ws, customers = workspace_id, scale.customers
    statements: list[tuple[str, str]] = []
    for low, high in _chunks(customers, GEN_CHUNK):
        statements.append((f"profiles {high:,}", _profiles_sql(d, ws, low, high)))
        statements.append((f"sign-ups {high:,}", _signups_sql(d, ws, low, high)))
        statements.append((f"consents {high:,}", _consents_sql(d, ws, low, high)))
        statements.append((f"messages {high:,}", _messages_sql(d, ws, low, high)))
    for low, high in _chunks(scale.events - customers, GEN_CHUNK):
        statements.append((f"events {high:,}", _events_sql(d, ws, low, high, customers)))
    out = Generated()
    with _bulk(store) as (execute, indexes):
        started = time.perf_counter()
        for label, sql in statements:
            execute(sql)
            log(f"segments/{store.kind}: generated {label}")
        out.insert = time.perf_counter() - started
        started = time.perf_counter()
        for ddl in indexes:
            execute(ddl)
        out.indexes = time.perf_counter() - started
        for table in TABLES:
            out.rows[table] = int(execute(f"SELECT count(*) FROM {table}")[0][0])
    if store.pg_conninfo is not None:
        started = time.perf_counter()
        with psycopg.connect(store.pg_conninfo, autocommit=True) as conn:
            conn.execute(
                "SELECT setval(pg_get_serial_sequence('profiles', 'id'), max(id)) FROM profiles"
            )
            conn.execute(f"VACUUM ANALYZE {', '.join(TABLES)}")
        out.analyze = time.perf_counter() - started
    return out


Execute = Callable[[str], list[Any]]


@contextlib.contextmanager
def _bulk(store: Scratch) -> Iterator[tuple[Execute, list[str]]]:
    """A raw connection set up for bulk loading, its secondary indexes dropped.

    Yields ``execute(sql) -> rows`` (each statement its own transaction) and
    the DDL that rebuilds the dropped indexes.
    """
    names = ", ".join(f"'{t}'" for t in TABLES)
    if store.sqlite_path is not None:
        lite = sqlite3.connect(store.sqlite_path, isolation_level=None)
        try:
            lite.execute("PRAGMA journal_mode = OFF")
            lite.execute("PRAGMA synchronous = OFF")
            lite.execute("PRAGMA cache_size = -1000000")  # 1 GB, for the index builds
            ddl = [
                row[0]
                for row in lite.execute(
                    "SELECT sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL "
                    f"AND sql NOT LIKE 'CREATE UNIQUE%' AND tbl_name IN ({names})"
                )
            ]
            for statement in ddl:
                lite.execute(f"DROP INDEX {statement.split()[2]}")

            def run_lite(sql: str) -> list[Any]:
                lite.execute("BEGIN")
                rows = lite.execute(sql).fetchall()
                lite.execute("COMMIT")
                return rows

            yield run_lite, ddl
            lite.execute("PRAGMA journal_mode = WAL")
        finally:
            lite.close()
        return
    assert store.pg_conninfo is not None
    with psycopg.connect(store.pg_conninfo, autocommit=True) as pg:
        pg.execute("SET synchronous_commit = off")
        pg.execute("SET maintenance_work_mem = '512MB'")
        found = pg.execute(
            "SELECT indexname, indexdef FROM pg_indexes WHERE tablename IN "
            f"({names}) AND indexdef NOT LIKE 'CREATE UNIQUE%'"
        ).fetchall()
        for name, _ in found:
            pg.execute(f'DROP INDEX "{name}"')

        def run_pg(sql: str) -> list[Any]:
            cur = pg.execute(sql)
            return cur.fetchall() if cur.description else []

        yield run_pg, [ddl for _, ddl in found]


# -- full builds ----------------------------------------------------------------------


def hand_query(key: str, kind: str) -> Any:
    """The hand-written statement for ``key``, with its times bound as touchline binds them."""
    sql = HAND_QUERIES[key].replace("{revenue}", REVENUE[kind])
    params = [bindparam(name, type_=UTCDateTime()) for name in re.findall(r":(since_\w+)", sql)]
    return text(sql).bindparams(*params)


def hand_params(workspace_id: str) -> dict[str, Any]:
    return {
        "ws": workspace_id,
        **{f"since_{days}d": NOW - timedelta(days=days) for days in (30, 90, 365)},
    }


@dataclass
class BuildFigures:
    """One segment's full build and its hand-written baseline, in seconds."""

    key: str
    members: int
    timers: int
    build: float
    rebuild: float
    member_query: float
    hand: list[float]

    @property
    def hand_median(self) -> float:
        return statistics.median(self.hand)


def _timed_hand(engine: Engine, key: str, workspace_id: str) -> tuple[float, set[int]]:
    stmt = hand_query(key, engine.dialect.name)
    started = time.perf_counter()
    with engine.connect() as conn:
        found = set(conn.execute(stmt, hand_params(workspace_id)).scalars())
    return time.perf_counter() - started, found


def _member_query_alone(engine: Engine, key: str, workspace_id: str) -> tuple[float, set[int]]:
    """The segment's compiled member query over the build's ranges, nothing written."""
    with engine.connect() as conn:
        seg = compiled(conn, workspace_id, key)
        low, high = conn.execute(select(func.min(profiles.c.id), func.max(profiles.c.id))).one()
    found: set[int] = set()
    started = time.perf_counter()
    with engine.connect() as conn:
        for start in range(low, high + 1, BUILD_CHUNK):
            stmt = member_query(
                seg,
                workspace_id=workspace_id,
                now=NOW,
                dialect=engine.dialect.name,
                id_range=(start, min(start + BUILD_CHUNK - 1, high)),
            )
            found.update(conn.execute(stmt).scalars())
    return time.perf_counter() - started, found


def measure_build(
    engine: Engine, workspace_id: str, key: str, *, profile_to: Path | None = None
) -> BuildFigures:
    """Time the hand query, touchline's first build and its rebuild; the answers must agree."""
    _, expected = _timed_hand(engine, key, workspace_id)  # warms the cache for both sides
    hand = []
    for _ in range(RUNS):
        seconds, found = _timed_hand(engine, key, workspace_id)
        assert found == expected
        hand.append(seconds)
    alone, queried = _member_query_alone(engine, key, workspace_id)
    assert queried == expected, f"{key}: member query {len(queried)} vs hand {len(expected)}"
    profiler = cProfile.Profile() if profile_to is not None else None
    started = time.perf_counter()
    with profiler if profiler is not None else contextlib.nullcontext():
        first = build_segment(engine, workspace_id, key, now=NOW)
    build = time.perf_counter() - started
    if profiler is not None and profile_to is not None:
        profiler.dump_stats(str(profile_to))
    started = time.perf_counter()
    again = build_segment(engine, workspace_id, key, now=NOW)
    rebuild = time.perf_counter() - started
    assert (again.entered, again.exited) == (0, 0), f"{key}: rebuild changed {again}"
    with engine.connect() as conn:
        members = set(conn.execute(segments_api.member_ids(conn, workspace_id, key)).scalars())
    missing, extra = expected - members, members - expected
    assert not missing and not extra, (
        f"{key}: {len(missing)} qualifying customers missing, {len(extra)} extra"
    )
    assert first.members == len(expected) == first.entered
    return BuildFigures(key, len(expected), first.timers, build, rebuild, alone, hand)


# -- per event ------------------------------------------------------------------------


def install_segments(engine: Engine, workspace_id: str) -> int:
    """Store the 15 lifecycle, RFM and email segments (not built yet); returns how many."""
    files = lifecycle_segments()
    loaded = [
        LoadedSegment(name, segments_api.load_segment_text(body, file=name), body)
        for name, body in sorted(files.items())
    ]
    with transaction(engine) as conn:
        segments_api.save_segments(conn, workspace_id, loaded, now=NOW)
    return len(loaded)


def sample_rows(workspace_id: str, *, scale: Scale, seed: int = SEED) -> list[dict[str, Any]]:
    """New pending events in the generated mix, one second apart after NOW, random customers."""
    rand = random.Random(seed)
    rows = []
    for n in range(scale.sample):
        pid = rand.randint(1, scale.customers)
        share = rand.randrange(100)
        kind, name = next((kind, name) for bound, kind, name in MIX if share < bound)
        properties: dict[str, Any] = {}
        if name in ("Product Viewed", "Product Added"):
            properties = {"product_id": f"p{rand.randrange(5000)}", "price": 100 + n % 900}
        elif name == "Order Completed":
            properties = {"order_id": f"bench-{n}", "revenue": rand.randint(500, 10_000)}
        elif kind == "page":
            properties = {"path": f"/catalog/{n % 200}"}
        at = NOW + timedelta(seconds=n + 1)
        rows.append(
            {
                "workspace_id": workspace_id,
                "message_id": f"sample-{n}",
                "type": kind,
                "name": name,
                "profile_id": pid,
                "user_id": f"u{pid}",
                "properties": properties,
                "context": {},
                "timestamp": at,
                "received_at": at,
                "status": EVENT_PENDING,
                "attempts": 0,
            }
        )
    return rows


@dataclass
class EventFigures:
    """Seconds per event on each side, and what the sample did."""

    names: dict[int, str]
    observer_with: dict[int, float]  # the segment observer, segments installed
    observer_without: dict[int, float]  # the same observer, segments archived
    work_with: dict[int, float]  # audience observers + handle_event
    work_without: dict[int, float]
    wall_with: float  # process_events, summed over the batches
    wall_without: float
    customers: int
    segments: int
    changes: int  # Segment Entered / Exited events the sample caused
    prime: float

    @property
    def sample(self) -> int:
        return len(self.names)


class Meter:
    """Per-event times of the segment observer and of the event's processing."""

    def __init__(self) -> None:
        self.observer: dict[int, float] = {}
        self.work: dict[int, float] = {}

    @contextlib.contextmanager
    def installed(self, runtime: Runtime) -> Iterator[None]:
        observe_event = claims.observe_event
        observe_segments = segments_api.observe
        handle_event = runtime.handle_event

        def add(into: dict[int, float], key: int, started: float) -> None:
            into[key] = into.get(key, 0.0) + time.perf_counter() - started

        def timed_observe_event(conn: Any, row: Any, *, now: datetime) -> None:
            started = time.perf_counter()
            try:
                observe_event(conn, row, now=now)
            finally:
                add(self.work, row.id, started)

        def timed_segments(conn: Any, row: Any, *, now: datetime) -> None:
            started = time.perf_counter()
            try:
                observe_segments(conn, row, now=now)
            finally:
                add(self.observer, row.id, started)

        def timed_handle(conn: Any, row: Any, *, now: datetime) -> Any:
            started = time.perf_counter()
            try:
                return handle_event(conn, row, now=now)
            finally:
                add(self.work, row.id, started)

        with (
            patch.object(claims, "observe_event", timed_observe_event),
            patch.object(segments_api, "observe", timed_segments),
            patch.object(runtime, "handle_event", timed_handle),
        ):
            yield


def _set_segments(engine: Engine, workspace_id: str, *, on: bool) -> None:
    """Segments in place (ready) or out of the way (archived: the observer finds none)."""
    with transaction(engine) as conn:
        conn.execute(
            update(segments)
            .where(segments.c.workspace_id == workspace_id)
            .values(status="ready" if on else "archived")
        )


def _lease(engine: Engine, ids: list[int], *, now: datetime) -> None:
    """Make the batch pending and leased to us, as claim_events leaves it."""
    with transaction(engine) as conn:
        conn.execute(
            update(events)
            .where(events.c.id.in_(ids))
            .values(status=EVENT_PENDING, lease_owner=OWNER, lease_until=now + LEASE, attempts=1)
        )


def prime(engine: Engine, workspace_id: str, profile_ids: list[int]) -> float:
    """Bring the customers to the state a build gives, then mark every segment built."""
    started = time.perf_counter()
    with engine.connect() as conn:
        segs = CACHE.segments(conn, workspace_id)
    for start in range(0, len(profile_ids), 500):
        with transaction(engine) as conn:
            for pid in profile_ids[start : start + 500]:
                evaluate_profile(conn, workspace_id, pid, now=NOW, segs=segs)
    with transaction(engine) as conn:
        conn.execute(
            update(segments)
            .where(segments.c.workspace_id == workspace_id, segments.c.built_at.is_(None))
            .values(status="ready", built_at=NOW)
        )
    return time.perf_counter() - started


def measure_events(
    engine: Engine, workspace_id: str, *, scale: Scale, profile_to: Path | None = None
) -> EventFigures:
    """Process the sample with and without segments, batch by batch, alternating the order."""
    count = install_segments(engine, workspace_id)
    rows = sample_rows(workspace_id, scale=scale)
    customers = sorted({r["profile_id"] for r in rows})
    primed = prime(engine, workspace_id, customers)
    log(f"segments/{engine.dialect.name}: primed {len(customers):,} customers in {primed:.1f}s")
    with transaction(engine) as conn:
        conn.execute(insert(events), rows)
        found = conn.execute(
            select(events.c.id, events.c.name, events.c.timestamp)
            .where(events.c.message_id.like("sample-%"))
            .order_by(events.c.id)
        ).all()
    before = _change_events(engine)
    runtime = Runtime()
    sides = {True: Meter(), False: Meter()}
    walls = {True: 0.0, False: 0.0}
    profiler = cProfile.Profile() if profile_to is not None else None
    for number, start in enumerate(range(0, len(found), BATCH)):
        batch = found[start : start + BATCH]
        ids = [r.id for r in batch]
        now = batch[-1].timestamp + timedelta(seconds=1)
        for with_segments in (True, False) if number % 2 == 0 else (False, True):
            _set_segments(engine, workspace_id, on=with_segments)
            _lease(engine, ids, now=now)
            meter = sides[with_segments]
            profiling = profiler if with_segments and profiler is not None else None
            with meter.installed(runtime), profiling or contextlib.nullcontext():
                started = time.perf_counter()
                result = claims.process_events(engine, runtime, ids, owner=OWNER, now=now)
                walls[with_segments] += time.perf_counter() - started
            assert result.processed == len(ids) and not result.failed, result
    _set_segments(engine, workspace_id, on=True)
    if profiler is not None and profile_to is not None:
        profiler.dump_stats(str(profile_to))
    return EventFigures(
        names={r.id: r.name for r in found},
        observer_with=sides[True].observer,
        observer_without=sides[False].observer,
        work_with=sides[True].work,
        work_without=sides[False].work,
        wall_with=walls[True],
        wall_without=walls[False],
        customers=len(customers),
        segments=count,
        changes=_change_events(engine) - before,
        prime=primed,
    )


def _change_events(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(
            conn.execute(
                select(func.count())
                .select_from(events)
                .where(
                    events.c.name.in_((segments_api.SEGMENT_ENTERED, segments_api.SEGMENT_EXITED))
                )
            ).scalar_one()
        )


# -- the rows -------------------------------------------------------------------------


def percentile(values: list[float], share: float) -> float:
    """The nearest-rank percentile (share in 0..1) of a non-empty list."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(share * len(ordered)) - 1))]


def _ms(values: list[float], share: float) -> str:
    return f"{percentile(values, share) * 1000:.2f}"


def build_rows(kind: str, found: BuildFigures, *, generated: str) -> list[Result]:
    hand = found.hand_median
    notes = (
        f"{found.members:,} members, {found.timers:,} timers; hand query {spread(found.hand)}; "
        f"member query alone over {BUILD_CHUNK:,}-id ranges {found.member_query:.2f}s "
        f"({found.member_query / hand:.2f}x)"
    )
    return [
        Result(
            f"{BUILD_NAME} {found.key} (lower better)",
            kind,
            touchline=found.build * 1000,
            baseline=hand * 1000,
            unit="ms",
            notes=f"{notes}; {generated}" if generated else notes,
        ),
        Result(
            f"{REBUILD_NAME} {found.key} (lower better)",
            kind,
            touchline=found.rebuild * 1000,
            baseline=hand * 1000,
            unit="ms",
            notes="nothing changed since the first build; timers rewritten",
        ),
    ]


def event_rows(kind: str, found: EventFigures) -> list[Result]:
    ids = sorted(found.names)
    with_s = [found.work_with[i] for i in ids]
    without = [found.work_without[i] for i in ids]
    observer = [found.observer_with[i] for i in ids]
    bare_observer = [found.observer_without[i] for i in ids]
    by_name: dict[str, list[float]] = {}
    for i in ids:
        by_name.setdefault(found.names[i], []).append(found.observer_with[i])
    names = ", ".join(f"{name} {_ms(v, 0.5)}" for name, v in sorted(by_name.items()))
    notes = (
        f"{found.sample:,} events for {found.customers:,} customers, batches of {BATCH}; segment "
        f"observer with {found.segments} segments p50 {_ms(observer, 0.5)} ms, p99 "
        f"{_ms(observer, 0.99)} ms (archived: p50 {_ms(bare_observer, 0.5)} ms); observer p50 ms "
        f"by event: {names}; {found.changes:,} segment changes announced"
    )
    return [
        Result(
            f"{EVENT_NAME}: p50 (lower better)",
            kind,
            touchline=percentile(with_s, 0.5) * 1e6,
            baseline=percentile(without, 0.5) * 1e6,
            unit="us",
            notes=notes,
        ),
        Result(
            f"{EVENT_NAME}: p99 (lower better)",
            kind,
            touchline=percentile(with_s, 0.99) * 1e6,
            baseline=percentile(without, 0.99) * 1e6,
            unit="us",
            notes="per event: audience observers + handle_event, no journeys installed",
        ),
        Result(
            f"{EVENT_NAME}: worker rate",
            kind,
            touchline=found.sample / found.wall_with,
            baseline=found.sample / found.wall_without,
            unit="events/s",
            notes="process_events wall time per batch, segments vs none",
        ),
    ]


def run(
    kind: str,
    folder: Path,
    *,
    scale: Scale,
    keys: tuple[str, ...] = MEASURED,
    profile_to: Path | None = None,
) -> list[Result]:
    """Every segment row for one store: a build and a rebuild per key, then the per-event rows."""
    results: list[Result] = []
    with scratch_store(kind, "segments", folder) as store:
        engine = store.engine()
        try:
            workspace_id = create_workspace(engine, "bench", now=NOW).id
            generated = generate(store, engine, workspace_id, scale=scale)
            log(f"segments/{kind}: {generated.describe()}")
            install_segments(engine, workspace_id)
            for n, key in enumerate(keys):
                prof = profile_to / f"segments-build-{kind}-{key}.prof" if profile_to else None
                found = measure_build(engine, workspace_id, key, profile_to=prof)
                log(
                    f"segments/{kind}: {key} build {found.build:.2f}s rebuild "
                    f"{found.rebuild:.2f}s hand {found.hand_median:.2f}s ({found.members:,})"
                )
                results += build_rows(kind, found, generated=generated.describe() if n == 0 else "")
            prof = profile_to / f"segments-event-{kind}.prof" if profile_to else None
            figures = measure_events(engine, workspace_id, scale=scale, profile_to=prof)
            results += event_rows(kind, figures)
        finally:
            CACHE.forget()
            engine.dispose()
    return results


def main(argv: list[str] | None = None) -> int:
    import argparse

    from bench.common import STORES, machine, render, workdir

    parser = argparse.ArgumentParser(
        prog="python -m bench.segments", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--customers", type=int, default=QUICK.customers)
    parser.add_argument("--events", type=int, default=QUICK.events)
    parser.add_argument("--sample", type=int, default=QUICK.sample)
    parser.add_argument("--store", choices=(*STORES, "both"), default="both")
    parser.add_argument(
        "--segments", default=",".join(MEASURED), help="keys built, comma-separated"
    )
    parser.add_argument("--profile", type=Path, metavar="DIR", help="cProfile builds and events")
    args = parser.parse_args(argv)
    scale = Scale(customers=args.customers, events=args.events, sample=args.sample)
    keys = tuple(k for k in args.segments.split(",") if k)
    unknown = set(keys) - set(HAND_QUERIES)
    if unknown:
        parser.error(f"no hand-written query for {', '.join(sorted(unknown))}")
    stores = STORES if args.store == "both" else (args.store,)
    if args.profile is not None:
        args.profile.mkdir(parents=True, exist_ok=True)
    facts = machine(stores)
    facts.append(("workload", f"{scale.customers:,} customers, {scale.events:,} events"))
    results: list[Result] = []
    with workdir() as folder:
        for kind in stores:
            results += run(kind, folder, scale=scale, keys=keys, profile_to=args.profile)
    print(
        render(results, facts, title="touchline segment benchmarks (ratio = touchline / baseline)")
    )
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
