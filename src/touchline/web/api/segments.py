"""The admin API for segments, under ``/admin/v1`` and the admin token.

* ``GET /segments`` — every segment with its status and current size;
* ``GET /segments/{key}`` — one, with its definition and YAML source;
* ``PUT /segments/{key}`` — the YAML source as the body; validated (400
  ``invalid_segment`` naming line and field), stored, and built at once when
  its ``match`` changed (``?build=false`` leaves that to ``POST .../rebuild``);
* ``GET /segments/{key}/members?limit=50`` — the newest members;
* ``GET /segments/{key}/sizes?days=30`` — entries, exits and size per UTC day;
* ``POST /segments/{key}/rebuild`` — a full build now (``?announce=true`` makes
  its entries and exits events even on a first build).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from sqlalchemy import Engine
from starlette.concurrency import run_in_threadpool

from touchline.audience.segment_runtime import build_segment
from touchline.audience.segment_spec import SegmentError, load_segment_text
from touchline.audience.segment_store import (
    LoadedSegment,
    get_segment,
    list_segments,
    member_sample,
    save_segments,
    segment_sizes,
)
from touchline.errors import InputError, SpecProblem
from touchline.store.db import transaction
from touchline.web.api.admin import Workspace
from touchline.web.api.ingest import read_body

router = APIRouter(prefix="/admin/v1", tags=["segments"])

MAX_SOURCE_BYTES = 256 * 1024
"""Largest segment file accepted, as for journey files."""


def _engine(request: Request) -> Engine:
    return request.app.state.engine  # type: ignore[no-any-return]


@router.get("/segments")
async def segments_index(request: Request, workspace: Workspace) -> dict[str, Any]:
    def run() -> list[dict[str, Any]]:
        with _engine(request).connect() as conn:
            return list_segments(conn, workspace)

    return {"segments": await run_in_threadpool(run)}


@router.get("/segments/{key}")
async def segment_detail(request: Request, key: str, workspace: Workspace) -> dict[str, Any]:
    def run() -> dict[str, Any]:
        with _engine(request).connect() as conn:
            return get_segment(conn, workspace, key)

    return await run_in_threadpool(run)


@router.put("/segments/{key}")
async def put_segment(
    request: Request, key: str, workspace: Workspace, build: bool = True
) -> dict[str, Any]:
    """Store the YAML body as segment ``key``; a changed ``match`` is built at once."""
    raw = await read_body(request, limit=MAX_SOURCE_BYTES)
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise InputError("the body must be UTF-8 YAML text") from None
    name = f"{key}.yaml"
    spec = load_segment_text(text, file=name)
    if spec.segment != key:
        message = f"the file says segment: {spec.segment!r} but the address names {key!r}"
        raise SegmentError([SpecProblem(name, None, "segment", message)])
    now = request.app.state.clock.now()
    engine = _engine(request)

    def run() -> dict[str, Any]:
        with transaction(engine) as conn:
            (saved,) = save_segments(conn, workspace, [LoadedSegment(name, spec, text)], now=now)
        out = saved.as_dict()
        if build and saved.needs_build:
            out["build"] = build_segment(engine, workspace, key, now=now).as_dict()
        return out

    return await run_in_threadpool(run)


@router.get("/segments/{key}/members")
async def segment_members_sample(
    request: Request,
    key: str,
    workspace: Workspace,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
) -> dict[str, Any]:
    def run() -> list[dict[str, Any]]:
        with _engine(request).connect() as conn:
            return member_sample(conn, workspace, key, limit=limit)

    return {"segment": key, "members": await run_in_threadpool(run)}


@router.get("/segments/{key}/sizes")
async def segment_size_history(
    request: Request,
    key: str,
    workspace: Workspace,
    days: Annotated[int, Query(ge=1, le=366)] = 30,
) -> dict[str, Any]:
    now = request.app.state.clock.now()

    def run() -> list[dict[str, Any]]:
        with _engine(request).connect() as conn:
            return segment_sizes(
                conn, workspace, key, since=now - timedelta(days=days - 1), until=now
            )

    return {"segment": key, "days": await run_in_threadpool(run)}


@router.post("/segments/{key}/rebuild")
async def rebuild_segment(
    request: Request, key: str, workspace: Workspace, announce: bool | None = None
) -> dict[str, Any]:
    now = request.app.state.clock.now()

    def run() -> dict[str, Any]:
        return build_segment(_engine(request), workspace, key, now=now, announce=announce).as_dict()

    return await run_in_threadpool(run)
