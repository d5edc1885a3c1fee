"""The admin API for a customer's personal data: export all of it, or erase it.

``GET /admin/v1/profiles/{ref}/export`` answers everything touchline holds
about the customer as one JSON document (an erased customer: only the legal
record). ``POST /admin/v1/profiles/{ref}/erase`` erases them in one
transaction and answers the erasure's log row. ``ref`` is a user id or
``#<profile id>``. See :mod:`touchline.store.privacy` for what is kept.

Like the consent routes, these must be matched before the admin router's
``/profiles/{ref:path}``: the app includes this router first.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from touchline.store.db import run_in_transaction
from touchline.store.privacy import erase_customer, export_customer
from touchline.store.workspaces import SHOWN_PREFIX_LENGTH
from touchline.web.api.admin import Workspace
from touchline.web.api.ingest import key_from_authorization

router = APIRouter(prefix="/admin/v1", tags=["privacy"])


class ErasureRequest(BaseModel):
    """Who asked for the erasure (a person, a ticket); defaults to the admin token's prefix."""

    requested_by: Annotated[str, Field(min_length=1, max_length=200)] | None = None


@router.get("/profiles/{ref:path}/export")
async def export_profile(request: Request, ref: str, workspace: Workspace) -> JSONResponse:
    """Everything held about the customer, as a JSON attachment."""

    def run() -> dict[str, Any]:
        with request.app.state.engine.connect() as conn:
            return export_customer(conn, workspace, ref)

    data = await run_in_threadpool(run)
    filename = f"customer-{workspace}-{data['profile_id']}.json"
    return JSONResponse(data, headers={"Content-Disposition": f'attachment; filename="{filename}"'})


@router.post("/profiles/{ref:path}/erase")
async def erase_profile(
    request: Request, ref: str, workspace: Workspace, body: ErasureRequest | None = None
) -> dict[str, Any]:
    """Erase the customer; the answer is the erasure's log row with what it changed."""
    now = request.app.state.clock.now()
    by = body.requested_by if body and body.requested_by else _token_name(request)

    def run() -> dict[str, Any]:
        erasure = run_in_transaction(
            request.app.state.engine,
            lambda conn: erase_customer(conn, workspace, ref, requested_by=by, now=now),
        )
        return erasure.as_dict()

    return await run_in_threadpool(run)


def _token_name(request: Request) -> str:
    """``admin token <prefix>``: which token asked, without the secret part."""
    key = key_from_authorization(request.headers.get("authorization")) or ""
    return f"admin token {key[:SHOWN_PREFIX_LENGTH]}"
