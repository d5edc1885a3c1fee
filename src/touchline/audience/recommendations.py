"""Product recommendations for one customer, read from the catalog's own tables.

A :class:`Recommender` answers ``recommend.*`` in a message template (see
:mod:`touchline.messaging.templates`). Every list leaves out products that
are out of stock or archived, and products the customer ever bought; each
is ordered completely, so the same store gives the same answer.

* :meth:`~Recommender.similar` — the product's category; first those priced
  within :data:`PRICE_BAND` of it (same currency), then the rest; within each,
  the most ordered first, then the nearest in price, then by id.
* :meth:`~Recommender.bought_together` — products that shared the most orders
  with the given ones (``product_pairs``, summed over them); ties by id.
* :meth:`~Recommender.viewed_not_bought` — the customer's viewed products,
  latest view first.
* :meth:`~Recommender.popular` — the most ordered products, of one category
  if named.
* :meth:`~Recommender.for_customer` — a mix for someone we know: what they
  viewed and did not buy, then what goes with their latest purchases and
  views, then what is similar to their latest view, then the most popular.

Reads use indexes only: the customer's interest by ``(workspace, profile)``,
a category by ``(workspace, category)``, pairs and interest by primary key,
popularity by ``(workspace, orders)``. Each answer is cached for the life of
the recommender, which is one message. A store error is logged and answers
an empty list: a message goes out without its recommendations rather than
not at all.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, Engine, case, exists, func, literal, not_, select
from sqlalchemy.exc import DBAPIError

from touchline.store.tables import product_interest, product_pairs, product_stats, products

log = logging.getLogger("touchline.recommendations")

PRICE_BAND = Decimal("0.3")
"""How far from a product's price a "similar" one may be, as a share of it (±30 %)."""
MAX_ITEMS = 12
"""Most products one call returns: an email shows four to eight."""
RECENT = 5
"""Latest purchases and views :meth:`Recommender.for_customer` builds on."""

Product = dict[str, Any]

# The customer's own purchases, apart from any interest row the query joins.
_BOUGHT = product_interest.alias("bought")


def product_item(row: Any) -> Product:
    """A product as templates see it (Segment's names; ``price`` a Decimal)."""
    return {
        "product_id": row.product_id,
        "name": row.name,
        "url": row.url,
        "image": row.image,
        "price": row.price,
        "currency": row.currency,
        "category": row.category,
        "attributes": row.attributes or {},
    }


class Recommender:
    """Recommendations for customer ``profile_id`` (None: nobody known, no exclusions)."""

    def __init__(self, engine: Engine, *, workspace_id: str, profile_id: int | None) -> None:
        self.engine = engine
        self.workspace_id = workspace_id
        self.profile_id = profile_id
        self._cache: dict[tuple[Any, ...], list[Product]] = {}

    # -- the calls templates make ---------------------------------------------------------

    def similar(self, product_id: str, limit: int) -> list[Product]:
        """Products like ``product_id``: its category, near its price, popular first."""
        n = _clamp(limit)
        return self._answer(("similar", product_id, n), lambda c: self._similar(c, product_id, n))

    def bought_together(self, product_ids: Sequence[str], limit: int) -> list[Product]:
        """Products most often ordered with any of ``product_ids``."""
        ids, n = tuple(dict.fromkeys(product_ids)), _clamp(limit)
        return self._answer(("together", ids, n), lambda c: self._together(c, ids, n))

    def viewed_not_bought(self, limit: int) -> list[Product]:
        """What the customer looked at and did not buy, latest first."""
        n = _clamp(limit)
        return self._answer(("viewed", n), lambda c: self._viewed(c, n))

    def popular(self, limit: int, category: str | None = None) -> list[Product]:
        """The most ordered products (of ``category``)."""
        n = _clamp(limit)
        return self._answer(("popular", category, n), lambda c: self._popular(c, n, category))

    def for_customer(self, limit: int) -> list[Product]:
        """A mix for this customer (see the module docstring)."""
        n = _clamp(limit)
        return self._answer(("mix", n), lambda c: self._mix(c, n))

    # -- the queries ----------------------------------------------------------------------

    def _answer(
        self, key: tuple[Any, ...], work: Callable[[Connection], list[Product]]
    ) -> list[Product]:
        if key not in self._cache:
            try:
                with self.engine.connect() as conn:
                    self._cache[key] = work(conn)
            except DBAPIError as exc:
                log.warning("recommendations %s unavailable: %s", key[0], exc)
                return []
        return list(self._cache[key])

    def _available(self) -> list[Any]:
        """Conditions on ``products``: in stock, not archived, never bought by the customer."""
        p = products.c
        conditions = [
            p.workspace_id == self.workspace_id,
            p.in_stock.is_(True),
            p.archived_at.is_(None),
        ]
        if self.profile_id is not None:
            bought = _BOUGHT.c
            conditions.append(
                not_(
                    exists()
                    .where(
                        bought.workspace_id == p.workspace_id,
                        bought.product_id == p.product_id,
                        bought.profile_id == self.profile_id,
                        bought.purchased_at.is_not(None),
                    )
                    .correlate(products)
                )
            )
        return conditions

    def _similar(self, conn: Connection, product_id: str, limit: int) -> list[Product]:
        p, s = products.c, product_stats.c
        base = conn.execute(
            select(p.category, p.price, p.currency).where(
                p.workspace_id == self.workspace_id, p.product_id == product_id
            )
        ).first()
        if base is None or base.category is None:
            return []
        orders = func.coalesce(s.orders, 0)
        query = (
            select(products)
            .outerjoin(
                product_stats,
                (s.workspace_id == p.workspace_id) & (s.product_id == p.product_id),
            )
            .where(*self._available(), p.category == base.category, p.product_id != product_id)
        )
        if base.price is None:
            order: list[Any] = [orders.desc(), p.product_id]
        else:
            low, high = base.price * (1 - PRICE_BAND), base.price * (1 + PRICE_BAND)
            same_money = (
                p.currency.is_(None) if base.currency is None else p.currency == base.currency
            )
            near = case((same_money & p.price.between(low, high), 0), else_=1)
            distance = func.coalesce(func.abs(p.price - base.price), literal(MAX_DISTANCE))
            order = [near, orders.desc(), distance, p.product_id]
        return [product_item(r) for r in conn.execute(query.order_by(*order).limit(limit))]

    def _together(self, conn: Connection, ids: tuple[str, ...], limit: int) -> list[Product]:
        if not ids:
            return []
        p, pp = products.c, product_pairs.c
        shared = func.sum(pp.orders).label("shared")
        query = (
            select(pp.other_id, shared)
            .join(products, (p.workspace_id == pp.workspace_id) & (p.product_id == pp.other_id))
            .where(*self._available(), pp.workspace_id == self.workspace_id, pp.product_id.in_(ids))
            .where(pp.other_id.not_in(ids))
            .group_by(pp.other_id)
            .order_by(shared.desc(), pp.other_id)
            .limit(limit)
        )
        ranked = [row.other_id for row in conn.execute(query)]
        return self._products(conn, ranked)

    def _viewed(self, conn: Connection, limit: int) -> list[Product]:
        if self.profile_id is None:
            return []
        p, i = products.c, product_interest.c
        query = (
            select(products)
            .join(
                product_interest,
                (i.workspace_id == p.workspace_id) & (i.product_id == p.product_id),
            )
            .where(*self._available(), i.profile_id == self.profile_id, i.viewed_at.is_not(None))
            .order_by(i.viewed_at.desc(), p.product_id)
            .limit(limit)
        )
        return [product_item(r) for r in conn.execute(query)]

    def _popular(self, conn: Connection, limit: int, category: str | None) -> list[Product]:
        p, s = products.c, product_stats.c
        query = (
            select(products)
            .join(
                product_stats, (s.workspace_id == p.workspace_id) & (s.product_id == p.product_id)
            )
            .where(*self._available(), s.workspace_id == self.workspace_id)
        )
        if category is not None:
            query = query.where(p.category == category)
        query = query.order_by(s.orders.desc(), p.product_id).limit(limit)
        return [product_item(r) for r in conn.execute(query)]

    def _mix(self, conn: Connection, limit: int) -> list[Product]:
        picked: dict[str, Product] = {}

        def add(items: list[Product]) -> None:
            for item in items:
                if len(picked) < limit:
                    picked.setdefault(item["product_id"], item)

        add(self._viewed(conn, limit))
        recent = self._recent(conn)
        if len(picked) < limit and recent:
            add(self._together(conn, tuple(recent), limit + len(picked)))
        viewed = self._recent(conn, column="viewed_at")
        if len(picked) < limit and viewed:
            add(self._similar(conn, viewed[0], limit + len(picked)))
        if len(picked) < limit:
            add(self._popular(conn, limit + len(picked), None))
        return list(picked.values())

    def _recent(self, conn: Connection, column: str | None = None) -> list[str]:
        """The customer's latest purchases and views (or only ``column``), latest first."""
        if self.profile_id is None:
            return []
        i = product_interest.c
        found: dict[str, Any] = {}
        for name in (column,) if column else ("purchased_at", "viewed_at"):
            moment = i[name]
            for row in conn.execute(
                select(i.product_id, moment)
                .where(
                    i.workspace_id == self.workspace_id,
                    i.profile_id == self.profile_id,
                    moment.is_not(None),
                )
                .order_by(moment.desc(), i.product_id)
                .limit(RECENT)
            ):
                at = found.get(row.product_id)
                found[row.product_id] = max(at, row[1]) if at is not None else row[1]
        return sorted(found, key=lambda pid: (-found[pid].timestamp(), pid))

    def _products(self, conn: Connection, ids: list[str]) -> list[Product]:
        """The products of ``ids``, in that order."""
        if not ids:
            return []
        p = products.c
        rows = {
            r.product_id: r
            for r in conn.execute(
                select(products).where(p.workspace_id == self.workspace_id, p.product_id.in_(ids))
            )
        }
        return [product_item(rows[pid]) for pid in ids if pid in rows]


def _clamp(limit: int) -> int:
    return max(0, min(int(limit), MAX_ITEMS))


MAX_DISTANCE = 10**16
"""Sorts products without a price after every priced one."""


__all__ = ["MAX_ITEMS", "PRICE_BAND", "Recommender", "product_item"]
