"""Importing customers from a CSV or JSON Lines file: resumable, idempotent, row by row.

Each good row becomes an ``identify`` event stored by
:func:`touchline.store.ingest.ingest_events`, exactly as the HTTP API stores
one: identity resolution, merges and trait rules are the same, and the
worker later shows the event to segments like any other. Its ``messageId``
is ``import:<file SHA-256>:<line>``, so a file imported again, or an import
resumed, never stores a row twice.

The file is read twice, streaming: once for its checksum and line count,
then row by row. Rows go in chunks of :data:`IMPORT_CHUNK`; each chunk is one
transaction holding its events, its consent ledger rows, its rejected rows
and the job's progress (``import_jobs.last_line``). A crash loses at most the
chunk in flight; the next run of the same file (same checksum) resumes
after the last committed line.

Consent columns (see :mod:`touchline.audience.customer_rows`) are written to
the ledger in the chunk's transaction, as confirmed grants or withdrawals
dated ``consent_at`` (else the import's time) with ``consent_source`` (else
``import <file name>``) as their source. As with an ``identify`` call, only
changes are written: a grant for a customer whose consent holds, or one
dated before their latest withdrawal, adds nothing. Rows already stored
(a re-run) never touch the ledger, so an old file cannot re-grant a
consent withdrawn since.

A row whose email or phone belongs to an erased customer (an ``erased``
suppression holds its pseudonym) is refused, so an import never silently
brings back someone who asked to be forgotten.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, delete, insert, select, update

from touchline.audience.customer_rows import (
    ConsentChoice,
    CustomerRow,
    Header,
    Rejection,
    parse_row,
)
from touchline.clock import Clock
from touchline.errors import Conflict, InputError
from touchline.ingest.segment import IncomingEvent
from touchline.messaging.phone import DEFAULT_REGION
from touchline.messaging.policies import MARKETING, ConsentRecord, consent_state
from touchline.store.consent import pseudonym
from touchline.store.db import run_in_transaction
from touchline.store.ingest import ingest_events
from touchline.store.tables import (
    consents,
    events,
    identities,
    import_jobs,
    import_rejections,
    suppressions,
)

#: Rows per transaction: big enough to amortise a commit, small enough that a
#: crash redoes little and SQLite's writer lock is held briefly.
IMPORT_CHUNK = 1000
#: Values per IN (...) list, as in store.ingest.
IN_CHUNK = 500
#: Reading the file for its checksum, this many bytes at a time.
READ_BLOCK = 1 << 20
KIND = "customers"
FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}
REPORT_FIELDS = ("line", "field", "reason")
#: Which address a consent channel's ledger row names.
CONSENT_ADDRESS = {"email": "email", "sms": "phone"}
ERASED_REASON = (
    "belongs to a customer erased on request; lift its 'erased' suppression to import it again"
)


class ImportFileError(InputError):
    """The file as a whole cannot be imported (unknown format, bad header)."""

    code = "import_file_invalid"


@dataclass(frozen=True)
class ImportProgress:
    """Where an import stands after a committed chunk."""

    line: int
    total_lines: int
    rows: int
    imported: int
    duplicates: int
    rejected: int


@dataclass
class ImportResult:
    """What an import did, over all its runs (a resumed import counts earlier chunks too)."""

    job_id: int
    path: str
    checksum: str
    status: str
    rows: int = 0
    imported: int = 0
    duplicates: int = 0
    rejected: int = 0
    consents: int = 0
    resumed_after: int = 0  # the last line committed before this run; 0 for a fresh start
    already_done: bool = False
    report: Path | None = None
    elapsed: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        data = {k: v for k, v in self.__dict__.items() if k != "report"}
        data["report"] = str(self.report) if self.report else None
        return data


@dataclass
class _Chunk:
    rows: list[CustomerRow] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)
    first_line: int = 0
    last_line: int = 0
    count: int = 0


def import_customers(
    engine: Engine,
    workspace_id: str,
    path: str | Path,
    *,
    clock: Clock,
    report: str | Path | None = None,
    chunk_size: int = IMPORT_CHUNK,
    region: str = DEFAULT_REGION,
    restart: bool = False,
    on_chunk: Callable[[ImportProgress], None] | None = None,
) -> ImportResult:
    """Import the customers in ``path`` (``.csv`` or ``.jsonl``) into the workspace.

    Resumes an interrupted import of the same file; a finished one is not
    run again unless ``restart`` (then every row is read anew and the rows
    already stored count as duplicates). Rejected rows are written to
    ``report`` (default: ``<name>.rejected.csv`` next to the file) when
    there are any. ``on_chunk`` is called after each committed chunk.
    """
    source = Path(path)
    fmt = FORMATS.get(source.suffix.lower())
    if fmt is None:
        raise ImportFileError(f"{source}: import reads .csv or .jsonl files, not {source.suffix!r}")
    if not source.is_file():
        raise ImportFileError(f"{source}: no such file")
    started = clock.now()
    checksum, total_lines = file_summary(source)
    job, resumed_after, done = _open_job(
        engine, workspace_id, source, fmt, checksum, now=started, restart=restart
    )
    report_path = Path(report) if report else source.with_name(source.stem + ".rejected.csv")
    if done:
        result = _result(engine, job, already_done=True)
        result.report = _write_report(engine, job, report_path)
        return result

    chunk = _Chunk(last_line=resumed_after)
    for line, item in read_rows(source, fmt):
        if line <= resumed_after:
            continue
        chunk.count += 1
        chunk.first_line = chunk.first_line or line
        chunk.last_line = line
        if isinstance(item, list):
            chunk.rejections.extend(item)
        else:
            parsed = parse_row(line, item, now=started, region=region)
            if isinstance(parsed, list):
                chunk.rejections.extend(parsed)
            else:
                chunk.rows.append(parsed)
        if chunk.count >= chunk_size:
            _commit(engine, workspace_id, job, chunk, clock, source, total_lines, on_chunk)
            chunk = _Chunk(last_line=chunk.last_line)
    if chunk.count:
        _commit(engine, workspace_id, job, chunk, clock, source, total_lines, on_chunk)

    finished = clock.now()
    run_in_transaction(
        engine,
        lambda conn: conn.execute(
            update(import_jobs)
            .where(import_jobs.c.id == job)
            .values(status="done", updated_at=finished, finished_at=finished)
        ),
    )
    result = _result(engine, job, resumed_after=resumed_after)
    result.report = _write_report(engine, job, report_path)
    result.elapsed = (finished - started).total_seconds()
    return result


def file_summary(path: Path) -> tuple[str, int]:
    """The file's SHA-256 (hex) and its number of lines, read in blocks."""
    digest = hashlib.sha256()
    lines = 0
    last = b""
    with path.open("rb") as f:
        while block := f.read(READ_BLOCK):
            digest.update(block)
            lines += block.count(b"\n")
            last = block
    if last and not last.endswith(b"\n"):
        lines += 1
    return digest.hexdigest(), lines


def read_rows(path: Path, fmt: str) -> Iterator[tuple[int, dict[str, Any] | list[Rejection]]]:
    """``(line, row)`` for every row of the file, streaming; a row that cannot be
    read at all comes as its rejections. CSV lines are where a record starts
    (the header is line 1); JSON Lines skip blank lines."""
    # surrogateescape: a bad byte spoils its row (parse_row refuses it), not the file.
    with path.open(encoding="utf-8-sig", errors="surrogateescape", newline="") as f:
        if fmt == "csv":
            yield from _csv_rows(f, path)
        else:
            yield from _jsonl_rows(f)


def _csv_rows(
    f: io.TextIOBase, path: Path
) -> Iterator[tuple[int, dict[str, Any] | list[Rejection]]]:
    sample = f.read(64 * 1024)
    f.seek(0)
    reader = csv.reader(f, delimiter=_delimiter(sample))
    try:
        names = next(reader)
    except StopIteration:
        raise ImportFileError(
            f"{path}:1: the file is empty; the first line must name the columns"
        ) from None
    header = Header(names)
    problems = header.problems()
    if problems:
        raise ImportFileError(f"{path}:1: " + "; ".join(problems))
    width = len(header.names)
    while True:
        start = reader.line_num + 1
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield start, [Rejection(start, "", f"not readable as CSV: {exc}")]
            continue
        if not any(cell.strip() for cell in cells):
            continue
        if len(cells) > width:
            yield start, [Rejection(start, "", f"{len(cells)} cells, but the header names {width}")]
            continue
        yield start, dict(zip(header.names, cells, strict=False))


def _delimiter(sample: str) -> str:
    """``,`` unless the header line uses ``;`` or a tab (spreadsheets in a Russian locale use ``;``)."""
    first = sample.split("\n", 1)[0]
    counts = {d: first.count(d) for d in (",", ";", "\t")}
    best = max(counts, key=lambda d: counts[d])
    return best if counts[best] else ","


def _jsonl_rows(f: io.TextIOBase) -> Iterator[tuple[int, dict[str, Any] | list[Rejection]]]:
    for number, text in enumerate(f, start=1):
        if not text.strip():
            continue
        try:
            value = json.loads(text)
        except (json.JSONDecodeError, RecursionError) as exc:
            reason = exc.msg if isinstance(exc, json.JSONDecodeError) else "nested too deeply"
            yield number, [Rejection(number, "", f"not valid JSON: {reason}")]
            continue
        if not isinstance(value, dict):
            yield number, [Rejection(number, "", "not a JSON object")]
            continue
        header = Header(list(value))
        problems = [p for p in header.problems() if "required" not in p]
        if problems:
            yield number, [Rejection(number, "", "; ".join(problems))]
            continue
        yield number, value


# -- the job ---------------------------------------------------------------------------


def _open_job(
    engine: Engine,
    workspace_id: str,
    source: Path,
    fmt: str,
    checksum: str,
    *,
    now: datetime,
    restart: bool,
) -> tuple[int, int, bool]:
    """The job for this file: ``(id, last committed line, finished?)``; created if new."""

    def work(conn: Connection) -> tuple[int, int, bool]:
        row = conn.execute(
            select(import_jobs.c.id, import_jobs.c.status, import_jobs.c.last_line).where(
                import_jobs.c.workspace_id == workspace_id,
                import_jobs.c.kind == KIND,
                import_jobs.c.checksum == checksum,
            )
        ).first()
        if row is None:
            key = conn.execute(
                insert(import_jobs).values(
                    workspace_id=workspace_id,
                    kind=KIND,
                    checksum=checksum,
                    path=str(source),
                    format=fmt,
                    status="running",
                    last_line=0,
                    started_at=now,
                    updated_at=now,
                )
            ).inserted_primary_key
            assert key is not None
            return int(key[0]), 0, False
        if restart:
            conn.execute(delete(import_rejections).where(import_rejections.c.job_id == row.id))
            conn.execute(
                update(import_jobs)
                .where(import_jobs.c.id == row.id)
                .values(
                    status="running",
                    path=str(source),
                    last_line=0,
                    rows=0,
                    imported=0,
                    duplicates=0,
                    rejected=0,
                    consents=0,
                    started_at=now,
                    updated_at=now,
                    finished_at=None,
                )
            )
            return int(row.id), 0, False
        if row.status == "done":
            return int(row.id), int(row.last_line), True
        conn.execute(
            update(import_jobs)
            .where(import_jobs.c.id == row.id)
            .values(path=str(source), updated_at=now)
        )
        return int(row.id), int(row.last_line), False

    return run_in_transaction(engine, work)


def _commit(
    engine: Engine,
    workspace_id: str,
    job: int,
    chunk: _Chunk,
    clock: Clock,
    source: Path,
    total_lines: int,
    on_chunk: Callable[[ImportProgress], None] | None,
) -> None:
    now = clock.now()
    progress = run_in_transaction(
        engine, lambda conn: _store_chunk(conn, workspace_id, job, chunk, source, now=now)
    )
    if on_chunk is not None:
        on_chunk(
            ImportProgress(
                line=chunk.last_line,
                total_lines=total_lines,
                rows=progress["rows"],
                imported=progress["imported"],
                duplicates=progress["duplicates"],
                rejected=progress["rejected"],
            )
        )


def _store_chunk(
    conn: Connection, workspace_id: str, job: int, chunk: _Chunk, source: Path, *, now: datetime
) -> dict[str, int]:
    """One chunk's events, consents, rejections and the job's progress, in ``conn``."""
    lock = select(import_jobs).where(import_jobs.c.id == job)
    if conn.dialect.name == "postgresql":
        lock = lock.with_for_update()
    current = conn.execute(lock).one()
    if current.last_line >= chunk.first_line:
        raise Conflict(
            f"{source}: another import of this file got to line {current.last_line} first"
        )

    rows, erased = _refuse_erased(conn, workspace_id, chunk.rows)
    rejections = chunk.rejections + erased
    known = _stored_message_ids(
        conn, workspace_id, [_message_id(current.checksum, r) for r in rows]
    )
    fresh = [r for r in rows if _message_id(current.checksum, r) not in known]
    accepted = 0
    if fresh:
        result = ingest_events(
            conn, workspace_id, [_event(current.checksum, r, now=now) for r in fresh], now=now
        )
        accepted = result.accepted
    recorded = _record_consents(conn, workspace_id, fresh, source=source, now=now)
    if rejections:
        conn.execute(
            insert(import_rejections),
            [
                {
                    "workspace_id": workspace_id,
                    "job_id": job,
                    "line": r.line,
                    "field": r.field,
                    "reason": r.reason[:500],
                }
                for r in rejections
            ],
        )
    refused_rows = len({r.line for r in rejections})
    totals = {
        "rows": current.rows + chunk.count,
        "imported": current.imported + accepted,
        "duplicates": current.duplicates + len(rows) - accepted,
        "rejected": current.rejected + refused_rows,
        "consents": current.consents + recorded,
    }
    conn.execute(
        update(import_jobs)
        .where(import_jobs.c.id == job)
        .values(last_line=chunk.last_line, updated_at=now, **totals)
    )
    return totals


def _message_id(checksum: str, row: CustomerRow) -> str:
    return f"import:{checksum}:{row.line}"


def _event(checksum: str, row: CustomerRow, *, now: datetime) -> IncomingEvent:
    return IncomingEvent(
        type="identify",
        message_id=_message_id(checksum, row),
        user_id=row.user_id,
        anonymous_id=row.anonymous_id,
        name=None,
        properties={},
        traits=row.traits,
        context={"library": {"name": "touchline-import"}},
        timestamp=now,
        sent_at=None,
        received_at=now,
    )


def _stored_message_ids(conn: Connection, workspace_id: str, ids: Sequence[str]) -> set[str]:
    found: set[str] = set()
    for part in _parts(ids):
        found.update(
            conn.execute(
                select(events.c.message_id).where(
                    events.c.workspace_id == workspace_id, events.c.message_id.in_(part)
                )
            ).scalars()
        )
    return found


def _refuse_erased(
    conn: Connection, workspace_id: str, rows: list[CustomerRow]
) -> tuple[list[CustomerRow], list[Rejection]]:
    """Rows whose addresses no ``erased`` suppression holds, and rejections for the rest."""
    hashes: dict[str, list[tuple[CustomerRow, str]]] = defaultdict(list)
    for row in rows:
        for column, address in row.addresses.items():
            hashes[pseudonym(workspace_id, address)].append((row, column))
    if not hashes:
        return rows, []
    hit: set[str] = set()
    for part in _parts(list(hashes)):
        hit.update(
            conn.execute(
                select(suppressions.c.address).where(
                    suppressions.c.workspace_id == workspace_id,
                    suppressions.c.reason == "erased",
                    suppressions.c.address.in_(part),
                )
            ).scalars()
        )
    refused: dict[int, list[Rejection]] = defaultdict(list)
    for digest in hit:
        for row, column in hashes[digest]:
            refused[row.line].append(Rejection(row.line, column, ERASED_REASON))
    kept = [row for row in rows if row.line not in refused]
    return kept, [r for line in sorted(refused) for r in refused[line]]


def _record_consents(
    conn: Connection, workspace_id: str, rows: list[CustomerRow], *, source: Path, now: datetime
) -> int:
    """Ledger rows for the consent columns of freshly stored rows; returns how many."""
    wanted = [row for row in rows if row.consents]
    if not wanted:
        return 0
    profile_of = _profiles_of(conn, workspace_id, wanted)
    records: dict[int, list[ConsentRecord]] = defaultdict(list)
    for part in _parts(sorted(set(profile_of.values()))):
        for r in conn.execute(
            select(consents)
            .where(consents.c.workspace_id == workspace_id, consents.c.profile_id.in_(part))
            .order_by(consents.c.at, consents.c.id)
        ):
            records[r.profile_id].append(
                ConsentRecord(
                    channel=r.channel,
                    purpose=r.purpose,
                    granted=r.granted,
                    at=r.at,
                    source=r.source,
                    confirmed=r.confirmed,
                    topic=r.topic,
                )
            )
    new_rows: list[dict[str, Any]] = []
    default_source = f"import {source.name}"[:500]
    for row in wanted:
        pid = profile_of.get(row.line)
        if pid is None:
            continue
        for choice in row.consents:
            record = _change(records[pid], choice, default_source=default_source, now=now)
            if record is None:
                continue
            records[pid].append(record)
            address_field = CONSENT_ADDRESS.get(choice.channel)
            new_rows.append(
                {
                    "workspace_id": workspace_id,
                    "profile_id": pid,
                    "channel": record.channel,
                    "purpose": MARKETING,
                    "topic": None,
                    "granted": record.granted,
                    "confirmed": True,
                    "at": record.at,
                    "source": record.source,
                    "text_version": record.text_version,
                    "address": row.traits.get(address_field) if address_field else None,
                    "ip": None,
                    "user_agent": None,
                }
            )
    if new_rows:
        conn.execute(insert(consents), new_rows)
    return len(new_rows)


def _change(
    records: list[ConsentRecord], choice: ConsentChoice, *, default_source: str, now: datetime
) -> ConsentRecord | None:
    """The ledger row ``choice`` adds to ``records``, or ``None`` when it changes nothing."""
    at = choice.at or now
    held, latest = consent_state(records, channel=choice.channel, purpose=MARKETING)
    if latest is not None and latest.at > at:
        return None  # older than what the ledger already knows
    pending = not held and latest is not None and latest.granted
    if choice.granted and held:
        return None
    if not choice.granted and not (held or pending):
        return None  # nothing to withdraw, as with an identify call
    return ConsentRecord(
        channel=choice.channel,
        purpose=MARKETING,
        granted=choice.granted,
        at=at,
        source=choice.source or default_source,
        text_version=choice.text_version,
        confirmed=True,
    )


def _profiles_of(conn: Connection, workspace_id: str, rows: list[CustomerRow]) -> dict[int, int]:
    """``{line: profile id}`` for rows just stored, through their identities."""
    keys: dict[tuple[str, str], list[int]] = defaultdict(list)
    for row in rows:
        if row.user_id is not None:
            keys[("user_id", row.user_id)].append(row.line)
        else:
            assert row.anonymous_id is not None
            keys[("anonymous_id", row.anonymous_id)].append(row.line)
    found: dict[int, int] = {}
    by_kind: dict[str, list[str]] = defaultdict(list)
    for kind, value in keys:
        by_kind[kind].append(value)
    for kind, values in by_kind.items():
        for part in _parts(values):
            for value, pid in conn.execute(
                select(identities.c.value, identities.c.profile_id).where(
                    identities.c.workspace_id == workspace_id,
                    identities.c.kind == kind,
                    identities.c.value.in_(part),
                )
            ):
                for line in keys[(kind, value)]:
                    found[line] = pid
    return found


def _result(
    engine: Engine, job: int, *, already_done: bool = False, resumed_after: int = 0
) -> ImportResult:
    with engine.connect() as conn:
        row = conn.execute(select(import_jobs).where(import_jobs.c.id == job)).one()
    return ImportResult(
        job_id=row.id,
        path=row.path,
        checksum=row.checksum,
        status=row.status,
        rows=row.rows,
        imported=row.imported,
        duplicates=row.duplicates,
        rejected=row.rejected,
        consents=row.consents,
        resumed_after=resumed_after,
        already_done=already_done,
    )


def rejections_of(conn: Connection, job: int) -> list[Rejection]:
    """The rows an import refused, in file order."""
    return [
        Rejection(r.line, r.field, r.reason)
        for r in conn.execute(
            select(import_rejections.c.line, import_rejections.c.field, import_rejections.c.reason)
            .where(import_rejections.c.job_id == job)
            .order_by(import_rejections.c.line, import_rejections.c.id)
        )
    ]


def _write_report(engine: Engine, job: int, path: Path) -> Path | None:
    """Write the rejected rows as CSV (line, field, reason); ``None`` when there are none."""
    with engine.connect() as conn:
        found = rejections_of(conn, job)
    if not found:
        return None
    with path.open("w", encoding="utf-8-sig", newline="") as f:
        writer = csv.writer(f, lineterminator="\r\n")
        writer.writerow(REPORT_FIELDS)
        for r in found:
            writer.writerow([r.line, r.field, r.reason])
    return path


def _parts(items: Sequence[Any]) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), IN_CHUNK):
        yield items[start : start + IN_CHUNK]


__all__ = [
    "IMPORT_CHUNK",
    "ImportFileError",
    "ImportProgress",
    "ImportResult",
    "file_summary",
    "import_customers",
    "read_rows",
    "rejections_of",
]
