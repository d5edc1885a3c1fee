"""Settings pages (admins only): the settings document, API keys, and the site snippet.

The settings document is edited whole, as JSON, and saved only when
:meth:`~touchline.messaging.settings.WorkspaceSettings.parse` accepts it, so
a typo names its field and changes nothing. Secrets are shown masked and a
masked value saved back unchanged keeps the stored secret
(:func:`~touchline.messaging.settings.merge_secrets`), as over the API.

A new API key is shown once, on the page that created it (never stored in
clear, never in a URL); revoking takes effect in this process at once and in
others within the key cache's few seconds.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter
from sqlalchemy import select, update
from starlette.requests import Request
from starlette.responses import Response

from touchline.errors import InputError, NotFound
from touchline.messaging.settings import WorkspaceSettings, masked, merge_secrets
from touchline.store.db import transaction
from touchline.store.tables import workspaces
from touchline.store.workspaces import KEY_KINDS, create_key, list_keys, revoke_key
from touchline.web.console.base import (
    PREFIX,
    engine_of,
    field,
    guard,
    now_of,
    page,
    read_form,
    redirect,
    run,
)

router = APIRouter()

#: Largest settings document accepted (as over the API).
MAX_SETTINGS_CHARS = 256 * 1024
WRITE_KEY_PLACEHOLDER = "YOUR_WRITE_KEY"


def snippet(public_url: str, write_key: str) -> str:
    """What a shop pastes into its pages' ``<head>``: the tracker and a first call."""
    return (
        f'<script src="{public_url}/touchline.js" data-write-key="{write_key}" async></script>\n'
        "<script>\n"
        "  window.touchline = window.touchline || [];\n"
        "  // touchline.push(['track', 'Product Viewed', {product_id: 'p-1'}]);\n"
        "  // touchline.push(['identify', 'u-1024', {email: 'anna@example.com'}]);\n"
        "</script>"
    )


def _load(conn: Any, workspace_id: str) -> dict[str, Any]:
    row = conn.execute(select(workspaces).where(workspaces.c.id == workspace_id)).first()
    if row is None:
        raise NotFound(f"no workspace {workspace_id!r}")
    document = dict(row.settings or {})
    summary: dict[str, Any] = {}
    try:
        parsed = WorkspaceSettings.parse(document, timezone=row.timezone)
        summary["channels"] = {name: c.provider for name, c in parsed.channels.items()}
    except InputError as exc:
        summary["problem"] = exc.message
    return {
        "workspace": row,
        "document": masked(document),
        "summary": summary,
        "keys": list_keys(conn, workspace_id),
    }


def _page(
    request: Request,
    session: Any,
    data: dict[str, Any],
    *,
    text: str | None = None,
    problem: str = "",
    new_key: Any = None,
    status: int = 200,
) -> Response:
    public_url = request.app.state.settings.public_url
    write_key = new_key.key if new_key is not None and new_key.kind == "write" else None
    document = data["document"]
    return page(
        request,
        "settings.html",
        session=session,
        section="settings",
        title="Settings",
        text=text if text is not None else json.dumps(document, indent=2, ensure_ascii=False),
        problem=problem,
        new_key=new_key,
        kinds=KEY_KINDS,
        snippet=snippet(public_url, write_key or WRITE_KEY_PLACEHOLDER),
        caps=document.get("caps"),
        quiet_hours=document.get("quiet_hours"),
        status=status,
        **data,
    )


@router.get("/settings")
async def settings_page(request: Request) -> Response:
    session = await guard(request, "settings")

    def work() -> dict[str, Any]:
        with engine_of(request).connect() as conn:
            return _load(conn, session.user.workspace_id)

    return _page(request, session, await run(work))


@router.post("/settings")
async def save_settings(request: Request) -> Response:
    session = await guard(request, "settings")
    form = await read_form(request, session)
    ws = session.user.workspace_id
    text = field(form, "document")

    def work() -> str:
        if len(text) > MAX_SETTINGS_CHARS:
            return f"a settings document is at most {MAX_SETTINGS_CHARS} characters"
        try:
            document = json.loads(text or "{}")
        except ValueError as exc:
            return f"not JSON: {exc}"
        if not isinstance(document, dict):
            return "settings: must be a JSON object"
        with transaction(engine_of(request)) as conn:
            query = select(workspaces.c.settings, workspaces.c.timezone).where(
                workspaces.c.id == ws
            )
            if conn.dialect.name == "postgresql":
                query = query.with_for_update()
            row = conn.execute(query).first()
            if row is None:
                raise NotFound(f"no workspace {ws!r}")
            try:
                merged = merge_secrets(row.settings or {}, document)
                WorkspaceSettings.parse(merged, timezone=row.timezone)
            except InputError as exc:
                return exc.message
            conn.execute(update(workspaces).where(workspaces.c.id == ws).values(settings=merged))
        return ""

    problem = await run(work)
    if problem:

        def reload() -> dict[str, Any]:
            with engine_of(request).connect() as conn:
                return _load(conn, ws)

        return _page(request, session, await run(reload), text=text, problem=problem, status=400)
    return redirect(f"{PREFIX}/settings", notice="saved")


@router.post("/settings/keys")
async def new_key(request: Request) -> Response:
    session = await guard(request, "settings")
    form = await read_form(request, session)
    kind = field(form, "kind")
    if kind not in KEY_KINDS:
        raise InputError(f"key kind must be one of {', '.join(KEY_KINDS)}")
    ws = session.user.workspace_id
    now = now_of(request)

    def work() -> tuple[Any, dict[str, Any]]:
        with transaction(engine_of(request)) as conn:
            created = create_key(conn, ws, kind, now=now)  # type: ignore[arg-type]
        with engine_of(request).connect() as conn:
            return created, _load(conn, ws)

    created, data = await run(work)
    return _page(request, session, data, new_key=created)


@router.post("/settings/keys/{key_id}/revoke")
async def revoke(request: Request, key_id: int) -> Response:
    session = await guard(request, "settings")
    await read_form(request, session)
    now = now_of(request)

    def work() -> None:
        with transaction(engine_of(request)) as conn:
            revoke_key(
                conn,
                session.user.workspace_id,
                key_id,
                now=now,
                cache=request.app.state.key_cache,
            )

    await run(work)
    return redirect(f"{PREFIX}/settings", notice="revoked")
