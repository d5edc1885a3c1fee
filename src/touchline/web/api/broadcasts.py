"""The admin API for broadcasts: create, schedule, cancel, list, and watch progress.

Routes, under ``/admin/v1`` and the admin token like the rest of the admin API:

* ``GET /broadcasts`` — every broadcast, newest first, with its counters;
* ``POST /broadcasts`` — create one from a JSON definition (the fields of a
  broadcast file); ``400 invalid_broadcast`` names the field at fault,
  ``409 broadcast_exists`` when the key is taken;
* ``GET /broadcasts/{key}`` — one broadcast with its progress and A/B decision;
* ``POST /broadcasts/{key}/schedule`` — ``{"send_at": ISO time}`` (default: now)
  for a draft or a scheduled one; ``409 broadcast_started`` otherwise;
* ``POST /broadcasts/{key}/cancel`` — stop it; its pending messages are skipped
  with reason ``cancelled``; ``409 broadcast_finished`` when already over.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel
from sqlalchemy import Engine
from starlette.concurrency import run_in_threadpool

from touchline.audience.broadcast_spec import load_broadcast_data
from touchline.audience.broadcasts import (
    cancel_broadcast,
    create_broadcast,
    get_broadcast,
    list_broadcasts,
    schedule_broadcast,
)
from touchline.clock import utc
from touchline.errors import InputError
from touchline.store.db import transaction
from touchline.web.api.admin import Workspace
from touchline.web.api.ingest import read_body

router = APIRouter(prefix="/admin/v1", tags=["broadcasts"])

MAX_DEFINITION_BYTES = 64 * 1024
"""Largest broadcast definition; a real one is well under a kilobyte."""


def _engine(request: Request) -> Engine:
    return request.app.state.engine  # type: ignore[no-any-return]


class Schedule(BaseModel):
    """When to start; a time in the past (or none) starts it at the worker's next turn."""

    send_at: datetime | None = None


@router.get("/broadcasts")
async def index(request: Request, workspace: Workspace) -> dict[str, Any]:
    """Every broadcast of the workspace, newest first."""

    def run() -> list[dict[str, Any]]:
        with _engine(request).connect() as conn:
            return list_broadcasts(conn, workspace)

    return {"broadcasts": await run_in_threadpool(run)}


@router.post("/broadcasts", status_code=201)
async def create(request: Request, workspace: Workspace) -> dict[str, Any]:
    """Create a broadcast: scheduled when it has ``send_at``, else a draft."""
    raw = await read_body(request, limit=MAX_DEFINITION_BYTES)
    try:
        data = json.loads(raw.decode("utf-8-sig"))
    except (UnicodeDecodeError, ValueError):
        raise InputError("the body is not JSON", code="invalid_broadcast") from None
    spec = load_broadcast_data(data)
    now = request.app.state.clock.now()

    def run() -> dict[str, Any]:
        with transaction(_engine(request)) as conn:
            return create_broadcast(
                conn, workspace, spec, source=json.dumps(data, ensure_ascii=False), now=now
            )

    return await run_in_threadpool(run)


@router.get("/broadcasts/{key}")
async def show(request: Request, key: str, workspace: Workspace) -> dict[str, Any]:
    """One broadcast: definition, status, progress, and the A/B decision with its figures."""

    def run() -> dict[str, Any]:
        with _engine(request).connect() as conn:
            return get_broadcast(conn, workspace, key)

    return await run_in_threadpool(run)


@router.post("/broadcasts/{key}/schedule")
async def schedule(
    request: Request, key: str, workspace: Workspace, body: Schedule | None = None
) -> dict[str, Any]:
    """Schedule a draft (or move a scheduled broadcast); without ``send_at``, now."""
    now = request.app.state.clock.now()
    send_at = utc(body.send_at) if body is not None and body.send_at is not None else now

    def run() -> dict[str, Any]:
        with transaction(_engine(request)) as conn:
            return schedule_broadcast(conn, workspace, key, send_at=send_at, now=now)

    return await run_in_threadpool(run)


@router.post("/broadcasts/{key}/cancel")
async def cancel(request: Request, key: str, workspace: Workspace) -> dict[str, Any]:
    """Cancel: nobody else is queued and the messages still pending are skipped."""
    now = request.app.state.clock.now()

    def run() -> dict[str, Any]:
        with transaction(_engine(request)) as conn:
            return cancel_broadcast(conn, workspace, key, now=now)

    return await run_in_threadpool(run)
