"""A customer's personal data: export all of it, or erase it (GDPR art. 15/17, 152-FZ art. 14/21).

:func:`export_customer` gathers every row touchline holds about one customer:
the profile (and the profiles merged into it), and every row of every table
with a ``profile_id`` or ``redeemed_profile_id`` column naming them — found
from the table metadata, so a table added later is exported without a change
here — plus the rows that name the customer another way: suppressions of
their addresses, the short links and step log of their messages and journeys.

:func:`erase_customer` removes, in one transaction, everything that says who
the customer is or what they did, and keeps only what the law asks to keep
and what holds no personal data:

* kept as the **legal record**: the consent ledger (every grant and
  withdrawal, its time, channel, source and wording) with addresses turned
  into pseudonyms and IP and user agent removed, plus one withdrawal per
  channel with source ``erased``; suppressions of the customer's addresses,
  as pseudonyms, plus an ``erased`` suppression per address, so neither a
  journey nor a later import reaches the address again without a new
  consent; and an ``erasures`` row saying who asked, when and what changed;
* kept, holding no personal data: report rollups, conversions,
  attributions, promo code links, segment history, and the rows themselves
  (ids, times, statuses), so counts in reports do not change;
* removed: profile columns and traits, identities, event properties,
  traits and context, rendered messages and their addresses, click URLs,
  IPs and user agents, operator task scripts and notes, current segment
  memberships, waiting timers and listeners, interest in products.

The profile row stays, empty, with ``erased_at`` set: its id is never reused
(SQLite would reuse the largest deleted id) and the ledger keeps pointing at
it. Active journey instances end (``exit_reason`` ``erased``); messages and
events not yet processed are cancelled. Erasing again is safe and cleans up
whatever arrived in between.

A **pseudonym** (:func:`touchline.store.consent.pseudonym`) is a SHA-256 of
the normalised value salted with the workspace id: it cannot be read back,
but the same address gives the same pseudonym, which is what a suppression
needs. Anyone who already knows an address can test whether it was erased;
that is the price of honouring the objection (see docs/design/personal-data.md).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    Column,
    Connection,
    String,
    Table,
    and_,
    delete,
    insert,
    or_,
    select,
    update,
)

from touchline.errors import InputError, NotFound
from touchline.messaging.policies import MARKETING, consent_state
from touchline.store.consent import (
    CONSENT_CHANNELS,
    PSEUDONYM_PREFIX,
    load_consents,
    normal_address,
    pseudonym,
)
from touchline.store.db import insert_ignore
from touchline.store.tables import (
    EVENT_DONE,
    EVENT_PENDING,
    consents,
    erasures,
    events,
    identities,
    instances,
    journeys,
    message_events,
    metadata,
    outbox,
    profiles,
    segments,
    short_links,
    step_log,
    suppressions,
    tasks,
)

#: The source of the withdrawals an erasure adds, and the reason on what it ends.
ERASED = "erased"
#: Columns that name a customer in other tables.
PROFILE_REFS = ("profile_id", "redeemed_profile_id")
#: Which profile column holds the address each channel delivers to (as messaging.rules).
ADDRESS_FIELDS = {"email": "email", "sms": "phone", "smpp": "phone"}
#: Columns never shown in an export: they describe the machinery, not the customer.
_MACHINERY = frozenset({"workspace_id", "lease_owner", "lease_until"})
_MERGE_HOPS = 16
#: What replaces the customer's values in free text that is kept.
REDACTED = "[erased]"
#: Values shorter than this are not cut out of texts: they would match too much.
_SHORTEST_VALUE = 2
_QUERY = re.compile(r"[?#]\S*")

#: What erasure does to each table that names a customer (and is documented so).
#: A table not listed here that has a profile column loses the customer's rows.
ERASURE_RULES: dict[str, str] = {
    "profiles": "columns and traits emptied, erased_at set; the row stays",
    "identities": "deleted",
    "events": "properties, traits, context, ids and error removed; unprocessed ones marked done",
    "instances": "state and entry key removed; active ones exited with reason erased",
    "listeners": "deleted",
    "timers": "deleted",
    "outbox": "address, rendered content, payload and error removed; unsent ones skipped",
    "message_events": "url, ip, user agent and detail removed",
    "tasks": "reason, script and note removed; open ones closed with outcome erased",
    "consents": "kept as the legal record: addresses pseudonymised, ip and user agent removed, "
    "query strings cut from sources; a withdrawal per channel added",
    "suppressions": "kept, addresses pseudonymised; an erased suppression per address added",
    "segment_members": "deleted",
    "segment_timers": "deleted",
    "date_timers": "deleted",
    "product_interest": "deleted",
    "broadcast_recipients": "pending ones deleted; queued ones keep ids with the zone removed",
    "segment_changes": "kept (ids and times only)",
    "conversions": "kept (ids, event name, value)",
    "attributions": "kept (ids, channel, value)",
    "promo_codes": "kept (the code stays issued and redeemed)",
    "erasures": "kept: the log of erasures",
}
#: Rules for the tables the erasure always handles itself (the rest fall back to deletion).
_KEEP = frozenset({"segment_changes", "conversions", "attributions", "promo_codes", "erasures"})


@dataclass(frozen=True)
class Customer:
    """Whom a reference names: the surviving profile, the ones merged into it, erased or not."""

    profile_id: int
    merged: tuple[int, ...]
    erased: bool

    @property
    def ids(self) -> list[int]:
        return [self.profile_id, *self.merged]


def find_customer(conn: Connection, workspace_id: str, ref: str) -> Customer:
    """The customer ``ref`` names: a user id, or ``#<profile id>``.

    A merged profile resolves to its survivor. A user id that no longer
    resolves but was erased finds the erased profile through the erasure log.
    Raises :class:`NotFound` otherwise.
    """
    pid: int | None
    if ref.startswith("#"):
        try:
            pid = int(ref[1:])
        except ValueError:
            raise InputError(f"profile reference {ref!r} is not '#' and a number") from None
    else:
        pid = conn.execute(
            select(identities.c.profile_id).where(
                identities.c.workspace_id == workspace_id,
                identities.c.kind == "user_id",
                identities.c.value == ref,
            )
        ).scalar()
        if pid is None:
            pid = conn.execute(
                select(erasures.c.profile_id)
                .where(
                    erasures.c.workspace_id == workspace_id,
                    erasures.c.user_hash == pseudonym(workspace_id, ref),
                )
                .order_by(erasures.c.id.desc())
                .limit(1)
            ).scalar()
    row = None
    for _ in range(_MERGE_HOPS):
        if pid is None:
            break
        row = conn.execute(
            select(profiles.c.id, profiles.c.merged_into, profiles.c.erased_at).where(
                profiles.c.workspace_id == workspace_id, profiles.c.id == pid
            )
        ).first()
        if row is None or row.merged_into is None:
            break
        pid = row.merged_into
    if row is None or row.merged_into is not None:
        raise NotFound(f"no profile {ref!r} in this workspace")
    return Customer(
        profile_id=row.id,
        merged=tuple(_merged_into(conn, workspace_id, row.id)),
        erased=row.erased_at is not None,
    )


def _merged_into(conn: Connection, workspace_id: str, pid: int) -> list[int]:
    """Every profile merged (directly or through others) into ``pid``."""
    found: list[int] = []
    frontier = [pid]
    for _ in range(_MERGE_HOPS):
        if not frontier:
            break
        frontier = list(
            conn.execute(
                select(profiles.c.id).where(
                    profiles.c.workspace_id == workspace_id, profiles.c.merged_into.in_(frontier)
                )
            ).scalars()
        )
        found.extend(frontier)
    return sorted(found)


# -- export ----------------------------------------------------------------------------


def export_customer(conn: Connection, workspace_id: str, ref: str) -> dict[str, Any]:
    """Everything held about the customer ``ref`` names, as JSON-ready data.

    For an erased customer, only the legal record: the erasure log, the
    consent ledger and the suppressions kept for them.
    """
    customer = find_customer(conn, workspace_id, ref)
    if customer.erased:
        return legal_record(conn, workspace_id, customer)
    ids = customer.ids
    data: dict[str, Any] = {
        "profile_id": customer.profile_id,
        "erased": False,
        "profile": _rows(conn, select(profiles).where(profiles.c.id == customer.profile_id))[0],
        "merged_profiles": _rows(conn, select(profiles).where(profiles.c.id.in_(customer.merged))),
    }
    tables: dict[str, list[dict[str, Any]]] = {}
    for table, columns in _customer_tables():
        query = select(table).where(
            table.c.workspace_id == workspace_id, or_(*(c.in_(ids) for c in columns))
        )
        order = [c for c in (table.c.get("id"), table.c.get("at")) if c is not None]
        tables[table.name] = _rows(conn, query.order_by(*order))
    outbox_ids = [r["id"] for r in tables.get("outbox", [])]
    instance_ids = [r["id"] for r in tables.get("instances", [])]
    tables["short_links"] = _rows(
        conn,
        select(short_links)
        .where(short_links.c.workspace_id == workspace_id, short_links.c.outbox_id.in_(outbox_ids))
        .order_by(short_links.c.created_at),
    )
    tables["step_log"] = _rows(
        conn,
        select(step_log)
        .where(step_log.c.workspace_id == workspace_id, step_log.c.instance_id.in_(instance_ids))
        .order_by(step_log.c.id),
    )
    addresses = _addresses(conn, workspace_id, ids)
    tables["suppressions"] = _rows(
        conn,
        select(suppressions)
        .where(
            suppressions.c.workspace_id == workspace_id,
            _suppression_match(workspace_id, ids, addresses),
        )
        .order_by(suppressions.c.id),
    )
    data.update(dict(sorted(tables.items())))
    data["journey_keys"] = _names(conn, journeys, workspace_id, tables, "journey_id")
    data["segment_keys"] = _names(conn, segments, workspace_id, tables, "segment_id")
    return data


def legal_record(conn: Connection, workspace_id: str, customer: Customer) -> dict[str, Any]:
    """What erasure keeps: its log, the consent ledger and the suppressions."""
    ids = customer.ids
    return {
        "profile_id": customer.profile_id,
        "erased": True,
        "erasures": _rows(
            conn,
            select(erasures)
            .where(erasures.c.workspace_id == workspace_id, erasures.c.profile_id.in_(ids))
            .order_by(erasures.c.id),
        ),
        "consents": _rows(
            conn,
            select(consents)
            .where(consents.c.workspace_id == workspace_id, consents.c.profile_id.in_(ids))
            .order_by(consents.c.at, consents.c.id),
        ),
        "suppressions": _rows(
            conn,
            select(suppressions)
            .where(suppressions.c.workspace_id == workspace_id, suppressions.c.profile_id.in_(ids))
            .order_by(suppressions.c.id),
        ),
    }


def _customer_tables() -> list[tuple[Table, list[Column[Any]]]]:
    """Every table with columns naming a customer (found in the metadata), and those columns.

    Suppressions and the erasure log are read apart: they are found by
    address, and are the legal record.
    """
    found = []
    for table in metadata.sorted_tables:
        if "workspace_id" not in table.c or table.name in ("suppressions", "erasures"):
            continue
        columns = [table.c[name] for name in PROFILE_REFS if name in table.c]
        if columns:
            found.append((table, columns))
    return found


def _rows(conn: Connection, query: Any) -> list[dict[str, Any]]:
    return [
        {k: _jsonable(v) for k, v in row._mapping.items() if k not in _MACHINERY}
        for row in conn.execute(query)
    ]


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    return value


def _names(
    conn: Connection,
    table: Table,
    workspace_id: str,
    tables: dict[str, list[dict[str, Any]]],
    column: str,
) -> dict[str, str]:
    """``{id: key}`` for the journeys or segments the exported rows mention."""
    wanted = sorted({r[column] for rows in tables.values() for r in rows if r.get(column)})
    if not wanted:
        return {}
    found = conn.execute(
        select(table.c.id, table.c.key).where(
            table.c.workspace_id == workspace_id, table.c.id.in_(wanted)
        )
    )
    return {str(i): key for i, key in found}


def _addresses(conn: Connection, workspace_id: str, ids: Sequence[int]) -> dict[str, set[str]]:
    """``{channel: addresses}`` the customer was reached at: profile columns, messages, consents."""
    found: dict[str, set[str]] = {channel: set() for channel in ADDRESS_FIELDS}
    for row in conn.execute(
        select(profiles.c.email, profiles.c.phone).where(profiles.c.id.in_(ids))
    ):
        for channel, field in ADDRESS_FIELDS.items():
            if getattr(row, field):
                found[channel].add(normal_address(getattr(row, field)))
    for table in (outbox, consents):
        for channel, address in conn.execute(
            select(table.c.channel, table.c.address)
            .where(
                table.c.workspace_id == workspace_id,
                table.c.profile_id.in_(ids),
                table.c.address.is_not(None),
            )
            .distinct()
        ):
            found.setdefault(channel, set()).add(normal_address(address))
    return found


def _suppression_match(
    workspace_id: str, ids: Sequence[int], addresses: dict[str, set[str]]
) -> Any:
    pairs = [
        and_(
            suppressions.c.channel == channel,
            suppressions.c.address.in_(
                sorted({a for a in plain} | {pseudonym(workspace_id, a) for a in plain})
            ),
        )
        for channel, plain in addresses.items()
        if plain
    ]
    return or_(suppressions.c.profile_id.in_(ids), *pairs)


# -- erasure ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Erasure:
    """What one erasure did: the log row's id and the rows it changed, by kind."""

    id: int
    profile_id: int
    at: datetime
    requested_by: str
    counts: dict[str, int]

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "profile_id": self.profile_id,
            "at": self.at.isoformat(),
            "requested_by": self.requested_by,
            "counts": self.counts,
        }


def erase_customer(
    conn: Connection, workspace_id: str, ref: str, *, requested_by: str, now: datetime
) -> Erasure:
    """Erase the customer ``ref`` names, inside the caller's transaction (see module doc)."""
    requested_by = requested_by.strip()[:200]
    if not requested_by:
        raise InputError("requested_by: say who asked for the erasure")
    customer = find_customer(conn, workspace_id, ref)
    ids = customer.ids
    user_ids = _user_ids(conn, workspace_id, ids)
    addresses = _addresses(conn, workspace_id, ids)
    personal = _personal_values(conn, workspace_id, ids, addresses)
    counts: dict[str, int] = {}

    def count(name: str, result: Any) -> None:
        n = int(result.rowcount or 0)
        counts[name] = counts.get(name, 0) + max(n, 0)

    # The legal record first, while the addresses are still known.
    counts["consents_withdrawn"] = _withdraw_all(conn, workspace_id, customer, addresses, now=now)
    counts["consents_kept"] = _pseudonymise_consents(conn, workspace_id, ids)
    counts["suppressions_kept"] = _pseudonymise_suppressions(
        conn, workspace_id, ids, addresses, now=now
    )

    # Leaving its segments is recorded (sizes over time stay true) but not announced.
    from touchline.audience.segments import forget_profiles

    forget_profiles(conn, workspace_id, list(ids), now=now)
    count(
        "identities",
        conn.execute(
            delete(identities).where(
                identities.c.workspace_id == workspace_id, identities.c.profile_id.in_(ids)
            )
        ),
    )
    mine = (events.c.workspace_id == workspace_id, events.c.profile_id.in_(ids))
    count(
        "events_cancelled",
        conn.execute(
            update(events)
            .where(*mine, events.c.status == EVENT_PENDING)
            .values(status=EVENT_DONE, lease_owner=None, lease_until=None)
        ),
    )
    count(
        "events",
        conn.execute(
            update(events)
            .where(*mine)
            .values(
                properties={},
                traits=None,
                context=None,
                user_id=None,
                anonymous_id=None,
                error=None,
            )
        ),
    )

    mine = (instances.c.workspace_id == workspace_id, instances.c.profile_id.in_(ids))
    count(
        "instances_ended",
        conn.execute(
            update(instances)
            .where(*mine, instances.c.status == "active")
            .values(status="exited", exit_reason=ERASED, ended_at=now, updated_at=now)
        ),
    )
    count(
        "instances", conn.execute(update(instances).where(*mine).values(state={}, entry_key=None))
    )

    outbox_ids = list(
        conn.execute(
            select(outbox.c.id).where(
                outbox.c.workspace_id == workspace_id, outbox.c.profile_id.in_(ids)
            )
        ).scalars()
    )
    count(
        "short_links",
        conn.execute(
            delete(short_links).where(
                short_links.c.workspace_id == workspace_id, short_links.c.outbox_id.in_(outbox_ids)
            )
        ),
    )
    mine = (outbox.c.workspace_id == workspace_id, outbox.c.profile_id.in_(ids))
    count(
        "outbox_cancelled",
        conn.execute(
            update(outbox)
            .where(*mine, outbox.c.status.in_(("pending", "sending")))
            .values(status="skipped", reason=ERASED, lease_owner=None, lease_until=None)
        ),
    )
    count(
        "outbox",
        conn.execute(
            update(outbox).where(*mine).values(address=None, rendered=None, payload={}, error=None)
        ),
    )

    count(
        "message_events",
        conn.execute(
            update(message_events)
            .where(
                message_events.c.workspace_id == workspace_id, message_events.c.profile_id.in_(ids)
            )
            .values(url=None, ip=None, user_agent=None, detail=None)
        ),
    )

    mine = (tasks.c.workspace_id == workspace_id, tasks.c.profile_id.in_(ids))
    count(
        "tasks_closed",
        conn.execute(
            update(tasks)
            .where(*mine, tasks.c.status != "closed")
            .values(status="closed", outcome=ERASED, closed_at=now)
        ),
    )
    count(
        "tasks",
        conn.execute(update(tasks).where(*mine).values(reason=ERASED, script="", note=None)),
    )

    for table, columns in _customer_tables():
        if table.name in _HANDLED or table.name in _KEEP:
            continue
        theirs = (table.c.workspace_id == workspace_id, or_(*(c.in_(ids) for c in columns)))
        if table.name == "broadcast_recipients":
            # Queued recipients point at their messages; only those not yet queued go.
            count(
                table.name, conn.execute(delete(table).where(*theirs, table.c.status == "pending"))
            )
            conn.execute(update(table).where(*theirs).values(zone=""))
            continue
        count(table.name, conn.execute(delete(table).where(*theirs)))

    count(
        "profiles",
        conn.execute(
            update(profiles)
            .where(profiles.c.id.in_(ids))
            .values(
                user_id=None,
                email=None,
                phone=None,
                phone_valid=None,
                timezone=None,
                locale=None,
                birthday=None,
                first_name=None,
                last_name=None,
                traits={},
                last_seen_at=None,
                updated_at=now,
                erased_at=now,
            )
        ),
    )

    # What is kept may still quote the customer in free text (a consent source an
    # operator typed, a message id): every known value of theirs is cut out of it.
    counts["texts_scrubbed"] = _scrub(conn, workspace_id, customer, personal)
    requested_by = _redact(requested_by, personal)

    record = {
        "workspace_id": workspace_id,
        "profile_id": customer.profile_id,
        "user_hash": pseudonym(workspace_id, user_ids[0]) if user_ids else None,
        "requested_by": requested_by,
        "at": now,
        "counts": counts,
    }
    key = conn.execute(insert(erasures).values(**record)).inserted_primary_key
    assert key is not None
    for other in user_ids[1:]:  # each user id the customer had can find the record
        conn.execute(
            insert(erasures).values(**{**record, "user_hash": pseudonym(workspace_id, other)})
        )
    return Erasure(int(key[0]), customer.profile_id, now, requested_by, counts)


def _user_ids(conn: Connection, workspace_id: str, ids: Sequence[int]) -> list[str]:
    """Every user id the customer is known by: the profile's first, then aliases."""
    main = conn.execute(
        select(profiles.c.user_id).where(profiles.c.id.in_(ids), profiles.c.user_id.is_not(None))
    ).scalars()
    aliases = conn.execute(
        select(identities.c.value).where(
            identities.c.workspace_id == workspace_id,
            identities.c.profile_id.in_(ids),
            identities.c.kind == "user_id",
        )
    ).scalars()
    return list(dict.fromkeys([*main, *sorted(aliases)]))


def _personal_values(
    conn: Connection, workspace_id: str, ids: Sequence[int], addresses: dict[str, set[str]]
) -> set[str]:
    """The texts that identify the customer: ids, addresses, phone forms, names."""
    values: set[str] = set(
        conn.execute(
            select(identities.c.value).where(
                identities.c.workspace_id == workspace_id, identities.c.profile_id.in_(ids)
            )
        ).scalars()
    )
    for row in conn.execute(
        select(
            profiles.c.user_id,
            profiles.c.email,
            profiles.c.phone,
            profiles.c.first_name,
            profiles.c.last_name,
        ).where(profiles.c.id.in_(ids))
    ):
        values.update(v for v in row if v)
    for plain in addresses.values():
        values.update(a for a in plain if not a.startswith(PSEUDONYM_PREFIX))
    for value in list(values):
        if value.startswith("+") and value[1:].isdigit():
            values.add(value[1:])
            national = _national_number(value)
            if national:
                values.add(national)
    return {v for v in values if len(v.strip()) >= _SHORTEST_VALUE}


def _national_number(phone: str) -> str | None:
    import phonenumbers

    try:
        return str(phonenumbers.parse(phone).national_number)
    except phonenumbers.NumberParseException:
        return None


def _redact(text: str, values: set[str]) -> str:
    pattern = _pattern(values)
    return pattern.sub(REDACTED, text) if pattern else text


def _pattern(values: set[str]) -> re.Pattern[str] | None:
    if not values:
        return None
    ordered = sorted(values, key=len, reverse=True)
    return re.compile("|".join(re.escape(v) for v in ordered), re.IGNORECASE)


def _scrub(conn: Connection, workspace_id: str, customer: Customer, values: set[str]) -> int:
    """Replace the customer's known values in every text column of their remaining rows."""
    pattern = _pattern(values)
    if pattern is None:
        return 0
    ids = customer.ids
    instance_ids = select(instances.c.id).where(
        instances.c.workspace_id == workspace_id, instances.c.profile_id.in_(ids)
    )
    targets: list[tuple[Table, Any]] = [
        (table, or_(*(c.in_(ids) for c in columns))) for table, columns in _customer_tables()
    ]
    targets.append((step_log, step_log.c.instance_id.in_(instance_ids)))
    targets.append((suppressions, suppressions.c.profile_id.in_(ids)))
    changed = 0
    for table, theirs in targets:
        keys = list(table.primary_key.columns)
        texts = [c for c in table.c if isinstance(c.type, String) and c not in keys]
        if not keys or not texts:
            continue
        rows = conn.execute(
            select(*keys, *texts).where(table.c.workspace_id == workspace_id, theirs)
        ).all()
        for row in rows:
            fixed = {
                c.name: pattern.sub(REDACTED, row._mapping[c.name])
                for c in texts
                if row._mapping[c.name] and pattern.search(row._mapping[c.name])
            }
            if fixed:
                conn.execute(
                    update(table).where(*(k == row._mapping[k.name] for k in keys)).values(**fixed)
                )
                changed += 1
    return changed


#: Tables erase_customer handles with their own statements above.
_HANDLED = frozenset(
    {
        "profiles",
        "identities",
        "events",
        "instances",
        "outbox",
        "message_events",
        "tasks",
        "consents",
        "suppressions",
    }
)


def _withdraw_all(
    conn: Connection,
    workspace_id: str,
    customer: Customer,
    addresses: dict[str, set[str]],
    *,
    now: datetime,
) -> int:
    """A withdrawal with source ``erased`` on every channel not already withdrawn so."""
    records = load_consents(conn, workspace_id, customer.profile_id)
    rows = []
    for channel in sorted(CONSENT_CHANNELS):
        held, latest = consent_state(records, channel=channel, purpose=MARKETING)
        if latest is not None and not latest.granted and latest.source == ERASED:
            continue
        plain = sorted(addresses.get(channel, ()))
        rows.append(
            {
                "workspace_id": workspace_id,
                "profile_id": customer.profile_id,
                "channel": channel,
                "purpose": MARKETING,
                "topic": None,
                "granted": False,
                "confirmed": True,
                "at": now,
                "source": ERASED,
                "address": pseudonym(workspace_id, plain[0]) if plain else None,
            }
        )
    if rows:
        conn.execute(insert(consents), rows)
    return len(rows)


def _pseudonymise_consents(conn: Connection, workspace_id: str, ids: Sequence[int]) -> int:
    """Ledger rows keep their facts; addresses become pseudonyms, IPs and agents go."""
    found = conn.execute(
        select(consents.c.id, consents.c.address, consents.c.source).where(
            consents.c.workspace_id == workspace_id, consents.c.profile_id.in_(ids)
        )
    ).all()
    for row in found:
        conn.execute(
            update(consents)
            .where(consents.c.id == row.id)
            .values(
                address=pseudonym(workspace_id, row.address) if row.address else None,
                ip=None,
                user_agent=None,
                source=_QUERY.sub("", row.source) or ERASED,
            )
        )
    return len(found)


def _pseudonymise_suppressions(
    conn: Connection,
    workspace_id: str,
    ids: Sequence[int],
    addresses: dict[str, set[str]],
    *,
    now: datetime,
) -> int:
    """Suppressions of the customer's addresses live on as pseudonyms, plus ``erased`` ones."""
    found = conn.execute(
        select(suppressions).where(
            suppressions.c.workspace_id == workspace_id,
            _suppression_match(workspace_id, ids, addresses),
        )
    ).all()
    for row in found:
        if row.address.startswith(PSEUDONYM_PREFIX):
            conn.execute(
                update(suppressions).where(suppressions.c.id == row.id).values(detail=None)
            )
            continue
        _suppress(
            conn,
            workspace_id,
            row.channel,
            pseudonym(workspace_id, row.address),
            row.reason,
            row.at,
            row.profile_id,
        )
        conn.execute(delete(suppressions).where(suppressions.c.id == row.id))
    added = 0
    for channel, plain in sorted(addresses.items()):
        if channel not in ADDRESS_FIELDS:
            continue
        for address in sorted(plain):
            added += _suppress(
                conn, workspace_id, channel, pseudonym(workspace_id, address), ERASED, now, ids[0]
            )
    return len(found) + added


def _suppress(
    conn: Connection,
    workspace_id: str,
    channel: str,
    address: str,
    reason: str,
    at: datetime,
    profile_id: int | None,
) -> int:
    return insert_ignore(
        conn,
        suppressions,
        {
            "workspace_id": workspace_id,
            "channel": channel,
            "address": address,
            "reason": reason,
            "profile_id": profile_id,
            "detail": None,
            "at": at,
        },
        key=["workspace_id", "channel", "address", "reason"],
    )


def erasures_of(conn: Connection, workspace_id: str, ids: Iterable[int]) -> list[dict[str, Any]]:
    """The erasure log rows of these profiles, oldest first."""
    return _rows(
        conn,
        select(erasures)
        .where(erasures.c.workspace_id == workspace_id, erasures.c.profile_id.in_(list(ids)))
        .order_by(erasures.c.id),
    )


__all__ = [
    "ERASED",
    "ERASURE_RULES",
    "Customer",
    "Erasure",
    "erase_customer",
    "erasures_of",
    "export_customer",
    "find_customer",
    "legal_record",
]
