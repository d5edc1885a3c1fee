"""The admin API for consent: a customer's ledger (JSON or CSV), grants and withdrawals, suppressions.

The CSV export is the proof of consent: every ledger row with when, where
(source, IP, user agent), to which wording (``text_version``) and for which
address. Routes need ``Authorization: Bearer <admin token>`` like the rest of
``/admin/v1``.

``/profiles/{ref}/consents`` must be matched before the admin router's
``/profiles/{ref:path}``, whose path parameter would otherwise take
``cust-1/consents`` as a user id: the app includes this router first.
"""

from __future__ import annotations

import csv
import io
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field
from sqlalchemy import Connection
from starlette.concurrency import run_in_threadpool

from touchline.errors import InputError
from touchline.store.consent import (
    CONSENT_TOPICS,
    LEDGER_FIELDS,
    Provenance,
    ledger,
    list_suppressions,
    record_consent,
    remove_suppression,
    suppress,
    unsubscribe,
)
from touchline.store.db import transaction
from touchline.store.ingest import get_profile
from touchline.web.api.admin import Workspace
from touchline.web.openapi import JSON_OR_CSV

router = APIRouter(prefix="/admin/v1", tags=["consent"])

#: Source written when a change made through this API does not name one.
DEFAULT_SOURCE = "admin api"
#: Which profile field is the address a channel's consent is given for.
ADDRESS_FIELDS = {"email": "email", "sms": "phone"}
#: Cells starting with these are formulas to a spreadsheet; the export quotes them.
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")

Name = Annotated[str, Field(min_length=1, max_length=64)]


class ConsentChange(BaseModel):
    """A grant or withdrawal to append to a customer's ledger."""

    channel: Name
    granted: bool
    topic: Name | None = None
    source: Annotated[str, Field(min_length=1, max_length=500)] = DEFAULT_SOURCE
    text_version: Annotated[str, Field(max_length=200)] | None = None
    ip: Annotated[str, Field(max_length=64)] | None = None
    user_agent: Annotated[str, Field(max_length=500)] | None = None
    confirmed: bool = True
    at: datetime | None = None  # when the customer said so; defaults to now


class SuppressionEntry(BaseModel):
    """One address on one channel, blocked for ``reason``."""

    channel: Name
    address: Annotated[str, Field(min_length=1, max_length=320)]
    reason: str


@router.get("/profiles/{ref:path}/consents", response_model=None, responses=JSON_OR_CSV)
async def consents_of(
    request: Request,
    ref: str,
    workspace: Workspace,
    format: Literal["json", "csv"] = "json",
) -> dict[str, Any] | Response:
    """The customer's consent ledger, oldest first; ``?format=csv`` for the export."""

    def run() -> tuple[dict[str, Any], list[dict[str, Any]]]:
        with request.app.state.engine.connect() as conn:
            profile = get_profile(conn, workspace, ref)
            return profile, ledger(conn, workspace, profile["id"])

    profile, rows = await run_in_threadpool(run)
    if format == "csv":
        filename = f"consents-{workspace}-{profile['id']}.csv"
        return Response(
            ledger_csv(rows),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": f'attachment; filename="{filename}"'},
        )
    return {"profile_id": profile["id"], "user_id": profile["user_id"], "consents": rows}


@router.post("/profiles/{ref:path}/consents")
async def change_consent(
    request: Request, ref: str, body: ConsentChange, workspace: Workspace
) -> dict[str, Any]:
    """Append a grant or a withdrawal; a channel-wide withdrawal also suppresses the address.

    Withdrawals are idempotent (``recorded: false`` when the customer had
    already withdrawn); every grant is recorded, so re-confirmations show.
    """
    now = request.app.state.clock.now()
    at = _when(body.at, now)
    if body.topic is not None and body.topic not in CONSENT_TOPICS:
        raise InputError(f"topic: {body.topic!r} is not one of {list(CONSENT_TOPICS)}")
    provenance = Provenance(
        source=body.source,
        ip=body.ip,
        user_agent=body.user_agent,
        text_version=body.text_version,
    )

    def run() -> dict[str, Any]:
        with transaction(request.app.state.engine) as conn:
            profile = get_profile(conn, workspace, ref)
            pid = profile["id"]
            address = _address(profile, body.channel)
            before = {row["id"] for row in ledger(conn, workspace, pid)}
            if body.granted:
                record_consent(
                    conn,
                    workspace_id=workspace,
                    profile_id=pid,
                    channel=body.channel,
                    granted=True,
                    at=at,
                    provenance=provenance,
                    topic=body.topic,
                    confirmed=body.confirmed,
                    address=address,
                )
            else:
                unsubscribe(
                    conn,
                    workspace_id=workspace,
                    profile_id=pid,
                    channel=body.channel,
                    address=address,
                    at=at,
                    provenance=provenance,
                    topic=body.topic,
                )
            return _written(conn, workspace, pid, before)

    return await run_in_threadpool(run)


@router.get("/suppressions")
async def suppressions_index(
    request: Request,
    workspace: Workspace,
    channel: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> dict[str, Any]:
    """The workspace's suppressed addresses, newest first."""

    def run() -> list[dict[str, Any]]:
        with request.app.state.engine.connect() as conn:
            return list_suppressions(conn, workspace, channel=channel, limit=limit)

    return {"suppressions": await run_in_threadpool(run)}


@router.post("/suppressions")
async def add_suppression(
    request: Request, body: SuppressionEntry, workspace: Workspace
) -> dict[str, Any]:
    """Block an address by hand; ``added: false`` when it was already blocked for that reason."""
    now = request.app.state.clock.now()

    def run() -> bool:
        with transaction(request.app.state.engine) as conn:
            return suppress(
                conn,
                workspace_id=workspace,
                channel=body.channel,
                address=body.address,
                reason=body.reason,
                at=now,
                detail=DEFAULT_SOURCE,
            )

    return {"added": await run_in_threadpool(run)}


@router.delete("/suppressions")
async def lift_suppression(
    request: Request, body: SuppressionEntry, workspace: Workspace
) -> dict[str, Any]:
    """Lift a suppression recorded by mistake; ``removed: false`` when there was none."""

    def run() -> bool:
        with transaction(request.app.state.engine) as conn:
            return remove_suppression(
                conn,
                workspace_id=workspace,
                channel=body.channel,
                address=body.address,
                reason=body.reason,
            )

    return {"removed": await run_in_threadpool(run)}


def ledger_csv(rows: list[dict[str, Any]]) -> str:
    """The ledger as CSV with :data:`LEDGER_FIELDS` columns, UTF-8 with a byte-order mark.

    The mark makes spreadsheet programs read Cyrillic right. Text a customer
    could have chosen (a user agent, a source URL) that starts like a formula
    is prefixed with ``'`` so opening the file never runs it.
    """
    out = io.StringIO()
    out.write("\ufeff")
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(LEDGER_FIELDS)
    for row in rows:
        writer.writerow([_cell(row[field]) for field in LEDGER_FIELDS])
    return out.getvalue()


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    text = str(value)
    return "'" + text if text.startswith(_FORMULA_STARTS) else text


def _when(at: datetime | None, now: datetime) -> datetime:
    """When a change happened: ``now``, or an earlier aware time (imports from another system)."""
    if at is None:
        return now
    if at.tzinfo is None:
        raise InputError("at: must carry a time zone, e.g. 2026-03-02T09:00:00+03:00")
    if at > now:
        raise InputError("at: cannot be in the future")
    return at


def _address(profile: dict[str, Any], channel: str) -> str | None:
    field = ADDRESS_FIELDS.get(channel)
    value = profile.get(field) if field else None
    return str(value) if value else None


def _written(
    conn: Connection, workspace_id: str, profile_id: int, before: set[int]
) -> dict[str, Any]:
    new = [row for row in ledger(conn, workspace_id, profile_id) if row["id"] not in before]
    return {"recorded": bool(new), "consent": new[-1] if new else None}


__all__ = ["ADDRESS_FIELDS", "DEFAULT_SOURCE", "ledger_csv", "router"]
