"""What every benchmark shares: scratch stores, raw connections, results and the table.

A benchmark measures touchline and a baseline doing the same work on the
same machine in the same run, and reports their ratio. Absolute figures
move with the machine's load; the ratio is what to compare between runs.

Scratch stores are thrown away afterwards: SQLite files live in a temporary
folder, PostgreSQL databases are created as ``tl_bench_<pid>_<label>`` and
dropped ``WITH (FORCE)`` even when a benchmark fails.
"""

from __future__ import annotations

import os
import platform
import socket
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import sqlalchemy
from sqlalchemy import Engine

from touchline.store.db import make_engine, migrate

STORES = ("sqlite", "postgresql")
# Where scratch PostgreSQL databases are created; the database in the URL only
# serves to run CREATE/DROP DATABASE.
PG_ADMIN_URL = os.environ.get(
    "TOUCHLINE_BENCH_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


def log(message: str) -> None:
    """Progress on stderr, so stdout holds only the report."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Result:
    """One row of the report: touchline and its baseline, each as a rate."""

    name: str
    store: str
    touchline: float
    baseline: float
    unit: str
    notes: str = ""

    @property
    def ratio(self) -> float:
        return self.touchline / self.baseline


@dataclass
class Scratch:
    """A fresh store for one benchmark: a SQLAlchemy URL and raw DBAPI access."""

    kind: str
    url: str
    sqlite_path: Path | None = None
    pg_conninfo: str | None = None

    def engine(self, *, migrated: bool = True) -> Engine:
        engine = make_engine(self.url)
        if migrated:
            migrate(engine)
        return engine

    def raw(self) -> Any:
        """A plain DBAPI connection with touchline's durability settings, no transaction open.

        SQLite: autocommit mode (callers issue ``BEGIN IMMEDIATE``/``COMMIT``), WAL,
        ``synchronous = NORMAL`` as :func:`touchline.store.db.make_engine` sets.
        PostgreSQL: psycopg 3, a transaction per ``commit()``.
        """
        if self.sqlite_path is not None:
            conn = sqlite3.connect(self.sqlite_path, isolation_level=None)
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            return conn
        assert self.pg_conninfo is not None
        return psycopg.connect(self.pg_conninfo)

    def analyze(self) -> None:
        """PostgreSQL: refresh planner statistics, as autovacuum does in a running store.

        Stores filled in seconds would otherwise be planned with the statistics
        of an empty database (see docs/benchmarks.md). SQLite keeps none by default.
        """
        if self.pg_conninfo is None:
            return
        with psycopg.connect(self.pg_conninfo, autocommit=True) as conn:
            conn.execute("ANALYZE")


def _pg_url(database: str) -> str:
    return PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + database


def _conninfo(url: str) -> str:
    """A SQLAlchemy ``postgresql+psycopg://`` URL as a libpq connection string."""
    return "postgresql://" + url.split("://", 1)[1]


@contextmanager
def scratch_store(kind: str, label: str, folder: Path) -> Iterator[Scratch]:
    """An empty store (not migrated) that is deleted on exit."""
    if kind == "sqlite":
        path = folder / f"{label}.db"
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        try:
            yield Scratch(kind, f"sqlite:///{path}", sqlite_path=path)
        finally:
            for suffix in ("", "-wal", "-shm"):
                Path(f"{path}{suffix}").unlink(missing_ok=True)
        return
    name = f"tl_bench_{os.getpid()}_{label}"
    with psycopg.connect(_conninfo(PG_ADMIN_URL), autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{name}"')
    url = _pg_url(name)
    try:
        yield Scratch(kind, url, pg_conninfo=_conninfo(url))
    finally:
        with psycopg.connect(_conninfo(PG_ADMIN_URL), autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def workdir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="touchline-bench-") as path:
        yield Path(path)


def spread(seconds: list[float]) -> str:
    """How repeated baseline timings varied, for the notes: ``median of 5: 0.10s (0.09-0.26)``."""
    ordered = sorted(seconds)
    return (
        f"median of {len(ordered)}: {statistics.median(ordered):.2f}s "
        f"({ordered[0]:.2f}-{ordered[-1]:.2f})"
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def machine(stores: tuple[str, ...]) -> list[tuple[str, str]]:
    """What the figures were measured on, as (label, value) pairs."""
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    facts = [
        ("date", datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")),
        ("cpus", f"{os.cpu_count()} x {cpu}"),
        ("os", platform.platform()),
        ("python", platform.python_version()),
        ("sqlite", sqlite3.sqlite_version),
        ("sqlalchemy", sqlalchemy.__version__),
        ("psycopg", psycopg.__version__),
    ]
    if "postgresql" in stores:
        with psycopg.connect(_conninfo(PG_ADMIN_URL), autocommit=True) as conn:
            row = conn.execute("SHOW server_version").fetchone()
        facts.append(("postgresql", row[0] if row else "unknown"))
    return facts


def format_rate(value: float, unit: str) -> str:
    if abs(value) < 100:
        return f"{value:,.1f} {unit}"
    return f"{value:,.0f} {unit}"


def render(results: list[Result], facts: list[tuple[str, str]], *, title: str) -> str:
    """The report: machine facts, then one aligned row per result."""
    width = max(len(label) for label, _ in facts)
    lines = [title, ""]
    lines += [f"{label.ljust(width)}  {value}" for label, value in facts]
    lines.append("")
    header = ("benchmark", "store", "touchline", "baseline", "ratio")
    rows = [
        (
            r.name,
            r.store,
            format_rate(r.touchline, r.unit),
            format_rate(r.baseline, r.unit),
            f"{r.ratio:.3g}",
        )
        for r in results
    ]
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    right = (False, False, True, True, True)

    def line(cells: tuple[str, ...]) -> str:
        parts = [
            cell.rjust(w) if r else cell.ljust(w)
            for cell, w, r in zip(cells, widths, right, strict=True)
        ]
        return "  ".join(parts).rstrip()

    lines.append(line(header))
    lines.append("  ".join("-" * w for w in widths))
    lines += [line(row) for row in rows]
    notes = [f"  {r.name} / {r.store}: {r.notes}" for r in results if r.notes]
    if notes:
        lines += ["", "notes:", *notes]
    return "\n".join(lines)
