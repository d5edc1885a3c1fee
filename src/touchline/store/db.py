"""Connecting to the store and running migrations.

SQLite is the embedded default: WAL mode, a busy timeout, and every write
transaction (:func:`transaction`) opened with ``BEGIN IMMEDIATE`` so there is
exactly one writer and no transaction fails half-way on a lock upgrade;
reads stay deferred and run beside the writer. PostgreSQL is the
scale-out store; many processes share it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, create_engine, event, literal_column
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import OperationalError

from touchline.errors import StoreBusy, StoreError, StoreFull

T = TypeVar("T")
MIGRATIONS = Path(__file__).parent / "migrations"
# How long SQLite waits for the writer lock before reporting the store busy.
SQLITE_BUSY_TIMEOUT_MS = 30_000
# Execution option marking a connection whose transactions write (see transaction()).
WRITE = "touchline_write"


def make_engine(
    url: str, *, pool_size: int = 5, echo: bool = False, durable: bool = True
) -> Engine:
    """An Engine for ``url`` with touchline's connection settings applied.

    ``durable=False`` turns off SQLite's fsyncs; only for throw-away stores
    such as a simulation's.
    """
    if url.startswith("sqlite"):
        engine = create_engine(url, echo=echo)
        _configure_sqlite(engine, synchronous="NORMAL" if durable else "OFF")
        return engine
    return create_engine(
        url,
        echo=echo,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=True,
        connect_args={"connect_timeout": 10},
    )


def _configure_sqlite(engine: Engine, *, synchronous: str) -> None:
    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy, not the driver, decide when transactions begin.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute(f"PRAGMA synchronous = {synchronous}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        # Writers take the lock up front; readers stay deferred and, under WAL,
        # never block the writer or each other.
        conn.exec_driver_sql(
            "BEGIN IMMEDIATE" if conn.get_execution_options().get(WRITE) else "BEGIN"
        )


def is_sqlite(engine: Engine | Connection) -> bool:
    return engine.dialect.name == "sqlite"


@contextmanager
def transaction(engine: Engine) -> Iterator[Connection]:
    """One write transaction; commits on success, rolls back on any error.

    On SQLite it opens with ``BEGIN IMMEDIATE``; plain ``engine.connect()``
    reads open a deferred transaction instead. Connection-level failures are
    translated to :class:`StoreError`.
    """
    try:
        with engine.connect().execution_options(**{WRITE: True}) as conn, conn.begin():
            yield conn
    except OperationalError as exc:
        raise store_error(exc) from exc


# SQLite result codes (``sqlite3.Error.sqlite_errorname``) and PostgreSQL SQLSTATEs that
# say "wait and try again" (a lock held past the timeout) or "out of space".
_BUSY = frozenset({"SQLITE_BUSY", "SQLITE_LOCKED", "55P03", "57014"})
_FULL = frozenset({"SQLITE_FULL", "53100"})


def store_error(exc: BaseException) -> StoreError:
    """The :class:`StoreError` that says what a driver's error means to a caller.

    A lock held past the busy timeout is :class:`StoreBusy` (try again shortly),
    a full disk or a database at its size limit :class:`StoreFull`; anything
    else, such as a lost connection, a plain :class:`StoreError`.
    """
    orig = getattr(exc, "orig", None) or exc
    name = getattr(orig, "sqlite_errorname", None) or getattr(orig, "sqlstate", None) or ""
    if name.startswith("SQLITE_"):  # extended codes (SQLITE_BUSY_SNAPSHOT) count as their base
        name = "_".join(name.split("_")[:2])
    if name in _BUSY:
        return StoreBusy(f"the store is busy: another writer holds its lock ({orig})")
    if name in _FULL:
        return StoreFull(f"the store is full: {orig}")
    return StoreError(f"the store refused the transaction: {orig}")


# PostgreSQL's "deadlock detected" and "could not serialize": the transaction
# was chosen as the victim and is safe to run again from the start.
RETRYABLE_SQLSTATES = frozenset({"40P01", "40001"})
# How many times a retryable transaction is attempted in all.
TRANSACTION_ATTEMPTS = 3


def is_retryable(exc: BaseException) -> bool:
    """Whether ``exc`` (or what it wraps) is a deadlock or serialization failure."""
    seen: BaseException | None = exc
    while seen is not None:
        orig = getattr(seen, "orig", None)
        if getattr(orig, "sqlstate", None) in RETRYABLE_SQLSTATES:
            return True
        seen = seen.__cause__
    return False


def run_in_transaction(engine: Engine, work: Callable[[Connection], T]) -> T:
    """Run ``work`` in :func:`transaction`, again from the start if the store
    picked it as a deadlock victim (at most :data:`TRANSACTION_ATTEMPTS` times)."""
    for attempt in range(1, TRANSACTION_ATTEMPTS + 1):
        try:
            with transaction(engine) as conn:
                return work(conn)
        except StoreError as exc:
            if attempt == TRANSACTION_ATTEMPTS or not is_retryable(exc):
                raise
    raise AssertionError("unreachable")


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest migration (safe to call on every start)."""
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with engine.connect().execution_options(**{WRITE: True}) as conn, conn.begin():
        config.attributes["connection"] = conn
        command.upgrade(config, "head")


_IGNORING: dict[tuple[str, str, tuple[str, ...]], Any] = {}


def insert_ignore(conn: Connection, table: Any, values: dict[str, Any], *, key: list[str]) -> int:
    """INSERT that silently skips a row whose unique ``key`` already exists; returns rows added.

    The statement is built once per (dialect, table, key) and the row passed as
    parameters, so the hot path pays no statement construction.
    """
    cache_key = (conn.dialect.name, table.name, tuple(key))
    stmt = _IGNORING.get(cache_key)
    if stmt is None:
        dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
        # RETURNING, because the driver's rowcount for INSERT ... ON CONFLICT is -1 on psycopg.
        stmt = (
            dialect.insert(table)
            .on_conflict_do_nothing(index_elements=key)
            .returning(literal_column("1"))
        )
        _IGNORING[cache_key] = stmt
    return len(conn.execute(stmt, values).fetchall())
