"""HTTP batch ingest against a raw ``executemany`` of the same rows.

touchline side: a fresh migrated store with one workspace, created through
the Python API; ``uvicorn --factory touchline.web.app:app_from_env`` serving it
as a separate process; the known customers identified first (not timed);
then the track events posted to ``/v1/batch`` in bodies of
:data:`BATCH_SIZE` by :data:`CLIENTS` client threads, each with its own
``httpx.Client`` and a keep-alive connection. On PostgreSQL the store is
``ANALYZE``d after the identify phase, as autovacuum would have done in a
store that has been running; without it a store filled from empty in
seconds is planned as if it were empty (docs/benchmarks.md shows what that
costs). The clock runs from the first
request to the last ``200``; ingest answers only after its transaction
commits, and the stored count is checked afterwards. Bodies are JSON-encoded
before the clock starts, so the client's own encoding is not counted.

Baseline: the rows touchline stored, read back exactly as stored (resolved
``profile_id``, JSON text, timestamps), inserted into the real ``events``
table of a second fresh migrated store — same columns, same unique
constraint and indexes — by a plain DBAPI ``executemany`` (stdlib
``sqlite3`` / ``psycopg``), :data:`BATCH_SIZE` rows and one commit per batch.
The identify rows are inserted first, not timed, so both tables start alike.
Parameters are prepared before the clock starts: the baseline is the
database's own cost of storing the rows, the floor for any ingest path.
"""

from __future__ import annotations

import json
import os
import random
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import func, select

from bench.common import Result, Scratch, free_port, log, scratch_store, spread
from touchline.ingest.segment import MAX_BATCH_BYTES
from touchline.store.tables import events
from touchline.store.workspaces import create_workspace

NAME = "http batch ingest"
# Events per /v1/batch body and per baseline commit.
BATCH_SIZE = 500
# Client threads posting at once: enough to keep the server's threadpool busy
# while one response is in flight, few enough not to starve a 2-core machine.
CLIENTS = 2
# Fresh baseline stores filled; the median is reported (each takes a second or two).
RAW_REPEATS = 3
# How long the server gets to start (import, migrate, bind).
SERVER_START_TIMEOUT = 60.0
ROOT = Path(__file__).resolve().parents[1]
T0 = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)

# Columns copied from touchline's events table into the baseline's.
COLUMNS = (
    "workspace_id",
    "message_id",
    "type",
    "name",
    "profile_id",
    "user_id",
    "anonymous_id",
    "properties",
    "traits",
    "context",
    "timestamp",
    "received_at",
    "status",
    "lease_owner",
    "lease_until",
    "attempts",
    "error",
)
JSON_COLUMNS = ("properties", "traits", "context")


# -- the workload ----------------------------------------------------------------

_FIRST = ("Anna", "Boris", "Chloe", "Dmitri", "Elena", "Farid", "Greta", "Hugo", "Iris", "Jonas")
_LAST = ("Ivanova", "Smith", "Novak", "Garcia", "Kowalski", "Rossi", "Dubois", "Berg", "Kim")
_CATEGORIES = ("Shoes", "Outerwear", "Bags", "Accessories", "Knitwear", "Trousers")
_BRANDS = ("Northwind", "Alder & Co", "Fieldstone", "Marlow", "Kestrel")
_AGENTS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Safari/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/18.1 Mobile/15E148 Safari/604.1",
)
# Track event names and their share of traffic in a typical shop.
_EVENTS = (
    ("Product Viewed", 50),
    ("Product Added", 25),
    ("Cart Viewed", 10),
    ("Checkout Started", 10),
    ("Order Completed", 5),
)


def user_ids(count: int) -> list[str]:
    return [f"user-{i:06d}" for i in range(count)]


def identify_messages(users: list[str], rng: random.Random) -> list[dict[str, Any]]:
    out = []
    for n, user in enumerate(users):
        first, last = rng.choice(_FIRST), rng.choice(_LAST)
        out.append(
            {
                "type": "identify",
                "userId": user,
                "messageId": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                "timestamp": (T0 - timedelta(days=1)).isoformat(),
                "traits": {
                    "email": f"{first}.{last}.{n}@example.com".lower(),
                    "firstName": first,
                    "lastName": last,
                    "phone": f"+4915{rng.randrange(10**8, 10**9)}",
                    "plan": rng.choice(("free", "plus", "vip")),
                    "city": rng.choice(("Berlin", "Lisbon", "Warsaw", "Tallinn")),
                },
                "context": {"timezone": "Europe/Berlin", "locale": "de-DE"},
            }
        )
    return out


def _product(rng: random.Random) -> dict[str, Any]:
    pid = rng.randrange(1, 5000)
    return {
        "product_id": f"p-{pid:05d}",
        "sku": f"SKU-{pid:05d}-{rng.choice('SMLX')}",
        "name": f"{rng.choice(_BRANDS)} {rng.choice(_CATEGORIES)[:-1]} {pid}",
        "category": rng.choice(_CATEGORIES),
        "brand": rng.choice(_BRANDS),
        "price": round(rng.uniform(9, 400), 2),
        "quantity": rng.randint(1, 3),
    }


def track_messages(count: int, users: list[str], rng: random.Random) -> list[dict[str, Any]]:
    """``count`` track messages spread over ``users``: e-commerce spec properties, web context."""
    names = [name for name, _ in _EVENTS]
    weights = [weight for _, weight in _EVENTS]
    out = []
    for n in range(count):
        name = rng.choices(names, weights)[0]
        user = rng.choice(users)
        cart = f"cart-{user}-{rng.randrange(3)}"
        if name == "Order Completed":
            products = [_product(rng) for _ in range(rng.randint(1, 3))]
            total = round(sum(p["price"] * p["quantity"] for p in products), 2)
            properties: dict[str, Any] = {
                "order_id": f"o-{n:07d}",
                "cart_id": cart,
                "total": total,
                "revenue": round(total / 1.19, 2),
                "tax": round(total - total / 1.19, 2),
                "shipping": 4.9,
                "currency": "EUR",
                "products": products,
            }
        else:
            properties = {**_product(rng), "currency": "EUR", "cart_id": cart}
        slug = properties.get("product_id", "checkout")
        out.append(
            {
                "type": "track",
                "event": name,
                "userId": user,
                "messageId": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                "timestamp": (T0 + timedelta(seconds=n / 50)).isoformat(),
                "properties": properties,
                "context": {
                    "ip": f"81.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(256)}",
                    "userAgent": rng.choice(_AGENTS),
                    "library": {"name": "analytics.js", "version": "5.2.0"},
                    "locale": "de-DE",
                    "page": {
                        "path": f"/p/{slug}",
                        "url": f"https://shop.example.com/p/{slug}",
                        "referrer": "https://www.google.com/",
                        "title": f"{name} - Example Shop",
                    },
                },
            }
        )
    return out


def encode_batches(messages: list[dict[str, Any]], *, size: int) -> list[bytes]:
    """``/v1/batch`` bodies of ``size`` messages each, encoded once."""
    bodies = []
    for start in range(0, len(messages), size):
        body = json.dumps({"batch": messages[start : start + size]}).encode()
        if len(body) > MAX_BATCH_BYTES:
            raise ValueError(f"a batch body is {len(body)} bytes, over touchline's limit")
        bodies.append(body)
    return bodies


# -- the server -------------------------------------------------------------------


@contextmanager
def server(
    url: str,
    folder: Path,
    *,
    profile_to: Path | None = None,
    factory: str = "touchline.web.app:app_from_env",
    env: dict[str, str] | None = None,
) -> Iterator[str]:
    """touchline's HTTP API as a separate process on a free port; yields its base URL.

    With ``profile_to``, :mod:`bench.profiled_server` runs instead and writes
    cProfile statistics there on shutdown. ``factory`` serves another app the
    same way, with ``env`` added to the environment.
    """
    port = free_port()
    if profile_to is None:
        command = [
            sys.executable,
            "-m",
            "uvicorn",
            "--factory",
            factory,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--no-access-log",
            "--log-level",
            "warning",
        ]
    else:
        command = [
            sys.executable,
            "-m",
            "bench.profiled_server",
            "--port",
            str(port),
            "--out",
            str(profile_to),
        ]
    env = {
        **os.environ,
        "TOUCHLINE_DATABASE_URL": url,
        "TOUCHLINE_LOG_LEVEL": "WARNING",
        **(env or {}),
    }
    errors = folder / f"server-{port}.log"
    with errors.open("wb") as sink:
        proc = subprocess.Popen(command, env=env, cwd=ROOT, stdout=sink, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(proc, base, errors)
        yield base
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _wait_ready(proc: subprocess.Popen[bytes], base: str, errors: Path) -> None:
    deadline = time.monotonic() + SERVER_START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited:\n{errors.read_text()[-3000:]}")
        try:
            if httpx.get(f"{base}/readyz", timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"the server did not become ready:\n{errors.read_text()[-3000:]}")


def post_all(base: str, write_key: str, bodies: list[bytes], *, clients: int) -> float:
    """Post every body to ``/v1/batch`` from ``clients`` threads; seconds taken.

    Client ``i`` posts bodies ``i, i + clients, ...`` in order. Any answer but
    200 fails the benchmark.
    """
    failures: list[str] = []

    def run(mine: list[bytes]) -> None:
        headers = {"content-type": "application/json"}
        with httpx.Client(base_url=base, auth=(write_key, ""), timeout=120.0) as client:
            for body in mine:
                response = client.post("/v1/batch", content=body, headers=headers)
                if response.status_code != 200:
                    failures.append(f"{response.status_code} {response.text[:300]}")
                    return

    threads = [
        threading.Thread(target=run, args=(bodies[i::clients],), name=f"client-{i}")
        for i in range(clients)
    ]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    if failures:
        raise RuntimeError(f"ingest failed: {failures[0]}")
    return elapsed


# -- the baseline -----------------------------------------------------------------


def stored_rows(store: Scratch) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """(identify rows, track rows) exactly as touchline stored them, in id order."""
    pg = store.kind == "postgresql"
    cols = ", ".join(f'"{c}"::text' if pg and c in JSON_COLUMNS else f'"{c}"' for c in COLUMNS)
    conn = store.raw()
    try:
        rows = conn.execute(f"SELECT {cols} FROM events ORDER BY id").fetchall()
    finally:
        conn.close()
    kind = COLUMNS.index("type")
    return [r for r in rows if r[kind] != "track"], [r for r in rows if r[kind] == "track"]


def raw_insert(
    store: Scratch, preload: list[tuple[Any, ...]], rows: list[tuple[Any, ...]]
) -> float:
    """Insert ``preload`` (not timed), then ``rows`` in commits of BATCH_SIZE; seconds for ``rows``."""
    pg = store.kind == "postgresql"
    marks = [("%s::jsonb" if c in JSON_COLUMNS else "%s") if pg else "?" for c in COLUMNS]
    quoted = ", ".join(f'"{c}"' for c in COLUMNS)
    sql = f"INSERT INTO events ({quoted}) VALUES ({', '.join(marks)})"
    conn = store.raw()
    try:
        _insert_batches(conn, sql, preload, pg=pg)
        started = time.perf_counter()
        _insert_batches(conn, sql, rows, pg=pg)
        return time.perf_counter() - started
    finally:
        conn.close()


def _insert_batches(conn: Any, sql: str, rows: list[tuple[Any, ...]], *, pg: bool) -> None:
    for start in range(0, len(rows), BATCH_SIZE):
        chunk = rows[start : start + BATCH_SIZE]
        if pg:
            with conn.cursor() as cursor:
                cursor.executemany(sql, chunk)
            conn.commit()
        else:
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(sql, chunk)
            conn.execute("COMMIT")


def raw_baseline(
    kind: str,
    folder: Path,
    preload: list[tuple[Any, ...]],
    rows: list[tuple[Any, ...]],
    *,
    label: int,
) -> float:
    """One baseline run on its own fresh migrated store; seconds for ``rows``."""
    with scratch_store(kind, f"ingest_raw{label}", folder) as raw_store:
        raw_store.engine().dispose()  # migrated: the same table, constraint and indexes
        elapsed = raw_insert(raw_store, preload, rows)
        conn = raw_store.raw()
        try:
            count = conn.execute("SELECT count(*) FROM events").fetchone()[0]
        finally:
            conn.close()
    if count != len(preload) + len(rows):
        raise RuntimeError(f"the baseline stored {count} rows")
    return elapsed


# -- the benchmark ----------------------------------------------------------------


def run(
    kind: str,
    folder: Path,
    *,
    events_count: int,
    users_count: int,
    analyze: bool = True,
    profile_to: Path | None = None,
) -> Result:
    rng = random.Random(20261127)
    users = user_ids(users_count)
    identify_bodies = encode_batches(identify_messages(users, rng), size=BATCH_SIZE)
    tracks = track_messages(events_count, users, rng)
    track_bodies = encode_batches(tracks, size=BATCH_SIZE)
    mean_bytes = sum(len(b) for b in track_bodies) / events_count

    with scratch_store(kind, "ingest", folder) as store:
        engine = store.engine()
        workspace = create_workspace(engine, "bench", now=T0)
        with server(store.url, folder, profile_to=profile_to) as base:
            log(f"ingest/{kind}: identifying {users_count:,} customers (not timed)")
            post_all(base, workspace.write_key, identify_bodies, clients=CLIENTS)
            if analyze:
                store.analyze()
            log(f"ingest/{kind}: posting {events_count:,} track events")
            elapsed = post_all(base, workspace.write_key, track_bodies, clients=CLIENTS)
        with engine.connect() as conn:
            stored = conn.execute(
                select(func.count()).select_from(events).where(events.c.type == "track")
            ).scalar_one()
        engine.dispose()
        if stored != events_count:
            raise RuntimeError(f"touchline stored {stored} of {events_count} track events")
        preload, rows = stored_rows(store)

    log(f"ingest/{kind}: raw executemany of the same {len(rows):,} rows, {RAW_REPEATS} times")
    raw_runs = [raw_baseline(kind, folder, preload, rows, label=n) for n in range(RAW_REPEATS)]
    raw_elapsed = statistics.median(raw_runs)

    return Result(
        NAME,
        kind,
        touchline=events_count / elapsed,
        baseline=len(rows) / raw_elapsed,
        unit="ev/s",
        notes=(
            f"{events_count:,} events, {users_count:,} customers, {mean_bytes:,.0f} B/event on "
            f"the wire, {CLIENTS} clients; touchline {elapsed:.1f}s; raw {spread(raw_runs)}"
        ),
    )
