"""Storing incoming events: identity resolution, profile traits, event rows.

:func:`ingest` stores a list of :class:`~touchline.ingest.segment.IncomingEvent`
in ONE transaction and leaves every new event ``EVENT_PENDING`` for a worker.

Contract:

* **Deduplication** by ``(workspace_id, message_id)``: a message already stored,
  or repeated within the call, is counted in ``duplicates`` and has no effect
  at all (no identity change, no trait update). The insert itself is
  ``INSERT ... ON CONFLICT DO NOTHING``, so concurrent callers cannot store a
  message twice either.
* **Identity resolution** (table ``identities``: ``(kind, value) -> profile``,
  kinds ``user_id`` and ``anonymous_id``). Any message carrying both a userId
  and an anonymousId links them:

  - neither known: a new profile gets both;
  - one known: the other is attached to it (an anonymous profile that gains a
    userId gets ``profiles.user_id`` set);
  - both known, different profiles: if the anonymous one has no user id it is
    **merged** into the user's profile; if it belongs to another known customer
    (a shared device) nothing is merged and the anonymousId now points at the
    customer who signed in.

  ``alias`` (``previousId -> userId``) states that two ids are one person:
  ``previousId`` is looked up as a user id, then as an anonymous id; if both
  sides have profiles they are merged (the userId's profile survives), whatever
  user ids they carry. An unknown ``previousId`` is recorded as an anonymous id.
* **Merging** moves the loser's identities and events (``events.profile_id``)
  to the survivor, copies each known column and custom trait the survivor
  lacks, and sets ``merged_into`` on the loser (which keeps its other columns;
  readers skip profiles with ``merged_into`` set). Journey state keyed by
  profile (instances, listeners, timers, outbox, conversions) moves too, so a
  journey an anonymous visitor began carries on for the known customer.
* **Traits**: each ``identify`` applies :func:`~touchline.ingest.traits.normalize_traits`
  in message order (later wins); custom traits are merged into ``profiles.traits``;
  context locale/timezone fill only empty columns.
* **Event rows**: ``name`` is the track event or page/screen name and NULL for
  identify, group and alias. ``traits`` holds the raw identify/group traits.
  ``alias`` stores ``properties.previousId``; ``group`` stores ``properties.groupId``.
* ``profiles.last_seen_at`` becomes ``now`` for every profile with a new event.

Round trips for a batch of known profiles: dedupe check, identity lookup,
event insert (one executemany), last-seen update — IN lists are chunked at
:data:`IN_CHUNK`. New people add one profile insert and one identity insert;
merges and trait updates one executemany UPDATE per table.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from sqlalchemy import Connection, Engine, Table, bindparam, func, select, union_all, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from touchline.errors import InputError, NotFound, StoreError
from touchline.ingest.segment import IncomingEvent
from touchline.ingest.traits import NormalizedTraits, normalize_traits
from touchline.store.db import run_in_transaction
from touchline.store.tables import (
    EVENT_PENDING,
    consents,
    conversions,
    events,
    identities,
    instances,
    listeners,
    outbox,
    profiles,
    promo_codes,
    tasks,
    timers,
)

USER, ANON = "user_id", "anonymous_id"
# Values per IN (...) list: far below SQLite's bound-parameter limit, and
# short enough for PostgreSQL to plan as index lookups.
IN_CHUNK = 500
# Most events one list_events call returns.
MAX_LIST_LIMIT = 1000
# Known profile columns an identify can set and a merge can fill.
PROFILE_COLUMNS = (
    "email",
    "phone",
    "phone_valid",
    "timezone",
    "locale",
    "birthday",
    "first_name",
    "last_name",
)
_MERGE_HOPS = 16  # merged_into chains longer than this mean corrupt data

Key = tuple[str, str]


@dataclass(frozen=True)
class IngestResult:
    """How many of the given events were stored, and how many were already known."""

    accepted: int
    duplicates: int


def ingest(
    engine: Engine, workspace_id: str, events: Sequence[IncomingEvent], *, now: datetime
) -> IngestResult:
    """Store ``events`` for the workspace in one transaction (see module docstring).

    ``now`` stamps profile ``created_at``/``updated_at``/``last_seen_at``.
    """
    if not events:
        return IngestResult(accepted=0, duplicates=0)
    # A merge moves rows a worker may hold; on a deadlock the batch runs again.
    return run_in_transaction(
        engine, lambda conn: ingest_events(conn, workspace_id, events, now=now)
    )


def ingest_events(
    conn: Connection, workspace_id: str, events: Sequence[IncomingEvent], *, now: datetime
) -> IngestResult:
    """:func:`ingest` inside the caller's transaction."""
    return _Batch(conn, workspace_id, now).run(events)


class _Resolver:
    """Replays the identity rules over a batch in memory.

    Profiles created during the batch get negative (virtual) ids until they
    are inserted. ``merged`` maps each loser to its survivor.
    """

    def __init__(self, found: dict[Key, int], user_of: dict[int, str | None]) -> None:
        self.ident = dict(found)
        self.user_of = dict(user_of)
        self.merged: dict[int, int] = {}
        self.dirty: set[Key] = set()
        self._next_virtual = -1

    def root(self, pid: int) -> int:
        while pid in self.merged:
            pid = self.merged[pid]
        return pid

    def resolve(self, event: IncomingEvent) -> int:
        if event.type == "alias":
            assert event.previous_id is not None and event.user_id is not None
            return self._alias(event.previous_id, event.user_id)
        if event.user_id is not None and event.anonymous_id is not None:
            return self._link(event.user_id, event.anonymous_id)
        if event.user_id is not None:
            return self._lookup(USER, event.user_id) or self._new(user=event.user_id)
        assert event.anonymous_id is not None
        return self._lookup(ANON, event.anonymous_id) or self._new(anon=event.anonymous_id)

    def _link(self, user_id: str, anonymous_id: str) -> int:
        by_user = self._lookup(USER, user_id)
        by_anon = self._lookup(ANON, anonymous_id)
        if by_user is None and by_anon is None:
            return self._new(user=user_id, anon=anonymous_id)
        if by_user is None:
            assert by_anon is not None
            if self.user_of[by_anon] is None:
                self.user_of[by_anon] = user_id
                self._assign(USER, user_id, by_anon)
                return by_anon
            return self._new(user=user_id, anon=anonymous_id)  # shared device
        if by_anon is None:
            self._assign(ANON, anonymous_id, by_user)
        elif by_anon != by_user:
            if self.user_of[by_anon] is None:
                self.merged[by_anon] = by_user
            else:
                self._assign(ANON, anonymous_id, by_user)  # shared device
        return by_user

    def _alias(self, previous_id: str, user_id: str) -> int:
        by_prev = self._lookup(USER, previous_id) or self._lookup(ANON, previous_id)
        by_user = self._lookup(USER, user_id)
        if by_prev is None and by_user is None:
            return self._new(user=user_id, anon=previous_id)
        if by_prev is None:
            assert by_user is not None
            self._assign(ANON, previous_id, by_user)
            return by_user
        if by_user is None:
            self.user_of[by_prev] = user_id
            self._assign(USER, user_id, by_prev)
            return by_prev
        if by_prev != by_user:
            self.merged[by_prev] = by_user
        return by_user

    def _lookup(self, kind: str, value: str) -> int | None:
        pid = self.ident.get((kind, value))
        return None if pid is None else self.root(pid)

    def _new(self, *, user: str | None = None, anon: str | None = None) -> int:
        pid = self._next_virtual
        self._next_virtual -= 1
        self.user_of[pid] = user
        if user is not None:
            self._assign(USER, user, pid)
        if anon is not None:
            self._assign(ANON, anon, pid)
        return pid

    def _assign(self, kind: str, value: str, pid: int) -> None:
        self.ident[(kind, value)] = pid
        self.dirty.add((kind, value))


class _Batch:
    """One ingest call: the connection, workspace and time shared by its steps."""

    def __init__(self, conn: Connection, workspace_id: str, now: datetime) -> None:
        self.conn = conn
        self.ws = workspace_id
        self.now = now
        dialect = conn.dialect.name
        if dialect not in ("postgresql", "sqlite"):
            raise StoreError(f"touchline stores run on SQLite or PostgreSQL, not {dialect}")
        self._insert = pg_insert if dialect == "postgresql" else sqlite_insert

    def run(self, batch: Sequence[IncomingEvent]) -> IngestResult:
        fresh = self._fresh(batch)
        if not fresh:
            return IngestResult(accepted=0, duplicates=len(batch))

        # Replay the identity rules in memory over what the store knows.
        found, user_of = self._lookup(_identity_keys(fresh))
        resolver = _Resolver(found, user_of)
        pids = [resolver.resolve(event) for event in fresh]
        # Grouped by final root, now that every merge of the batch is known.
        traits: dict[int, list[NormalizedTraits]] = defaultdict(list)
        for event, pid in zip(fresh, pids, strict=True):
            if event.type == "identify":
                normalized = normalize_traits(event.traits or {}, context=event.context)
                traits[resolver.root(pid)].append(normalized)
        losers: dict[int, list[int]] = defaultdict(list)  # survivor -> stored losers
        for loser in resolver.merged:
            if loser > 0:
                losers[resolver.root(loser)].append(loser)
        changed = {
            pid
            for pid in resolver.user_of
            if pid > 0
            and pid not in resolver.merged
            and (pid in traits or pid in losers or resolver.user_of[pid] != user_of[pid])
        }
        rows = self._profiles(changed | {loser for loser in resolver.merged if loser > 0})

        # Profiles born in this batch are inserted with their final state.
        born = [p for p in resolver.user_of if p < 0 and p not in resolver.merged]
        states = {
            v: _state(
                {"user_id": resolver.user_of[v], "traits": {}},
                donors=[rows[loser] for loser in losers.get(v, ())],
                updates=traits.get(v, ()),
            )
            for v in born
        }
        real_id = dict(zip(born, self._create_profiles([states[v] for v in born]), strict=True))

        def final(pid: int) -> int:
            root = resolver.root(pid)
            return real_id.get(root, root)

        # Identities and history follow merges.
        merges = {loser: final(loser) for group in losers.values() for loser in group}
        self._move(merges)
        redirects = self._write_identities(resolver, found, final, created=set(real_id.values()))
        if redirects:  # another transaction created some of our new people first
            virtual_of = {real: virtual for virtual, real in real_id.items()}
            for ours, theirs in redirects.items():
                merges[ours] = theirs
                rows[ours] = {**states[virtual_of[ours]], "id": ours}
                traits[theirs].extend(traits.get(virtual_of[ours], ()))
            self._move(redirects)
            rows.update(self._profiles(set(redirects.values()) - rows.keys()))

        owners = [redirects.get(final(pid), final(pid)) for pid in pids]
        accepted = self._insert_events(fresh, owners)

        # Survivors and identified profiles are rewritten; the rest get last_seen_at.
        rewrite = {final(pid) for pid in changed} | set(redirects.values())
        donors: dict[int, list[int]] = defaultdict(list)
        for loser, survivor in merges.items():
            donors[redirects.get(survivor, survivor)].append(loser)
        self._rewrite_profiles(
            [
                _state(
                    {**rows[pid], "user_id": resolver.user_of.get(pid) or rows[pid]["user_id"]},
                    donors=[rows[d] for d in donors.get(pid, ())],
                    updates=traits.get(pid, ()),
                )
                | {"id": pid}
                for pid in sorted(rewrite)
            ]
        )
        self._mark_merged({lo: redirects.get(su, su) for lo, su in merges.items() if lo > 0})
        self._touch(set(owners) - rewrite - set(real_id.values()))
        return IngestResult(accepted=accepted, duplicates=len(batch) - accepted)

    # -- steps -------------------------------------------------------------

    def _fresh(self, batch: Sequence[IncomingEvent]) -> list[IncomingEvent]:
        """The events whose message ids are new to the store and to the batch."""
        unique: dict[str, IncomingEvent] = {}
        for event in batch:
            unique.setdefault(event.message_id, event)
        known: set[str] = set()
        for chunk in _chunks(list(unique)):
            known.update(
                self.conn.execute(
                    select(events.c.message_id).where(
                        events.c.workspace_id == self.ws, events.c.message_id.in_(chunk)
                    )
                ).scalars()
            )
        return [event for mid, event in unique.items() if mid not in known]

    def _lookup(self, keys: set[Key]) -> tuple[dict[Key, int], dict[int, str | None]]:
        """Profiles of the given identities, and each such profile's user id."""
        found: dict[Key, int] = {}
        user_of: dict[int, str | None] = {}
        by_kind: dict[str, list[str]] = defaultdict(list)
        for kind, value in keys:
            by_kind[kind].append(value)
        selects = []
        for kind, values in by_kind.items():
            for chunk in _chunks(values):
                selects.append(
                    select(
                        identities.c.kind,
                        identities.c.value,
                        identities.c.profile_id,
                        profiles.c.user_id,
                    )
                    .join(profiles, profiles.c.id == identities.c.profile_id)
                    .where(
                        identities.c.workspace_id == self.ws,
                        identities.c.kind == kind,
                        identities.c.value.in_(chunk),
                    )
                )
        if not selects:
            return found, user_of
        query = selects[0] if len(selects) == 1 else union_all(*selects)
        for kind, value, pid, user_id in self.conn.execute(query):
            found[(kind, value)] = pid
            user_of[pid] = user_id
        return found, user_of

    def _profiles(self, ids: Iterable[int]) -> dict[int, dict[str, Any]]:
        rows: dict[int, dict[str, Any]] = {}
        for chunk in _chunks(sorted(ids)):
            query = select(profiles).where(
                profiles.c.workspace_id == self.ws, profiles.c.id.in_(chunk)
            )
            for row in self.conn.execute(query):
                rows[row.id] = dict(row._mapping)
        return rows

    def _create_profiles(self, states: list[dict[str, Any]]) -> list[int]:
        """Insert one profile per state; their ids, in the same order."""
        if not states:
            return []
        rows = [
            {
                **{k: state[k] for k in _WRITTEN},
                "workspace_id": self.ws,
                "merged_into": None,
                "created_at": self.now,
                "updated_at": self.now,
                "last_seen_at": self.now,
            }
            for state in states
        ]
        if self.conn.dialect.name != "postgresql":
            stmt = profiles.insert().returning(profiles.c.id, sort_by_parameter_order=True)
            return list(self.conn.execute(stmt, rows).scalars())
        # PostgreSQL: reserve the ids in one query, then a plain executemany —
        # several times faster than RETURNING with ordered multi-row VALUES.
        sequence = func.pg_get_serial_sequence(profiles.name, profiles.c.id.name)
        ids = list(
            self.conn.execute(
                select(func.nextval(sequence)).select_from(func.generate_series(1, len(rows)))
            ).scalars()
        )
        self.conn.execute(
            profiles.insert(), [{**row, "id": pid} for row, pid in zip(rows, ids, strict=True)]
        )
        return ids

    def _move(self, merges: dict[int, int]) -> None:
        """Point the losers' identities and events at their survivors."""
        real = [{"b_loser": lo, "b_survivor": su} for lo, su in merges.items() if lo > 0]
        if not real:
            return
        for table in (identities, events):
            self.conn.execute(
                update(table)
                .where(
                    table.c.workspace_id == self.ws,
                    table.c.profile_id == bindparam("b_loser"),
                )
                .values(profile_id=bindparam("b_survivor")),
                real,
            )

    def _write_identities(
        self,
        resolver: _Resolver,
        found: dict[Key, int],
        final: Callable[[int], int],
        *,
        created: set[int],
    ) -> dict[int, int]:
        """Insert new identities and repoint changed ones.

        Returns ``{our new profile: existing profile}`` for identities another
        transaction inserted first; the caller merges those profiles.
        """
        repoint: list[dict[str, Any]] = []
        new: list[dict[str, Any]] = []
        targets: dict[Key, int] = {}
        for kind, value in sorted(resolver.dirty):
            target = final(resolver.ident[(kind, value)])
            targets[(kind, value)] = target
            row = {"b_kind": kind, "b_value": value, "b_pid": target}
            if (kind, value) not in found:
                new.append(row)
            elif found[(kind, value)] != target:
                repoint.append(row)
        if repoint:
            self.conn.execute(
                update(identities)
                .where(
                    identities.c.workspace_id == self.ws,
                    identities.c.kind == bindparam("b_kind"),
                    identities.c.value == bindparam("b_value"),
                )
                .values(profile_id=bindparam("b_pid")),
                repoint,
            )
        if not new:
            return {}
        inserted = self._insert_ignoring_conflicts(
            identities,
            ["workspace_id", "kind", "value"],
            [
                {
                    "workspace_id": self.ws,
                    "kind": r["b_kind"],
                    "value": r["b_value"],
                    "profile_id": r["b_pid"],
                }
                for r in new
            ],
        )
        if inserted == len(new):
            return {}
        keys = {(r["b_kind"], r["b_value"]) for r in new}
        theirs, _ = self._lookup(keys)
        redirects: dict[int, int] = {}
        for key in sorted(keys):
            ours = targets[key]
            owner = theirs.get(key)
            if owner is not None and owner != ours and ours in created and ours not in redirects:
                redirects[ours] = owner
        return redirects

    def _insert_events(self, fresh: list[IncomingEvent], owners: list[int]) -> int:
        """Insert event rows; returns how many were new (not inserted concurrently)."""
        rows = [_event_row(self.ws, event, pid) for event, pid in zip(fresh, owners, strict=True)]
        return self._insert_ignoring_conflicts(events, ["workspace_id", "message_id"], rows)

    def _insert_ignoring_conflicts(
        self, table: Table, conflict_on: list[str], rows: list[dict[str, Any]]
    ) -> int:
        """``INSERT ... ON CONFLICT DO NOTHING`` as one executemany; rows inserted.

        A plain executemany with the driver's summed rowcount is about twice
        as fast on PostgreSQL as RETURNING through multi-row VALUES.
        """
        stmt = (
            self._insert(table)
            .on_conflict_do_nothing(index_elements=conflict_on)
            .execution_options(preserve_rowcount=True)
        )
        return int(self.conn.execute(stmt, rows).rowcount)

    def _rewrite_profiles(self, states: list[dict[str, Any]]) -> None:
        """Write each state's columns to profile ``state["id"]``, stamping it seen now."""
        if not states:
            return
        values: dict[str, Any] = {k: bindparam(f"b_{k}") for k in _WRITTEN}
        self.conn.execute(
            update(profiles)
            .where(profiles.c.id == bindparam("b_id"))
            .values(**values, updated_at=self.now, last_seen_at=self.now),
            [{f"b_{k}": state[k] for k in (*_WRITTEN, "id")} for state in states],
        )

    def _mark_merged(self, merged_into: dict[int, int]) -> None:
        rows = [{"b_id": lo, "b_into": su} for lo, su in sorted(merged_into.items())]
        if rows:
            self.conn.execute(
                update(profiles)
                .where(profiles.c.id == bindparam("b_id"))
                .values(merged_into=bindparam("b_into"), updated_at=self.now),
                rows,
            )
            for table in _FOLLOWS_PROFILE:
                self.conn.execute(
                    update(table)
                    .where(table.c.workspace_id == self.ws, table.c.profile_id == bindparam("b_id"))
                    .values(profile_id=bindparam("b_into")),
                    rows,
                )
            # Merged-away profiles are in no segment; the survivor is re-evaluated
            # when the worker processes this batch's events.
            from touchline.audience.segments import forget_profiles

            forget_profiles(self.conn, self.ws, [r["b_id"] for r in rows], now=self.now)

    def _touch(self, ids: set[int]) -> None:
        for chunk in _chunks(sorted(ids)):
            self.conn.execute(
                update(profiles)
                .where(profiles.c.workspace_id == self.ws, profiles.c.id.in_(chunk))
                .values(last_seen_at=self.now)
            )


# Journey state that follows a profile into the one it is merged into.
# Everything that belongs to the person moves to the survivor of a merge; each
# table has an index leading with (workspace_id, profile_id) or profile_id.
_FOLLOWS_PROFILE = (
    instances,
    listeners,
    timers,
    outbox,
    conversions,
    consents,
    promo_codes,
    tasks,
)

# Columns a profile insert or rewrite sets from the computed state.
_WRITTEN = ("user_id", *PROFILE_COLUMNS, "traits")


def _state(
    base: dict[str, Any],
    *,
    donors: Iterable[dict[str, Any]],
    updates: Iterable[NormalizedTraits],
) -> dict[str, Any]:
    """A profile's new values: ``base``, gaps filled from ``donors``, then ``updates``."""
    state: dict[str, Any] = {k: base.get(k) for k in _WRITTEN}
    state["traits"] = dict(base.get("traits") or {})
    for donor in donors:
        for column in PROFILE_COLUMNS:
            if column == "phone_valid":
                continue
            if state[column] is None and donor.get(column) is not None:
                state[column] = donor[column]
                if column == "phone":
                    state["phone_valid"] = donor.get("phone_valid")
        if state["user_id"] is None:
            state["user_id"] = donor.get("user_id")
        state["traits"] = {**(donor.get("traits") or {}), **state["traits"]}
    for normalized in updates:
        state.update(normalized.columns())
        if normalized.custom:
            state["traits"] = {**state["traits"], **normalized.custom}
        for column, value in normalized.fallbacks.items():
            if state[column] is None:
                state[column] = value
    return state


def _event_row(workspace_id: str, event: IncomingEvent, profile_id: int) -> dict[str, Any]:
    properties = event.properties
    if event.type == "alias":
        properties = {**properties, "previousId": event.previous_id}
    elif event.type == "group":
        properties = {**properties, "groupId": event.group_id}
    return {
        "workspace_id": workspace_id,
        "message_id": event.message_id,
        "type": event.type,
        "name": event.name,
        "profile_id": profile_id,
        "user_id": event.user_id,
        "anonymous_id": event.anonymous_id,
        "properties": properties,
        "traits": event.traits,
        "context": event.context or None,
        "timestamp": event.timestamp,
        "received_at": event.received_at,
        "status": EVENT_PENDING,
        "attempts": 0,
    }


def _identity_keys(batch: Iterable[IncomingEvent]) -> set[Key]:
    keys: set[Key] = set()
    for event in batch:
        if event.user_id is not None:
            keys.add((USER, event.user_id))
        if event.anonymous_id is not None and event.type != "alias":
            keys.add((ANON, event.anonymous_id))
        if event.previous_id is not None and event.type == "alias":
            keys.add((USER, event.previous_id))
            keys.add((ANON, event.previous_id))
    return keys


def _chunks(items: Sequence[Any], size: int = IN_CHUNK) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


# -- reads for the admin API ------------------------------------------------

# The largest id a BIGINT (and SQLite's INTEGER) column can hold.
MAX_ROW_ID = 2**63 - 1


def get_profile(conn: Connection, workspace_id: str, ref: str) -> dict[str, Any]:
    """One profile of the workspace as JSON-ready data, with its identities.

    ``ref`` is a user id (any id ever aliased to the profile works), or
    ``#<id>`` for the internal profile id. A merged profile resolves to the
    profile it was merged into. Raises :class:`NotFound` otherwise — also for
    profiles of other workspaces.
    """
    if ref.startswith("#"):
        try:
            number = int(ref[1:])
        except ValueError:
            raise InputError(f"profile reference {ref!r} is not '#' and a number") from None
        # Out of a BIGINT's range no row has it, and the drivers would refuse the number.
        pid: int | None = number if 0 < number <= MAX_ROW_ID else None
    else:
        pid = conn.execute(
            select(identities.c.profile_id).where(
                identities.c.workspace_id == workspace_id,
                identities.c.kind == USER,
                identities.c.value == ref,
            )
        ).scalar()
    row = None
    for _ in range(_MERGE_HOPS):
        if pid is None:
            break
        row = conn.execute(
            select(profiles).where(profiles.c.workspace_id == workspace_id, profiles.c.id == pid)
        ).first()
        if row is None or row.merged_into is None:
            break
        pid = row.merged_into
    if row is None or row.merged_into is not None:
        raise NotFound(f"no profile {ref!r} in this workspace")
    ids = conn.execute(
        select(identities.c.kind, identities.c.value)
        .where(identities.c.workspace_id == workspace_id, identities.c.profile_id == row.id)
        .order_by(identities.c.kind, identities.c.value)
    )
    data = {key: _jsonable(value) for key, value in row._mapping.items()}
    del data["workspace_id"], data["merged_into"]
    data["traits"] = data["traits"] or {}
    data["identities"] = [{"kind": kind, "value": value} for kind, value in ids]
    return data


def list_events(
    conn: Connection, workspace_id: str, *, profile_id: int | None = None, limit: int = 100
) -> list[dict[str, Any]]:
    """The workspace's events, newest first, as JSON-ready data.

    With ``profile_id``, only that profile's events (merged-in history
    included). ``limit`` is 1..:data:`MAX_LIST_LIMIT`.
    """
    if not 1 <= limit <= MAX_LIST_LIMIT:
        raise InputError(f"limit must be between 1 and {MAX_LIST_LIMIT}")
    columns = [c for c in events.c if c.name not in ("workspace_id", "lease_owner", "lease_until")]
    query = select(*columns).where(events.c.workspace_id == workspace_id)
    if profile_id is not None:
        query = query.where(events.c.profile_id == profile_id)
    query = query.order_by(events.c.timestamp.desc(), events.c.id.desc()).limit(limit)
    return [
        {key: _jsonable(value) for key, value in row._mapping.items()}
        for row in conn.execute(query)
    ]


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    return value
