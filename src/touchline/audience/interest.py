"""Who is interested in which product, and what sells with what, kept as events arrive.

:func:`observe_catalog` runs for every event the worker processes, in the
event's savepoint (see :mod:`touchline.audience.observers`), and keeps three
tables so that neither a restock nor a recommendation reads the events table:

* ``product_interest``, one row per customer and product: the latest
  ``Product Viewed``, ``Back In Stock Requested`` and order holding it;
* ``product_stats``: how many orders held each product (its popularity);
* ``product_pairs``: how many orders held each pair of products, both ways round.

Orders are ``Order Completed`` and ``Checkout Completed`` events with
Segment's ``products`` list (``product_id``, else ``id`` or ``sku``); a shop
should send one of the two per order, or the order counts twice. Each
event is processed once, so the counts are exact. Times are the events' own
timestamps, and a later one never gives way to an earlier one replayed late.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, case
from sqlalchemy.dialects import postgresql, sqlite

from touchline.store.tables import product_interest, product_pairs, product_stats

PRODUCT_VIEWED = "Product Viewed"
BACK_IN_STOCK_REQUESTED = "Back In Stock Requested"
ORDER_EVENTS = frozenset({"Order Completed", "Checkout Completed"})

MAX_ORDER_PRODUCTS = 100
"""Products of one order that count; a bigger order is a wholesale one, not a taste."""
MAX_PAIRED_PRODUCTS = 20
"""Products of one order paired with each other: 20 make 380 pair rows, more would flood."""

_COLUMN = {PRODUCT_VIEWED: "viewed_at", BACK_IN_STOCK_REQUESTED: "requested_at"}
_UPSERTS: dict[tuple[str, str], Any] = {}


def observe_catalog(conn: Connection, row: Any, *, now: datetime) -> None:
    """Record what event ``row`` says about products (nothing for other events)."""
    if row.type != "track" or row.name is None:
        return
    column = _COLUMN.get(row.name)
    properties = row.properties if isinstance(row.properties, Mapping) else {}
    if column is not None:
        product_id = clean_product_id(properties.get("product_id"))
        if product_id is not None:
            _mark(conn, column, [(row.workspace_id, product_id, row.profile_id, row.timestamp)])
    elif row.name in ORDER_EVENTS:
        _record_order(conn, row, order_products(properties))


def order_products(properties: Mapping[str, Any]) -> list[str]:
    """The distinct product ids of an order's ``products`` list, in order, capped."""
    items = properties.get("products")
    found: dict[str, None] = {}
    if isinstance(items, list):
        for item in items:
            if not isinstance(item, Mapping):
                continue
            raw = next(
                (item[k] for k in ("product_id", "id", "sku") if item.get(k) is not None), None
            )
            product_id = clean_product_id(raw)
            if product_id is not None:
                found[product_id] = None
    else:
        product_id = clean_product_id(properties.get("product_id"))
        if product_id is not None:
            found[product_id] = None
    return list(found)[:MAX_ORDER_PRODUCTS]


def clean_product_id(value: Any) -> str | None:
    """A product id as the catalog keys it, or None for what cannot be one."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        return None
    text = str(value).strip()
    return text if 0 < len(text) <= 200 else None


def _record_order(conn: Connection, row: Any, ids: list[str]) -> None:
    if not ids:
        return
    ws = row.workspace_id
    ordered = sorted(ids)  # one lock order for every writer
    _mark(conn, "purchased_at", [(ws, pid, row.profile_id, row.timestamp) for pid in ordered])
    _count(
        conn,
        product_stats,
        ["workspace_id", "product_id"],
        [{"workspace_id": ws, "product_id": p} for p in ordered],
    )
    paired = sorted(ids[:MAX_PAIRED_PRODUCTS])
    pairs = [
        {"workspace_id": ws, "product_id": a, "other_id": b}
        for a in paired
        for b in paired
        if a != b
    ]
    if pairs:
        _count(conn, product_pairs, ["workspace_id", "product_id", "other_id"], pairs)


def _mark(conn: Connection, column: str, rows: list[tuple[str, str, int, datetime]]) -> None:
    """Upsert interest rows, setting ``column`` to the later of stored and given time."""
    key = (conn.dialect.name, column)
    stmt = _UPSERTS.get(key)
    if stmt is None:
        dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
        insert = dialect.insert(product_interest)
        stored, given = product_interest.c[column], insert.excluded[column]
        stmt = insert.on_conflict_do_update(
            index_elements=["workspace_id", "product_id", "profile_id"],
            set_={column: case((stored.is_(None) | (stored < given), given), else_=stored)},
        )
        _UPSERTS[key] = stmt
    conn.execute(
        stmt,
        [
            {"workspace_id": ws, "product_id": pid, "profile_id": profile, column: at}
            for ws, pid, profile, at in rows
        ],
    )


def _count(conn: Connection, table: Any, key: list[str], rows: list[dict[str, Any]]) -> None:
    """Add one order to each row's ``orders`` (created at 1)."""
    cache = (conn.dialect.name, table.name)
    stmt = _UPSERTS.get(cache)
    if stmt is None:
        dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
        insert = dialect.insert(table)
        stmt = insert.on_conflict_do_update(
            index_elements=key, set_={"orders": table.c.orders + insert.excluded.orders}
        )
        _UPSERTS[cache] = stmt
    conn.execute(stmt, [{**r, "orders": 1} for r in rows])


__all__ = [
    "BACK_IN_STOCK_REQUESTED",
    "MAX_ORDER_PRODUCTS",
    "MAX_PAIRED_PRODUCTS",
    "ORDER_EVENTS",
    "PRODUCT_VIEWED",
    "clean_product_id",
    "observe_catalog",
    "order_products",
]
