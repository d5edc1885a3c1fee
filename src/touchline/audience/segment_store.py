"""Segments as stored: saving definitions, the per-workspace cache, and reading them back.

``segments`` holds each definition (normal-form spec, YAML source, checksum of
its ``match`` tree, status), ``segment_members`` the CURRENT members only,
``segment_changes`` every entry and exit, ``segment_timers`` when a customer's
answer may next flip with time. Membership moves in
:mod:`touchline.audience.segment_runtime`.

Status: ``building`` from creation (or a change of ``match``) until a full
build finishes, then ``ready``. A segment never built (``built_at`` empty)
is kept current silently: its first build should not announce every
existing customer as having just entered.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Date, cast, func, literal_column, select

from touchline.audience.segment_eval import CompiledSegment, compile_segment
from touchline.audience.segment_spec import (
    SegmentError,
    SegmentSpec,
    load_segment_text,
    segment_checksum,
    segment_to_data,
)
from touchline.errors import NotFound, SpecProblem
from touchline.store.tables import profiles, segment_changes, segment_members, segments

__all__ = [
    "LoadedSegment",
    "SavedSegment",
    "SegmentCache",
    "get_segment",
    "list_segments",
    "load_segment_dir",
    "member_sample",
    "save_segments",
    "segment_sizes",
]

SEGMENT_FOLDER = "segments"
READY, BUILDING = "ready", "building"


@dataclass(frozen=True)
class LoadedSegment:
    """One segment file: where it is, what it says, and its text."""

    path: str
    spec: SegmentSpec
    source: str


@dataclass(frozen=True)
class SavedSegment:
    key: str
    segment_id: int
    change: str  # created | updated | unchanged
    needs_build: bool

    def as_dict(self) -> dict[str, Any]:
        return {"segment": self.key, "change": self.change, "needs_build": self.needs_build}


def load_segment_dir(path: str | Path) -> list[LoadedSegment]:
    """Every ``*.yaml``/``*.yml`` of ``DIR/segments/`` (none if the folder is absent).

    Names starting with ``_`` or ``.`` are skipped, as for journeys. One
    :class:`SegmentError` lists the problems of every file, and keys used twice.
    """
    folder = Path(path) / SEGMENT_FOLDER
    if not folder.is_dir():
        return []
    loaded: list[LoadedSegment] = []
    problems: list[SpecProblem] = []
    owners: dict[str, str] = {}
    for file in sorted(folder.iterdir()):
        if (
            file.suffix not in (".yaml", ".yml")
            or not file.is_file()
            or file.name.startswith(("_", "."))
        ):
            continue
        name = str(file)
        try:
            text = file.read_text(encoding="utf-8-sig")
            spec = load_segment_text(text, file=name)
        except SegmentError as exc:
            problems.extend(exc.problems)
            continue
        except (OSError, UnicodeDecodeError) as exc:
            problems.append(SpecProblem(name, None, "(document)", f"cannot read: {exc}"))
            continue
        if spec.segment in owners:
            message = f"segment key {spec.segment!r} is already used by {owners[spec.segment]}"
            problems.append(SpecProblem(name, None, "segment", message))
            continue
        owners[spec.segment] = name
        loaded.append(LoadedSegment(name, spec, text))
    if problems:
        raise SegmentError(sorted(problems, key=lambda p: (p.file, p.line or 0)))
    return loaded


def save_segments(
    conn: Connection, workspace_id: str, loaded: Sequence[LoadedSegment], *, now: datetime
) -> list[SavedSegment]:
    """Store each definition; one whose ``match`` changed must be built again."""
    return [_save_one(conn, workspace_id, item, now=now) for item in loaded]


def _save_one(
    conn: Connection, workspace_id: str, item: LoadedSegment, *, now: datetime
) -> SavedSegment:
    spec = item.spec
    checksum = segment_checksum(spec)
    values = {
        "name": spec.name or spec.segment,
        "description": spec.description,
        "spec": segment_to_data(spec),
        "source": item.source,
        "checksum": checksum,
        "updated_at": now,
    }
    row = conn.execute(
        select(segments).where(
            segments.c.workspace_id == workspace_id, segments.c.key == spec.segment
        )
    ).first()
    if row is None:
        segment_id = conn.execute(
            segments.insert()
            .values(
                workspace_id=workspace_id,
                key=spec.segment,
                status=BUILDING,
                created_at=now,
                **values,
            )
            .returning(segments.c.id)
        ).scalar_one()
        return SavedSegment(spec.segment, segment_id, "created", True)
    changed = row.checksum != checksum or row.status == "archived"
    same = not changed and all(
        getattr(row, k) == v for k, v in values.items() if k not in ("updated_at",)
    )
    if same:
        return SavedSegment(spec.segment, row.id, "unchanged", row.status != READY)
    if changed:
        values["status"] = BUILDING
    conn.execute(segments.update().where(segments.c.id == row.id).values(**values))
    return SavedSegment(spec.segment, row.id, "updated", changed or row.status != READY)


# ------------------------------------------------------------------ the cache


class SegmentCache:
    """Compiled segments per workspace, recompiled when a checksum or build state changes.

    Each call costs one small indexed query (the workspace's ids and
    checksums); a definition is read and compiled again only when it changed.
    Thread-safe: the serve command runs a worker beside the API.
    """

    def __init__(self) -> None:
        self._compiled: dict[int, CompiledSegment] = {}
        self._lock = threading.Lock()

    def segments(self, conn: Connection, workspace_id: str) -> list[CompiledSegment]:
        rows = conn.execute(
            select(segments.c.id, segments.c.checksum, segments.c.built_at)
            .where(segments.c.workspace_id == workspace_id, segments.c.status != "archived")
            .order_by(segments.c.id)
        ).all()
        out: list[CompiledSegment] = []
        for row in rows:
            built = row.built_at is not None
            with self._lock:
                found = self._compiled.get(row.id)
            if found is None or found.checksum != row.checksum or found.built != built:
                found = self._compile(conn, row.id, built=built)
                with self._lock:
                    self._compiled[row.id] = found
            out.append(found)
        return out

    def _compile(self, conn: Connection, segment_id: int, *, built: bool) -> CompiledSegment:
        row = conn.execute(
            select(segments.c.spec, segments.c.checksum).where(segments.c.id == segment_id)
        ).one()
        spec = SegmentSpec.model_validate(row.spec)
        return compile_segment(spec, segment_id=segment_id, checksum=row.checksum, built=built)

    def forget(self) -> None:
        with self._lock:
            self._compiled.clear()


def compiled(conn: Connection, workspace_id: str, key: str) -> CompiledSegment:
    """One segment compiled from its stored spec; NotFound if the workspace has none by that key."""
    row = _row(conn, workspace_id, key)
    spec = SegmentSpec.model_validate(row.spec)
    return compile_segment(
        spec, segment_id=row.id, checksum=row.checksum, built=row.built_at is not None
    )


def _row(conn: Connection, workspace_id: str, key: str) -> Any:
    row = conn.execute(
        select(segments).where(segments.c.workspace_id == workspace_id, segments.c.key == key)
    ).first()
    if row is None:
        raise NotFound(f"no segment {key!r} in this workspace")
    return row


# ---------------------------------------------------------------- reading back


def _sizes(conn: Connection, workspace_id: str) -> dict[int, int]:
    rows = conn.execute(
        select(segment_members.c.segment_id, func.count())
        .where(segment_members.c.workspace_id == workspace_id)
        .group_by(segment_members.c.segment_id)
    ).all()
    return {r[0]: r[1] for r in rows}


def _summary(row: Any, size: int) -> dict[str, Any]:
    return {
        "segment": row.key,
        "name": row.name,
        "description": row.description,
        "status": row.status,
        "size": size,
        "built_at": row.built_at.isoformat() if row.built_at else None,
        "updated_at": row.updated_at.isoformat(),
    }


def list_segments(conn: Connection, workspace_id: str) -> list[dict[str, Any]]:
    """Every segment of the workspace with its current size, by key."""
    sizes = _sizes(conn, workspace_id)
    rows = conn.execute(
        select(segments).where(segments.c.workspace_id == workspace_id).order_by(segments.c.key)
    ).all()
    return [_summary(r, sizes.get(r.id, 0)) for r in rows]


def get_segment(conn: Connection, workspace_id: str, key: str) -> dict[str, Any]:
    """One segment: its summary, definition and source."""
    row = _row(conn, workspace_id, key)
    size = conn.execute(
        select(func.count())
        .select_from(segment_members)
        .where(segment_members.c.segment_id == row.id)
    ).scalar_one()
    return {**_summary(row, size), "spec": row.spec, "source": row.source, "checksum": row.checksum}


def member_sample(
    conn: Connection, workspace_id: str, key: str, *, limit: int = 50
) -> list[dict[str, Any]]:
    """The newest members (up to ``limit``): profile id, user id, email, when they entered."""
    row = _row(conn, workspace_id, key)
    found = conn.execute(
        select(profiles.c.id, profiles.c.user_id, profiles.c.email, segment_members.c.entered_at)
        .join(profiles, profiles.c.id == segment_members.c.profile_id)
        .where(segment_members.c.segment_id == row.id)
        .order_by(segment_members.c.entered_at.desc(), profiles.c.id)
        .limit(limit)
    ).all()
    return [
        {
            "profile_id": r.id,
            "user_id": r.user_id,
            "email": r.email,
            "entered_at": r.entered_at.isoformat(),
        }
        for r in found
    ]


def _day(conn: Connection) -> Any:
    """The UTC calendar day of a change, per backend."""
    if conn.dialect.name == "postgresql":
        return cast(literal_column("segment_changes.at AT TIME ZONE 'UTC'"), Date)
    return func.date(segment_changes.c.at)


def segment_sizes(
    conn: Connection, workspace_id: str, key: str, *, since: datetime, until: datetime
) -> list[dict[str, Any]]:
    """Per UTC day from ``since`` to ``until``: entries, exits and the size at the day's end.

    Read from ``segment_changes`` only: the size before ``since`` is the
    entries minus exits until then, and each day adds its own.
    """
    row = _row(conn, workspace_id, key)
    start = datetime.combine(since.date(), datetime.min.time(), tzinfo=since.tzinfo)
    before = conn.execute(
        select(segment_changes.c.change, func.count())
        .where(segment_changes.c.segment_id == row.id, segment_changes.c.at < start)
        .group_by(segment_changes.c.change)
    ).all()
    size = sum(n if change == "entered" else -n for change, n in before)
    day = _day(conn).label("day")
    rows = conn.execute(
        select(day, segment_changes.c.change, func.count())
        .where(
            segment_changes.c.segment_id == row.id,
            segment_changes.c.at >= start,
            segment_changes.c.at <= until,
        )
        .group_by(day, segment_changes.c.change)
    ).all()
    by_day: dict[str, dict[str, int]] = {}
    for d, change, n in rows:
        by_day.setdefault(str(d)[:10], {})[change] = n
    out: list[dict[str, Any]] = []
    current = since.date()
    while current <= until.date():
        counts = by_day.get(current.isoformat(), {})
        entered, exited = counts.get("entered", 0), counts.get("exited", 0)
        size += entered - exited
        out.append({"day": current.isoformat(), "entered": entered, "exited": exited, "size": size})
        current += timedelta(days=1)
    return out
