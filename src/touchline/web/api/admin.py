"""The admin API: journeys, customers and their state, for one workspace.

Every route needs ``Authorization: Bearer <admin token>``; the token names the
workspace, and nothing of another workspace is ever visible through it.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, Field
from sqlalchemy import Engine, func, select
from starlette.concurrency import run_in_threadpool

from touchline.errors import InputError, NotFound, SpecError, SpecProblem
from touchline.journeys.loader import LoadedJourney, load_journey_text
from touchline.messaging.template_files import load_template_text
from touchline.store.db import transaction
from touchline.store.ingest import get_profile, list_events
from touchline.store.journeys import apply_journeys, get_journey, list_journeys, set_status
from touchline.store.tables import conversions, instances, journeys, outbox, step_log, templates
from touchline.store.templates import apply_templates
from touchline.store.workspaces import authenticate
from touchline.web.api.ingest import key_from_authorization

router = APIRouter(prefix="/admin/v1", tags=["admin"])

# Largest journey pack accepted in one request.
MAX_PACK_FILES = 200
MAX_FILE_CHARS = 256 * 1024


def admin_workspace(request: Request) -> str:
    """The workspace of the admin token in the Authorization header."""
    key = key_from_authorization(request.headers.get("authorization"))
    return authenticate(
        request.app.state.engine, key, kind="admin", cache=request.app.state.key_cache
    )


Workspace = Annotated[str, Depends(admin_workspace)]


def _engine(request: Request) -> Engine:
    return request.app.state.engine  # type: ignore[no-any-return]


class JourneyPack(BaseModel):
    """Journey files by name, e.g. ``{"files": {"cart.yaml": "journey: cart\\n..."}}``."""

    files: dict[str, Annotated[str, Field(max_length=MAX_FILE_CHARS)]] = Field(
        min_length=1, max_length=MAX_PACK_FILES
    )


def _load_pack(pack: JourneyPack) -> list[LoadedJourney]:
    loaded: list[LoadedJourney] = []
    problems: list[SpecProblem] = []
    seen: dict[str, str] = {}
    for name, text in sorted(pack.files.items()):
        try:
            spec = load_journey_text(text, file=name)
        except SpecError as exc:
            problems.extend(exc.problems)
            continue
        if spec.journey in seen:
            problems.append(
                SpecProblem(
                    name,
                    None,
                    "journey",
                    f"key {spec.journey!r} is also used by {seen[spec.journey]}",
                )
            )
            continue
        seen[spec.journey] = name
        loaded.append(LoadedJourney(path=name, spec=spec, source=text))
    if problems:
        raise SpecError(problems)
    return loaded


def _problems(exc: SpecError) -> list[dict[str, Any]]:
    return [
        {"file": p.file, "line": p.line, "field": p.field, "message": p.message}
        for p in exc.problems
    ]


@router.post("/journeys/validate")
async def validate_journeys(pack: JourneyPack, workspace: Workspace) -> dict[str, Any]:
    """Check journey files without applying them; lists every problem."""
    try:
        loaded = _load_pack(pack)
    except SpecError as exc:
        return {"valid": False, "problems": _problems(exc)}
    return {"valid": True, "journeys": [item.spec.journey for item in loaded], "problems": []}


@router.post("/journeys")
async def apply_pack(request: Request, pack: JourneyPack, workspace: Workspace) -> dict[str, Any]:
    """Validate and apply journey files; a changed journey gets a new version.

    Invalid files answer 400 ``invalid_journey`` and nothing is applied.
    """
    loaded = _load_pack(pack)
    now = request.app.state.clock.now()

    def run() -> list[dict[str, Any]]:
        with transaction(_engine(request)) as conn:
            return [r.as_dict() for r in apply_journeys(conn, workspace, loaded, now=now)]

    return {"applied": await run_in_threadpool(run)}


@router.get("/journeys")
async def journeys_index(request: Request, workspace: Workspace) -> dict[str, Any]:
    def run() -> list[dict[str, Any]]:
        with _engine(request).connect() as conn:
            return list_journeys(conn, workspace)

    return {"journeys": await run_in_threadpool(run)}


@router.get("/journeys/{key}")
async def journey_detail(request: Request, key: str, workspace: Workspace) -> dict[str, Any]:
    def run() -> dict[str, Any]:
        with _engine(request).connect() as conn:
            data = get_journey(conn, workspace, key)
            data["steps"] = step_counts(conn, workspace, key)
            return data

    return await run_in_threadpool(run)


def step_counts(conn: Any, workspace_id: str, key: str) -> dict[str, Any]:
    """Per step: customers waiting there now, how many entered it, exits and conversions."""
    journey_id = conn.execute(
        select(journeys.c.id).where(journeys.c.workspace_id == workspace_id, journeys.c.key == key)
    ).scalar_one()
    out: dict[str, dict[str, int]] = {}

    def slot(step: str) -> dict[str, int]:
        return out.setdefault(step, {"waiting": 0, "entered": 0, "exited": 0, "converted": 0})

    for step, n in conn.execute(
        select(instances.c.step_id, func.count())
        .where(instances.c.journey_id == journey_id, instances.c.status == "active")
        .group_by(instances.c.step_id)
    ):
        slot(step or "-")["waiting"] = n
    for step, action, n in conn.execute(
        select(step_log.c.step_id, step_log.c.action, func.count())
        .where(
            step_log.c.journey_id == journey_id,
            step_log.c.action.in_(("entered", "exited", "converted")),
        )
        .group_by(step_log.c.step_id, step_log.c.action)
    ):
        slot(step)[action] = n
    totals = conn.execute(
        select(func.count(), func.count(instances.c.ended_at)).where(
            instances.c.journey_id == journey_id
        )
    ).one()
    conv = conn.execute(
        select(func.count(), func.coalesce(func.sum(conversions.c.value), 0)).where(
            conversions.c.journey_id == journey_id
        )
    ).one()
    return {
        "entered": totals[0],
        "finished": totals[1],
        "conversions": conv[0],
        "revenue": float(conv[1]),
        "by_step": out,
    }


@router.post("/journeys/{key}/pause")
async def pause(request: Request, key: str, workspace: Workspace) -> dict[str, Any]:
    """Stop admitting customers; those inside carry on."""
    return await _set_status(request, workspace, key, "paused")


@router.post("/journeys/{key}/resume")
async def resume(request: Request, key: str, workspace: Workspace) -> dict[str, Any]:
    return await _set_status(request, workspace, key, "active")


async def _set_status(request: Request, workspace: str, key: str, status: str) -> dict[str, Any]:
    now = request.app.state.clock.now()

    def run() -> None:
        with transaction(_engine(request)) as conn:
            set_status(conn, workspace, key, status, now=now)

    await run_in_threadpool(run)
    return {"journey": key, "status": status}


class TemplateSource(BaseModel):
    """One template file's YAML, e.g. ``{"source": "template: welcome\nchannel: email\n..."}``."""

    source: Annotated[str, Field(min_length=1, max_length=MAX_FILE_CHARS)]


@router.get("/templates")
async def templates_index(request: Request, workspace: Workspace) -> dict[str, Any]:
    def run() -> list[dict[str, Any]]:
        with _engine(request).connect() as conn:
            rows = conn.execute(
                select(templates.c.key, templates.c.channel, templates.c.updated_at)
                .where(templates.c.workspace_id == workspace)
                .order_by(templates.c.key)
            )
            return [
                {"template": r.key, "channel": r.channel, "updated_at": r.updated_at.isoformat()}
                for r in rows
            ]

    return {"templates": await run_in_threadpool(run)}


@router.get("/templates/{key}")
async def template_detail(request: Request, key: str, workspace: Workspace) -> dict[str, Any]:
    def run() -> dict[str, Any]:
        with _engine(request).connect() as conn:
            row = conn.execute(
                select(templates).where(
                    templates.c.workspace_id == workspace, templates.c.key == key
                )
            ).first()
        if row is None:
            raise NotFound(f"no template {key!r} in this workspace")
        return {"template": row.key, "channel": row.channel, "spec": row.spec}

    return await run_in_threadpool(run)


@router.put("/templates/{key}")
async def put_template(
    request: Request, key: str, body: TemplateSource, workspace: Workspace
) -> dict[str, Any]:
    """Create or replace one template; a syntax error answers 400 naming part and line."""
    template = load_template_text(body.source, file=f"{key}.yaml")
    if template.name != key:
        raise InputError(f"the file's `template: {template.name}` does not match the URL's {key!r}")
    now = request.app.state.clock.now()

    def run() -> dict[str, str]:
        with transaction(_engine(request)) as conn:
            return apply_templates(conn, workspace, [template], now=now)[0]

    return await run_in_threadpool(run)


@router.get("/profiles/{ref:path}")
async def profile_detail(request: Request, ref: str, workspace: Workspace) -> dict[str, Any]:
    """A customer by user id (or ``#<internal id>``), with journeys and recent events."""

    def run() -> dict[str, Any]:
        with _engine(request).connect() as conn:
            profile = get_profile(conn, workspace, ref)
            pid = profile["id"]
            profile["events"] = list_events(conn, workspace, profile_id=pid, limit=50)
            profile["journeys"] = [
                {
                    "journey": r.key,
                    "status": r.status,
                    "step": r.step_id,
                    "entered_at": r.entered_at.isoformat(),
                    "ended_at": r.ended_at.isoformat() if r.ended_at else None,
                    "exit_reason": r.exit_reason,
                }
                for r in conn.execute(
                    select(instances, journeys.c.key)
                    .join(journeys, journeys.c.id == instances.c.journey_id)
                    .where(instances.c.workspace_id == workspace, instances.c.profile_id == pid)
                    .order_by(instances.c.entered_at.desc())
                    .limit(100)
                )
            ]
            return profile

    return await run_in_threadpool(run)


@router.get("/outbox")
async def outbox_index(
    request: Request,
    workspace: Workspace,
    status: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> dict[str, Any]:
    """Messages journeys recorded, newest first."""

    def run() -> list[dict[str, Any]]:
        stmt = (
            select(outbox, journeys.c.key.label("journey"))
            .join(journeys, journeys.c.id == outbox.c.journey_id)
            .where(outbox.c.workspace_id == workspace)
            .order_by(outbox.c.id.desc())
            .limit(limit)
        )
        if status:
            stmt = stmt.where(outbox.c.status == status)
        with _engine(request).connect() as conn:
            return [
                {
                    "id": r.id,
                    "journey": r.journey,
                    "step": r.step_id,
                    "channel": r.channel,
                    "template": r.template,
                    "purpose": r.purpose,
                    "status": r.status,
                    "reason": r.reason,
                    "address": r.address,
                    "attempts": r.attempts,
                    "idempotency_key": r.idempotency_key,
                    "created_at": r.created_at.isoformat(),
                    "sent_at": r.sent_at.isoformat() if r.sent_at else None,
                    "deferred_reason": r.deferred_reason,
                    "deferrals": r.deferrals,
                    "delivery_status": r.delivery_status,
                    "delivery_at": r.delivery_at.isoformat() if r.delivery_at else None,
                    "rendered": r.rendered,
                }
                for r in conn.execute(stmt)
            ]

    return {"messages": await run_in_threadpool(run)}
