"""Promo code pools: codes in, one code per customer and offer out, redemptions tracked.

A *pool* (``cart10``) holds codes the shop's checkout accepts. They come from
the shop (:func:`import_codes`, e.g. a CSV exported from the e-commerce
platform, read by :func:`parse_codes_csv`) or are made here
(:func:`generate_codes`) and then loaded into the shop. A template takes one
with ``{{ promo_code("cart10") }}``: :func:`issue_code` binds a free code to
the customer and an *offer key* — ``instance:<id>`` for a journey — so every
message of one offer (reminder 1 and 2 of one abandoned cart, a retried send)
shows the same code, and no code ever goes to two customers.

**Concurrency.** On PostgreSQL a free code is picked with ``FOR UPDATE SKIP
LOCKED``, so issuers never wait for each other and never pick the same row.
Two issuers racing for the *same* offer each pick a different code; the unique
``(pool_id, offer_key)`` constraint lets exactly one bind its code, and the
loser rolls its savepoint back (its code stays free) and reads the winner's.
On SQLite the write transaction is serialised (``BEGIN IMMEDIATE``), so
there is no race to resolve.

**Redemption.** An order event with ``properties.coupon`` marks its codes
redeemed (:func:`redeem_from_event`; the worker calls it in the event's own
transaction, so it happens exactly once per event). The first redemption
wins. A code issued for a journey instance and used by that customer records
the instance's conversion when it has none yet. A code used by someone else
(customers pass codes on) is still marked redeemed, with
``redeemed_profile_id`` telling who, but converts nothing: the journey did
not win that order.
"""

from __future__ import annotations

import csv
import io
import math
import re
import secrets
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from sqlalchemy import Connection, Engine, and_, case, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError

from touchline.clock import utc
from touchline.errors import InputError, NotFound, StoreError
from touchline.store.db import run_in_transaction
from touchline.store.runtime import insert_ignore
from touchline.store.tables import conversions, instances, profiles, promo_codes, promo_pools

__all__ = [
    "ALPHABET",
    "DEFAULT_LENGTH",
    "MAX_GENERATE",
    "ImportResult",
    "IssuedCode",
    "PromoPool",
    "coupons_of",
    "create_pool",
    "find_code",
    "generate_codes",
    "get_pool",
    "import_codes",
    "issue_code",
    "order_value",
    "parse_codes_csv",
    "pool_stats",
    "promo_provider",
    "redeem",
    "redeem_from_event",
]

CODE = re.compile(r"[A-Za-z0-9_-]{3,64}")
"""What a code may be: what checkouts accept and a customer can type."""

POOL_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
"""A pool key, as templates name it: ``promo_code("cart10")``."""

PREFIX = re.compile(r"[A-Za-z0-9_-]{0,20}")
"""A generated code's fixed start (``CART-``); the random part follows."""

ALPHABET = "23456789ABCDEFGHJKMNPQRSTUVWXYZ"
"""31 symbols without 0/O and 1/I/L, which customers misread when typing a code in."""

DEFAULT_LENGTH = 11
"""Random symbols per generated code: 11 x log2(31) = 54.5 bits, out of reach of guessing."""

MIN_LENGTH = 8
"""Shortest random part allowed: 8 x log2(31) = 39.6 bits, still ~10^12 possibilities."""

MAX_GENERATE = 100_000
"""Codes generated per call; keeps one write transaction short."""

GENERATE_ROUNDS = 5
"""Rounds of drawing fresh codes to replace ones already taken (at 54 bits, one is enough)."""

ISSUE_ATTEMPTS = 5
"""Picks before giving up; a pick fails only when another issuer wins a race for the offer."""

INSERT_CHUNK = 1000
"""Codes per INSERT statement."""

MAX_COUPONS_PER_EVENT = 10
"""Codes read from one event's ``coupon``; more is a malformed event, not an order."""

ORDER_COMPLETED = "Order Completed"

NOT_REDEMPTIONS = frozenset(
    {
        "Products Searched",
        "Product List Viewed",
        "Product List Filtered",
        "Promotion Viewed",
        "Promotion Clicked",
        "Product Clicked",
        "Product Viewed",
        "Product Added",
        "Product Removed",
        "Cart Viewed",
        "Checkout Started",
        "Checkout Step Viewed",
        "Checkout Step Completed",
        "Payment Info Entered",
        "Order Updated",
        "Order Refunded",
        "Order Cancelled",
        "Coupon Entered",
        "Coupon Applied",
        "Coupon Denied",
        "Coupon Removed",
        "Product Added to Wishlist",
        "Product Removed from Wishlist",
        "Wishlist Product Added to Cart",
        "Product Shared",
        "Cart Shared",
        "Product Reviewed",
    }
)
"""Segment e-commerce events that carry a ``coupon`` without being a purchase.

Every other track event with a ``coupon`` (``Order Completed``, a shop's own
``Purchase``) redeems it.
"""

_MERGE_HOPS = 16  # profiles.merged_into chains longer than this are corrupt data


@dataclass(frozen=True)
class PromoPool:
    id: int
    key: str
    name: str
    valid_from: datetime | None
    valid_until: datetime | None
    created_at: datetime

    def as_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "name": self.name,
            "valid_from": _iso(self.valid_from),
            "valid_until": _iso(self.valid_until),
            "created_at": _iso(self.created_at),
        }


@dataclass(frozen=True)
class ImportResult:
    """What an import did. Duplicates and invalid codes are counted, never fatal.

    ``invalid_samples`` shows the first few refused values, so a wrong column
    is easy to spot.
    """

    added: int
    duplicates: int
    invalid: int
    invalid_samples: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {
            "added": self.added,
            "duplicates": self.duplicates,
            "invalid": self.invalid,
            "invalid_samples": list(self.invalid_samples),
        }


@dataclass(frozen=True)
class IssuedCode:
    """A code bound to a customer and offer; ``new`` is False when the offer already had it."""

    code: str
    pool: str
    offer_key: str
    profile_id: int
    issued_at: datetime
    valid_until: datetime | None
    new: bool


# ------------------------------------------------------------------ pools


def create_pool(
    conn: Connection,
    workspace_id: str,
    *,
    key: str,
    name: str,
    valid_from: datetime | None = None,
    valid_until: datetime | None = None,
    now: datetime,
) -> PromoPool:
    """Create an empty pool; its codes are issued only between ``valid_from`` and ``valid_until``.

    Naive times are taken as UTC. A key already used in the workspace is
    refused with ``promo_pool_exists``.
    """
    key = key.strip()
    if not POOL_KEY.fullmatch(key):
        raise InputError(
            f"key: {key!r} is not a pool key (1-64 letters, digits, '-' or '_', "
            "starting with a letter or digit)"
        )
    valid_from = utc(valid_from) if valid_from is not None else None
    valid_until = utc(valid_until) if valid_until is not None else None
    if valid_from is not None and valid_until is not None and valid_until <= valid_from:
        raise InputError("valid_until: must be after valid_from")
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    added = conn.execute(
        dialect.insert(promo_pools)
        .values(
            workspace_id=workspace_id,
            key=key,
            name=(name.strip() or key)[:200],
            valid_from=valid_from,
            valid_until=valid_until,
            created_at=now,
        )
        .on_conflict_do_nothing(index_elements=["workspace_id", "key"])
        .returning(promo_pools.c.id)
    ).first()
    if added is None:
        raise InputError(f"a promo pool {key!r} already exists", code="promo_pool_exists")
    return get_pool(conn, workspace_id, key)


def get_pool(conn: Connection, workspace_id: str, key: str) -> PromoPool:
    """The pool ``key`` of the workspace; :class:`NotFound` ``promo_pool_unknown`` if none."""
    row = conn.execute(
        select(promo_pools).where(
            promo_pools.c.workspace_id == workspace_id, promo_pools.c.key == key
        )
    ).first()
    if row is None:
        raise NotFound(f"no promo pool {key!r} in this workspace", code="promo_pool_unknown")
    return PromoPool(
        id=row.id,
        key=row.key,
        name=row.name,
        valid_from=row.valid_from,
        valid_until=row.valid_until,
        created_at=row.created_at,
    )


# ------------------------------------------------------------ adding codes


def parse_codes_csv(text: str) -> list[str]:
    """The codes of a CSV export: the ``code`` column when the header has one, else the first.

    Tolerates a byte-order mark and ``;`` or tab delimiters (spreadsheets in
    many locales write ``;``). Blank cells are skipped; values are trimmed but
    not validated (:func:`import_codes` counts the invalid ones).
    """
    text = text.lstrip("\ufeff")
    lines = text.splitlines()
    first = next((line for line in lines if line.strip()), "")
    delimiter = max((",", ";", "\t"), key=first.count) if first else ","
    if delimiter not in first:
        delimiter = ","
    rows = [row for row in csv.reader(io.StringIO(text), delimiter=delimiter) if row]
    column = 0
    if rows:
        header = [cell.strip().lower() for cell in rows[0]]
        if "code" in header:
            column = header.index("code")
            rows = rows[1:]
    codes: list[str] = []
    for row in rows:
        if column < len(row) and row[column].strip():
            codes.append(row[column].strip())
    return codes


def import_codes(
    conn: Connection,
    workspace_id: str,
    pool_key: str,
    codes: Iterable[Any],
    *,
    valid_until: datetime | None = None,
) -> ImportResult:
    """Add ``codes`` to the pool, trimmed; ``valid_until`` ends each one early if given.

    A code must be 3-64 letters, digits, ``-`` or ``_``; others are counted as
    invalid. A code repeated in ``codes`` or already in the workspace (in any
    pool) is counted as a duplicate and left as it is. Blank values are skipped.
    """
    pool = get_pool(conn, workspace_id, pool_key)
    seen: set[str] = set()
    fresh: list[str] = []
    duplicates = invalid = 0
    samples: list[str] = []
    for raw in codes:
        code = raw.strip() if isinstance(raw, str) else None
        if code == "":
            continue
        if code is None or not CODE.fullmatch(code):
            invalid += 1
            if len(samples) < 5:
                samples.append(str(raw)[:80])
            continue
        if code in seen:
            duplicates += 1
            continue
        seen.add(code)
        fresh.append(code)
    added = _insert_codes(conn, workspace_id, pool.id, fresh, valid_until=valid_until)
    return ImportResult(
        added=len(added),
        duplicates=duplicates + len(fresh) - len(added),
        invalid=invalid,
        invalid_samples=tuple(samples),
    )


def generate_codes(
    conn: Connection,
    workspace_id: str,
    pool_key: str,
    *,
    count: int,
    prefix: str = "",
    length: int = DEFAULT_LENGTH,
    valid_until: datetime | None = None,
) -> list[str]:
    """Make ``count`` new codes in the pool and return them (to load into the shop's checkout).

    Each is ``prefix`` plus ``length`` symbols of :data:`ALPHABET` drawn with
    :mod:`secrets`: ``length * log2(31)`` bits of entropy, 54.5 at the default
    11. A draw that collides with a code already in the workspace is replaced
    by a fresh one.
    """
    if not 1 <= count <= MAX_GENERATE:
        raise InputError(f"count: must be between 1 and {MAX_GENERATE}")
    if not PREFIX.fullmatch(prefix):
        raise InputError("prefix: at most 20 letters, digits, '-' or '_'")
    if not MIN_LENGTH <= length <= 64 - len(prefix):
        raise InputError(f"length: must be between {MIN_LENGTH} and {64 - len(prefix)}")
    pool = get_pool(conn, workspace_id, pool_key)
    made: list[str] = []
    for _ in range(GENERATE_ROUNDS):
        wanted = count - len(made)
        if not wanted:
            break
        draws = {prefix + _random_symbols(length) for _ in range(wanted)}
        made.extend(
            _insert_codes(conn, workspace_id, pool.id, sorted(draws), valid_until=valid_until)
        )
    if len(made) < count:
        raise InputError(
            f"only {len(made)} of {count} codes were new; use a longer length",
            code="promo_codes_exhausted",
        )
    return made


def entropy_bits(length: int) -> float:
    """Bits of entropy in ``length`` random symbols of :data:`ALPHABET`."""
    return length * math.log2(len(ALPHABET))


def _random_symbols(length: int) -> str:
    return "".join(secrets.choice(ALPHABET) for _ in range(length))


def _insert_codes(
    conn: Connection,
    workspace_id: str,
    pool_id: int,
    codes: Sequence[str],
    *,
    valid_until: datetime | None,
) -> list[str]:
    """Insert ``codes``, skipping any the workspace has; returns the ones added."""
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    stmt = (
        dialect.insert(promo_codes)
        .on_conflict_do_nothing(index_elements=["workspace_id", "code"])
        .returning(promo_codes.c.code)
    )
    until = utc(valid_until) if valid_until is not None else None
    added: list[str] = []
    for chunk in _chunks(codes, INSERT_CHUNK):
        rows = [
            {"workspace_id": workspace_id, "pool_id": pool_id, "code": c, "valid_until": until}
            for c in chunk
        ]
        added.extend(conn.execute(stmt, rows).scalars())
    return added


def _chunks(items: Sequence[str], size: int) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


# ----------------------------------------------------------------- issuing


def issue_code(
    conn: Connection,
    workspace_id: str,
    *,
    pool_key: str,
    profile_id: int,
    offer_key: str,
    now: datetime,
    instance_id: int | None = None,
) -> IssuedCode:
    """The customer's code from the pool for ``offer_key``: the one issued before, else a free one.

    Raises :class:`NotFound` ``promo_pool_unknown``, or :class:`InputError`
    ``promo_pool_expired`` (outside the pool's validity, or the offer's code
    has run out), ``promo_pool_empty`` (no free unexpired code left) or
    ``promo_offer_taken`` (the offer key was issued to another customer).
    """
    pool = get_pool(conn, workspace_id, pool_key)
    if pool.valid_from is not None and now < pool.valid_from:
        raise InputError(
            f"promo pool {pool.key!r} is valid only from {pool.valid_from.isoformat()}",
            code="promo_pool_expired",
        )
    if pool.valid_until is not None and now >= pool.valid_until:
        raise InputError(
            f"promo pool {pool.key!r} expired at {pool.valid_until.isoformat()}",
            code="promo_pool_expired",
        )
    for _ in range(ISSUE_ATTEMPTS):
        held = conn.execute(
            select(promo_codes).where(
                promo_codes.c.pool_id == pool.id, promo_codes.c.offer_key == offer_key
            )
        ).first()
        if held is not None:
            return _issued_before(conn, pool, held, profile_id=profile_id, now=now)
        issued = _take_free(
            conn, pool, profile_id=profile_id, offer_key=offer_key, now=now, instance_id=instance_id
        )
        if issued is not None:
            return issued
    raise StoreError(f"could not issue a code from promo pool {pool.key!r}; try again")


def _issued_before(
    conn: Connection, pool: PromoPool, row: Any, *, profile_id: int, now: datetime
) -> IssuedCode:
    if not _same_customer(conn, row.profile_id, profile_id):
        raise InputError(
            f"offer {row.offer_key!r} of promo pool {pool.key!r} was issued to another customer",
            code="promo_offer_taken",
        )
    until = _earliest(pool.valid_until, row.valid_until)
    if until is not None and now >= until:
        raise InputError(
            f"the code issued from promo pool {pool.key!r} expired at {until.isoformat()}",
            code="promo_pool_expired",
        )
    return IssuedCode(
        code=row.code,
        pool=pool.key,
        offer_key=row.offer_key,
        profile_id=row.profile_id,
        issued_at=row.issued_at,
        valid_until=until,
        new=False,
    )


def _take_free(
    conn: Connection,
    pool: PromoPool,
    *,
    profile_id: int,
    offer_key: str,
    now: datetime,
    instance_id: int | None,
) -> IssuedCode | None:
    """Bind a free code to the offer; None when another issuer bound this offer first."""
    c = promo_codes.c
    pick = (
        select(c.id, c.code, c.valid_until)
        .where(
            c.pool_id == pool.id,
            c.profile_id.is_(None),
            c.redeemed_at.is_(None),
            or_(c.valid_until.is_(None), c.valid_until > now),
        )
        .limit(1)
    )
    if conn.dialect.name == "postgresql":
        pick = pick.with_for_update(skip_locked=True)
    try:
        # The savepoint lets a lost race undo only this pick, not the caller's transaction.
        with conn.begin_nested():
            row = conn.execute(pick).first()
            if row is None:
                raise InputError(
                    f"promo pool {pool.key!r} has no free codes left", code="promo_pool_empty"
                )
            taken = conn.execute(
                update(promo_codes)
                .where(c.id == row.id, c.profile_id.is_(None))
                .values(
                    profile_id=profile_id,
                    offer_key=offer_key,
                    instance_id=instance_id,
                    issued_at=now,
                )
            ).rowcount
    except IntegrityError:
        return None  # the unique (pool_id, offer_key) says another issuer won; read its code
    if taken != 1:
        return None
    return IssuedCode(
        code=row.code,
        pool=pool.key,
        offer_key=offer_key,
        profile_id=profile_id,
        issued_at=now,
        valid_until=_earliest(pool.valid_until, row.valid_until),
        new=True,
    )


def promo_provider(
    engine: Engine,
    *,
    workspace_id: str,
    profile_id: int,
    instance_id: int,
    now: datetime,
) -> Callable[[str], str]:
    """What a message's ``promo_code(pool)`` calls: the instance's code from that pool.

    Each pool's code is issued once, in its own short write transaction, with
    offer key ``instance:<instance_id>``, so every message of the instance
    shows the same code. Errors (``promo_pool_unknown``, ``_empty``,
    ``_expired``) propagate; the template turns them into a render failure
    of that one message.
    """
    issued: dict[str, str] = {}

    def provide(pool_key: str) -> str:
        if pool_key not in issued:
            code = run_in_transaction(
                engine,
                lambda conn: issue_code(
                    conn,
                    workspace_id,
                    pool_key=pool_key,
                    profile_id=profile_id,
                    offer_key=f"instance:{instance_id}",
                    now=now,
                    instance_id=instance_id,
                ),
            )
            issued[pool_key] = code.code
        return issued[pool_key]

    return provide


# -------------------------------------------------------------- redeeming


def redeem(
    conn: Connection,
    workspace_id: str,
    *,
    code: str,
    profile_id: int,
    event_id: int,
    at: datetime,
    value: Decimal | None = None,
    event_name: str = ORDER_COMPLETED,
) -> bool:
    """Mark ``code`` redeemed by this customer's event; True if this call redeemed it.

    Unknown codes (a shop's own fixed codes) and codes already redeemed answer
    False: the first redemption wins, and redeeming again changes nothing.
    A code is looked up as given, then upper-cased (customers type codes in
    any case; generated ones are upper-case). When the code was issued for a
    journey instance to this same customer, the instance gets a conversion
    (``value``: the order's revenue) unless it already has one.
    """
    row = _find(conn, workspace_id, code)
    if row is None or row.redeemed_at is not None:
        return False
    same = row.profile_id is not None and _same_customer(conn, row.profile_id, profile_id)
    values: dict[str, Any] = {
        "redeemed_at": at,
        "redeemed_event_id": event_id,
        "redeemed_profile_id": profile_id,
    }
    if same and row.profile_id != profile_id:
        values["profile_id"] = profile_id  # the customer's profile was merged since issue
    done = conn.execute(
        update(promo_codes)
        .where(promo_codes.c.id == row.id, promo_codes.c.redeemed_at.is_(None))
        .values(**values)
    ).rowcount
    if done != 1:
        return False
    if same and row.instance_id is not None:
        _convert(
            conn,
            workspace_id,
            row.instance_id,
            event_id=event_id,
            event_name=event_name,
            value=value,
            at=at,
        )
    return True


def redeem_from_event(conn: Connection, workspace_id: str, event: Any) -> bool:
    """Redeem the codes of an order event (an ``events`` row); True if any was redeemed.

    Reads ``properties.coupon`` (see :func:`coupons_of`) of track events, and
    the order value from ``revenue``, else ``total``.
    """
    if event.type != "track":
        return False
    properties = event.properties or {}
    codes = coupons_of(event.name, properties)
    if not codes:
        return False
    value = order_value(properties)
    redeemed = False
    for code in codes:
        redeemed |= redeem(
            conn,
            workspace_id,
            code=code,
            profile_id=event.profile_id,
            event_id=event.id,
            at=event.timestamp,
            value=value,
            event_name=event.name,
        )
    return redeemed


def coupons_of(name: str | None, properties: Mapping[str, Any]) -> list[str]:
    """The codes an event redeems: its ``coupon`` (a string, comma-separated, or a list).

    Segment's pre-purchase and after-sale events (:data:`NOT_REDEMPTIONS`)
    redeem nothing, though they carry a ``coupon``.
    """
    if not name or name in NOT_REDEMPTIONS:
        return []
    raw = properties.get("coupon")
    items = raw.split(",") if isinstance(raw, str) else raw if isinstance(raw, list) else []
    codes: list[str] = []
    for item in items:
        code = item.strip() if isinstance(item, str) else ""
        if code and code not in codes:
            codes.append(code)
    return codes[:MAX_COUPONS_PER_EVENT]


def order_value(properties: Mapping[str, Any]) -> Decimal | None:
    """An order's value: ``revenue``, else ``total``; None when neither is a number."""
    for name in ("revenue", "total"):
        raw = properties.get(name)
        if raw is None or isinstance(raw, bool):
            continue
        try:
            value = Decimal(str(raw).strip())
        except InvalidOperation:
            continue
        if value.is_finite():
            return value
    return None


def _find(conn: Connection, workspace_id: str, code: str) -> Any:
    code = code.strip()
    wanted = [code] if code == code.upper() else [code, code.upper()]
    rows = conn.execute(
        select(promo_codes).where(
            promo_codes.c.workspace_id == workspace_id, promo_codes.c.code.in_(wanted)
        )
    ).all()
    by_code = {r.code: r for r in rows}
    return next((by_code[w] for w in wanted if w in by_code), None)


def _convert(
    conn: Connection,
    workspace_id: str,
    instance_id: int,
    *,
    event_id: int,
    event_name: str,
    value: Decimal | None,
    at: datetime,
) -> None:
    instance = conn.execute(
        select(instances.c.journey_id, instances.c.profile_id).where(
            instances.c.id == instance_id, instances.c.workspace_id == workspace_id
        )
    ).first()
    if instance is None:
        return
    insert_ignore(
        conn,
        conversions,
        {
            "workspace_id": workspace_id,
            "journey_id": instance.journey_id,
            "instance_id": instance_id,
            "profile_id": instance.profile_id,
            "event_id": event_id,
            "event_name": event_name[:200],
            "value": value,
            "at": at,
        },
        key=["instance_id"],
    )


def _same_customer(conn: Connection, issued_to: int, profile_id: int) -> bool:
    """Whether ``issued_to`` is ``profile_id`` or was merged into it (an anonymous visitor
    who signed in later)."""
    current: int | None = issued_to
    for _ in range(_MERGE_HOPS):
        if current == profile_id:
            return True
        if current is None:
            return False
        current = conn.execute(
            select(profiles.c.merged_into).where(profiles.c.id == current)
        ).scalar_one_or_none()
    return False


# ------------------------------------------------------------------ reading


def pool_stats(
    conn: Connection, workspace_id: str, *, now: datetime | None = None
) -> list[dict[str, Any]]:
    """Every pool with its counts, by key.

    ``left`` counts codes still free to issue (unexpired at ``now`` when
    given); ``shared`` counts codes redeemed by a customer other than the
    one they were issued to. With ``now``, ``status`` says whether the pool
    is ``active``, ``scheduled`` or ``expired``.
    """
    p, c = promo_pools.c, promo_codes.c
    free = and_(c.id.is_not(None), c.profile_id.is_(None), c.redeemed_at.is_(None))
    if now is not None:
        free = and_(free, or_(c.valid_until.is_(None), c.valid_until > now))
    shared = and_(
        c.profile_id.is_not(None),
        c.redeemed_profile_id.is_not(None),
        c.redeemed_profile_id != c.profile_id,
    )
    rows = conn.execute(
        select(
            p.key,
            p.name,
            p.valid_from,
            p.valid_until,
            p.created_at,
            func.count(c.id).label("total"),
            func.count(c.issued_at).label("issued"),
            func.count(c.redeemed_at).label("redeemed"),
            func.count(case((free, c.id))).label("left"),
            func.count(case((shared, c.id))).label("shared"),
        )
        .select_from(promo_pools.outerjoin(promo_codes, c.pool_id == p.id))
        .where(p.workspace_id == workspace_id)
        .group_by(p.id, p.key, p.name, p.valid_from, p.valid_until, p.created_at)
        .order_by(p.key)
    ).all()
    out: list[dict[str, Any]] = []
    for r in rows:
        item: dict[str, Any] = {
            "key": r.key,
            "name": r.name,
            "valid_from": _iso(r.valid_from),
            "valid_until": _iso(r.valid_until),
            "created_at": _iso(r.created_at),
            "total": r.total,
            "issued": r.issued,
            "redeemed": r.redeemed,
            "left": r.left,
            "shared": r.shared,
        }
        if now is not None:
            item["status"] = _status(r.valid_from, r.valid_until, now)
        out.append(item)
    return out


def find_code(conn: Connection, workspace_id: str, code: str) -> dict[str, Any]:
    """One code: its pool, who it was issued to and for what, and its redemption.

    :class:`NotFound` ``promo_code_unknown`` when the workspace has no such code.
    """
    row = _find(conn, workspace_id, code)
    if row is None:
        raise NotFound(
            f"no promo code {code.strip()!r} in this workspace", code="promo_code_unknown"
        )
    pool = conn.execute(
        select(promo_pools.c.key).where(promo_pools.c.id == row.pool_id)
    ).scalar_one()
    people = [i for i in (row.profile_id, row.redeemed_profile_id) if i is not None]
    users = {
        r.id: r.user_id
        for r in conn.execute(
            select(profiles.c.id, profiles.c.user_id).where(profiles.c.id.in_(people))
        )
    }
    issued = None
    if row.profile_id is not None:
        issued = {
            "profile_id": row.profile_id,
            "user_id": users.get(row.profile_id),
            "offer_key": row.offer_key,
            "instance_id": row.instance_id,
            "at": _iso(row.issued_at),
        }
    redeemed = None
    if row.redeemed_at is not None:
        redeemed = {
            "profile_id": row.redeemed_profile_id,
            "user_id": users.get(row.redeemed_profile_id),
            "event_id": row.redeemed_event_id,
            "at": _iso(row.redeemed_at),
            "shared": row.profile_id is not None and row.redeemed_profile_id != row.profile_id,
        }
    status = "redeemed" if redeemed else "issued" if issued else "free"
    return {
        "code": row.code,
        "pool": pool,
        "status": status,
        "valid_until": _iso(row.valid_until),
        "issued": issued,
        "redeemed": redeemed,
    }


def _status(valid_from: datetime | None, valid_until: datetime | None, now: datetime) -> str:
    if valid_from is not None and now < valid_from:
        return "scheduled"
    if valid_until is not None and now >= valid_until:
        return "expired"
    return "active"


def _earliest(a: datetime | None, b: datetime | None) -> datetime | None:
    return min((t for t in (a, b) if t is not None), default=None)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None
