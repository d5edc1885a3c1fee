"""The admin API for promo code pools: create, fill (import or generate), inspect.

Routes, under ``/admin/v1`` and the admin token like the rest of the admin API:

* ``GET /promo-pools`` — every pool with its counts;
* ``POST /promo-pools`` — create one;
* ``POST /promo-pools/{key}/codes`` — import codes, as JSON ``{"codes": [...]}``
  or as a ``text/csv`` (or ``text/plain``) body;
* ``POST /promo-pools/{key}/generate`` — make codes here and return them;
* ``GET /promo-codes/{code}`` — who a code was issued to and whether it was used.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field
from sqlalchemy import Engine
from starlette.concurrency import run_in_threadpool

from touchline.errors import InputError, PayloadTooLarge
from touchline.store.db import transaction
from touchline.store.promo import (
    DEFAULT_LENGTH,
    MAX_GENERATE,
    MIN_LENGTH,
    create_pool,
    find_code,
    generate_codes,
    import_codes,
    parse_codes_csv,
    pool_stats,
)
from touchline.web.api.admin import Workspace
from touchline.web.api.ingest import read_body

router = APIRouter(prefix="/admin/v1", tags=["promo"])

MAX_IMPORT_BYTES = 4 * 1024 * 1024
"""Largest import body: 100 000 codes of up to ~40 characters."""

MAX_IMPORT_CODES = 100_000
"""Codes per import request; larger files go in several requests (or `touchline promo import`)."""

_CSV_TYPES = frozenset({"text/csv", "text/plain", "application/csv"})


def _engine(request: Request) -> Engine:
    return request.app.state.engine  # type: ignore[no-any-return]


class NewPool(BaseModel):
    """A pool to create; times are ISO-8601 (naive ones are UTC)."""

    key: Annotated[str, Field(min_length=1, max_length=64)]
    name: Annotated[str, Field(max_length=200)] = ""
    valid_from: datetime | None = None
    valid_until: datetime | None = None


class Generate(BaseModel):
    """How many codes to make, and their shape: ``prefix`` + ``length`` random symbols."""

    count: Annotated[int, Field(ge=1, le=MAX_GENERATE)]
    prefix: Annotated[str, Field(max_length=20)] = ""
    length: Annotated[int, Field(ge=MIN_LENGTH, le=64)] = DEFAULT_LENGTH
    valid_until: datetime | None = None


@router.get("/promo-pools")
async def pools_index(request: Request, workspace: Workspace) -> dict[str, Any]:
    """Every pool: validity, and how many codes it has, issued, redeemed and left."""
    now = request.app.state.clock.now()

    def run() -> list[dict[str, Any]]:
        with _engine(request).connect() as conn:
            return pool_stats(conn, workspace, now=now)

    return {"pools": await run_in_threadpool(run)}


@router.post("/promo-pools", status_code=201)
async def create(request: Request, body: NewPool, workspace: Workspace) -> dict[str, Any]:
    """Create an empty pool; 400 ``promo_pool_exists`` if the key is taken."""
    now = request.app.state.clock.now()

    def run() -> dict[str, Any]:
        with transaction(_engine(request)) as conn:
            pool = create_pool(
                conn,
                workspace,
                key=body.key,
                name=body.name,
                valid_from=body.valid_from,
                valid_until=body.valid_until,
                now=now,
            )
        return pool.as_dict()

    return await run_in_threadpool(run)


@router.post("/promo-pools/{key}/codes")
async def import_pool_codes(request: Request, key: str, workspace: Workspace) -> dict[str, Any]:
    """Add codes: JSON ``{"codes": [...]}`` or a CSV body (``code`` column, else the first)."""
    raw = await read_body(request, limit=MAX_IMPORT_BYTES)
    media = (request.headers.get("content-type") or "").split(";")[0].strip().lower()

    def run() -> dict[str, Any]:
        codes = _codes_of(raw, media)
        if len(codes) > MAX_IMPORT_CODES:
            raise PayloadTooLarge(
                f"{len(codes)} codes; at most {MAX_IMPORT_CODES} per request, send the rest after"
            )
        with transaction(_engine(request)) as conn:
            return import_codes(conn, workspace, key, codes).as_dict()

    return await run_in_threadpool(run)


def _codes_of(raw: bytes, media: str) -> list[Any]:
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise InputError("the body is not UTF-8") from None
    if media in _CSV_TYPES:
        return parse_codes_csv(text)
    if media not in ("application/json", ""):
        raise InputError(f"send codes as application/json or text/csv, not {media!r}")
    try:
        payload = json.loads(text)
    except ValueError:
        raise InputError('the body is not JSON; send {"codes": [...]} or text/csv') from None
    codes = payload.get("codes") if isinstance(payload, dict) else None
    if not isinstance(codes, list):
        raise InputError('codes: send {"codes": ["CODE1", "CODE2", ...]}')
    return codes


@router.post("/promo-pools/{key}/generate")
async def generate(
    request: Request, key: str, body: Generate, workspace: Workspace
) -> dict[str, Any]:
    """Make ``count`` new codes and return them, for loading into the shop's checkout."""

    def run() -> list[str]:
        with transaction(_engine(request)) as conn:
            return generate_codes(
                conn,
                workspace,
                key,
                count=body.count,
                prefix=body.prefix,
                length=body.length,
                valid_until=body.valid_until,
            )

    codes = await run_in_threadpool(run)
    return {"generated": len(codes), "codes": codes}


@router.get("/promo-codes/{code}")
async def code_detail(request: Request, code: str, workspace: Workspace) -> dict[str, Any]:
    """One code: its pool, who it was issued to (and for which offer), and its redemption."""

    def run() -> dict[str, Any]:
        with _engine(request).connect() as conn:
            return find_code(conn, workspace, code)

    return await run_in_threadpool(run)
