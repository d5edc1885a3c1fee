"""The workspace settings document over the admin API: ``GET`` and ``PUT /admin/v1/settings``.

``GET`` answers the stored document with every secret masked (``"••••"`` and
its last four characters). ``PUT`` replaces the whole document: it is checked
whole (see :mod:`touchline.messaging.settings`) and refused with ``400
invalid_settings`` naming the first bad field's path; a masked secret sent
back unchanged keeps the stored secret. So a client reads, edits and writes
the document without ever holding the secrets. Dispatchers pick a change up
within their settings cache's lifetime (:data:`touchline.messaging.registry.SETTINGS_TTL`).
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Request
from sqlalchemy import Engine, select, update
from starlette.concurrency import run_in_threadpool

from touchline.errors import InputError, NotFound, PayloadTooLarge
from touchline.messaging.settings import WorkspaceSettings, masked, merge_secrets
from touchline.store.db import transaction
from touchline.store.tables import workspaces
from touchline.store.workspaces import workspace_settings
from touchline.web.api.admin import Workspace

router = APIRouter(prefix="/admin/v1", tags=["admin"])

#: Largest settings document accepted; real ones are a few kilobytes, DKIM keys included.
MAX_SETTINGS_BYTES = 256 * 1024
INVALID_SETTINGS = "invalid_settings"


def _engine(request: Request) -> Engine:
    return request.app.state.engine  # type: ignore[no-any-return]


@router.get("/settings")
async def read_settings(request: Request, workspace: Workspace) -> dict[str, Any]:
    """The workspace's settings document, secrets masked."""

    def run() -> dict[str, Any]:
        with _engine(request).connect() as conn:
            return workspace_settings(conn, workspace)

    return masked(await run_in_threadpool(run))


@router.put("/settings")
async def replace_settings(request: Request, workspace: Workspace) -> dict[str, Any]:
    """Check and store a whole new settings document; answers it as ``GET`` would."""
    document = _document(await request.body())

    def run() -> dict[str, Any]:
        with transaction(_engine(request)) as conn:
            query = select(workspaces.c.settings).where(workspaces.c.id == workspace)
            if conn.dialect.name == "postgresql":
                query = query.with_for_update()  # two PUTs merge secrets one after the other
            row = conn.execute(query).first()
            if row is None:
                raise NotFound(f"no workspace {workspace!r}")
            try:
                merged = merge_secrets(row.settings or {}, document)
                WorkspaceSettings.parse(merged)
            except InputError as exc:
                raise InputError(exc.message, code=INVALID_SETTINGS) from exc
            conn.execute(
                update(workspaces).where(workspaces.c.id == workspace).values(settings=merged)
            )
            return merged

    return masked(await run_in_threadpool(run))


def _document(body: bytes) -> dict[str, Any]:
    if len(body) > MAX_SETTINGS_BYTES:
        raise PayloadTooLarge(f"a settings document is at most {MAX_SETTINGS_BYTES} bytes")
    try:
        document = json.loads(body)
    except ValueError:
        raise InputError("the body must be a JSON object", code=INVALID_SETTINGS) from None
    if not isinstance(document, dict):
        raise InputError("settings: must be a JSON object", code=INVALID_SETTINGS)
    return document


__all__ = ["INVALID_SETTINGS", "router"]
