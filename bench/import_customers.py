"""``python -m bench.import_customers [--rows N] [--store sqlite|postgresql|both]``: import speed.

touchline side: a CSV of ``--rows`` customers (user id, email, phone, names,
time zone, birthday, email consent with source and time, two custom traits;
one row in 50 with a bad email) written before the clock starts, then
``touchline import customers`` as a library call, :data:`IMPORT_CHUNK` rows a
transaction: reading and checking every row, the identify events through the
ingest path, the consent ledger rows, the rejected rows and the job's
progress. Rate: rows read per second.

Baseline: the same good rows as ready-made identify events stored with
:func:`touchline.store.ingest.ingest` in batches of the same size, with no
file, no checks, no consent and no job: the floor the import's ingest path
cannot beat. The ratio is what the import adds on top of ingesting.

The default size is small enough to check the script; the report in
docs/benchmarks.md uses ``--rows 100000``.
"""

from __future__ import annotations

import argparse
import csv
import random
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from bench.common import STORES, Result, log, machine, render, scratch_store, workdir
from touchline.audience.customer_import import IMPORT_CHUNK, import_customers
from touchline.ingest.segment import IncomingEvent
from touchline.store.ingest import ingest
from touchline.store.workspaces import create_workspace
from touchline.testing import FrozenClock

NAME = "customer import (CSV)"
DEFAULT_ROWS = 5_000
#: One row in this many has a bad email and is rejected.
BAD_EVERY = 50
NOW = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
FIRST = ("Анна", "Борис", "Вера", "Глеб", "Дарья", "Егор")
LAST = ("Иванова", "Петров", "Смирнова", "Кузнецов", "Попова", "Соколов")


def write_file(path: Path, rows: int, *, seed: int = 7) -> None:
    rng = random.Random(seed)
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(
            [
                "user_id",
                "email",
                "phone",
                "first_name",
                "last_name",
                "timezone",
                "birthday",
                "email_consent",
                "consent_source",
                "consent_at",
                "city",
                "orders",
            ]
        )
        for i in range(rows):
            email = f"c{i}@example.ru" if i % BAD_EVERY else f"c{i}-at-example.ru"
            writer.writerow(
                [
                    f"c-{i}",
                    email,
                    f"+7916{i % 10_000_000:07d}",
                    rng.choice(FIRST),
                    rng.choice(LAST),
                    "Europe/Moscow",
                    f"19{rng.randint(50, 99)}-0{rng.randint(1, 9)}-1{rng.randint(0, 9)}",
                    rng.choice(("yes", "no", "")),
                    "signup form",
                    "2025-06-01T10:00:00+03:00",
                    rng.choice(("Москва", "Казань", "Тверь")),
                    str(rng.randint(0, 20)),
                ]
            )


def events_of(path: Path) -> list[IncomingEvent]:
    """The good rows as identify events, as the baseline stores them."""
    out = []
    with path.open(encoding="utf-8", newline="") as f:
        for n, row in enumerate(csv.DictReader(f), start=2):
            if "@" not in row["email"]:
                continue
            traits = {k: v for k, v in row.items() if k not in ("user_id",) and v}
            out.append(
                IncomingEvent(
                    type="identify",
                    message_id=f"base:{n}",
                    user_id=row["user_id"],
                    anonymous_id=None,
                    name=None,
                    properties={},
                    traits=traits,
                    context={},
                    timestamp=NOW,
                    sent_at=None,
                    received_at=NOW,
                )
            )
    return out


def run(store: str, rows: int, folder: Path) -> Result:
    path = folder / "customers.csv"
    write_file(path, rows)
    with scratch_store(store, "import", folder) as scratch:
        engine = scratch.engine()
        ws = create_workspace(engine, "bench", now=NOW).id
        log(f"{store}: importing {rows} rows")
        started = time.perf_counter()
        result = import_customers(engine, ws, path, clock=FrozenClock(NOW))
        ours = time.perf_counter() - started
        assert result.rows == rows and result.rejected == rows // BAD_EVERY + (rows % BAD_EVERY > 0)
        engine.dispose()
    events = events_of(path)
    with scratch_store(store, "import_base", folder) as scratch:
        engine = scratch.engine()
        ws = create_workspace(engine, "bench", now=NOW).id
        log(f"{store}: baseline ingest of {len(events)} events")
        started = time.perf_counter()
        for start in range(0, len(events), IMPORT_CHUNK):
            ingest(engine, ws, events[start : start + IMPORT_CHUNK], now=NOW)
        base = time.perf_counter() - started
        engine.dispose()
    return Result(
        NAME,
        store,
        rows / ours,
        rows / base,
        "rows/s",
        notes=f"{rows} rows, {result.imported} imported, {result.consents} consents",
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=DEFAULT_ROWS)
    parser.add_argument("--store", choices=(*STORES, "both"), default="sqlite")
    args = parser.parse_args(argv)
    stores = STORES if args.store == "both" else (args.store,)
    with workdir() as folder:
        results = [run(store, args.rows, folder) for store in stores]
    sys.stdout.write(render(results, machine(stores), title="touchline: customer import") + "\n")


if __name__ == "__main__":
    main()
