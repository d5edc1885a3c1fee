"""The latency baseline's server: a bare ASGI app that stores each posted body as one row.

Served by uvicorn exactly as touchline is (``python -m uvicorn --factory
bench.bare_ingest:app_from_env``). For every ``POST`` it reads the body,
parses it as JSON, inserts ``(message_id, body)`` into ``raw_events`` with
one plain DBAPI statement (stdlib ``sqlite3`` in WAL mode with
``synchronous=NORMAL``, as touchline opens SQLite, or ``psycopg``), commits
and answers ``200 {"success": true}``; any other method is a readiness probe
and gets the same answer. No authentication, no validation, no
profile: the floor for storing one event over HTTP on the same server stack.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
OK = json.dumps({"success": True}).encode()


class _Store:
    """One connection, used by one request at a time."""

    def __init__(self, target: str) -> None:
        self.lock = threading.Lock()
        if target.startswith("sqlite:"):
            self.pg = False
            self.conn: Any = sqlite3.connect(
                target.removeprefix("sqlite:"), isolation_level=None, check_same_thread=False
            )
            self.conn.execute("PRAGMA journal_mode = WAL")
            self.conn.execute("PRAGMA synchronous = NORMAL")
            self.conn.execute(
                "CREATE TABLE IF NOT EXISTS raw_events "
                "(id INTEGER PRIMARY KEY, message_id TEXT NOT NULL UNIQUE, body TEXT NOT NULL)"
            )
            self.sql = "INSERT INTO raw_events (message_id, body) VALUES (?, ?)"
        else:
            self.pg = True
            self.conn = psycopg.connect(target, autocommit=True)
            self.conn.execute(
                "CREATE TABLE IF NOT EXISTS raw_events (id bigserial PRIMARY KEY, "
                "message_id text NOT NULL UNIQUE, body jsonb NOT NULL)"
            )
            self.sql = "INSERT INTO raw_events (message_id, body) VALUES (%s, %s::jsonb)"

    def insert(self, message_id: str, body: str) -> None:
        with self.lock:
            if self.pg:
                self.conn.execute(self.sql, (message_id, body))
            else:
                self.conn.execute("BEGIN IMMEDIATE")
                self.conn.execute(self.sql, (message_id, body))
                self.conn.execute("COMMIT")


def app_from_env() -> Callable[[dict[str, Any], Receive, Send], Awaitable[None]]:
    """The app for the store named by ``BARE_INGEST_TARGET`` (``sqlite:PATH`` or a conninfo)."""
    store = _Store(os.environ["BARE_INGEST_TARGET"])

    async def app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        if scope["method"] == "POST":  # anything else is a readiness probe
            event = json.loads(body)
            store.insert(str(event["messageId"]), body.decode())
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": OK})

    return app
