"""Reports from rollups against the raw aggregate they replace, and what keeping rollups costs.

Three rows per store.

**report from rollups** — reports/h, touchline's report query vs the raw
aggregate over ``message_events``. A fresh migrated store with one workspace
gets N generated message events (:class:`Dataset`: 90 days, 50 journeys × 3
steps × 2 variants × 2 channels, sends, delivery receipts, opens, clicks,
a few % of them machines', a few bounces, failures, complaints and
unsubscribes) and the ``daily_stats`` rows those events add up to, worked
out in Python from the same generated rows. Both are bulk-loaded
(PostgreSQL ``COPY``; SQLite ``executemany`` with ``synchronous = OFF`` and
no journal), ``message_events``' indexes are dropped for the load and
rebuilt after it, and PostgreSQL is ``VACUUM ANALYZE``d as autovacuum would
have done. Then, for the last 30 days, figures per (journey, channel):

* touchline: :func:`rollup_query`, the ``GROUP BY`` the message report
  (:mod:`touchline.measure.reports`) runs over ``daily_stats``;
* baseline: :func:`raw_query`, the same figures counted from
  ``message_events`` with the indexes touchline keeps — rows by kind, and
  for opens and clicks the distinct messages a person opened or clicked.

Both answers must equal each other and the generator's own totals before
anything is timed. Each query then runs :data:`RUNS` times on a warm cache;
the medians count. The ratio is raw time / rollup time.

The rollup counts a message as opened on the day of its first human open. In
the generated data every repeat open or click of a message falls on the day
of its first, so "distinct messages opened in the window" is the same figure
and the raw query can stay the cheap one. With repeats spread over days the
raw query would need each message's first open ever, which costs more.

**message fact with rollup** — facts/s, a ``sent`` fact through the
dispatcher's path (:func:`~touchline.measure.engagement.record_message_event`
and :func:`~touchline.measure.rollups.bump_message`, one transaction per
message as ``Dispatcher.record`` commits) vs the same without the bump. The
two alternate :data:`RUNS` times over their own messages; the medians count.

**order with rollups** — orders/s, ``Order Completed`` events through
``Worker.run_once``, each a goal conversion and an attribution with their
two bumps, vs the same with ``bump`` replaced by a no-op in the two modules
that call it (see :func:`measure_orders`).

Both throughput rows also count SQL statements per item on each side
(:class:`Meter`), a figure the machine's load does not move.
"""

from __future__ import annotations

import contextlib
import math
import random
import sqlite3
import statistics
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from unittest.mock import patch

import psycopg
from sqlalchemy import Engine, and_, case, distinct, event, func, insert, select

from bench.common import Result, Scratch, log, scratch_store, spread
from touchline.journeys.loader import LoadedJourney, load_journey_text
from touchline.measure import attribution
from touchline.measure.engagement import record_message_event
from touchline.measure.rollups import bump_message
from touchline.store import runtime
from touchline.store.db import transaction
from touchline.store.journeys import apply_journeys
from touchline.store.tables import attributions, conversions, daily_stats, message_events, outbox
from touchline.store.workspaces import create_workspace
from touchline.testing import FrozenClock, identify, send_events, track
from touchline.worker.loop import Worker

QUERY_NAME = "report from rollups"
COST_NAME = "message fact with rollup"
ORDER_NAME = "order with rollups"
# Timed runs of each query and of each throughput side; the median counts.
RUNS = 3
SEED = 20261127
T0 = datetime(2026, 9, 1, tzinfo=UTC)
DAY = 86_400
# The generated history, and the report's period at its end (whole UTC days).
DAYS = 90
WINDOW_DAYS = 30
JOURNEYS = 50
STEPS = ("welcome", "reminder", "last-call")
VARIANTS = ("a", "b")
# Customers the messages go to: a mid-sized shop's active list.
PROFILES = 200_000
# Mean seconds from delivery to a person's first open (half within ~4 h) and first click.
OPEN_DELAY = 21_600
CLICK_DELAY = 28_800
# Share of messages that are email; the rest are SMS.
EMAIL_SHARE = 0.75
# Events per ingest call while seeding the order row: the size of a /v1/batch body.
SEED_BATCH = 500
ORDER_JOURNEY = textwrap.dedent(
    """
    journey: bench-cart
    trigger:
      event: Product Added
    goal:
      event: Order Completed
      within: 7d
    steps:
      - id: reminder
        send: {channel: email, template: cart-1}
    """
)
# Messages per generation chunk: ~50k rows, a few MB of Python objects.
CHUNK_MESSAGES = 20_000
# Messages generated beforehand to learn rows per message, so N rows span the 90 days:
# a tenth of the dataset's, within these bounds (±1 % at the lower one).
CALIBRATION_MESSAGES = (1_000, 20_000)
# Every counter both sides can answer; the report sums more (REPORT_SUMS).
COMPARED = (
    "sent",
    "delivered",
    "bounced",
    "complained",
    "failed",
    "opened",
    "clicked",
    "machine_opened",
    "machine_clicked",
    "unsubscribed",
)
# The counters touchline's message report sums, so the timed query does the same work.
REPORT_SUMS = (
    *COMPARED,
    "undelivered",
    "skipped",
    "attributed",
    "attributed_revenue",
    "sms_parts",
    "sms_cost",
)
COLUMNS = (
    "workspace_id",
    "outbox_id",
    "profile_id",
    "journey_id",
    "channel",
    "kind",
    "at",
    "url",
    "ip",
    "user_agent",
    "machine",
    "detail",
)
AGENTS = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Mobile/15E148",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/126.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/126.0.0.0 Mobile Safari/537.36",
)
# What privacy proxies and link scanners send.
MACHINE_AGENT = "Mozilla/5.0"
_COUNTER = {name: i for i, name in enumerate(COMPARED)}


@dataclass(frozen=True)
class Odds:
    """What happens to one message of a channel: receipts per message, the rest per delivery."""

    delivered: float
    lost: str  # the receipt of an undelivered message: bounced (email) or failed (SMS)
    lost_rate: float
    opened: float  # a person opens it
    reopen: float  # after each open, the chance of another the same day
    machine_opened: float  # a privacy proxy fetches the pixel
    clicked: float
    reclick: float
    machine_clicked: float  # a link scanner follows the links
    complained: float
    unsubscribed: float


ODDS = {
    "email": Odds(0.93, "bounced", 0.02, 0.28, 0.4, 0.05, 0.035, 0.25, 0.01, 0.001, 0.002),
    "sms": Odds(0.90, "failed", 0.03, 0.0, 0.0, 0.0, 0.05, 0.2, 0.01, 0.0, 0.003),
}

# outbox_id, profile_id, journey_id, channel, kind, at (seconds after T0), url, ip,
# user_agent, machine, detail
Row = tuple[int, int, int, str, str, int, str | None, str | None, str | None, bool, str | None]
StatsKey = tuple[int, int, str, str, str]  # day, journey, step, variant, channel


class Dataset:
    """N message events of one workspace, generated in chunks, and the rollups they add up to.

    Messages are sent evenly over :data:`DAYS` days in id order; each one's
    receipts, opens and clicks follow it, and any that would fall after the
    last day are not generated (they have not happened yet). ``stats``
    fills as chunks are generated; it is complete once :meth:`chunks` is
    exhausted. The same ``seed`` gives the same rows.
    """

    def __init__(self, events: int, *, seed: int = SEED) -> None:
        self.seed = seed
        low, high = CALIBRATION_MESSAGES
        sample = min(high, max(low, events // 25))  # ~2.4 rows per message
        self.messages = max(1, round(events / _rows_per_message(seed, sample)))
        self.events = 0
        self.stats: dict[StatsKey, list[int]] = {}

    def chunks(self) -> Iterator[list[Row]]:
        """The rows in chunks of :data:`CHUNK_MESSAGES` messages; a dataset is read once."""
        if self.events:
            raise RuntimeError("a Dataset's chunks are read once; make a new one")
        rand = random.Random(self.seed).random
        spacing = DAYS * DAY / self.messages
        stats = self.stats
        chunk: list[Row] = []
        for n in range(self.messages):
            (journey, step, variant, channel), rows = _message(rand, n + 1, int(n * spacing))
            for row, counter in rows:
                day = row[5] // DAY
                if day >= DAYS:
                    continue
                chunk.append(row)
                if counter is not None:
                    key = (day, journey, step, variant, channel)
                    totals = stats.get(key)
                    if totals is None:
                        totals = stats[key] = [0] * len(COMPARED)
                    totals[counter] += 1
            if (n + 1) % CHUNK_MESSAGES == 0:
                self.events += len(chunk)
                yield chunk
                chunk = []
        if chunk:
            self.events += len(chunk)
            yield chunk

    def expected(self, first_day: int, last_day: int) -> dict[tuple[int, str], tuple[int, ...]]:
        """The report's figures per (journey, channel) for days ``first_day..last_day``."""
        out: dict[tuple[int, str], list[int]] = {}
        for (day, journey, _step, _variant, channel), totals in self.stats.items():
            if first_day <= day <= last_day:
                sums = out.setdefault((journey, channel), [0] * len(COMPARED))
                for i, value in enumerate(totals):
                    sums[i] += value
        return {key: tuple(values) for key, values in out.items()}


def _message(
    rand: Callable[[], float], outbox_id: int, sent: int
) -> tuple[tuple[int, str, str, str], list[tuple[Row, int | None]]]:
    """One message's (journey, step, variant, channel) and its rows, each with its counter.

    A row's counter is the index in :data:`COMPARED` it adds one to, None for a
    repeat open or click. ``rand`` is ``Random.random``: drawing everything
    from it is several times faster than ``randrange``.
    """
    journey = int(rand() * JOURNEYS) + 1
    step = STEPS[int(rand() * len(STEPS))]
    variant = VARIANTS[int(rand() * len(VARIANTS))]
    channel = "email" if rand() < EMAIL_SHARE else "sms"
    profile = int(rand() * PROFILES) + 1
    odds = ODDS[channel]
    out: list[tuple[Row, int | None]] = []

    def add(kind: str, at: int, counter: str | None, *extra: str | None) -> None:
        url, ip, agent, detail = (*extra, None, None, None, None)[:4]
        row = (outbox_id, profile, journey, channel, kind, at, url, ip, agent, detail is not None)
        out.append(((*row, detail), None if counter is None else _COUNTER[counter]))

    add("sent", sent, "sent")
    draw = rand()
    if draw >= odds.delivered:
        if draw < odds.delivered + odds.lost_rate:
            add(odds.lost, sent + 2 + int(rand() * 600), odds.lost)
        return (journey, step, variant, channel), out
    delivered = sent + 2 + int(rand() * 120)
    add("delivered", delivered, "delivered")
    ip = f"198.51.100.{1 + int(rand() * 254)}"
    agent = AGENTS[int(rand() * len(AGENTS))]
    link = f"https://shop.example.com/p/{int(rand() * 1000)}?utm_campaign=j{journey}"
    if rand() < odds.machine_opened:
        proxy = f"17.58.{int(rand() * 256)}.{1 + int(rand() * 254)}"
        at = delivered + 1 + int(rand() * 30)
        add("opened", at, "machine_opened", None, proxy, MACHINE_AGENT, "privacy_proxy")
    if rand() < odds.machine_clicked:
        at = delivered + 1 + int(rand() * 10)
        add("clicked", at, "machine_clicked", link, None, MACHINE_AGENT, "burst")
    if rand() < odds.opened:
        first = delivered + int(-OPEN_DELAY * math.log(1.0 - rand()))
        add("opened", first, "opened", None, ip, agent)
        for again in _same_day(rand, first, odds.reopen):
            add("opened", again, None, None, ip, agent)
    if rand() < odds.clicked:
        first = delivered + int(-CLICK_DELAY * math.log(1.0 - rand()))
        add("clicked", first, "clicked", link, ip, agent)
        for again in _same_day(rand, first, odds.reclick):
            add("clicked", again, None, link, ip, agent)
    if rand() < odds.complained:
        add("complained", delivered + 60 + int(rand() * DAY), "complained")
    if rand() < odds.unsubscribed:
        add("unsubscribed", delivered + 60 + int(rand() * DAY), "unsubscribed")
    return (journey, step, variant, channel), out


def _same_day(rand: Callable[[], float], first: int, again: float) -> Iterator[int]:
    """Times of repeat hits after ``first``, all before the end of its UTC day."""
    end = (first // DAY + 1) * DAY
    while rand() < again:
        yield first + int(rand() * (end - first))


def _rows_per_message(seed: int, sample: int) -> float:
    rand = random.Random(seed + 1).random
    return sum(len(_message(rand, 1, 0)[1]) for _ in range(sample)) / sample


# -- loading ----------------------------------------------------------------------


_DATES = [f"{T0 + timedelta(days=day):%Y-%m-%d}" for day in range(DAYS)]


def _clock(at: int, *, suffix: str) -> str:
    """A generated time as the text each store keeps (formatting datetimes is slower)."""
    day, rest = divmod(at, DAY)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{_DATES[day]} {hours:02d}:{minutes:02d}:{seconds:02d}{suffix}"


def load(scratch: Scratch, engine: Engine, workspace_id: str, dataset: Dataset) -> None:
    """The dataset's events into ``message_events`` and its totals into ``daily_stats``."""
    engine.dispose()  # SQLite changes its journal mode only with no other connection open
    if scratch.sqlite_path is not None:
        _load_sqlite(scratch.sqlite_path, workspace_id, dataset)
    else:
        assert scratch.pg_conninfo is not None
        _load_postgresql(scratch.pg_conninfo, workspace_id, dataset)
    with transaction(engine) as conn:
        conn.execute(
            insert(daily_stats),
            [
                {
                    "workspace_id": workspace_id,
                    "day": (T0 + timedelta(days=day)).date(),
                    "journey_id": journey,
                    "step_id": step,
                    "variant": variant,
                    "channel": channel,
                    **dict(zip(COMPARED, totals, strict=True)),
                }
                for (day, journey, step, variant, channel), totals in dataset.stats.items()
            ],
        )
    if scratch.pg_conninfo is not None:
        with psycopg.connect(scratch.pg_conninfo, autocommit=True) as conn:
            conn.execute("VACUUM ANALYZE message_events, daily_stats")


def _load_sqlite(path: Path, workspace_id: str, dataset: Dataset) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode = OFF")
        conn.execute("PRAGMA synchronous = OFF")
        conn.execute("PRAGMA cache_size = -1000000")  # 1 GB, for the index builds
        indexes = [
            row[0]
            for row in conn.execute(
                "SELECT sql FROM sqlite_master WHERE type = 'index' "
                "AND tbl_name = 'message_events' AND sql IS NOT NULL"
            )
        ]
        for ddl in indexes:
            conn.execute(f"DROP INDEX {ddl.split()[2]}")
        sql = (
            f"INSERT INTO message_events ({', '.join(COLUMNS)}) "
            f"VALUES ({', '.join('?' * len(COLUMNS))})"
        )
        for chunk in dataset.chunks():
            conn.execute("BEGIN")
            conn.executemany(
                sql,
                [
                    (
                        workspace_id,
                        *r[:5],
                        _clock(r[5], suffix=".000000"),
                        *r[6:9],
                        int(r[9]),
                        r[10],
                    )
                    for r in chunk
                ],
            )
            conn.execute("COMMIT")
        for ddl in indexes:
            conn.execute(ddl)
        conn.execute("PRAGMA journal_mode = WAL")
    finally:
        conn.close()


def _load_postgresql(conninfo: str, workspace_id: str, dataset: Dataset) -> None:
    with psycopg.connect(conninfo) as conn:
        conn.execute("SET maintenance_work_mem = '512MB'")
        indexes = [
            (row[0], row[1])
            for row in conn.execute(
                "SELECT indexname, indexdef FROM pg_indexes "
                "WHERE tablename = 'message_events' AND indexdef NOT LIKE 'CREATE UNIQUE%'"
            )
        ]
        for name, _ in indexes:
            conn.execute(f'DROP INDEX "{name}"')
        with (
            conn.cursor() as cur,
            cur.copy(f"COPY message_events ({', '.join(COLUMNS)}) FROM STDIN") as copy,
        ):
            for chunk in dataset.chunks():
                copy.write(
                    "".join(
                        f"{workspace_id}\t{r[0]}\t{r[1]}\t{r[2]}\t{r[3]}\t{r[4]}\t"
                        f"{_clock(r[5], suffix='+00')}\t{_text(r[6])}\t{_text(r[7])}\t"
                        f"{_text(r[8])}\t{'t' if r[9] else 'f'}\t{_text(r[10])}\n"
                        for r in chunk
                    )
                )
        for _, ddl in indexes:
            conn.execute(ddl)
        conn.commit()


def _text(value: str | None) -> str:
    """A value in COPY's text format; the generated strings hold no tab, newline or backslash."""
    return "\\N" if value is None else value


def table_sizes(scratch: Scratch) -> dict[str, tuple[int, int]]:
    """Bytes on disk of ``message_events`` and ``daily_stats``: (table, its indexes)."""
    names = ("message_events", "daily_stats")
    if scratch.pg_conninfo is not None:
        with psycopg.connect(scratch.pg_conninfo) as conn:
            out = {}
            for name in names:
                row = conn.execute(
                    "SELECT pg_table_size(%s), pg_indexes_size(%s)", (name, name)
                ).fetchone()
                assert row is not None
                out[name] = (int(row[0]), int(row[1]))
            return out
    assert scratch.sqlite_path is not None
    lite = sqlite3.connect(scratch.sqlite_path)
    try:
        owner: dict[str, str] = dict(lite.execute("SELECT name, tbl_name FROM sqlite_master"))
        sizes = {name: [0, 0] for name in names}
        for name, size in lite.execute("SELECT name, pgsize FROM dbstat WHERE aggregate = TRUE"):
            table = owner.get(name, name)
            if table in sizes:
                sizes[table][0 if name == table else 1] += size
        return {name: (table, index) for name, (table, index) in sizes.items()}
    finally:
        lite.close()


# -- the two queries ----------------------------------------------------------------


def rollup_query(workspace_id: str, *, since: date, until: date) -> Any:
    """touchline's report by journey: counters summed from ``daily_stats`` per (journey, channel)."""
    group = (daily_stats.c.journey_id, daily_stats.c.channel)
    return (
        select(*group, *(func.sum(daily_stats.c[n]).label(n) for n in REPORT_SUMS))
        .where(
            daily_stats.c.workspace_id == workspace_id,
            daily_stats.c.day >= since,
            daily_stats.c.day <= until,
            daily_stats.c.channel != "",
        )
        .group_by(*group)
    )


def raw_query(workspace_id: str, *, since: date, until: date) -> Any:
    """The same figures counted from ``message_events``: what a report without rollups runs."""
    e = message_events.c

    def rows(kind: str) -> Any:
        return func.count(case((e.kind == kind, 1)))

    def machines(kind: str) -> Any:
        return func.count(case((and_(e.kind == kind, e.machine.is_(True)), 1)))

    def messages(kind: str) -> Any:
        return func.count(distinct(case((and_(e.kind == kind, e.machine.is_(False)), e.outbox_id))))

    figures = {
        "sent": rows("sent"),
        "delivered": rows("delivered"),
        "bounced": rows("bounced"),
        "complained": rows("complained"),
        "failed": rows("failed"),
        "opened": messages("opened"),
        "clicked": messages("clicked"),
        "machine_opened": machines("opened"),
        "machine_clicked": machines("clicked"),
        "unsubscribed": rows("unsubscribed"),
    }
    start = datetime(since.year, since.month, since.day, tzinfo=UTC)
    end = datetime(until.year, until.month, until.day, tzinfo=UTC) + timedelta(days=1)
    return (
        select(e.journey_id, e.channel, *(figures[n].label(n) for n in COMPARED))
        .where(e.workspace_id == workspace_id, e.at >= start, e.at < end)
        .group_by(e.journey_id, e.channel)
    )


def answer(engine: Engine, stmt: Any) -> dict[tuple[int, str], tuple[int, ...]]:
    """A query's figures per (journey, channel), as integers."""
    with engine.connect() as conn:
        return {
            (int(r.journey_id), r.channel): tuple(int(r._mapping[n] or 0) for n in COMPARED)
            for r in conn.execute(stmt)
        }


def timed(engine: Engine, stmt: Any) -> float:
    started = time.perf_counter()
    with engine.connect() as conn:
        conn.execute(stmt).all()
    return time.perf_counter() - started


@dataclass(frozen=True)
class QueryFigures:
    events: int
    groups: int
    stats_rows: int
    load_seconds: float
    rollup: list[float]
    raw: list[float]
    sizes: dict[str, tuple[int, int]]


def measure_query(kind: str, folder: Path, *, events: int) -> QueryFigures:
    """Load N events and their rollups into a fresh store, check both answers agree, time both."""
    with scratch_store(kind, "reports", folder) as scratch:
        engine = scratch.engine()
        try:
            workspace_id = create_workspace(engine, "bench", now=T0).id
            dataset = Dataset(events)
            started = time.perf_counter()
            load(scratch, engine, workspace_id, dataset)
            loaded = time.perf_counter() - started
            log(f"reports/{kind}: loaded {dataset.events:,} events in {loaded:.0f}s")
            first = DAYS - WINDOW_DAYS
            since = (T0 + timedelta(days=first)).date()
            until = (T0 + timedelta(days=DAYS - 1)).date()
            rollup = rollup_query(workspace_id, since=since, until=until)
            raw = raw_query(workspace_id, since=since, until=until)
            expected = dataset.expected(first, DAYS - 1)
            for label, stmt in (("rollup", rollup), ("raw", raw)):
                got = answer(engine, stmt)
                if got != expected:
                    wrong = sorted(
                        k for k in expected.keys() | got.keys() if got.get(k) != expected.get(k)
                    )
                    raise RuntimeError(f"{label} report disagrees at {wrong[:5]}")
            rollup_runs = [timed(engine, rollup) for _ in range(RUNS)]
            raw_runs = [timed(engine, raw) for _ in range(RUNS)]
            return QueryFigures(
                events=dataset.events,
                groups=len(expected),
                stats_rows=len(dataset.stats),
                load_seconds=loaded,
                rollup=rollup_runs,
                raw=raw_runs,
                sizes=table_sizes(scratch),
            )
        finally:
            engine.dispose()


def summarise_query(kind: str, figures: QueryFigures) -> Result:
    rollup = statistics.median(figures.rollup)
    raw = statistics.median(figures.raw)
    events, stats = (
        _size(*figures.sizes["message_events"]),
        _size(*figures.sizes["daily_stats"]),
    )
    notes = (
        f"{figures.events:,} message events over {DAYS} days, {WINDOW_DAYS}-day report of "
        f"{figures.groups} (journey, channel) groups; rollup median of {len(figures.rollup)}: "
        f"{rollup * 1000:.1f} ms over {figures.stats_rows:,} daily_stats rows; raw "
        f"{spread(figures.raw)}; message_events {events}, daily_stats {stats}; "
        f"load {figures.load_seconds:.0f}s"
    )
    return Result(QUERY_NAME, kind, 3600 / rollup, 3600 / raw, "reports/h", notes)


def _size(table: int, indexes: int) -> str:
    return f"{table / 2**20:,.1f} MB + {indexes / 2**20:,.1f} MB indexes"


# -- the cost of rollups per fact ---------------------------------------------------


@dataclass(frozen=True)
class CostFigures:
    """Seconds per run with and without rollups, and SQL statements per item on each side."""

    facts: int
    with_rollup: list[float]
    without: list[float]
    statements: tuple[float, float]  # per item: with rollups, without


class Meter:
    """Times the measured part of a run and counts the SQL statements run inside it.

    Statement counts do not move with the machine's load, so they show what a
    bump costs where timings on a busy machine cannot.
    """

    def __init__(self, engine: Engine) -> None:
        self.counting = False
        self.seconds = 0.0
        self.statements = 0
        event.listen(engine, "before_cursor_execute", self._tick)

    def _tick(self, *_args: Any) -> None:
        if self.counting:
            self.statements += 1

    @contextlib.contextmanager
    def measure(self) -> Iterator[None]:
        self.statements = 0
        self.counting = True
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds = time.perf_counter() - started
            self.counting = False


def _figures(
    per_run: int, runs: dict[bool, list[float]], statements: dict[bool, int]
) -> CostFigures:
    items = per_run * RUNS
    return CostFigures(
        facts=per_run,
        with_rollup=runs[True],
        without=runs[False],
        statements=(statements[True] / items, statements[False] / items),
    )


def measure_cost(kind: str, folder: Path, *, facts: int) -> CostFigures:
    """Record ``facts`` sent messages with and without the rollup bump, alternating, RUNS times."""
    with scratch_store(kind, "rollup_cost", folder) as scratch:
        engine = scratch.engine()
        try:
            workspace_id = create_workspace(engine, "bench", now=T0).id
            total = facts * RUNS * 2
            _seed_outbox(engine, workspace_id, total)
            scratch.analyze()
            now = T0 + timedelta(hours=12)
            meter = Meter(engine)
            runs: dict[bool, list[float]] = {True: [], False: []}
            statements = {True: 0, False: 0}
            ids = iter(range(1, total + 1))
            for _ in range(RUNS):
                for bump in (False, True):
                    batch = [next(ids) for _ in range(facts)]
                    with meter.measure():
                        for outbox_id in batch:
                            with transaction(engine) as conn:
                                record_message_event(
                                    conn,
                                    workspace_id=workspace_id,
                                    outbox_id=outbox_id,
                                    kind="sent",
                                    at=now,
                                )
                                if bump:
                                    bump_message(conn, outbox_id, at=now, sent=1)
                    runs[bump].append(meter.seconds)
                    statements[bump] += meter.statements
            with engine.connect() as conn:
                recorded = conn.execute(select(func.count()).select_from(message_events)).scalar()
                counted = conn.execute(select(func.sum(daily_stats.c.sent))).scalar()
            if (recorded, int(counted or 0)) != (total, facts * RUNS):
                raise RuntimeError(f"recorded {recorded} facts and counted {counted} sends")
            return _figures(facts, runs, statements)
        finally:
            engine.dispose()


def _seed_outbox(engine: Engine, workspace_id: str, count: int) -> None:
    """``count`` messages being sent, spread over the dataset's journeys, steps and variants."""
    rng = random.Random(SEED)
    rows: list[dict[str, Any]] = [
        {
            "id": n,
            "workspace_id": workspace_id,
            "idempotency_key": f"bench:{n}",
            "instance_id": n,
            "journey_id": rng.randrange(JOURNEYS) + 1,
            "version_id": 1,
            "step_id": STEPS[rng.randrange(len(STEPS))],
            "profile_id": rng.randrange(PROFILES) + 1,
            "channel": "email" if rng.random() < EMAIL_SHARE else "sms",
            "template": "bench",
            "purpose": "marketing",
            "category": "marketing",
            "variant": VARIANTS[rng.randrange(len(VARIANTS))],
            "payload": {},
            "status": "sending",
            "created_at": T0,
            "available_at": T0,
        }
        for n in range(1, count + 1)
    ]
    with transaction(engine) as conn:
        conn.execute(insert(outbox), rows)


def _statements(figures: CostFigures) -> str:
    with_rollup, without = figures.statements
    return f"SQL statements {with_rollup:.1f} with rollups, {without:.1f} without"


def summarise_cost(kind: str, figures: CostFigures) -> Result:
    with_rollup = statistics.median(figures.with_rollup)
    without = statistics.median(figures.without)
    added = (with_rollup - without) / figures.facts
    notes = (
        f"{figures.facts:,} sent facts per run, one transaction each; with bump "
        f"{spread(figures.with_rollup)}, without {spread(figures.without)}; "
        f"the bump adds {added * 1000:.2f} ms per fact; {_statements(figures)} per fact"
    )
    return Result(
        COST_NAME, kind, figures.facts / with_rollup, figures.facts / without, "facts/s", notes
    )


# -- the cost of rollups per order ----------------------------------------------------


def measure_orders(kind: str, folder: Path, *, orders: int) -> CostFigures:
    """Process ``orders`` Order Completed events with and without rollup bumps, alternating.

    Every customer entered :data:`ORDER_JOURNEY` and opened its message an
    hour later, so each order is a goal conversion and is attributed to that
    message: two bumps per order. The baseline skips both bumps and nothing
    else. Ingest is not timed; the worker's rounds until idle are.
    """
    with scratch_store(kind, "rollup_orders", folder) as scratch:
        engine = scratch.engine()
        try:
            workspace_id = create_workspace(engine, "bench", now=T0).id
            total = orders * RUNS * 2
            _seed_customers(engine, workspace_id, total)
            scratch.analyze()
            at = T0 + timedelta(hours=2)
            worker = Worker(engine, clock=FrozenClock(at), owner="bench")
            meter = Meter(engine)
            runs: dict[bool, list[float]] = {True: [], False: []}
            statements = {True: 0, False: 0}
            users = iter(range(total))
            for _ in range(RUNS):
                for bump in (False, True):
                    batch = [next(users) for _ in range(orders)]
                    for part in range(0, orders, SEED_BATCH):
                        send_events(
                            engine,
                            workspace_id,
                            [_order(n) for n in batch[part : part + SEED_BATCH]],
                            now=at,
                        )
                    with contextlib.ExitStack() as stack:
                        if not bump:
                            stack.enter_context(patch.object(runtime, "bump", _no_bump))
                            stack.enter_context(patch.object(attribution, "bump", _no_bump))
                        with meter.measure():
                            while worker.run_once(at):
                                pass
                    runs[bump].append(meter.seconds)
                    statements[bump] += meter.statements
            with engine.connect() as conn:
                converted = conn.execute(select(func.count()).select_from(conversions)).scalar()
                attributed = conn.execute(select(func.count()).select_from(attributions)).scalar()
                counted = conn.execute(
                    select(func.sum(daily_stats.c.converted), func.sum(daily_stats.c.attributed))
                ).one()
            want = (total, total, orders * RUNS, orders * RUNS)
            got = (converted, attributed, int(counted[0] or 0), int(counted[1] or 0))
            if got != want:
                raise RuntimeError(f"conversions, attributions and their counters: {got} != {want}")
            return _figures(orders, runs, statements)
        finally:
            engine.dispose()


def _no_bump(*_args: Any, **_counters: Any) -> None:
    """Stands in for :func:`touchline.measure.rollups.bump` in the baseline."""


def _seed_customers(engine: Engine, workspace_id: str, count: int) -> None:
    """``count`` customers in :data:`ORDER_JOURNEY`, each with a message a person opened."""
    with transaction(engine) as conn:
        spec = load_journey_text(ORDER_JOURNEY, file="bench.yaml")
        apply_journeys(
            conn, workspace_id, [LoadedJourney("bench.yaml", spec, ORDER_JOURNEY)], now=T0
        )
    for part in range(0, count, SEED_BATCH):
        users = range(part, min(count, part + SEED_BATCH))
        send_events(
            engine,
            workspace_id,
            [identify(f"user-{n:06d}", email=f"user-{n:06d}@example.com") for n in users]
            + [track(f"user-{n:06d}", "Product Added", {"sku": f"SKU-{n}"}) for n in users],
            now=T0,
        )
    worker = Worker(engine, clock=FrozenClock(T0), owner="seed")
    while worker.run_once(T0):
        pass
    with transaction(engine) as conn:
        sent = conn.execute(
            select(outbox.c.id, outbox.c.profile_id, outbox.c.journey_id, outbox.c.channel)
        ).all()
        if len(sent) != count:
            raise RuntimeError(f"{len(sent)} messages for {count} customers")
        opened = T0 + timedelta(hours=1)
        conn.execute(
            insert(message_events),
            [
                {
                    "workspace_id": workspace_id,
                    "outbox_id": row.id,
                    "profile_id": row.profile_id,
                    "journey_id": row.journey_id,
                    "channel": row.channel,
                    "kind": "opened",
                    "at": opened,
                    "machine": False,
                }
                for row in sent
            ],
        )


def _order(n: int) -> dict[str, Any]:
    return track(
        f"user-{n:06d}",
        "Order Completed",
        {"order_id": f"order-{n}", "revenue": 42.5, "currency": "EUR"},
    )


def summarise_orders(kind: str, figures: CostFigures) -> Result:
    with_rollup = statistics.median(figures.with_rollup)
    without = statistics.median(figures.without)
    added = (with_rollup - without) / figures.facts
    notes = (
        f"{figures.facts:,} Order Completed events per run through the worker, each a goal "
        f"conversion and an attribution; with bumps {spread(figures.with_rollup)}, without "
        f"{spread(figures.without)}; the two bumps add {added * 1000:.2f} ms per order; "
        f"{_statements(figures)} per order"
    )
    return Result(
        ORDER_NAME, kind, figures.facts / with_rollup, figures.facts / without, "orders/s", notes
    )


def run(
    kind: str, folder: Path, *, events: int, facts: int, orders: int
) -> tuple[Result, Result, Result]:
    """The three rows for one store: the report query, the cost per message fact and per order."""
    query = summarise_query(kind, measure_query(kind, folder, events=events))
    log(f"reports/{kind}: rollup query {query.ratio:.3g}x faster than raw")
    cost = summarise_cost(kind, measure_cost(kind, folder, facts=facts))
    log(f"reports/{kind}: message facts with rollups at {cost.ratio:.3g} of the rate without")
    order = summarise_orders(kind, measure_orders(kind, folder, orders=orders))
    return query, cost, order
