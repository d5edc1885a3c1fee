"""Segments: named sets of customers kept current as events arrive.

The public face of the segment modules, for journeys, broadcasts, exports and
the admin tools:

* :func:`member_ids` — a SELECT of the current members' profile ids;
* :func:`segment_keys_for` — the keys of the segments one customer is in;
* :func:`observe` — the audience observer the worker calls for each event;
* :func:`build_segment`, :func:`fire_segment_timers`, :func:`save_segments`,
  :func:`load_segment_dir`, :func:`load_segment_text`.

How a definition reads is in :mod:`touchline.audience.segment_spec`, what it
means in :mod:`~touchline.audience.segment_eval`, its SQL in
:mod:`~touchline.audience.segment_sql`, how membership moves in
:mod:`~touchline.audience.segment_runtime`.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, Select, bindparam, select

from touchline.audience.segment_runtime import (
    BuildResult,
    build_segment,
    fire_segment_timers,
    forget_profiles,
    observe,
    refresh_consent_segments,
)
from touchline.audience.segment_spec import (
    SEGMENT_ENTERED,
    SEGMENT_EXITED,
    SegmentError,
    SegmentSpec,
    load_segment_text,
)
from touchline.audience.segment_store import (
    LoadedSegment,
    SavedSegment,
    get_segment,
    list_segments,
    load_segment_dir,
    save_segments,
)
from touchline.errors import NotFound
from touchline.store.tables import segment_members, segments

__all__ = [
    "SEGMENT_ENTERED",
    "SEGMENT_EXITED",
    "BuildResult",
    "LoadedSegment",
    "SavedSegment",
    "SegmentError",
    "SegmentSpec",
    "build_segment",
    "fire_segment_timers",
    "forget_profiles",
    "get_segment",
    "list_segments",
    "load_segment_dir",
    "load_segment_text",
    "member_ids",
    "observe",
    "refresh_consent_segments",
    "save_segments",
    "segment_keys_for",
]


def member_ids(conn: Connection, workspace_id: str, key: str) -> Select[Any]:
    """``SELECT profile_id`` of the segment's current members; NotFound for an unknown key.

    Members are never merged profiles. The statement reads ``segment_members``
    by its primary key (segment_id, profile_id), so it streams in id order.
    """
    segment_id = conn.execute(
        select(segments.c.id).where(segments.c.workspace_id == workspace_id, segments.c.key == key)
    ).scalar_one_or_none()
    if segment_id is None:
        raise NotFound(f"no segment {key!r} in this workspace")
    return (
        select(segment_members.c.profile_id)
        .where(segment_members.c.segment_id == segment_id)
        .order_by(segment_members.c.profile_id)
    )


# Read for every customer a worker loads, so built once.
_KEYS_OF = (
    select(segments.c.key)
    .join(segment_members, segment_members.c.segment_id == segments.c.id)
    .where(
        segment_members.c.workspace_id == bindparam("ws"),
        segment_members.c.profile_id == bindparam("pid"),
    )
)


def segment_keys_for(conn: Connection, workspace_id: str, profile_id: int) -> set[str]:
    """The keys of the segments the customer is in now (index ws + profile)."""
    return set(conn.execute(_KEYS_OF, {"ws": workspace_id, "pid": profile_id}).scalars())
