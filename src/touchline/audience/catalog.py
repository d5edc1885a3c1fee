"""The product catalog: products kept up to date by the shop, and the changes worth telling.

Products come through the admin API (one, or a batch) and ``touchline catalog
import FILE.csv``. Each is keyed by the shop's own ``product_id``. An update
carries only the fields it names: a stock feed of ``id,in_stock`` changes the
stock and nothing else; a new product needs at least a ``name`` and takes the
defaults for the rest (in stock, no attributes). ``null`` clears a field.

Two changes are announced to the customers who showed interest (see
:mod:`touchline.audience.alerts`):

* **back in stock**: a product known to be out of stock comes back in stock;
* **price drop**: the price falls at least :attr:`CatalogRules.price_drop_percent`
  below ``price_basis``, the price drops are measured from. The basis starts
  as the first price, follows every rise, and becomes the new price when a
  drop is announced or the product is restocked; small cuts therefore add up
  until together they cross the threshold, and a cut is announced once.

Each announcement is one ``catalog_alerts`` row written in the transaction
that changes the product, numbered by the product's ``restocks`` or
``price_drops`` count: importing the same file again changes nothing and
announces nothing, and the next restock is a new occurrence. A restock is
not also announced as a price drop. Archived products, and products coming
back from the archive, announce nothing.

Pure parts (validation, :func:`decide_change`) are separate from the store
functions, which take the caller's connection and ``now``.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from sqlalchemy import Connection, Engine, and_, bindparam, insert, select, update

from touchline.errors import InputError, NotFound
from touchline.journeys.durations import format_duration, parse_duration
from touchline.store.db import transaction
from touchline.store.tables import catalog_alerts, products
from touchline.store.workspaces import workspace_settings

BACK_IN_STOCK = "back_in_stock"
PRICE_DROP = "price_drop"

DEFAULT_VIEW_WINDOW = timedelta(days=30)
"""How recent a view must be for a restock or a price drop to concern its viewer."""
DEFAULT_REQUEST_WINDOW = timedelta(days=90)
"""How long a "tell me when it is back" request holds: people forget after a season."""
DEFAULT_PRICE_DROP_PERCENT = Decimal(10)
"""Smallest cut worth a message; below it a mail reads like noise."""
MAX_WINDOW = timedelta(days=365)

MAX_ATTRIBUTES_CHARS = 16 * 1024
"""Largest custom attributes of one product, as JSON: product data, not documents."""
MAX_PRICE = Decimal("9999999999999999.99")  # Numeric(18, 2)

IMPORT_BATCH = 500
"""CSV rows per transaction: a short hold on the writer, few round trips."""

CSV_FIELDS = ("product_id", "name", "url", "image", "price", "currency", "category", "in_stock")
"""Columns a CSV maps to fields; ``id`` names ``product_id`` too. Other columns are attributes."""

_TRUE = frozenset({"true", "1", "yes", "y", "t", "да"})
_FALSE = frozenset({"false", "0", "no", "n", "f", "нет"})


# -- rules ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class CatalogRules:
    """The workspace's ``catalog`` settings: who a restock or a price drop concerns."""

    view_window: timedelta = DEFAULT_VIEW_WINDOW
    request_window: timedelta = DEFAULT_REQUEST_WINDOW
    price_drop_percent: Decimal = DEFAULT_PRICE_DROP_PERCENT

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> CatalogRules:
        """Read the ``catalog`` section; InputError naming the field on bad input."""
        section = settings.get("catalog")
        if section is None:
            return cls()
        if not isinstance(section, Mapping):
            raise InputError("catalog: must be an object")
        unknown = set(section) - {"view_window", "request_window", "price_drop_percent"}
        if unknown:
            raise InputError(f"catalog.{sorted(unknown)[0]}: unknown field")
        windows: dict[str, timedelta] = {}
        for name in ("view_window", "request_window"):
            raw = section.get(name)
            if raw is None:
                continue
            try:
                window = parse_duration(raw)
            except ValueError as exc:
                raise InputError(f"catalog.{name}: {exc}") from None
            if window > MAX_WINDOW:
                raise InputError(f"catalog.{name}: at most {format_duration(MAX_WINDOW)}")
            windows[name] = window
        percent = section.get("price_drop_percent", DEFAULT_PRICE_DROP_PERCENT)
        if isinstance(percent, bool) or not isinstance(percent, int | float | Decimal):
            raise InputError("catalog.price_drop_percent: must be a number")
        if not 0 < percent < 100:
            raise InputError("catalog.price_drop_percent: must be above 0 and below 100")
        return cls(**windows, price_drop_percent=Decimal(str(percent)))


# -- validation ----------------------------------------------------------------------------


class ProductIn(BaseModel):
    """One product as the shop sends it; fields left out keep their stored value."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    product_id: Annotated[str, Field(min_length=1, max_length=200)]
    name: Annotated[str, Field(min_length=1, max_length=500)] | None = None
    url: Annotated[str, Field(max_length=2000)] | None = None
    image: Annotated[str, Field(max_length=2000)] | None = None
    price: Annotated[Decimal, Field(ge=0, le=MAX_PRICE, decimal_places=2)] | None = None
    currency: Annotated[str, Field(pattern=r"^[A-Z]{3}$")] | None = None
    category: Annotated[str, Field(min_length=1, max_length=200)] | None = None
    in_stock: bool | None = None
    attributes: dict[str, Any] | None = None

    @field_validator("product_id", "name", "url", "image", "category", mode="before")
    @classmethod
    def _no_nul(cls, value: Any) -> Any:
        # PostgreSQL text cannot hold NUL; refuse it here rather than fail the transaction.
        if isinstance(value, str) and "\x00" in value:
            raise ValueError("must not contain NUL characters")
        return value

    @field_validator("product_id", mode="before")
    @classmethod
    def _id_as_text(cls, value: Any) -> Any:
        # Shops' ids are often numbers in JSON; they are the same id as text.
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        return value

    @field_validator("currency", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.strip().upper() if isinstance(value, str) else value

    @field_validator("url", "image")
    @classmethod
    def _web_link(cls, value: str | None) -> str | None:
        if value is not None and not value.lower().startswith(("https://", "http://")):
            raise ValueError("must be an http(s) URL")
        return value

    @field_validator("attributes")
    @classmethod
    def _small(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None:
            try:
                text = json.dumps(value, ensure_ascii=False, allow_nan=False)
            except (TypeError, ValueError):
                raise ValueError("must be plain JSON") from None
            if "\\u0000" in text:  # PostgreSQL's jsonb refuses it
                raise ValueError("must not contain NUL characters")
            if len(text) > MAX_ATTRIBUTES_CHARS:
                raise ValueError(f"at most {MAX_ATTRIBUTES_CHARS} characters as JSON")
        return value

    def given(self) -> dict[str, Any]:
        """The fields the shop named (``product_id`` left out)."""
        return {name: getattr(self, name) for name in self.model_fields_set - {"product_id"}}


def parse_product(data: Any, *, product_id: str | None = None) -> ProductIn:
    """Validate one product; ``id`` is read as ``product_id``; ``product_id`` (a URL's) wins
    and must agree with the body's. InputError names the first bad field."""
    if not isinstance(data, Mapping):
        raise InputError("a product must be a JSON object")
    body = dict(data)
    if "id" in body:
        if "product_id" in body:
            raise InputError("id: give product_id or id, not both")
        body["product_id"] = body.pop("id")
    if product_id is not None:
        if "product_id" in body and str(body["product_id"]) != product_id:
            raise InputError(
                f"product_id: the body says {body['product_id']!r}, the URL {product_id!r}"
            )
        body["product_id"] = product_id
    try:
        return ProductIn.model_validate(body)
    except ValidationError as exc:
        raise InputError(_first_problem(exc)) from None


def _first_problem(exc: ValidationError) -> str:
    error = exc.errors()[0]
    where = ".".join(str(part) for part in error.get("loc", ())) or "product"
    message = str(error.get("msg", "invalid"))
    return f"{where}: {message.removeprefix('Value error, ')}"


# -- CSV -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class CsvRow:
    """One data row of a catalog CSV: its line in the file, and the product or why not."""

    line: int
    product: ProductIn | None
    error: str | None = None


def read_catalog_csv(lines: Iterable[str]) -> Iterator[CsvRow]:
    """Products from a CSV with a header row, one :class:`CsvRow` per data row.

    Columns named in :data:`CSV_FIELDS` (and ``id``) are fields, any other
    column an attribute (text, kept when not empty). Only the columns present
    are changed. Empty cells clear the field; ``in_stock`` takes true/false,
    1/0, yes/no; ``price`` takes ``1 999,90`` as well as ``1999.90``. Lines are
    counted as in the file, the header being line 1. A missing or unusable
    header raises InputError.
    """
    reader = csv.reader(lines)
    try:
        header = next(reader)
    except StopIteration:
        raise InputError("the file is empty; the first line must name the columns") from None
    except csv.Error as exc:
        raise InputError(f"line 1: {exc}") from None
    columns = [h.strip().lstrip("\ufeff").lower() for h in header]
    columns = ["product_id" if c == "id" else c for c in columns]
    if "product_id" not in columns:
        raise InputError("line 1: no id or product_id column")
    seen: set[str] = set()
    for name in columns:
        if not name:
            raise InputError("line 1: a column has no name")
        if name in seen:
            raise InputError(f"line 1: column {name!r} appears twice")
        seen.add(name)
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield CsvRow(reader.line_num, None, str(exc))
            continue
        line = reader.line_num
        if not any(c.strip() for c in cells):
            continue
        if len(cells) != len(columns):
            yield CsvRow(line, None, f"{len(cells)} cells; the header has {len(columns)}")
            continue
        try:
            yield CsvRow(line, _csv_product(dict(zip(columns, cells, strict=True))))
        except InputError as exc:
            yield CsvRow(line, None, exc.message)


def _csv_product(cells: dict[str, str]) -> ProductIn:
    body: dict[str, Any] = {}
    attributes: dict[str, str] = {}
    for name, raw in cells.items():
        text = raw.strip()
        if name not in CSV_FIELDS:
            if text:
                attributes[name] = text
            continue
        if name == "in_stock":
            body[name] = _flag(text)
        elif name == "price":
            body[name] = _price_text(text)
        else:
            body[name] = text or None
    if attributes:
        body["attributes"] = attributes
    return parse_product(body)


def _flag(text: str) -> bool:
    low = text.lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    raise InputError(f"in_stock: {text!r} is not true or false")


def _price_text(text: str) -> str | None:
    if not text:
        return None
    cleaned = text.replace("\u00a0", "").replace(" ", "")
    if "," in cleaned and "." not in cleaned:
        cleaned = cleaned.replace(",", ".")
    return cleaned


# -- deciding what a change announces (pure) -------------------------------------------------


@dataclass(frozen=True)
class Change:
    """What one update does to a product: its new stored state and what to announce."""

    values: dict[str, Any]
    restocked: bool = False
    dropped_from: Decimal | None = None  # the basis the price fell from, when announced
    changed: bool = True


_DEFAULTS: dict[str, Any] = {
    "url": None,
    "image": None,
    "price": None,
    "currency": None,
    "category": None,
    "in_stock": True,
    "attributes": {},
}
_STATE = ("name", *_DEFAULTS)


def decide_change(
    old: Mapping[str, Any] | None, given: Mapping[str, Any], *, drop_percent: Decimal
) -> Change:
    """The product after ``given`` is applied to ``old`` (None: a new product).

    Raises InputError when a new product has no name, or a name or the stock is cleared.
    """
    if "in_stock" in given and given["in_stock"] is None:
        raise InputError("in_stock: must be true or false")
    if old is None:
        if not given.get("name"):
            raise InputError("name: a new product needs a name")
        values = {**_DEFAULTS, **given}
        values["attributes"] = values["attributes"] or {}
        values["price_basis"] = values["price"]
        values.update(restocks=0, price_drops=0, archived_at=None)
        return Change(values)
    if "name" in given and not given["name"]:
        raise InputError("name: a product's name cannot be cleared")
    values = {**{k: old[k] for k in (*_STATE, "price_basis", "restocks", "price_drops")}, **given}
    if values["attributes"] is None:
        values["attributes"] = {}
    archived = old["archived_at"] is not None
    values["archived_at"] = None  # sending a product again brings it back
    changed = archived or any(values[k] != old[k] for k in _STATE)
    restocked = not archived and not old["in_stock"] and bool(values["in_stock"])
    price: Decimal | None = values["price"]
    basis: Decimal | None = old["price_basis"]
    dropped_from = None
    # The basis restarts at the current price on a new currency, a return from the archive,
    # a rise or a restock, and after an announced drop; otherwise it stays.
    restart = values["currency"] != old["currency"] or archived or restocked
    if price is None or basis is None or restart or price > basis:
        basis = price
    elif values["in_stock"] and price <= basis * (1 - drop_percent / 100):
        dropped_from, basis = basis, price
    values["price_basis"] = basis
    if restocked:
        values["restocks"] = old["restocks"] + 1
    if dropped_from is not None:
        values["price_drops"] = old["price_drops"] + 1
    changed = changed or basis != old["price_basis"]
    return Change(values, restocked=restocked, dropped_from=dropped_from, changed=changed)


# -- the store -------------------------------------------------------------------------------


@dataclass
class UpsertResult:
    """What one batch did: products created, updated, left as they were; announcements made."""

    created: int = 0
    updated: int = 0
    unchanged: int = 0
    restocks: int = 0
    price_drops: int = 0
    rejected: list[dict[str, Any]] = field(default_factory=list)

    def add(self, other: UpsertResult) -> None:
        self.created += other.created
        self.updated += other.updated
        self.unchanged += other.unchanged
        self.restocks += other.restocks
        self.price_drops += other.price_drops
        self.rejected.extend(other.rejected)

    def as_dict(self) -> dict[str, Any]:
        return {
            "created": self.created,
            "updated": self.updated,
            "unchanged": self.unchanged,
            "restocks": self.restocks,
            "price_drops": self.price_drops,
            "rejected": list(self.rejected),
        }


def upsert_products(
    conn: Connection,
    workspace_id: str,
    items: Sequence[ProductIn],
    *,
    now: datetime,
    rules: CatalogRules,
    labels: Sequence[Any] | None = None,
) -> UpsertResult:
    """Create or update ``items`` in the caller's transaction; record their announcements.

    An item that cannot apply (a new product without a name) is rejected
    alone: ``result.rejected`` gets ``{"at": label, "product_id", "message"}``,
    ``label`` being ``labels[i]`` (a CSV line, a batch index) or ``i``. On
    PostgreSQL the existing rows are locked, in id order, so two imports of
    one product run one after the other and announce its restock once.
    """
    result = UpsertResult()
    ids = sorted({item.product_id for item in items})
    stored = _load(conn, workspace_id, ids)
    fresh: dict[str, dict[str, Any]] = {}
    touched: dict[str, dict[str, Any]] = {}
    alerts: list[dict[str, Any]] = []
    for index, item in enumerate(items):
        pid = item.product_id
        old = touched.get(pid) or fresh.get(pid) or stored.get(pid)
        try:
            change = decide_change(old, item.given(), drop_percent=rules.price_drop_percent)
        except InputError as exc:
            label = labels[index] if labels is not None else index
            result.rejected.append({"at": label, "product_id": pid, "message": exc.message})
            continue
        row = {**change.values, "product_id": pid, "updated_at": now}
        if old is None:
            fresh[pid] = {**row, "created_at": now}
            result.created += 1
        elif not change.changed:
            result.unchanged += 1
            continue
        elif pid in fresh:
            fresh[pid] = {**fresh[pid], **row}
        else:
            result.updated += 1 if pid not in touched else 0
            touched[pid] = {**old, **row}
        if change.restocked:
            alerts.append(_alert(workspace_id, row, BACK_IN_STOCK, now=now, rules=rules))
            result.restocks += 1
        if change.dropped_from is not None:
            alert = _alert(workspace_id, row, PRICE_DROP, now=now, rules=rules)
            alert["properties"] |= _drop(change.dropped_from, row["price"])
            alerts.append(alert)
            result.price_drops += 1
    if fresh:
        conn.execute(
            insert(products),
            [{**_columns(r), "workspace_id": workspace_id} for r in fresh.values()],
        )
    if touched:
        conn.execute(
            update(products)
            .where(
                products.c.workspace_id == workspace_id,
                products.c.product_id == bindparam("b_product_id"),
            )
            .values({k: bindparam(f"b_{k}") for k in _UPDATED}),
            [{f"b_{k}": r[k] for k in (*_UPDATED, "product_id")} for r in touched.values()],
        )
    if alerts:
        conn.execute(insert(catalog_alerts), alerts)
    return result


_UPDATED = (*_STATE, "price_basis", "restocks", "price_drops", "archived_at", "updated_at")


def _columns(row: Mapping[str, Any]) -> dict[str, Any]:
    return {k: row[k] for k in (*_UPDATED, "product_id", "created_at")}


def rules_for(conn: Connection, workspace_id: str) -> CatalogRules:
    """The workspace's catalog rules (the defaults if its settings have none)."""
    try:
        return CatalogRules.from_settings(workspace_settings(conn, workspace_id))
    except InputError:  # the settings API refuses such documents; keep working on defaults
        return CatalogRules()


def import_rows(
    engine: Engine,
    workspace_id: str,
    rows: Iterable[CsvRow],
    *,
    now: datetime,
    batch: int = IMPORT_BATCH,
    progress: Callable[[int], None] | None = None,
) -> UpsertResult:
    """Apply CSV rows ``batch`` at a time, each batch in its own transaction.

    Rows that do not parse or apply are rejected alone, with their line;
    ``progress(line)`` is called after each batch with the last line done.
    A failure of the store stops the import; the batches before it stay.
    """
    result = UpsertResult()
    pending: list[CsvRow] = []

    def flush() -> None:
        if pending:
            with transaction(engine) as conn:
                part = upsert_products(
                    conn,
                    workspace_id,
                    [r.product for r in pending if r.product is not None],
                    now=now,
                    rules=rules_for(conn, workspace_id),
                    labels=[r.line for r in pending],
                )
            result.add(part)
            pending.clear()

    last = 0
    for row in rows:
        last = row.line
        if row.product is None:
            result.rejected.append({"at": row.line, "product_id": None, "message": row.error})
        else:
            pending.append(row)
        if len(pending) >= batch:
            flush()
            if progress is not None:
                progress(last)
    flush()
    if progress is not None:
        progress(last)
    result.rejected.sort(key=lambda r: r["at"])
    return result


def _load(conn: Connection, workspace_id: str, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for start in range(0, len(ids), 500):
        query = (
            select(products)
            .where(
                products.c.workspace_id == workspace_id,
                products.c.product_id.in_(ids[start : start + 500]),
            )
            .order_by(products.c.product_id)
        )
        if conn.dialect.name == "postgresql":
            query = query.with_for_update()
        for row in conn.execute(query):
            found[row.product_id] = dict(row._mapping)
    return found


def _alert(
    workspace_id: str, row: Mapping[str, Any], kind: str, *, now: datetime, rules: CatalogRules
) -> dict[str, Any]:
    restock = kind == BACK_IN_STOCK
    return {
        "workspace_id": workspace_id,
        "product_id": row["product_id"],
        "kind": kind,
        "occurrence": row["restocks"] if restock else row["price_drops"],
        "status": "pending",
        "at": now,
        "viewed_since": now - rules.view_window,
        "requested_since": now - rules.request_window if restock else None,
        "properties": product_properties(row),
        "cursor": 0,
        "fired": 0,
    }


def _drop(old: Decimal, new: Decimal) -> dict[str, Any]:
    percent = (1 - new / old) * 100 if old else Decimal(0)
    return {"old_price": json_number(old), "drop_percent": float(round(percent, 1))}


def product_properties(row: Mapping[str, Any]) -> dict[str, Any]:
    """A product as event properties (Segment's e-commerce names), nulls left out."""
    data = {
        "product_id": row["product_id"],
        "name": row["name"],
        "url": row["url"],
        "image_url": row["image"],
        "price": json_number(row["price"]),
        "currency": row["currency"],
        "category": row["category"],
    }
    return {k: v for k, v in data.items() if v is not None}


def json_number(value: Decimal | None) -> int | float | None:
    """A price for JSON: whole amounts as integers, others as floats of two decimals."""
    if value is None:
        return None
    return int(value) if value == value.to_integral_value() else float(value)


def get_product(conn: Connection, workspace_id: str, product_id: str) -> dict[str, Any]:
    """One product as JSON-ready data (archived ones too); NotFound otherwise."""
    row = conn.execute(
        select(products).where(
            products.c.workspace_id == workspace_id, products.c.product_id == product_id
        )
    ).first()
    if row is None:
        raise NotFound(f"no product {product_id!r} in the catalog", code="product_not_found")
    return product_json(dict(row._mapping))


def product_json(row: Mapping[str, Any]) -> dict[str, Any]:
    """A stored product for the API."""

    def iso(value: datetime | None) -> str | None:
        return value.isoformat() if value is not None else None

    return {
        "product_id": row["product_id"],
        "name": row["name"],
        "url": row["url"],
        "image": row["image"],
        "price": str(row["price"]) if row["price"] is not None else None,
        "currency": row["currency"],
        "category": row["category"],
        "in_stock": bool(row["in_stock"]),
        "attributes": row["attributes"] or {},
        "archived": row["archived_at"] is not None,
        "archived_at": iso(row["archived_at"]),
        "created_at": iso(row["created_at"]),
        "updated_at": iso(row["updated_at"]),
    }


MAX_LIST_LIMIT = 1000


def list_products(
    conn: Connection,
    workspace_id: str,
    *,
    category: str | None = None,
    in_stock: bool | None = None,
    archived: bool = False,
    after: str | None = None,
    limit: int = 100,
) -> list[dict[str, Any]]:
    """Products by id, ``limit`` from ``after`` on (keyset pages); archived ones only if asked."""
    if not 1 <= limit <= MAX_LIST_LIMIT:
        raise InputError(f"limit must be between 1 and {MAX_LIST_LIMIT}")
    query = select(products).where(products.c.workspace_id == workspace_id)
    if category is not None:
        query = query.where(products.c.category == category)
    if in_stock is not None:
        query = query.where(products.c.in_stock.is_(in_stock))
    if not archived:
        query = query.where(products.c.archived_at.is_(None))
    if after is not None:
        query = query.where(products.c.product_id > after)
    query = query.order_by(products.c.product_id).limit(limit)
    return [product_json(dict(row._mapping)) for row in conn.execute(query)]


def archive_product(
    conn: Connection, workspace_id: str, product_id: str, *, now: datetime
) -> dict[str, Any]:
    """Take a product out of recommendations and announcements; sending it again restores it."""
    done = conn.execute(
        update(products)
        .where(
            products.c.workspace_id == workspace_id,
            products.c.product_id == product_id,
            products.c.archived_at.is_(None),
        )
        .values(archived_at=now, updated_at=now)
    ).rowcount
    product = get_product(conn, workspace_id, product_id)
    if done:
        conn.execute(
            update(catalog_alerts)
            .where(
                and_(
                    catalog_alerts.c.workspace_id == workspace_id,
                    catalog_alerts.c.product_id == product_id,
                    catalog_alerts.c.status == "pending",
                )
            )
            .values(status="stopped", detail="the product was archived", finished_at=now)
        )
    return product


__all__ = [
    "BACK_IN_STOCK",
    "CSV_FIELDS",
    "PRICE_DROP",
    "CatalogRules",
    "Change",
    "CsvRow",
    "ProductIn",
    "UpsertResult",
    "archive_product",
    "decide_change",
    "get_product",
    "import_rows",
    "json_number",
    "list_products",
    "parse_product",
    "product_json",
    "product_properties",
    "read_catalog_csv",
    "rules_for",
    "upsert_products",
]
