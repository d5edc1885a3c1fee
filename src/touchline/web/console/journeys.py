"""Journey pages: the list, one journey with its flow and figures, recipes, the YAML editor.

Figures come from the rollups (:func:`~touchline.measure.reports.journey_summary`,
:func:`~touchline.measure.reports.variant_report`); live counts per step from
the instances and the step log (:func:`touchline.web.api.admin.step_counts`).
Edits go through the journey loader and :func:`~touchline.store.journeys.apply_journeys`
exactly as files applied by the CLI or the API do, so the console cannot make
a journey a file could not; problems are shown as ``file:line: field: message``.
"""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

from fastapi import APIRouter
from sqlalchemy import Connection, func, select
from starlette.requests import Request
from starlette.responses import Response

from touchline.errors import NotFound, SpecError, SpecProblem
from touchline.journeys.loader import LoadedJourney, load_journey_text
from touchline.journeys.spec import JourneySpec
from touchline.measure.reports import journey_summary, variant_report
from touchline.store.db import transaction
from touchline.store.journeys import apply_journeys, get_journey, list_journeys, set_status
from touchline.store.tables import instances, journey_versions, journeys, templates
from touchline.web.api.admin import step_counts
from touchline.web.console.base import (
    PREFIX,
    engine_of,
    field,
    guard,
    markup,
    now_of,
    page,
    read_form,
    redirect,
    run,
)
from touchline.web.console.flow import draw
from touchline.web.console.recipes import (
    CHANNELS,
    FORM_FIELDS,
    RECIPES,
    build,
    defaults,
    form_problems,
)

router = APIRouter()

#: Days the list's and the journey page's figures cover.
FIGURE_DAYS = 30
#: Largest journey file the editor accepts (the loader's own limit).
MAX_SOURCE_CHARS = 256 * 1024


def _period(request: Request) -> tuple[date, date]:
    until = now_of(request).date()
    return until - timedelta(days=FIGURE_DAYS - 1), until


def _waiting(conn: Connection, workspace_id: str) -> dict[int, int]:
    rows = conn.execute(
        select(instances.c.journey_id, func.count())
        .where(instances.c.workspace_id == workspace_id, instances.c.status == "active")
        .group_by(instances.c.journey_id)
    )
    return {journey_id: n for journey_id, n in rows}


@router.get("/journeys")
async def journey_list(request: Request) -> Response:
    session = await guard(request, "journeys")
    ws = session.user.workspace_id
    since, until = _period(request)

    def work() -> list[dict[str, Any]]:
        with engine_of(request).connect() as conn:
            figures = {j.key: j for j in journey_summary(conn, ws, since=since, until=until)}
            ids = dict(
                conn.execute(
                    select(journeys.c.key, journeys.c.id).where(journeys.c.workspace_id == ws)
                ).all()
            )
            waiting = _waiting(conn, ws)
            rows = list_journeys(conn, ws)
        for row in rows:
            row["figures"] = figures.get(row["journey"])
            row["waiting"] = waiting.get(ids.get(row["journey"], 0), 0)
        return rows

    rows = await run(work)
    return page(
        request,
        "journeys.html",
        session=session,
        section="journeys",
        title="Journeys",
        journeys=rows,
        days=FIGURE_DAYS,
    )


@router.get("/journeys/new")
async def new_journey(request: Request) -> Response:
    session = await guard(request, "journeys")
    recipe = RECIPES.get(request.query_params.get("recipe", ""))
    if recipe is None:
        return page(
            request,
            "journey_recipes.html",
            session=session,
            section="journeys",
            title="New journey",
            recipes=list(RECIPES.values()),
        )
    return await _recipe_form(request, session, recipe, defaults(recipe), {}, [], "")


async def _recipe_form(
    request: Request,
    session: Any,
    recipe: Any,
    values: dict[str, str],
    errors: dict[str, str],
    problems: list[SpecProblem],
    source: str,
) -> Response:
    ws = session.user.workspace_id

    def work() -> list[tuple[str, str]]:
        with engine_of(request).connect() as conn:
            return [
                (r.key, r.channel)
                for r in conn.execute(
                    select(templates.c.key, templates.c.channel)
                    .where(templates.c.workspace_id == ws)
                    .order_by(templates.c.key)
                )
            ]

    known = await run(work)
    names = {key for key, _ in known}
    missing = [
        values[name]
        for name in ("template", "follow_up_template")
        if values.get(name, "").strip() and values[name].strip() not in names
    ]
    return page(
        request,
        "journey_new.html",
        session=session,
        section="journeys",
        title=f"New journey: {recipe.title}",
        recipe=recipe,
        values=values,
        errors=errors,
        problems=problems,
        source=source,
        channels=CHANNELS,
        templates=known,
        missing=missing,
        status=400 if errors or problems else 200,
    )


@router.post("/journeys/new")
async def create_journey(request: Request) -> Response:
    session = await guard(request, "journeys")
    form = await read_form(request, session)
    recipe = RECIPES.get(field(form, "recipe"))
    if recipe is None:
        raise NotFound("no such recipe")
    values = {name: field(form, name)[:200] for name in FORM_FIELDS}
    values["start"] = "on" if field(form, "start") else ""
    errors = form_problems(values)
    if errors:
        return await _recipe_form(request, session, recipe, values, errors, [], "")
    source = build(recipe, values)
    ws = session.user.workspace_id
    file = f"{values['journey']}.yaml"
    try:
        spec = load_journey_text(source, file=file)
    except SpecError as exc:
        return await _recipe_form(request, session, recipe, values, {}, exc.problems, source)
    now = now_of(request)

    def work() -> bool:
        with transaction(engine_of(request)) as conn:
            exists = conn.execute(
                select(journeys.c.id).where(
                    journeys.c.workspace_id == ws, journeys.c.key == spec.journey
                )
            ).first()
            if exists:
                return False
            apply_journeys(conn, ws, [LoadedJourney(file, spec, source)], now=now)
            return True

    if not await run(work):
        errors = {"journey": f"a journey {spec.journey!r} already exists; choose another key"}
        return await _recipe_form(request, session, recipe, values, errors, [], "")
    return redirect(f"{PREFIX}/journeys/{spec.journey}", notice="created")


@router.get("/journeys/{key}")
async def journey_page(request: Request, key: str) -> Response:
    session = await guard(request, "journeys")
    ws = session.user.workspace_id
    since, until = _period(request)

    def work() -> dict[str, Any]:
        with engine_of(request).connect() as conn:
            data = get_journey(conn, ws, key)  # NotFound for another workspace's key
            counts = step_counts(conn, ws, key)
            spec = JourneySpec.model_validate(data["spec"])
            figures = next(
                (j for j in journey_summary(conn, ws, since=since, until=until) if j.key == key),
                None,
            )
            variants = []
            for step in spec.steps:
                if not step.split:
                    continue
                metric = (
                    step.winner.metric if step.winner else ("conversion" if spec.goal else "click")
                )
                variants.append(
                    variant_report(conn, ws, key, step.id, metric=metric, since=since, until=until)
                )
        return {
            "journey": data,
            "spec": spec,
            "counts": counts,
            "figures": figures,
            "variants": variants,
            "diagram": markup(draw(spec, counts["by_step"], entered=counts["entered"])),
        }

    data = await run(work)
    return page(
        request,
        "journey.html",
        session=session,
        section="journeys",
        title=data["journey"]["name"],
        days=FIGURE_DAYS,
        **data,
    )


@router.post("/journeys/{key}/pause")
async def pause(request: Request, key: str) -> Response:
    return await _set_status(request, key, "paused")


@router.post("/journeys/{key}/resume")
async def resume(request: Request, key: str) -> Response:
    return await _set_status(request, key, "active")


async def _set_status(request: Request, key: str, status: str) -> Response:
    session = await guard(request, "journeys")
    await read_form(request, session)
    now = now_of(request)

    def work() -> None:
        with transaction(engine_of(request)) as conn:
            set_status(conn, session.user.workspace_id, key, status, now=now)

    await run(work)
    return redirect(
        f"{PREFIX}/journeys/{key}", notice="paused" if status == "paused" else "resumed"
    )


@router.get("/journeys/{key}/edit")
async def edit_page(request: Request, key: str) -> Response:
    session = await guard(request, "journeys")

    def work() -> dict[str, Any]:
        with engine_of(request).connect() as conn:
            return get_journey(conn, session.user.workspace_id, key)

    data = await run(work)
    return _editor(request, session, data, data["source"], [])


def _editor(
    request: Request,
    session: Any,
    data: dict[str, Any],
    source: str,
    problems: list[SpecProblem],
    *,
    status: int = 200,
) -> Response:
    return page(
        request,
        "journey_edit.html",
        session=session,
        section="journeys",
        title=f"Edit {data['journey']}",
        journey=data,
        source=source,
        problems=problems,
        status=status,
    )


@router.post("/journeys/{key}/edit")
async def save_journey(request: Request, key: str) -> Response:
    session = await guard(request, "journeys")
    form = await read_form(request, session)
    source = field(form, "source").replace("\r\n", "\n")
    ws = session.user.workspace_id

    def current() -> dict[str, Any]:
        with engine_of(request).connect() as conn:
            return get_journey(conn, ws, key)

    data = await run(current)
    file = f"{key}.yaml"
    problems: list[SpecProblem] = []
    spec = None
    if len(source) > MAX_SOURCE_CHARS:
        problems = [SpecProblem(file, None, "(document)", "the file is too large")]
    else:
        try:
            spec = load_journey_text(source, file=file)
        except SpecError as exc:
            problems = exc.problems
    if spec is not None and spec.journey != key:
        problems = [
            SpecProblem(
                file,
                _line_of_key(source),
                "journey",
                f"the key is {key!r} here; to make another journey, start a new one",
            )
        ]
    if problems or spec is None:
        return _editor(request, session, data, source, problems, status=400)
    now = now_of(request)
    checked = spec

    def work() -> str:
        with transaction(engine_of(request)) as conn:
            applied = apply_journeys(conn, ws, [LoadedJourney(file, checked, source)], now=now)
        return applied[0].change

    change = await run(work)
    return redirect(
        f"{PREFIX}/journeys/{key}", notice="unchanged" if change == "unchanged" else "saved"
    )


def _line_of_key(source: str) -> int | None:
    for number, line in enumerate(source.splitlines(), start=1):
        if line.startswith("journey:"):
            return number
    return None


@router.get("/journeys/{key}/versions/{version}")
async def version_page(request: Request, key: str, version: int) -> Response:
    session = await guard(request, "journeys")
    ws = session.user.workspace_id

    def work() -> dict[str, Any]:
        with engine_of(request).connect() as conn:
            row = conn.execute(
                select(
                    journey_versions.c.version,
                    journey_versions.c.source,
                    journey_versions.c.created_at,
                )
                .join(journeys, journeys.c.id == journey_versions.c.journey_id)
                .where(
                    journeys.c.workspace_id == ws,
                    journeys.c.key == key,
                    journey_versions.c.version == version,
                )
            ).first()
        if row is None:
            raise NotFound(f"journey {key!r} has no version {version}")
        return {"version": row.version, "source": row.source, "created_at": row.created_at}

    data = await run(work)
    return page(
        request,
        "journey_version.html",
        session=session,
        section="journeys",
        title=f"{key} version {version}",
        key=key,
        **data,
    )
