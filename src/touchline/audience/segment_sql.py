"""Segments in SQL: the member query of a full rebuild, and the facts of evaluation.

Two statements come from one compiled segment:

* :func:`member_query` — ONE query returning the ids of the members among a
  range of profiles: the whole tree as a WHERE clause, each behaviour leaf a
  correlated subquery on ``events`` / ``message_events`` that their
  ``(workspace_id, profile_id, time)`` indexes answer, trait conditions on the
  profile's JSON, consent on the ledger and the suppression list.
* :func:`facts_query` — one aggregate row per customer with every leaf's
  value and the oldest time in its window, for the timers of a rebuild (a
  range of customers, grouped); :func:`customer_facts` is the same statement
  for the incremental path (one customer), built once per set of leaves with
  ``now`` and the customer as bind parameters.

JSON differs per backend: SQLite's ``json_type``/``json_extract`` against
PostgreSQL's ``jsonb_typeof`` and ``->``/``->>``. Every predicate is typed as
the expression language is (text never equals a number) and is never NULL, so
``not`` means what it says.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    ColumnElement,
    FromClause,
    Numeric,
    Select,
    Text,
    and_,
    bindparam,
    case,
    exists,
    false,
    func,
    literal,
    not_,
    or_,
    select,
    true,
    type_coerce,
)

from touchline.audience.segment_eval import (
    CompiledSegment,
    ConsentTest,
    EventAgg,
    EventTime,
    Junction,
    MessageAgg,
    Negation,
    Node,
    TraitTest,
)
from touchline.audience.segment_traits import trait_sql
from touchline.store.tables import consents, events, message_events, profiles, suppressions
from touchline.store.types import UTCDateTime

__all__ = [
    "ADDRESS_COLUMNS",
    "CustomerFacts",
    "customer_facts",
    "facts_query",
    "member_query",
    "message_facts_query",
    "profiles_in_range",
]

#: The profile column holding a channel's address; other channels need none.
ADDRESS_COLUMNS = {"email": "email", "sms": "phone"}
_BLOCKS_EVERYTHING = ("hard_bounce", "complaint")
_WHEN = UTCDateTime()


def _pg(dialect: str) -> bool:
    return dialect == "postgresql"


# ------------------------------------------------------------- JSON properties


def _prop_type(prop: str, dialect: str) -> ColumnElement[Any]:
    if _pg(dialect):
        return func.jsonb_typeof(events.c.properties.op("->")(literal(prop)))
    return func.json_type(events.c.properties, f'$."{prop}"')


def _prop_text(prop: str, dialect: str) -> ColumnElement[Any]:
    if _pg(dialect):
        return events.c.properties.op("->>", return_type=Text)(literal(prop))
    return func.json_extract(events.c.properties, f'$."{prop}"')


def _prop_number(prop: str, dialect: str) -> ColumnElement[Any]:
    """The property as a number when it is a JSON number, else NULL (so sums skip it)."""
    kinds = ("number",) if _pg(dialect) else ("integer", "real")
    raw = _prop_text(prop, dialect)
    value = raw.cast(Numeric) if _pg(dialect) else raw
    return case((_prop_type(prop, dialect).in_(kinds), value), else_=None)


def _prop_equals(prop: str, value: Any, dialect: str) -> ColumnElement[bool]:
    kind = _prop_type(prop, dialect)
    if isinstance(value, bool):
        if _pg(dialect):
            word = "true" if value else "false"
            return and_(kind == "boolean", _prop_text(prop, dialect) == word)
        return kind == ("true" if value else "false")
    if isinstance(value, str):
        text_kind = "string" if _pg(dialect) else "text"
        return and_(kind == text_kind, _prop_text(prop, dialect) == value)
    return _prop_number(prop, dialect) == literal(value)


def _matching(name: str, where: tuple[tuple[str, Any], ...], dialect: str) -> ColumnElement[bool]:
    """The event has ``name`` and each ``where`` property equal (typed) to its value."""
    parts = [events.c.name == name]
    parts.extend(func.coalesce(_prop_equals(k, v, dialect), false()) for k, v in where)
    return and_(*parts)


def _since(within: Any, now: datetime) -> datetime:
    return now - within


# ------------------------------------------------------------------ facts

#: The lower bound of a leaf's window: (bind name, window) -> a value or a bind parameter.
Since = Callable[[str, timedelta], Any]


def _event_leaves(segments: list[CompiledSegment]) -> list[Any]:
    leaves: dict[str, Any] = {}
    for segment in segments:
        for leaf in segment.leaves():
            if isinstance(leaf, EventAgg | EventTime):
                leaves.setdefault(leaf.sig, leaf)
    return list(leaves.values())


def _message_leaves(segments: list[CompiledSegment]) -> list[MessageAgg]:
    leaves: dict[str, MessageAgg] = {}
    for segment in segments:
        for leaf in segment.leaves():
            if isinstance(leaf, MessageAgg):
                leaves.setdefault(leaf.sig, leaf)
    return list(leaves.values())


def _event_facts(
    leaves: list[Any], *, dialect: str, since: Since
) -> tuple[Select[Any], list[tuple[str, str, Any]]]:
    """One aggregate column (and the oldest time in the window) per leaf, no scope yet."""
    columns: list[Any] = []
    described: list[tuple[str, str, Any]] = []
    names: set[str] = set()
    for i, leaf in enumerate(leaves):
        names.add(leaf.name)
        match = _matching(leaf.name, leaf.where, dialect)
        if isinstance(leaf, EventTime):
            pick = func.min if leaf.which == "first" else func.max
            label = f"t{i}"
            columns.append(type_coerce(pick(case((match, events.c.timestamp))), _WHEN).label(label))
            described.append((label, "time", leaf))
            continue
        if leaf.within is not None:
            match = and_(match, events.c.timestamp > since(f"since_{i}", leaf.within))
        value: Any
        if leaf.prop is None:
            value = func.count(case((match, 1)))
        else:
            value = func.coalesce(func.sum(case((match, _prop_number(leaf.prop, dialect)))), 0)
        columns.append(value.label(f"v{i}"))
        described.append((f"v{i}", "value", leaf))
        oldest = type_coerce(func.min(case((match, events.c.timestamp))), _WHEN)
        columns.append(oldest.label(f"o{i}"))
        described.append((f"o{i}", "oldest", leaf))
    return select(*columns).where(events.c.name.in_(sorted(names))), described


def _message_facts(
    leaves: list[MessageAgg], *, since: Since
) -> tuple[Select[Any], list[tuple[str, str, Any]]]:
    columns: list[Any] = []
    described: list[tuple[str, str, Any]] = []
    for i, leaf in enumerate(leaves):
        bound = None if leaf.within is None else since(f"since_{i}", leaf.within)
        match = _message_match(leaf, bound)
        columns.append(
            func.count(func.distinct(case((match, message_events.c.outbox_id)))).label(f"v{i}")
        )
        described.append((f"v{i}", "value", leaf))
        oldest = type_coerce(func.min(case((match, message_events.c.at))), _WHEN)
        columns.append(oldest.label(f"o{i}"))
        described.append((f"o{i}", "oldest", leaf))
    return select(*columns), described


def facts_query(
    segments: list[CompiledSegment],
    *,
    workspace_id: str,
    now: datetime,
    dialect: str,
    profile_id: int | None = None,
    id_range: tuple[int, int] | None = None,
) -> tuple[Select[Any] | None, list[tuple[str, str, Any]]]:
    """Aggregates of ``events`` for every event leaf of ``segments``.

    Returns the statement (None if no leaf reads events) and its columns as
    ``(label, part, leaf)``: part is ``value``, ``oldest`` or ``time``. With
    ``profile_id`` the statement reads one customer (one row, or none if it
    has no such events); with ``id_range`` it groups by ``profile_id``.
    The per-event path uses :func:`customer_facts` instead, built once.
    """
    leaves = _event_leaves(segments)
    if not leaves:
        return None, []
    stmt, described = _event_facts(
        leaves, dialect=dialect, since=lambda _name, within: _since(within, now)
    )
    stmt = stmt.where(events.c.workspace_id == workspace_id)
    if profile_id is not None:
        stmt = stmt.where(events.c.profile_id == profile_id)
    if id_range is not None:
        stmt = stmt.add_columns(events.c.profile_id).where(events.c.profile_id.between(*id_range))
        stmt = stmt.group_by(events.c.profile_id)
    return stmt, described


def _message_match(leaf: MessageAgg, since: Any | None) -> ColumnElement[bool]:
    parts: list[ColumnElement[bool]] = [
        message_events.c.kind.in_(leaf.kinds),
        message_events.c.machine.is_(False),
    ]
    if leaf.channel is not None:
        parts.append(message_events.c.channel == leaf.channel)
    if since is not None:
        parts.append(message_events.c.at > since)
    return and_(*parts)


def message_facts_query(
    segments: list[CompiledSegment],
    *,
    workspace_id: str,
    now: datetime,
    profile_id: int | None = None,
    id_range: tuple[int, int] | None = None,
) -> tuple[Select[Any] | None, list[tuple[str, str, Any]]]:
    """Like :func:`facts_query`, for ``messages:`` leaves over ``message_events``."""
    leaves = _message_leaves(segments)
    if not leaves:
        return None, []
    stmt, described = _message_facts(leaves, since=lambda _name, within: _since(within, now))
    stmt = stmt.where(message_events.c.workspace_id == workspace_id)
    if profile_id is not None:
        stmt = stmt.where(message_events.c.profile_id == profile_id)
    if id_range is not None:
        stmt = stmt.add_columns(message_events.c.profile_id).where(
            message_events.c.profile_id.between(*id_range)
        )
        stmt = stmt.group_by(message_events.c.profile_id)
    return stmt, described


@dataclass(frozen=True)
class CustomerFacts:
    """One customer's facts statement, built once per set of leaves.

    The workspace, the customer and each window's lower bound are bind
    parameters: evaluating a customer then builds no SQL expression and
    SQLAlchemy finds the compiled statement in its cache. Building the
    statement anew for every event cost more than running it.
    """

    stmt: Select[Any]
    described: list[tuple[str, str, Any]]
    windows: tuple[tuple[str, timedelta], ...]

    def params(self, *, workspace_id: str, profile_id: int, now: datetime) -> dict[str, Any]:
        values: dict[str, Any] = {"workspace_id": workspace_id, "profile_id": profile_id}
        values.update((name, _since(within, now)) for name, within in self.windows)
        return values


#: Sets of leaves whose statements are kept; a workspace has one set (two while
#: a definition changes), so this bounds memory, not hits.
CUSTOMER_FACTS_KEPT = 256
_customer_facts: dict[tuple[Any, ...], tuple[CustomerFacts, ...]] = {}


def customer_facts(segments: list[CompiledSegment], *, dialect: str) -> tuple[CustomerFacts, ...]:
    """The statements loading one customer's facts for ``segments``: events, then messages.

    Leaves no segment has are left out (none at all: an empty tuple). The
    statements are shared by every caller with the same leaves (threads
    included: they are never changed once built).
    """
    event_leaves = _event_leaves(segments)
    message_leaves = _message_leaves(segments)
    key = (dialect, tuple(x.sig for x in event_leaves), tuple(x.sig for x in message_leaves))
    found = _customer_facts.get(key)
    if found is not None:
        return found
    built: list[CustomerFacts] = []
    if event_leaves:
        windows: list[tuple[str, timedelta]] = []
        stmt, described = _event_facts(event_leaves, dialect=dialect, since=_bound(windows))
        stmt = stmt.where(
            events.c.workspace_id == bindparam("workspace_id"),
            events.c.profile_id == bindparam("profile_id"),
        )
        built.append(CustomerFacts(stmt, described, tuple(windows)))
    if message_leaves:
        windows = []
        stmt, described = _message_facts(message_leaves, since=_bound(windows))
        stmt = stmt.where(
            message_events.c.workspace_id == bindparam("workspace_id"),
            message_events.c.profile_id == bindparam("profile_id"),
        )
        built.append(CustomerFacts(stmt, described, tuple(windows)))
    if len(_customer_facts) >= CUSTOMER_FACTS_KEPT:
        _customer_facts.clear()
    _customer_facts[key] = found = tuple(built)
    return found


def _bound(windows: list[tuple[str, timedelta]]) -> Since:
    """A ``since`` that makes each window's bound a parameter and notes it in ``windows``."""

    def since(name: str, within: timedelta) -> Any:
        windows.append((name, within))
        return bindparam(name, type_=_WHEN)

    return since


# ------------------------------------------------------------- member query


def member_query(
    segment: CompiledSegment,
    *,
    workspace_id: str,
    now: datetime,
    dialect: str,
    id_range: tuple[int, int] | None = None,
) -> Select[Any]:
    """The ids of the segment's members (among ``id_range``, both ends included).

    Merged and erased profiles are never members.
    """
    p = profiles
    scope = (
        p.c.workspace_id == workspace_id
        if id_range is None
        else profiles_in_range(p, workspace_id, id_range, dialect=dialect)
    )
    stmt = select(p.c.id).where(
        scope,
        p.c.merged_into.is_(None),
        p.c.erased_at.is_(None),
        _predicate(segment.root, p, workspace_id=workspace_id, now=now, dialect=dialect),
    )
    return stmt.order_by(p.c.id)


def profiles_in_range(
    p: FromClause, workspace_id: str, id_range: tuple[int, int], *, dialect: str
) -> ColumnElement[bool]:
    """The workspace's profiles among ``id_range`` (both ends included), read by primary key.

    SQLite keeps no statistics, so ``workspace_id = ?`` looks selective to its
    planner, which then walks a workspace index through every profile of the
    workspace for each range: a build would grow with the square of the
    audience. Comparing ``workspace_id || ''`` leaves it the primary-key range.
    """
    workspace = p.c.workspace_id.concat("") if dialect == "sqlite" else p.c.workspace_id
    return and_(workspace == workspace_id, p.c.id.between(*id_range))


def _predicate(
    node: Node, p: FromClause, *, workspace_id: str, now: datetime, dialect: str
) -> ColumnElement[bool]:
    def rec(n: Node) -> ColumnElement[bool]:
        return _predicate(n, p, workspace_id=workspace_id, now=now, dialect=dialect)

    if isinstance(node, Junction):
        parts = [rec(part) for part in node.parts]
        return and_(*parts) if node.op == "all" else or_(*parts)
    if isinstance(node, Negation):
        return not_(rec(node.part))
    if isinstance(node, EventAgg):
        return _bounded(_event_value(node, p, workspace_id, now, dialect), node.bounds)
    if isinstance(node, EventTime):
        return _event_time(node, p, workspace_id, now, dialect)
    if isinstance(node, MessageAgg):
        m = message_events
        value = (
            select(func.count(func.distinct(m.c.outbox_id)))
            .where(
                m.c.workspace_id == workspace_id,
                m.c.profile_id == p.c.id,
                _message_match(node, None if node.within is None else _since(node.within, now)),
            )
            .scalar_subquery()
        )
        return _bounded(value, node.bounds)
    if isinstance(node, TraitTest):
        return trait_sql(node.tree, p, dialect=dialect)
    assert isinstance(node, ConsentTest)
    return _reachable(node, p, workspace_id)


def _bounded(value: Any, bounds: tuple[tuple[str, Any], ...]) -> ColumnElement[bool]:
    ops = {
        ">=": value.__ge__,
        ">": value.__gt__,
        "<=": value.__le__,
        "<": value.__lt__,
        "==": value.__eq__,
    }
    return and_(*(ops[op](literal(bound)) for op, bound in bounds))


def _own_events(p: FromClause, workspace_id: str) -> ColumnElement[bool]:
    return and_(events.c.workspace_id == workspace_id, events.c.profile_id == p.c.id)


def _event_value(
    leaf: EventAgg, p: FromClause, workspace_id: str, now: datetime, dialect: str
) -> Any:
    where = [_own_events(p, workspace_id), _matching(leaf.name, leaf.where, dialect)]
    if leaf.within is not None:
        where.append(events.c.timestamp > _since(leaf.within, now))
    if leaf.prop is None:
        return select(func.count()).select_from(events).where(*where).scalar_subquery()
    total = func.coalesce(func.sum(_prop_number(leaf.prop, dialect)), 0)
    return select(total).where(*where).scalar_subquery()


def _event_time(
    leaf: EventTime, p: FromClause, workspace_id: str, now: datetime, dialect: str
) -> ColumnElement[bool]:
    """first/last within or before a span, as EXISTS tests (never NULL)."""
    base = and_(_own_events(p, workspace_id), _matching(leaf.name, leaf.where, dialect))
    bound = now - leaf.span
    recent = exists().where(base, events.c.timestamp > bound)
    old = exists().where(base, events.c.timestamp <= bound)
    if leaf.which == "last":
        # the last is within the span iff some event is; before it iff some is and none after
        return recent if leaf.after else and_(old, not_(recent))
    return and_(recent, not_(old)) if leaf.after else old


def _reachable(node: ConsentTest, p: FromClause, workspace_id: str) -> ColumnElement[bool]:
    """The ledger grants marketing on the channel (and topic), and no suppression blocks it.

    Mirrors :func:`touchline.messaging.policies.decide` for a marketing message:
    the latest counting record (pending double opt-ins do not count) decides the
    channel; a topic is blocked by its latest counting record being a withdrawal
    with no pending grant at or after it; a hard bounce or complaint of the
    address blocks, an unsubscribe or STOP reply blocks unless the grant is newer.
    """
    c = consents.alias("c")

    def counting(t: Any, topic: str | None) -> ColumnElement[bool]:
        return and_(
            t.c.workspace_id == workspace_id,
            t.c.profile_id == p.c.id,
            t.c.channel == node.channel,
            t.c.purpose == "marketing",
            t.c.topic.is_(None) if topic is None else t.c.topic == topic,
            not_(and_(t.c.granted.is_(True), t.c.confirmed.is_(False))),
        )

    def latest(column: Any, t: Any, topic: str | None) -> Any:
        # Subqueries nested in EXISTS name the profile explicitly: auto-correlation
        # only reaches the immediately enclosing SELECT.
        return (
            select(column)
            .where(counting(t, topic))
            .order_by(t.c.at.desc(), t.c.id.desc())
            .limit(1)
            .correlate(p)
            .scalar_subquery()
        )

    parts: list[ColumnElement[bool]] = [latest(c.c.granted, c, None).is_(True)]
    column = ADDRESS_COLUMNS.get(node.channel)
    if column is not None:
        address = p.c[column]
        parts.append(and_(address.is_not(None), address != ""))
        s = suppressions
        a = consents.alias("a")
        blocking = (
            select(s.c.id)
            .where(
                s.c.workspace_id == workspace_id,
                s.c.channel == node.channel,
                s.c.address == address,
                or_(s.c.reason.in_(_BLOCKS_EVERYTHING), s.c.at >= latest(a.c.at, a, None)),
            )
            .correlate(p)
        )
        parts.append(not_(exists(blocking)))
    if node.topic is not None:
        t = consents.alias("t")
        r = consents.alias("r")
        q = consents.alias("q")
        pending_after = (
            select(q.c.id)
            .where(
                q.c.workspace_id == workspace_id,
                q.c.profile_id == p.c.id,
                q.c.channel == node.channel,
                q.c.purpose == "marketing",
                q.c.topic == node.topic,
                q.c.granted.is_(True),
                q.c.confirmed.is_(False),
                q.c.at >= r.c.at,
            )
            .correlate(p, r)
        )
        blocked = (
            select(r.c.id)
            .where(
                r.c.id == latest(t.c.id, t, node.topic),
                r.c.granted.is_(False),
                not_(exists(pending_after)),
            )
            .correlate(p)
        )
        parts.append(not_(exists(blocked)))
    return and_(*parts) if parts else true()
