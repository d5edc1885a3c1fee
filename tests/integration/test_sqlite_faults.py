"""SQLite under faults: a writer lock held past the busy timeout, and a full database.

These faults are SQLite's own (PostgreSQL queues writers on row locks and
has no single writer lock), so the tests run on SQLite only. What they
prove: the API answers ``503 store_busy`` with ``Retry-After`` or ``507
store_full``, the CLI prints one clear line, nothing of the refused request
is written, ``PRAGMA integrity_check`` says ``ok``, and what was stored
before is intact.
"""

from __future__ import annotations

import json
import sqlite3
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import Engine, event, func, select

from touchline import cli
from touchline.config import Settings
from touchline.store import db
from touchline.store.db import make_engine
from touchline.store.tables import events, workspaces
from touchline.store.workspaces import CreatedWorkspace, create_workspace
from touchline.web.app import create_app

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
    from fastapi.testclient import TestClient

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
# Short, so a test waits a fraction of a second for the lock instead of 30 s.
BUSY_TIMEOUT_MS = 200


def _path(sqlite_url: str) -> str:
    return sqlite_url.removeprefix("sqlite:///")


def _impatient_engine(sqlite_url: str, *, max_pages: int | None = None) -> Engine:
    """touchline's engine, with a short busy timeout and, optionally, a size cap in pages."""
    engine = make_engine(sqlite_url)

    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        if max_pages is not None:
            cursor.execute(f"PRAGMA max_page_count = {max_pages}")
        cursor.close()

    return engine


@contextmanager
def write_lock(path: str) -> Iterator[None]:
    """Another connection holding SQLite's writer lock for the ``with`` block."""
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        yield
        other.execute("ROLLBACK")
    finally:
        other.close()


def _integrity(path: str) -> str:
    with sqlite3.connect(path) as conn:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])


def _count(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(events)).scalar_one())


@pytest.fixture
def store(sqlite_url: str) -> Iterator[tuple[Engine, CreatedWorkspace]]:
    engine = _impatient_engine(sqlite_url)
    yield engine, create_workspace(engine, "Shop", now=NOW)
    engine.dispose()


def _track(client: TestClient, key: str, user: str = "u1") -> Any:
    return client.post(
        "/v1/track",
        json={"userId": user, "event": "Order Completed", "properties": {"total": 5}},
        headers={"Authorization": f"Bearer {key}"},
    )


# -- busy ---------------------------------------------------------------------------------


def test_ingest_under_a_held_write_lock_is_503_store_busy_with_retry_after(
    store: tuple[Engine, CreatedWorkspace], sqlite_url: str
) -> None:
    """A write lock held past the busy timeout: 503 store_busy, Retry-After, nothing stored."""
    # given
    engine, ws = store
    with TestClient(create_app(Settings(), engine=engine)) as client:
        assert _track(client, ws.write_key, "before").status_code == 200
        # when
        with write_lock(_path(sqlite_url)):
            busy = _track(client, ws.write_key, "during")
        after = _track(client, ws.write_key, "during")
    # then
    assert busy.status_code == 503, busy.text
    assert busy.json() == {"code": "store_busy", "message": "the store is busy; try again shortly"}
    assert int(busy.headers["Retry-After"]) >= 1
    assert after.status_code == 200, after.text  # the client's retry goes through
    assert _count(engine) == 2
    assert _integrity(_path(sqlite_url)) == "ok"


def test_an_admin_write_under_a_held_write_lock_is_503_and_applies_nothing(
    store: tuple[Engine, CreatedWorkspace], sqlite_url: str
) -> None:
    """Applying journeys while another writer holds the lock: 503 store_busy, no journey."""
    engine, ws = store
    journey = "journey: hello\ntrigger: {event: Signed Up}\nsteps:\n  - send: {channel: email, template: hi}\n"
    headers = {"Authorization": f"Bearer {ws.admin_token}"}
    with TestClient(create_app(Settings(), engine=engine)) as client:
        with write_lock(_path(sqlite_url)):
            busy = client.post(
                "/admin/v1/journeys", json={"files": {"a.yaml": journey}}, headers=headers
            )
        listed = client.get("/admin/v1/journeys", headers=headers)
    assert busy.status_code == 503, busy.text
    assert busy.json()["code"] == "store_busy"
    assert listed.json() == {"journeys": []}
    assert _integrity(_path(sqlite_url)) == "ok"


def test_the_cli_says_the_store_is_busy_in_one_line(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`touchline workspace create` under a held lock exits 1 with a clear message, no traceback."""
    # given: the CLI's engine waits BUSY_TIMEOUT_MS for the lock, not 30 s
    monkeypatch.setattr(db, "SQLITE_BUSY_TIMEOUT_MS", BUSY_TIMEOUT_MS)
    runner = CliRunner()
    env = {"TOUCHLINE_DATABASE_URL": sqlite_url}
    # when
    with write_lock(_path(sqlite_url)):
        result = runner.invoke(cli.main, ["workspace", "create", "Late shop"], env=env)
    # then
    assert result.exit_code == 1, result.output
    assert "the store is busy" in result.output
    assert "try again" in result.output
    assert "Traceback" not in result.output
    assert isinstance(result.exception, SystemExit)
    check = make_engine(sqlite_url)
    with check.connect() as conn:
        assert conn.execute(select(func.count()).select_from(workspaces)).scalar_one() == 0
    check.dispose()
    assert _integrity(_path(sqlite_url)) == "ok"


# -- full ---------------------------------------------------------------------------------


def test_a_full_database_is_507_store_full_and_keeps_what_was_stored(sqlite_url: str) -> None:
    """Filling the database to its page cap: 507 store_full, the batch not half-written, data intact."""
    # given: a store allowed 40 pages more than it has now
    setup = make_engine(sqlite_url)
    ws = create_workspace(setup, "Shop", now=NOW)
    with setup.connect() as conn:
        pages = int(conn.exec_driver_sql("PRAGMA page_count").scalar_one())
    setup.dispose()
    engine = _impatient_engine(sqlite_url, max_pages=pages + 40)
    headers = {"Authorization": f"Bearer {ws.write_key}", "Content-Type": "application/json"}
    accepted, full = 0, None
    # when: batches of 20 events go in until the store refuses one
    with TestClient(create_app(Settings(), engine=engine)) as client:
        for n in range(200):
            batch = [
                {
                    "type": "track",
                    "userId": f"u{n}-{i}",
                    "event": "Viewed",
                    "properties": {"p": "x" * 500},
                }
                for i in range(20)
            ]
            response = client.post(
                "/v1/batch", content=json.dumps({"batch": batch}), headers=headers
            )
            if response.status_code != 200:
                full = response
                break
            accepted += 20
    # then
    assert full is not None, "the store never filled up"
    assert full.status_code == 507, full.text
    assert full.json() == {"code": "store_full", "message": "the store is out of space"}
    assert accepted > 0
    assert _count(engine) == accepted  # every earlier batch whole, the refused one not at all
    engine.dispose()
    assert _integrity(_path(sqlite_url)) == "ok"


def test_the_cli_says_the_store_is_full_in_one_line(tmp_path: Path) -> None:
    """A store error reaching the CLI becomes one line saying nothing was written."""
    from sqlalchemy.exc import OperationalError

    error = OperationalError("INSERT", {}, sqlite3.OperationalError("database or disk is full"))
    error.orig.sqlite_errorname = "SQLITE_FULL"  # type: ignore[union-attr]
    message = cli.store_failure(error)
    assert message is not None
    assert message.startswith("the store is full") and "nothing was written" in message
