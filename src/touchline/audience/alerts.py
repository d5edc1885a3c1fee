"""Announcing a restock or a price drop: events for the interested, a chunk at a time.

An alert (a ``catalog_alerts`` row, written by :mod:`touchline.audience.catalog`
with the product change) becomes one ordinary track event per customer it
concerns, stored ``pending`` in ``events`` for the journeys, as ingest would
store it:

* ``Back In Stock``: customers who viewed the product since ``viewed_since``
  or asked to be told (``Back In Stock Requested``) since ``requested_since``,
  and were not told of a restock of it since;
* ``Price Dropped``: customers who viewed it since ``viewed_since`` and were
  not told of a drop since.

In both, whoever bought the product after that view or request is left out,
and so are views and requests after the change itself (they saw it already).
Properties are the product's (``product_id``, ``name``, ``url``,
``image_url``, ``price``, ``currency``, ``category``), ``old_price`` and
``drop_percent`` for a drop, ``alert_id``, and ``reason``: ``requested`` or
``viewed``.

**Chunks, resumable.** :func:`fire_alerts` (the worker runs it every round)
takes the oldest pending alert and handles the next :data:`CHUNK` interested
customers by profile id, in one transaction that stores their events, stamps
them notified, and moves the alert's ``cursor`` past them; on PostgreSQL the
alert row is locked with ``SKIP LOCKED``, so workers share alerts without
waiting. A crash loses at most the chunk in flight, which is done again; an
event's ``messageId`` is ``catalog:<alert id>:<profile id>``, so nothing is
stored twice. The audience comes from ``product_interest`` through its
primary key (workspace, product, profile): a restock never scans events.

Before each chunk the product is read again: an alert whose product went out
of stock again, was archived, or (for a drop) costs more than announced is
``stopped`` with the reason, and the rest of its audience hears nothing.
Interest recorded under a profile later merged into another goes to the
survivor, unless the survivor bought the product after that interest.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, Engine, and_, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite

from touchline.audience.catalog import BACK_IN_STOCK
from touchline.store.db import transaction
from touchline.store.tables import (
    EVENT_PENDING,
    catalog_alerts,
    events,
    identities,
    product_interest,
    products,
    profiles,
)

log = logging.getLogger("touchline.catalog")

BACK_IN_STOCK_EVENT = "Back In Stock"
PRICE_DROPPED_EVENT = "Price Dropped"

CHUNK = 500
"""Customers per transaction: short enough not to hold the writer, long enough to be quick."""
ROUND_BUDGET = 2000
"""Customers one worker round handles at most, so events and timers keep their turn."""
_MERGE_HOPS = 16


def fire_alerts(engine: Engine, *, now: datetime, budget: int = ROUND_BUDGET) -> int:
    """Handle pending alerts, a chunk per transaction, about ``budget`` customers in all.

    Returns the chunks handled (0: nothing was pending).
    """
    chunks = seen = 0
    while seen < budget:
        with transaction(engine) as conn:
            alert = _next_alert(conn)
            if alert is None:
                break
            seen += max(fire_chunk(conn, alert, now=now), 1)
        chunks += 1
    return chunks


def _next_alert(conn: Connection) -> Any:
    query = (
        select(catalog_alerts)
        .where(catalog_alerts.c.status == "pending")
        .order_by(catalog_alerts.c.id)
        .limit(1)
    )
    if conn.dialect.name == "postgresql":
        query = query.with_for_update(skip_locked=True)
    return conn.execute(query).first()


def fire_chunk(conn: Connection, alert: Any, *, now: datetime, size: int = CHUNK) -> int:
    """Store the events of ``alert``'s next ``size`` candidates; the customers looked at."""
    stop = _why_stop(conn, alert)
    if stop is not None:
        _finish(conn, alert, now=now, status="stopped", detail=stop)
        log.info("catalog alert %s stopped: %s", alert.id, stop)
        return 0
    restock = alert.kind == BACK_IN_STOCK
    i = product_interest.c
    candidates = conn.execute(
        select(i.profile_id, i.viewed_at, i.requested_at, i.purchased_at, _notified(alert))
        .where(
            i.workspace_id == alert.workspace_id,
            i.product_id == alert.product_id,
            i.profile_id > alert.cursor,
            _concerned(alert),
        )
        .order_by(i.profile_id)
        .limit(size)
    ).all()
    if not candidates:
        _finish(conn, alert, now=now, status="done", detail=None)
        return 0
    stamp = "restock_notified_at" if restock else "price_notified_at"
    ids = [c.profile_id for c in candidates]
    conn.execute(
        update(product_interest)
        .where(
            i.workspace_id == alert.workspace_id,
            i.product_id == alert.product_id,
            i.profile_id.in_(ids),
        )
        .values({stamp: alert.at})
    )
    rows = _event_rows(conn, alert, candidates, now=now)
    stored = _insert_events(conn, rows)
    conn.execute(
        update(catalog_alerts)
        .where(catalog_alerts.c.id == alert.id)
        .values(cursor=ids[-1], fired=catalog_alerts.c.fired + stored)
    )
    return len(candidates)


def _why_stop(conn: Connection, alert: Any) -> str | None:
    product = conn.execute(
        select(products.c.in_stock, products.c.price, products.c.archived_at).where(
            products.c.workspace_id == alert.workspace_id,
            products.c.product_id == alert.product_id,
        )
    ).first()
    if product is None or product.archived_at is not None:
        return "the product was archived"
    if not product.in_stock:
        return "the product is out of stock again"
    announced = alert.properties.get("price")
    drop = alert.kind != BACK_IN_STOCK and announced is not None
    if drop and (product.price is None or product.price > Decimal(str(announced))):
        return "the price rose again"
    return None


def _notified(alert: Any) -> Any:
    i = product_interest.c
    column = i.restock_notified_at if alert.kind == BACK_IN_STOCK else i.price_notified_at
    return column.label("notified_at")


def _concerned(alert: Any) -> Any:
    """Who ``alert`` is for, as a condition on ``product_interest`` (see the module docstring)."""
    i = product_interest.c
    notified = _notified(alert).element

    def fresh(moment: Any, since: datetime) -> Any:
        return and_(
            moment >= since,
            moment <= alert.at,
            or_(i.purchased_at.is_(None), i.purchased_at < moment),
            or_(notified.is_(None), notified < moment),
        )

    if alert.kind == BACK_IN_STOCK:
        return or_(
            fresh(i.viewed_at, alert.viewed_since), fresh(i.requested_at, alert.requested_since)
        )
    return fresh(i.viewed_at, alert.viewed_since)


def _event_rows(
    conn: Connection, alert: Any, candidates: Sequence[Any], *, now: datetime
) -> list[dict[str, Any]]:
    """One event per surviving profile (merges followed), with the ids to store it under."""
    survivor = _survivors(conn, [c.profile_id for c in candidates])
    bought = _bought_at(
        conn,
        alert,
        {survivor[c.profile_id] for c in candidates} - {c.profile_id for c in candidates},
    )
    restock = alert.kind == BACK_IN_STOCK
    name = BACK_IN_STOCK_EVENT if restock else PRICE_DROPPED_EVENT
    by_profile: dict[int, dict[str, Any]] = {}
    for c in candidates:
        pid = survivor[c.profile_id]
        requested = restock and _fresh(c, c.requested_at, alert.requested_since, alert.at)
        moment = c.requested_at if requested else c.viewed_at
        if pid != c.profile_id and bought.get(pid) is not None and bought[pid] >= moment:
            continue
        if pid in by_profile and by_profile[pid]["properties"]["reason"] == "requested":
            continue
        properties = {
            **alert.properties,
            "alert_id": alert.id,
            "reason": "requested" if requested else "viewed",
        }
        by_profile[pid] = {"profile_id": pid, "properties": properties}
    if not by_profile:
        return []
    ids = _identity(conn, alert.workspace_id, sorted(by_profile))
    rows = []
    for pid, item in sorted(by_profile.items()):
        user_id, anonymous_id = ids.get(pid, (None, None))
        if user_id is None and anonymous_id is None:
            continue  # nobody to address; the profile is gone
        rows.append(
            {
                "workspace_id": alert.workspace_id,
                "message_id": f"catalog:{alert.id}:{pid}",
                "type": "track",
                "name": name,
                "profile_id": pid,
                "user_id": user_id,
                "anonymous_id": anonymous_id,
                "properties": item["properties"],
                "traits": None,
                "context": None,
                "timestamp": alert.at,
                "received_at": now,
                "status": EVENT_PENDING,
                "attempts": 0,
            }
        )
    return rows


def _fresh(c: Any, moment: datetime | None, since: datetime, at: datetime) -> bool:
    """:func:`_concerned`'s test of one interest time, in Python, to name the reason."""
    return (
        moment is not None
        and since <= moment <= at
        and (c.purchased_at is None or c.purchased_at < moment)
        and (c.notified_at is None or c.notified_at < moment)
    )


def _survivors(conn: Connection, ids: list[int]) -> dict[int, int]:
    """Each profile id mapped to the profile it was (transitively) merged into, or itself."""
    target = {pid: pid for pid in ids}
    pending = set(ids)
    for _ in range(_MERGE_HOPS):
        if not pending:
            break
        merged = dict(
            conn.execute(
                select(profiles.c.id, profiles.c.merged_into).where(
                    profiles.c.id.in_(sorted(pending)), profiles.c.merged_into.is_not(None)
                )
            ).all()
        )
        for pid, now_at in target.items():
            if now_at in merged:
                target[pid] = merged[now_at]
        pending = {merged[p] for p in pending if p in merged}
    return target


def _bought_at(conn: Connection, alert: Any, ids: set[int]) -> dict[int, datetime | None]:
    if not ids:
        return {}
    i = product_interest.c
    return dict(
        conn.execute(  # type: ignore[arg-type]
            select(i.profile_id, i.purchased_at).where(
                i.workspace_id == alert.workspace_id,
                i.product_id == alert.product_id,
                i.profile_id.in_(sorted(ids)),
            )
        ).all()
    )


def _identity(
    conn: Connection, workspace_id: str, ids: list[int]
) -> dict[int, tuple[str | None, str | None]]:
    """(user id, anonymous id) to store each profile's event under, as ingest resolves them."""
    found: dict[int, tuple[str | None, str | None]] = {
        row.id: (row.user_id, None)
        for row in conn.execute(
            select(profiles.c.id, profiles.c.user_id).where(
                profiles.c.workspace_id == workspace_id, profiles.c.id.in_(ids)
            )
        )
    }
    anonymous = [pid for pid, (user, _) in found.items() if user is None]
    if anonymous:
        for row in conn.execute(
            select(identities.c.profile_id, identities.c.value)
            .where(
                identities.c.workspace_id == workspace_id,
                identities.c.kind == "anonymous_id",
                identities.c.profile_id.in_(anonymous),
            )
            .order_by(identities.c.profile_id, identities.c.value.desc())
        ):
            found[row.profile_id] = (None, row.value)  # the first by value wins
    return found


def _insert_events(conn: Connection, rows: list[dict[str, Any]]) -> int:
    """``INSERT ... ON CONFLICT DO NOTHING`` on (workspace, messageId); rows stored."""
    if not rows:
        return 0
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    stmt = (
        dialect.insert(events)
        .on_conflict_do_nothing(index_elements=["workspace_id", "message_id"])
        .execution_options(preserve_rowcount=True)
    )
    return int(conn.execute(stmt, rows).rowcount)


def _finish(
    conn: Connection, alert: Any, *, now: datetime, status: str, detail: str | None
) -> None:
    conn.execute(
        update(catalog_alerts)
        .where(catalog_alerts.c.id == alert.id)
        .values(status=status, detail=detail, finished_at=now)
    )


def list_alerts(
    conn: Connection, workspace_id: str, *, status: str | None = None, limit: int = 100
) -> list[dict[str, Any]]:
    """The workspace's alerts, newest first, with how far each has got."""
    a = catalog_alerts.c
    query = select(catalog_alerts).where(a.workspace_id == workspace_id)
    if status is not None:
        query = query.where(a.status == status)
    rows = conn.execute(query.order_by(a.id.desc()).limit(limit))
    return [
        {
            "id": r.id,
            "product_id": r.product_id,
            "kind": r.kind,
            "occurrence": r.occurrence,
            "status": r.status,
            "at": r.at.isoformat(),
            "fired": r.fired,
            "detail": r.detail,
            "finished_at": r.finished_at.isoformat() if r.finished_at else None,
            "properties": r.properties,
        }
        for r in rows
    ]


__all__ = [
    "BACK_IN_STOCK_EVENT",
    "CHUNK",
    "PRICE_DROPPED_EVENT",
    "ROUND_BUDGET",
    "fire_alerts",
    "fire_chunk",
    "list_alerts",
]
