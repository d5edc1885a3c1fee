"""Trait conditions of segments, in SQL.

A segment's ``profile:`` condition is written in the journeys' expression
language (``profile.traits.city == "Moscow"``) and evaluated by it, unchanged,
when one customer is re-evaluated. A full rebuild needs the same answer from
one SQL query, so the conditions a segment accepts are the part of the language
that SQL can answer exactly, with the language's semantics kept:

* comparisons of one profile field with a fixed value (``==``, ``!=``, ``<``,
  ``<=``, ``>``, ``>=``); the value's type must match (text never equals a
  number, ``true`` is not ``1``), and a missing field is null;
* ``in`` / ``not in`` a list of fixed values, and ``exists(field)``;
* ``and``, ``or``, ``not`` and parentheses.

Fields are ``profile.traits.NAME`` (also ``profile.NAME``), nested keys
(``profile.traits.address.city``), ``profile.user_id`` (or ``profile.id``) and
``profile.timezone``. Anything else, ``now`` included, is refused when the
segment is validated: a trait condition never changes with time, which keeps
timers to behaviour conditions.

The tokens come from :mod:`touchline.journeys.conditions`; only the tree built
from them is this module's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    ColumnElement,
    FromClause,
    String,
    and_,
    case,
    cast,
    false,
    func,
    literal,
    not_,
    null,
    or_,
    true,
)

from touchline.errors import TouchlineError
from touchline.journeys.conditions import _tokenize, compile_condition

__all__ = ["TraitError", "TraitNode", "parse_trait_condition", "trait_sql"]

ROOTS = frozenset({"profile"})
#: Traits kept in their own ``profiles`` column (see store.runtime.KNOWN_TRAITS); a custom
#: trait of the same name shows only while the column is empty.
KNOWN_COLUMNS = ("email", "phone", "timezone", "locale", "first_name", "last_name", "birthday")
#: ``profile.X`` names that are not traits (see journeys.engine.ProfileView.scope).
_TOP = {"id": "user_id", "user_id": "user_id", "timezone": "timezone"}
_FLIP = {"<": ">", "<=": ">=", ">": "<", ">=": "<=", "==": "==", "!=": "!="}
_SUBSET = (
    "segments compare profile fields with fixed values (==, !=, <, <=, >, >=), "
    "use in / not in a list, exists(field), and, or, not"
)


class TraitError(TouchlineError):
    """A trait condition the segment format cannot use; ``column`` is 1-based."""

    code = "invalid_segment"
    status = 400

    def __init__(self, message: str, *, column: int | None = None) -> None:
        super().__init__(message)
        self.column = column


# ----------------------------------------------------------------------- tree


@dataclass(frozen=True)
class Field:
    """Where a value lives: a JSON path in ``traits``, a known column, or a plain column."""

    keys: tuple[str, ...]  # the path inside traits (empty for a plain column)
    column: str | None = None  # the profiles column that holds it first

    @property
    def label(self) -> str:
        return ".".join(self.keys) if self.keys else str(self.column)


@dataclass(frozen=True)
class TraitNode:
    """``op`` is and | or | not | cmp | in | exists; the rest depends on it."""

    op: str
    parts: tuple[TraitNode, ...] = ()
    field: Field | None = None
    compare: str = ""
    values: tuple[Any, ...] = ()


class _Parser:
    def __init__(self, source: str) -> None:
        self.toks = _tokenize(source)
        self.pos = 0

    def peek(self, offset: int = 0) -> Any:
        return self.toks[min(self.pos + offset, len(self.toks) - 1)]

    def advance(self) -> Any:
        self.pos += 1
        return self.toks[self.pos - 1]

    def word(self, w: str, offset: int = 0) -> bool:
        tok = self.peek(offset)
        return tok.kind == "name" and tok.value == w

    def op(self, *ops: str) -> bool:
        tok = self.peek()
        return tok.kind == "op" and tok.value in ops

    def fail(self, message: str, tok: Any = None) -> TraitError:
        return TraitError(message, column=(tok or self.peek()).col)

    def parse(self) -> TraitNode:
        node = self.expression()
        if self.peek().kind != "end":
            raise self.fail(_SUBSET)
        return node

    def expression(self) -> TraitNode:
        return self.chain("or", lambda: self.chain("and", self.negation))

    def chain(self, word: str, sub: Callable[[], TraitNode]) -> TraitNode:
        parts = [sub()]
        while self.word(word):
            self.advance()
            parts.append(sub())
        return parts[0] if len(parts) == 1 else TraitNode(word, tuple(parts))

    def negation(self) -> TraitNode:
        if self.word("not") and not self.word("in", 1):
            self.advance()
            return TraitNode("not", (self.negation(),))
        return self.atom()

    def atom(self) -> TraitNode:
        tok = self.peek()
        if self.op("("):
            self.advance()
            node = self.expression()
            if not self.op(")"):
                raise self.fail("missing ')'")
            self.advance()
            return node
        if self.word("exists") and self.peek(1).kind == "op" and self.peek(1).value == "(":
            self.advance()
            self.advance()
            field = self.field()
            if not self.op(")"):
                raise self.fail("exists() takes one profile field")
            self.advance()
            return TraitNode("exists", field=field)
        if tok.kind == "name" and tok.value == "profile":
            field = self.field()
            return self.comparison(field, flipped=False)
        if self.literal_ahead():
            value = self.literal()
            if not (self.op("==", "!=", "<", "<=", ">", ">=")):
                raise self.fail(_SUBSET, tok)
            op = self.advance().value
            if not self.word("profile"):
                raise self.fail("compare a profile field with a fixed value")
            return self.finish(self.field(), _FLIP[op], value, tok)
        raise self.fail(_SUBSET, tok)

    def comparison(self, field: Field, *, flipped: bool) -> TraitNode:
        tok = self.peek()
        if self.word("in") or (self.word("not") and self.word("in", 1)):
            negate = self.word("not")
            self.pos += 2 if negate else 1
            values = self.list_literal()
            node = TraitNode("in", field=field, values=values)
            return TraitNode("not", (node,)) if negate else node
        if not self.op("==", "!=", "<", "<=", ">", ">="):
            raise self.fail(f"compare {field.label} with a value, e.g. == true; " + _SUBSET, tok)
        op = self.advance().value
        start = self.peek()
        value = self.literal()
        return self.finish(field, op, value, start)

    def finish(self, field: Field, op: str, value: Any, tok: Any) -> TraitNode:
        if isinstance(value, list):
            raise self.fail("a list only goes after in / not in", tok)
        if op not in ("==", "!=") and (value is None or isinstance(value, bool)):
            raise self.fail("only numbers and text can be ordered with <, <=, >, >=", tok)
        node = TraitNode("cmp", field=field, compare="==" if op == "!=" else op, values=(value,))
        return TraitNode("not", (node,)) if op == "!=" else node

    def literal_ahead(self) -> bool:
        tok = self.peek()
        if tok.kind in ("num", "str"):
            return True
        if tok.kind == "name" and tok.value in ("true", "false", "null"):
            return True
        return self.op("-") and self.peek(1).kind == "num"

    def literal(self) -> Any:
        tok = self.peek()
        if self.op("["):
            return list(self.list_literal())
        if self.op("-") and self.peek(1).kind == "num":
            self.advance()
            return -self.advance().value
        if tok.kind in ("num", "str"):
            return self.advance().value
        if tok.kind == "name" and tok.value in ("true", "false", "null"):
            self.advance()
            return {"true": True, "false": False, "null": None}[tok.value]
        raise self.fail("expected a fixed value: a number, text, true, false or null", tok)

    def list_literal(self) -> tuple[Any, ...]:
        if not self.op("["):
            raise self.fail("in / not in takes a list of fixed values, e.g. ['a', 'b']")
        self.advance()
        values: list[Any] = []
        while not self.op("]"):
            value = self.literal()
            if isinstance(value, list):
                raise self.fail("lists cannot be nested")
            values.append(value)
            if not self.op(","):
                break
            self.advance()
        if not self.op("]"):
            raise self.fail("missing ']'")
        self.advance()
        return tuple(values)

    def field(self) -> Field:
        root = self.advance()
        if root.kind != "name" or root.value != "profile":
            raise self.fail("expected a profile field such as profile.traits.city", root)
        keys: list[str] = []
        while self.op(".", "["):
            tok = self.advance()
            if tok.value == ".":
                if self.peek().kind != "name":
                    raise self.fail("expected a field name after '.'")
                keys.append(self.advance().value)
            else:
                if self.peek().kind != "str":
                    raise self.fail("only quoted names go in [...] here", tok)
                keys.append(self.advance().value)
                if not self.op("]"):
                    raise self.fail("missing ']'")
                self.advance()
        return _field(keys, root)


def _field(keys: list[str], tok: Any) -> Field:
    if not keys:
        raise TraitError("name a field: profile.traits.NAME", column=tok.col)
    for key in keys:
        if '"' in key or "\\" in key or not key:
            raise TraitError("field names may not hold quotes or backslashes", column=tok.col)
    if keys[0] == "segments":
        raise TraitError("a segment cannot depend on other segments", column=tok.col)
    if keys[0] in _TOP:
        if len(keys) > 1:
            raise TraitError(f"profile.{keys[0]} has no fields", column=tok.col)
        return Field((), _TOP[keys[0]])
    if keys[0] == "traits":
        keys = keys[1:]
        if not keys:
            raise TraitError("name a trait: profile.traits.NAME", column=tok.col)
    if keys[0] in KNOWN_COLUMNS:
        if len(keys) > 1:
            raise TraitError(f"the trait {keys[0]} is text and has no fields", column=tok.col)
        return Field(tuple(keys), keys[0])
    return Field(tuple(keys))


def parse_trait_condition(source: str) -> TraitNode:
    """The tree of a ``profile:`` condition; ConditionError or TraitError if unusable.

    The source is compiled by the expression language first, so a typo gets
    the language's own message and column.
    """
    compile_condition(source, roots=ROOTS)
    return _Parser(source).parse()


# ------------------------------------------------------------------------ SQL


class _Value:
    """Typed views of one field, as SQL that is never NULL where it is a truth value."""

    def __init__(self, profiles: FromClause, field: Field, dialect: str) -> None:
        self.p, self.f, self.pg = profiles, field, dialect == "postgresql"

    # JSON part
    def _jtype(self) -> ColumnElement[Any]:
        traits = self.p.c.traits
        if self.pg:
            return func.jsonb_typeof(func.jsonb_extract_path(traits, *self.f.keys))
        return func.json_type(traits, _sqlite_path(self.f.keys))

    def _jtext(self) -> ColumnElement[Any]:
        traits = self.p.c.traits
        if self.pg:
            return func.jsonb_extract_path_text(traits, *self.f.keys)
        return func.json_extract(traits, _sqlite_path(self.f.keys))

    def _types(self, kind: str) -> tuple[str, ...]:
        names = {
            "str": ("string",) if self.pg else ("text",),
            "num": ("number",) if self.pg else ("integer", "real"),
            "null": ("null",),
        }
        return names[kind]

    def _jis(self, kind: str) -> ColumnElement[bool]:
        if not self.f.keys:
            return false()
        jtype = self._jtype()
        if kind == "null":
            return or_(jtype.is_(None), jtype == "null")
        return func.coalesce(jtype.in_(self._types(kind)), false())

    def _col(self) -> ColumnElement[Any] | None:
        if self.f.column is None:
            return None
        col = self.p.c[self.f.column]
        return cast(col, String) if self.f.column == "birthday" else col

    def is_null(self) -> ColumnElement[bool]:
        col = self._col()
        jnull = self._jis("null") if self.f.keys else true()
        return jnull if col is None else and_(col.is_(None), jnull)

    def is_kind(self, kind: str) -> ColumnElement[bool]:
        col = self._col()
        if col is None:
            return self._jis(kind)
        if kind == "str":
            return or_(col.is_not(None), self._jis("str"))
        return and_(col.is_(None), self._jis(kind))

    def text(self) -> ColumnElement[Any]:
        col = self._col()
        value = case((self._jis("str"), self._jtext()), else_=null()) if self.f.keys else null()
        return value if col is None else func.coalesce(col, value)

    def number(self) -> ColumnElement[Any]:
        from sqlalchemy import Numeric

        raw = self._jtext()
        return case((self._jis("num"), cast(raw, Numeric) if self.pg else raw), else_=null())

    def boolean(self, want: bool) -> ColumnElement[bool]:
        if not self.f.keys:
            return false()
        jtype = self._jtype()
        if self.pg:
            return and_(
                func.coalesce(jtype == "boolean", false()),
                func.coalesce(self._jtext() == ("true" if want else "false"), false()),
            )
        hit = func.coalesce(jtype == ("true" if want else "false"), false())
        col = self._col()
        return hit if col is None else and_(col.is_(None), hit)


def _sqlite_path(keys: tuple[str, ...]) -> str:
    return "$" + "".join(f'."{k}"' for k in keys)


def _never_null(expr: ColumnElement[bool]) -> ColumnElement[bool]:
    return case((expr, true()), else_=false())


def trait_sql(node: TraitNode, profiles: FromClause, *, dialect: str) -> ColumnElement[bool]:
    """``node`` as a predicate over ``profiles`` that is true or false, never NULL."""
    if node.op == "and":
        return and_(*(trait_sql(p, profiles, dialect=dialect) for p in node.parts))
    if node.op == "or":
        return or_(*(trait_sql(p, profiles, dialect=dialect) for p in node.parts))
    if node.op == "not":
        return not_(trait_sql(node.parts[0], profiles, dialect=dialect))
    assert node.field is not None
    value = _Value(profiles, node.field, dialect)
    if node.op == "exists":
        return _never_null(not_(value.is_null()))
    if node.op == "in":
        if not node.values:
            return false()
        return or_(*(_equals(value, v) for v in node.values))
    return _compare(value, node.compare, node.values[0], pg=dialect == "postgresql")


def _equals(value: _Value, literal_value: Any) -> ColumnElement[bool]:
    if literal_value is None:
        return _never_null(value.is_null())
    if isinstance(literal_value, bool):
        return _never_null(value.boolean(literal_value))
    if isinstance(literal_value, str):
        return _never_null(and_(value.is_kind("str"), value.text() == literal(literal_value)))
    return _never_null(and_(value.is_kind("num"), value.number() == literal(literal_value)))


def _compare(value: _Value, op: str, literal_value: Any, *, pg: bool) -> ColumnElement[bool]:
    if op == "==":
        return _equals(value, literal_value)
    if isinstance(literal_value, str):
        text = value.text()
        if pg:
            text = text.collate("C")  # code point order, as Python compares text
        return _never_null(and_(value.is_kind("str"), text.op(op)(literal(literal_value))))
    return _never_null(and_(value.is_kind("num"), value.number().op(op)(literal(literal_value))))
