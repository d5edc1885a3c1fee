"""The admin API for the product catalog.

Routes, under ``/admin/v1`` and the admin token like the rest of the admin API:

* ``PUT /catalog/products/{product_id}`` — create or update one product with
  the fields given (see :mod:`touchline.audience.catalog`);
* ``POST /catalog/products`` — a batch, ``{"products": [...]}``: each item is
  applied or rejected alone, rejections listed with their index;
* ``GET /catalog/products`` — products by id, in keyset pages
  (``after``, ``limit``; ``category``, ``in_stock``, ``archived``);
* ``GET /catalog/products/{product_id}`` — one product;
* ``DELETE /catalog/products/{product_id}`` — archive it: no more
  recommendations or announcements, until it is sent again;
* ``GET /catalog/alerts`` — restocks and price drops, and how far each got;
* ``GET /catalog/recommendations`` — what ``recommend.*`` gives a customer,
  to check a template's data (``kind``, ``profile``, ``product_id``, ``limit``).
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from sqlalchemy import Engine
from starlette.concurrency import run_in_threadpool

from touchline.audience.alerts import list_alerts
from touchline.audience.catalog import (
    MAX_LIST_LIMIT,
    ProductIn,
    archive_product,
    get_product,
    list_products,
    parse_product,
    rules_for,
    upsert_products,
)
from touchline.audience.recommendations import MAX_ITEMS, Recommender
from touchline.errors import InputError, PayloadTooLarge
from touchline.store.db import transaction
from touchline.store.ingest import get_profile
from touchline.web.api.admin import Workspace
from touchline.web.api.ingest import read_body

router = APIRouter(prefix="/admin/v1/catalog", tags=["catalog"])

MAX_BATCH = 1000
"""Products per batch request; bigger catalogs go in several, or through `touchline catalog import`."""
MAX_BODY_BYTES = 8 * 1024 * 1024
"""Largest batch body: a thousand products with generous attributes."""
MAX_PRODUCT_BYTES = 64 * 1024


def _body(schema: dict[str, Any]) -> dict[str, Any]:
    """``openapi_extra`` for a route that reads its JSON body itself."""
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


_PRODUCT = ProductIn.model_json_schema()
_PRODUCT_FIELDS = {k: v for k, v in _PRODUCT["properties"].items() if k != "product_id"}
_ONE = {"type": "object", "properties": _PRODUCT_FIELDS, "additionalProperties": False}
_ITEM = {
    "type": "object",
    "properties": {"id": _PRODUCT["properties"]["product_id"], **_PRODUCT["properties"]},
    "additionalProperties": False,
}
_BATCH = {
    "type": "object",
    "required": ["products"],
    "properties": {"products": {"type": "array", "maxItems": MAX_BATCH, "items": _ITEM}},
}


def _engine(request: Request) -> Engine:
    return request.app.state.engine  # type: ignore[no-any-return]


async def _json(request: Request, *, limit: int) -> Any:
    raw = await read_body(request, limit=limit)
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise InputError("the body is not JSON") from None


@router.put("/products/{product_id}", openapi_extra=_body(_ONE))
async def put_product(request: Request, product_id: str, workspace: Workspace) -> dict[str, Any]:
    """Create or update one product; 400 names the bad field. Answers the stored product."""
    product = parse_product(await _json(request, limit=MAX_PRODUCT_BYTES), product_id=product_id)
    now = request.app.state.clock.now()

    def run() -> dict[str, Any]:
        with transaction(_engine(request)) as conn:
            result = upsert_products(
                conn, workspace, [product], now=now, rules=rules_for(conn, workspace)
            )
            if result.rejected:
                raise InputError(result.rejected[0]["message"])
            stored = get_product(conn, workspace, product.product_id)
        return {**stored, "result": result.as_dict()}

    return await run_in_threadpool(run)


@router.post("/products", openapi_extra=_body(_BATCH))
async def post_products(request: Request, workspace: Workspace) -> dict[str, Any]:
    """Create or update up to :data:`MAX_BATCH` products; bad items are listed, the rest applied."""
    body = await _json(request, limit=MAX_BODY_BYTES)
    items = body.get("products") if isinstance(body, dict) else None
    if not isinstance(items, list):
        raise InputError('products: send {"products": [{"id": ..., "name": ...}, ...]}')
    if len(items) > MAX_BATCH:
        raise PayloadTooLarge(f"{len(items)} products; at most {MAX_BATCH} per request")
    valid: list[ProductIn] = []
    labels: list[int] = []
    rejected: list[dict[str, Any]] = []
    for index, item in enumerate(items):
        try:
            valid.append(parse_product(item))
            labels.append(index)
        except InputError as exc:
            pid = item.get("product_id", item.get("id")) if isinstance(item, dict) else None
            rejected.append({"at": index, "product_id": pid, "message": exc.message})
    now = request.app.state.clock.now()

    def run() -> dict[str, Any]:
        with transaction(_engine(request)) as conn:
            result = upsert_products(
                conn, workspace, valid, now=now, rules=rules_for(conn, workspace), labels=labels
            )
        result.rejected.extend(rejected)
        result.rejected.sort(key=lambda r: r["at"])
        return result.as_dict()

    return await run_in_threadpool(run)


@router.get("/products")
async def products_index(
    request: Request,
    workspace: Workspace,
    category: str | None = None,
    in_stock: bool | None = None,
    archived: bool = False,
    after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIST_LIMIT)] = 100,
) -> dict[str, Any]:
    """Products by id; pass the last id as ``after`` for the next page."""

    def run() -> list[dict[str, Any]]:
        with _engine(request).connect() as conn:
            return list_products(
                conn,
                workspace,
                category=category,
                in_stock=in_stock,
                archived=archived,
                after=after,
                limit=limit,
            )

    found = await run_in_threadpool(run)
    following = found[-1]["product_id"] if len(found) == limit else None
    return {"products": found, "next_after": following}


@router.get("/products/{product_id}")
async def product_detail(request: Request, product_id: str, workspace: Workspace) -> dict[str, Any]:
    """One product, archived or not; 404 ``product_not_found``."""

    def run() -> dict[str, Any]:
        with _engine(request).connect() as conn:
            return get_product(conn, workspace, product_id)

    return await run_in_threadpool(run)


@router.delete("/products/{product_id}")
async def archive(request: Request, product_id: str, workspace: Workspace) -> dict[str, Any]:
    """Archive a product (its pending announcements stop); 404 ``product_not_found``."""
    now = request.app.state.clock.now()

    def run() -> dict[str, Any]:
        with transaction(_engine(request)) as conn:
            return archive_product(conn, workspace, product_id, now=now)

    return await run_in_threadpool(run)


@router.get("/alerts")
async def alerts_index(
    request: Request,
    workspace: Workspace,
    status: Literal["pending", "done", "stopped"] | None = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIST_LIMIT)] = 100,
) -> dict[str, Any]:
    """Restocks and price drops, newest first: status, customers told so far, why stopped."""

    def run() -> list[dict[str, Any]]:
        with _engine(request).connect() as conn:
            return list_alerts(conn, workspace, status=status, limit=limit)

    return {"alerts": await run_in_threadpool(run)}


@router.get("/recommendations")
async def recommendations(
    request: Request,
    workspace: Workspace,
    kind: Literal["similar", "bought_together", "viewed_not_bought", "popular", "for_customer"],
    profile: str | None = None,
    product_id: Annotated[list[str] | None, Query()] = None,
    category: str | None = None,
    limit: Annotated[int, Query(ge=1, le=MAX_ITEMS)] = 4,
) -> dict[str, Any]:
    """What a template's ``recommend.<kind>`` would list for ``profile`` (a user id or ``#id``)."""
    ids = product_id or []
    if kind in ("similar", "bought_together") and not ids:
        raise InputError(f"product_id: {kind} needs one")
    if kind in ("viewed_not_bought", "for_customer") and profile is None:
        raise InputError(f"profile: {kind} is about a customer; name one")

    def run() -> list[dict[str, Any]]:
        profile_id = None
        if profile is not None:
            with _engine(request).connect() as conn:
                profile_id = get_profile(conn, workspace, profile)["id"]
        r = Recommender(_engine(request), workspace_id=workspace, profile_id=profile_id)
        if kind == "similar":
            items = r.similar(ids[0], limit)
        elif kind == "bought_together":
            items = r.bought_together(ids, limit)
        elif kind == "viewed_not_bought":
            items = r.viewed_not_bought(limit)
        elif kind == "popular":
            items = r.popular(limit, category)
        else:
            items = r.for_customer(limit)
        return [{**item, "price": _text(item["price"])} for item in items]

    return {"kind": kind, "products": await run_in_threadpool(run)}


def _text(value: Any) -> str | None:
    return None if value is None else str(value)
