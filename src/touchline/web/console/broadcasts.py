"""Broadcast pages: the list, a form to make one, and one broadcast with its progress.

The form builds the same definition the admin API takes
(:func:`~touchline.audience.broadcast_spec.load_broadcast_data`) and stores it
with :func:`~touchline.audience.broadcasts.create_broadcast`, so the console
checks exactly what the API and the CLI check; each problem is shown next to
the form field it is about. Times are typed in the workspace's time zone.
Schedule and cancel call the functions the API calls, and the progress on a
broadcast's page is :func:`~touchline.audience.broadcasts.get_broadcast`'s; a
small poll (``console.js``) keeps it current while the broadcast is sending.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from fastapi import APIRouter
from sqlalchemy import Connection, func, select
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from touchline.audience.broadcast_spec import ALL, load_broadcast_data
from touchline.audience.broadcasts import (
    ACTIVE,
    CANCELLABLE,
    SCHEDULABLE,
    cancel_broadcast,
    create_broadcast,
    get_broadcast,
    list_broadcasts,
)
from touchline.audience.broadcasts import schedule_broadcast as schedule_in_store
from touchline.clock import utc
from touchline.errors import Conflict, InputError
from touchline.journeys.localtime import zone
from touchline.store.db import transaction
from touchline.store.tables import (
    broadcasts,
    daily_stats,
    segment_members,
    segments,
    templates,
    workspaces,
)
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

#: Start times are shown in the workspace's zone and, to be sure, in UTC.
UTC_ZONE = ZoneInfo("UTC")
#: Variant rows the form offers; the definition allows more, a form this many.
VARIANT_ROWS = 4
#: Seconds between two progress polls of a broadcast's page while it is under way.
POLL_SECONDS = 5
PURPOSES = ("marketing", "transactional")
METRICS = ("click", "open", "conversion")
FALLBACKS = ("best", "first")
#: Form fields copied as typed; longer values are cut (the definition refuses far less).
TEXT_FIELDS = (
    "broadcast",
    "name",
    "audience",
    "channel",
    "template",
    "purpose",
    "send_at",
    "local_time",
    "rate",
    "properties",
    "sample",
    "wait",
    "metric",
    "fallback",
    "min_sample",
    *(f"variant_{i}_{part}" for i in range(VARIANT_ROWS) for part in ("name", "template")),
)
MAX_FIELD_CHARS = 200
MAX_PROPERTIES_CHARS = 16 * 1024
#: Counters a broadcast's page shows and its poll refreshes.
PROGRESS_FIGURES = (
    "audience",
    "unreachable",
    "queued",
    "pending",
    "sent",
    "delivered",
    "opened",
    "clicked",
    "failed",
    "skipped",
)
#: Settings of ``ab_test`` that have a form field of the same name.
AB_FIELDS = ("sample", "wait", "metric", "fallback", "min_sample")
#: Where one problem ends in the definition's message: "; " before the next ``field: ``.
_NEXT_PROBLEM = re.compile(r"; (?=[A-Za-z_(][\w.\[\]()]*: )")
_VARIANT_PATH = re.compile(r"^ab_test\.variants\[(\d+)\]\.(name|template)$")


# -- the form -> the definition --------------------------------------------------------


def blank_form() -> dict[str, str]:
    """The new-broadcast form as it first opens: the definition's defaults filled in."""
    values = dict.fromkeys(TEXT_FIELDS, "")
    values.update(
        audience=ALL,
        channel="email",
        purpose="marketing",
        sample="20",
        wait="4h",
        metric="click",
        fallback="best",
        min_sample="100",
        ab="",
    )
    for i in range(VARIANT_ROWS):
        values[f"variant_{i}_name"] = chr(ord("a") + i)
    return values


def form_values(form: FormData) -> dict[str, str]:
    values = {
        name: field(form, name)[
            : MAX_PROPERTIES_CHARS if name == "properties" else MAX_FIELD_CHARS
        ].strip()
        for name in TEXT_FIELDS
    }
    values["ab"] = "on" if field(form, "ab") else ""
    return values


def definition(
    values: Mapping[str, str], *, schedule: bool, tz: ZoneInfo, now: datetime
) -> tuple[dict[str, Any], list[int], dict[str, str]]:
    """The broadcast definition the form describes, as the API would receive it.

    Returns the data, the form row of each A/B variant (so a problem with
    ``ab_test.variants[1]`` lands on the right row), and the problems found
    before the definition's own checks: the ones only a form can have
    (a time that is no time, properties that are not a JSON object).
    ``schedule`` sends at the typed time (in ``tz``), or now when none is typed;
    otherwise the broadcast is a draft.
    """
    errors: dict[str, str] = {}
    data: dict[str, Any] = {
        "broadcast": values["broadcast"],
        "audience": values["audience"],
        "channel": values["channel"],
        "purpose": values["purpose"],
    }
    for name in ("name", "local_time", "rate"):
        if values[name]:
            data[name] = values[name]
    if schedule:
        try:
            data["send_at"] = (
                local_time_to_utc(values["send_at"], tz).isoformat()
                if values["send_at"]
                else now.isoformat()
            )
        except ValueError:
            errors["send_at"] = "not a date and time"
    if values["properties"]:
        try:
            properties = json.loads(values["properties"])
        except ValueError:
            properties = None
        if not isinstance(properties, dict):
            errors["properties"] = 'must be a JSON object, e.g. {"deadline": "30 Nov"}'
        else:
            data["properties"] = properties
    rows: list[int] = []
    if values["ab"]:
        variants = []
        for i in range(VARIANT_ROWS):
            name, template = values[f"variant_{i}_name"], values[f"variant_{i}_template"]
            if template:
                variants.append({"name": name, "template": template})
                rows.append(i)
        test: dict[str, Any] = {"variants": variants}
        for name in AB_FIELDS:
            if values[name]:
                test[name] = values[name]
        data["ab_test"] = test
    elif values["template"]:
        data["template"] = values["template"]
    else:
        errors["template"] = "choose a template, or tick the A/B test and choose its variants"
    return data, rows, errors


def local_time_to_utc(text: str, tz: ZoneInfo) -> datetime:
    """A ``datetime-local`` value typed in ``tz`` (an explicit offset wins), as UTC."""
    found = datetime.fromisoformat(text)
    if found.tzinfo is None:
        found = found.replace(tzinfo=tz)
    return utc(found)


def form_errors(message: str, rows: list[int]) -> dict[str, str]:
    """The definition's ``field: message; field: message`` problems, keyed by form field.

    A problem with no field of its own in the form is keyed ``""`` and shown
    above it, with the definition's field name.
    """
    out: dict[str, str] = {}
    for problem in _NEXT_PROBLEM.split(message):
        path, sep, text = problem.partition(": ")
        if not sep:
            path, text = "", problem
        key = form_field(path, rows)
        text = text if key else (f"{path}: {text}" if path else text)
        out[key] = f"{out[key]}; {text}" if key in out else text
    return out


def form_field(path: str, rows: list[int]) -> str:
    """The form field a definition path is about ("" for none)."""
    variant = _VARIANT_PATH.match(path)
    if variant:
        index = int(variant.group(1))
        row = rows[index] if index < len(rows) else index
        return f"variant_{row}_{variant.group(2)}"
    if path in ("ab_test", "ab_test.variants"):
        return "variants"
    if path.startswith("ab_test.") and path.removeprefix("ab_test.") in AB_FIELDS:
        return path.removeprefix("ab_test.")
    head = path.split(".")[0].split("[")[0]
    if head == "properties":
        return "properties"
    return head if head in TEXT_FIELDS else ""


# -- reading ---------------------------------------------------------------------------------


def workspace_zone(conn: Connection, workspace_id: str) -> ZoneInfo:
    name = conn.execute(
        select(workspaces.c.timezone).where(workspaces.c.id == workspace_id)
    ).scalar()
    return zone(name or "UTC")


def local(value: str | None, tz: ZoneInfo) -> str:
    """A stored ISO time as the workspace's wall-clock time, minutes only."""
    if not value:
        return ""
    return datetime.fromisoformat(value).astimezone(tz).strftime("%Y-%m-%d %H:%M")


def _figures(conn: Connection, workspace_id: str) -> dict[str, dict[str, int]]:
    """Messages sent, opened and clicked per broadcast key, from the rollups."""
    ds = daily_stats.c
    names = ("sent", "opened", "clicked")
    rows = conn.execute(
        select(
            broadcasts.c.key,
            *(func.coalesce(func.sum(ds[n]), 0).label(n) for n in names),
        )
        .join(
            daily_stats,
            (ds.journey_id == broadcasts.c.journey_id) & (ds.workspace_id == workspace_id),
        )
        .where(broadcasts.c.workspace_id == workspace_id, ds.channel != "")
        .group_by(broadcasts.c.key)
    )
    return {r.key: {n: int(r._mapping[n]) for n in names} for r in rows}


def _choices(conn: Connection, workspace_id: str) -> dict[str, Any]:
    """What the form offers: the workspace's live segments (with sizes) and templates."""
    size = (
        select(func.count())
        .where(segment_members.c.segment_id == segments.c.id)
        .scalar_subquery()
        .label("size")
    )
    return {
        "segments": list(
            conn.execute(
                select(segments.c.key, segments.c.name, size)
                .where(segments.c.workspace_id == workspace_id, segments.c.status != "archived")
                .order_by(segments.c.key)
            )
        ),
        "templates": list(
            conn.execute(
                select(templates.c.key, templates.c.channel)
                .where(templates.c.workspace_id == workspace_id)
                .order_by(templates.c.key)
            )
        ),
    }


def progress_figures(found: Mapping[str, Any]) -> dict[str, Any]:
    """What the progress poll shows: the status and the counters, plus messages settled."""
    progress = found["progress"]
    names = PROGRESS_FIGURES
    out: dict[str, Any] = {"status": found["status"], "active": found["status"] in ACTIVE}
    out.update({name: int(progress[name]) for name in names})
    out["settled"] = max(int(progress["queued"]) - int(progress["pending"]), 0)
    out["skipped_by_reason"] = progress["skipped_by_reason"]
    return out


# -- pages -----------------------------------------------------------------------------------


@router.get("/broadcasts")
async def broadcast_list(request: Request) -> Response:
    session = await guard(request, "broadcasts")
    ws = session.user.workspace_id

    def work() -> tuple[list[dict[str, Any]], ZoneInfo]:
        with engine_of(request).connect() as conn:
            rows = list_broadcasts(conn, ws)
            figures = _figures(conn, ws)
            tz = workspace_zone(conn, ws)
        for row in rows:
            row["figures"] = figures.get(row["broadcast"], {"sent": 0, "opened": 0, "clicked": 0})
        return rows, tz

    rows, tz = await run(work)
    for row in rows:
        row["send_at_local"] = local(row["send_at"], tz)
    return page(
        request,
        "broadcasts.html",
        session=session,
        section="broadcasts",
        title="Broadcasts",
        broadcasts=rows,
        timezone=tz.key,
    )


@router.get("/broadcasts/new")
async def new_broadcast(request: Request) -> Response:
    session = await guard(request, "broadcasts")
    return await _form(request, session, blank_form(), {})


async def _form(
    request: Request, session: Any, values: dict[str, str], errors: dict[str, str]
) -> Response:
    ws = session.user.workspace_id

    def work() -> tuple[dict[str, Any], ZoneInfo]:
        with engine_of(request).connect() as conn:
            return _choices(conn, ws), workspace_zone(conn, ws)

    choices, tz = await run(work)
    channels = sorted({t.channel for t in choices["templates"]} | {"email", "sms"})
    return page(
        request,
        "broadcast_new.html",
        session=session,
        section="broadcasts",
        title="New broadcast",
        values=values,
        errors=errors,
        channels=channels,
        purposes=PURPOSES,
        metrics=METRICS,
        fallbacks=FALLBACKS,
        rows=range(VARIANT_ROWS),
        timezone=tz.key,
        status=400 if errors else 200,
        **choices,
    )


@router.post("/broadcasts/new")
async def create(request: Request) -> Response:
    session = await guard(request, "broadcasts")
    form = await read_form(request, session)
    values = form_values(form)
    schedule = field(form, "action") == "schedule"
    ws = session.user.workspace_id
    now = now_of(request)

    def zone_of() -> ZoneInfo:
        with engine_of(request).connect() as conn:
            return workspace_zone(conn, ws)

    tz = await run(zone_of)
    data, rows, errors = definition(values, schedule=schedule, tz=tz, now=now)
    if errors:
        return await _form(request, session, values, errors)
    try:
        spec = load_broadcast_data(data)
    except InputError as exc:
        return await _form(request, session, values, form_errors(exc.message, rows))

    def work() -> dict[str, Any]:
        with transaction(engine_of(request)) as conn:
            return create_broadcast(
                conn, ws, spec, source=json.dumps(data, ensure_ascii=False), now=now
            )

    try:
        made = await run(work)
    except Conflict:
        taken = {"broadcast": f"a broadcast {spec.broadcast!r} exists; choose another key"}
        return await _form(request, session, values, taken)
    except InputError as exc:  # a segment or template that is not there, or of another channel
        return await _form(request, session, values, form_errors(exc.message, rows))
    notice = "broadcast_scheduled" if made["status"] == "scheduled" else "broadcast_draft"
    return redirect(f"{PREFIX}/broadcasts/{spec.broadcast}", notice=notice)


@router.get("/broadcasts/{key}")
async def broadcast_page(request: Request, key: str) -> Response:
    session = await guard(request, "broadcasts")
    ws = session.user.workspace_id

    def work() -> tuple[dict[str, Any], ZoneInfo]:
        with engine_of(request).connect() as conn:
            return get_broadcast(conn, ws, key), workspace_zone(conn, ws)

    found, tz = await run(work)
    spec = found["spec"]
    return page(
        request,
        "broadcast.html",
        session=session,
        section="broadcasts",
        title=found["name"],
        broadcast=found,
        spec=spec,
        figures=progress_figures(found),
        variants=spec.get("ab_test", {}).get("variants", []),
        decision=found["decision"],
        timezone=tz.key,
        times={
            name: local(found[name], tz)
            for name in ("send_at", "created_at", "started_at", "test_ends_at", "finished_at")
        }
        | {"send_at_utc": local(found["send_at"], UTC_ZONE)},
        can_schedule=found["status"] in SCHEDULABLE,
        can_cancel=found["status"] in CANCELLABLE,
        poll_seconds=POLL_SECONDS,
    )


@router.get("/broadcasts/{key}/progress")
async def progress(request: Request, key: str) -> Response:
    """The figures the broadcast's page shows, as JSON for its poll."""
    session = await guard(request, "broadcasts")

    def work() -> dict[str, Any]:
        with engine_of(request).connect() as conn:
            return get_broadcast(conn, session.user.workspace_id, key)

    return JSONResponse(progress_figures(await run(work)))


@router.post("/broadcasts/{key}/schedule")
async def schedule(request: Request, key: str) -> Response:
    session = await guard(request, "broadcasts")
    form = await read_form(request, session)
    ws = session.user.workspace_id
    typed = field(form, "send_at").strip()[:MAX_FIELD_CHARS]
    now = now_of(request)

    def work() -> None:
        with transaction(engine_of(request)) as conn:
            send_at = now
            if typed:
                try:
                    send_at = local_time_to_utc(typed, workspace_zone(conn, ws))
                except ValueError:
                    raise InputError("send_at: the start time is not a date and time") from None
            schedule_in_store(conn, ws, key, send_at=send_at, now=now)

    await run(work)
    return redirect(f"{PREFIX}/broadcasts/{key}", notice="broadcast_scheduled")


@router.post("/broadcasts/{key}/cancel")
async def cancel(request: Request, key: str) -> Response:
    session = await guard(request, "broadcasts")
    await read_form(request, session)
    now = now_of(request)

    def work() -> None:
        with transaction(engine_of(request)) as conn:
            cancel_broadcast(conn, session.user.workspace_id, key, now=now)

    await run(work)
    return redirect(f"{PREFIX}/broadcasts/{key}", notice="broadcast_cancelled")
