"""Shared fixtures: a migrated store on SQLite and on PostgreSQL.

Store and engine tests take the ``engine`` fixture and run once per backend.
PostgreSQL tests clone a migrated template database per test (fast and
isolated). In CI (``CI=true``) an unreachable PostgreSQL fails the run; on a
laptop without one those tests skip with a message saying why.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.pool import NullPool

from touchline.store.db import make_engine, migrate
from touchline.store.tables import metadata

PG_ADMIN_URL = os.environ.get(
    "TOUCHLINE_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--run-slow", action="store_true", help="run the long fault variants")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--run-slow"):
        return
    skip = pytest.mark.skip(reason="long variant; run with --run-slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


def _pg_url(database: str) -> str:
    return PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + database


@pytest.fixture(scope="session")
def pg_admin() -> Iterator[Engine]:
    engine = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(text("select 1"))
    except Exception as exc:  # noqa: BLE001 - any failure means "not reachable"
        engine.dispose()
        message = f"PostgreSQL is not reachable at {PG_ADMIN_URL}: {exc}"
        if IN_CI:
            pytest.fail(message + " (CI requires it)", pytrace=False)
        pytest.skip(message + " - PostgreSQL tests skipped")
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def pg_template(pg_admin: Engine, worker_id: str) -> Iterator[str]:
    name = f"tl_template_{worker_id}_{os.getpid()}"
    with pg_admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    engine = make_engine(_pg_url(name))
    migrate(engine)
    engine.dispose()
    yield name
    with pg_admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "template.db"
    engine = make_engine(f"sqlite:///{path}")
    migrate(engine)
    engine.dispose()  # closing the last connection checkpoints the WAL into the file
    return path


@pytest.fixture
def sqlite_url(sqlite_template: Path, tmp_path: Path) -> str:
    path = tmp_path / "touchline.db"
    shutil.copy(sqlite_template, path)
    wal = sqlite_template.with_name(sqlite_template.name + "-wal")
    if wal.exists():
        shutil.copy(wal, path.with_name(path.name + "-wal"))
    return f"sqlite:///{path}"


@pytest.fixture(scope="session")
def pg_worker_db(pg_admin: Engine, pg_template: str) -> Iterator[Engine]:
    """This test process's own database, cloned once; tests empty it instead of cloning.

    Cloning a database costs a second or more on a busy machine; emptying every
    table with one TRUNCATE costs milliseconds, and leaves the same state: the
    migrated schema, no rows, identities restarted.
    """
    name = f"tl_work_{uuid.uuid4().hex[:12]}"
    with pg_admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}" TEMPLATE "{pg_template}"'))
    engine = create_engine(_pg_url(name), isolation_level="AUTOCOMMIT", poolclass=NullPool)
    yield engine
    engine.dispose()
    with pg_admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
def pg_url(request: pytest.FixtureRequest) -> str:
    worker_db: Engine = request.getfixturevalue("pg_worker_db")
    tables = ", ".join(f'"{t.name}"' for t in metadata.sorted_tables)
    with worker_db.connect() as conn:
        # Connections a previous test leaked would block the TRUNCATE's lock.
        conn.execute(
            text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        )
        conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY"))
    return worker_db.url.render_as_string(hide_password=False)


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest) -> str:
    """A fresh, migrated store URL; the test runs once per backend."""
    if request.param == "sqlite":
        return request.getfixturevalue("sqlite_url")
    return request.getfixturevalue("pg_url")


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    """An Engine on a fresh, migrated store; the test runs once per backend."""
    eng = make_engine(database_url)
    yield eng
    eng.dispose()
