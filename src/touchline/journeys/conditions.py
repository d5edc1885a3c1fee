"""Journey conditions: a small, safe expression language, parsed by hand.

A condition such as ``event.properties.total > 100 and profile.traits.city == 'Lisbon'``
is compiled once (:func:`compile_condition`, cached by source and roots) into a
tree of closures, then evaluated against a *scope*: a mapping from root names
(``profile``, ``event``, ``trigger``, ``context``, ``now``) to JSON-like data.

Grammar, lowest to highest precedence::

    expr    := and ('or' and)*
    and     := not ('and' not)*
    not     := 'not' not | compare
    compare := sum (('=='|'!='|'<'|'<='|'>'|'>='|'in'|'not' 'in') sum)?
    sum     := product (('+'|'-') product)*
    product := unary (('*'|'/'|'%') unary)*
    unary   := '-' unary | primary
    primary := NUMBER | DURATION | STRING | 'true' | 'false' | 'null' | '(' expr ')'
             | '[' (expr (',' expr)* ','?)? ']' | FUNCTION '(' (expr (',' expr)*)? ')'
             | ROOT ('.' NAME | '[' expr ']')*

Safety: no ``eval`` and no attribute access. Paths only look up keys in
mappings and integer indices in lists, so ``event.__class__`` is null, and
``.``/``[...]`` may only follow a root name, so ``''.__class__`` does not
compile. Sources are capped at MAX_LENGTH characters and MAX_DEPTH levels of
nesting, and chains such as ``a + b + c`` or ``a and b and c`` run in loops,
so neither compiling nor evaluating can exhaust the stack.

Null-safety: a missing key or index is null; arithmetic on incompatible
values is null; comparisons of incompatible values are false; and
:meth:`Condition.test` never raises because of the data it is given.
"""

from __future__ import annotations

import contextlib
import functools
import math
import operator
import re
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, NamedTuple, NoReturn

from touchline.clock import utc
from touchline.errors import ConditionError

__all__ = ["MAX_DEPTH", "MAX_LENGTH", "ROOTS", "Condition", "compile_condition"]

ROOTS = frozenset({"profile", "event", "trigger", "context", "now"})
MAX_LENGTH = 2000
MAX_DEPTH = 50

Scope = Mapping[str, Any]
Fn = Callable[[Scope], Any]

# ----------------------------------------------------------------- semantics


def _is_num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _is_seq(v: Any) -> bool:
    """A list-like container; strings and bytes are not walked as sequences."""
    return isinstance(v, list | tuple) or (
        isinstance(v, Sequence) and not isinstance(v, str | bytes | bytearray)
    )


@functools.lru_cache(maxsize=4096)
def _parse_iso(text: str) -> datetime | None:
    """An ISO-8601 string as an aware UTC datetime (naive means UTC), else None."""
    if not 8 <= len(text) <= 40:
        return None
    try:
        return utc(datetime.fromisoformat(text))
    except (ValueError, OverflowError):
        return None


def _as_dt(v: Any) -> datetime | None:
    if isinstance(v, datetime):
        return utc(v)
    return _parse_iso(v) if isinstance(v, str) else None


def _truthy(v: Any) -> bool:
    if v is None or v is False:
        return False
    try:
        return bool(v)
    except Exception:
        return False


def _comparable(a: Any, b: Any) -> tuple[Any, Any] | None:
    """``(a, b)`` ready to compare (ISO text next to a datetime is parsed), or None."""
    if (_is_num(a) and _is_num(b)) or (isinstance(a, str) and isinstance(b, str)):
        return a, b
    if isinstance(a, datetime) or isinstance(b, datetime):
        da, db = _as_dt(a), _as_dt(b)
        return None if da is None or db is None else (da, db)
    if isinstance(a, timedelta) and isinstance(b, timedelta):
        return a, b
    return None


def _eq(a: Any, b: Any) -> bool:
    """Equality across types: 1 == 1.0, but text never equals a number or a boolean."""
    if a is None or b is None or isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if (pair := _comparable(a, b)) is not None:
        return bool(pair[0] == pair[1])
    if _is_seq(a) and _is_seq(b):
        return len(a) == len(b) and all(_eq(x, y) for x, y in zip(a, b, strict=True))
    return isinstance(a, Mapping) and isinstance(b, Mapping) and bool(a == b)


def _ordering(cmp: Callable[[Any, Any], Any]) -> Callable[[Any, Any], bool]:
    return lambda a, b: (pair := _comparable(a, b)) is not None and bool(cmp(*pair))


def _in(item: Any, container: Any) -> bool:
    """Substring for text, key for mappings, element (by ``==``) for lists; else false."""
    if isinstance(container, str):
        return isinstance(item, str) and item in container
    if isinstance(container, Mapping):
        try:
            return item in container
        except TypeError:  # unhashable item
            return False
    return _is_seq(container) and any(_eq(item, x) for x in container)


_COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    "==": _eq,
    "!=": lambda a, b: not _eq(a, b),
    "<": _ordering(operator.lt),
    "<=": _ordering(operator.le),
    ">": _ordering(operator.gt),
    ">=": _ordering(operator.ge),
    "in": _in,
    "not in": lambda a, b: not _in(a, b),
}


def _null_on_error(fn: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
    def run(a: Any, b: Any) -> Any:
        try:
            return fn(a, b)
        except (ArithmeticError, ValueError, TypeError):  # overflow and friends
            return None

    return run


@_null_on_error
def _add(a: Any, b: Any) -> Any:
    """Numbers, text + text, timedeltas, and a datetime (or ISO text) + a timedelta."""
    if (_is_num(a) and _is_num(b)) or (isinstance(a, str) and isinstance(b, str)):
        return a + b
    if isinstance(a, timedelta):
        a, b = b, a
    if not isinstance(b, timedelta):
        return None
    da = a if isinstance(a, timedelta) else _as_dt(a)
    return None if da is None else da + b


@_null_on_error
def _sub(a: Any, b: Any) -> Any:
    """Numbers, timedeltas, datetime - timedelta, and datetime - datetime (a timedelta)."""
    if _is_num(a) and _is_num(b):
        return a - b
    if isinstance(b, timedelta):
        da = a if isinstance(a, timedelta) else _as_dt(a)
        return None if da is None else da - b
    if isinstance(a, datetime) or isinstance(b, datetime):
        da, db = _as_dt(a), _as_dt(b)
        return None if da is None or db is None else da - db
    return None


@_null_on_error
def _mul(a: Any, b: Any) -> Any:
    if isinstance(a, timedelta):
        a, b = b, a
    return a * b if _is_num(a) and (_is_num(b) or isinstance(b, timedelta)) else None


@_null_on_error
def _div(a: Any, b: Any) -> Any:
    """Division; by zero is null. timedelta / number and timedelta / timedelta work."""
    ok = (_is_num(a) or isinstance(a, timedelta)) and _is_num(b)
    if ok or (isinstance(a, timedelta) and isinstance(b, timedelta)):
        return a / b if b else None
    return None


@_null_on_error
def _mod(a: Any, b: Any) -> Any:
    return a % b if _is_num(a) and _is_num(b) and b else None


def _neg(a: Any) -> Any:
    return -a if _is_num(a) or isinstance(a, timedelta) else None


_ARITH = {"+": _add, "-": _sub, "*": _mul, "/": _div, "%": _mod}


def _step(cur: Any, key: Any) -> Any:
    """One path step: a mapping key or a list index. Never reads Python attributes."""
    if type(cur) is dict or isinstance(cur, Mapping):
        try:
            return cur.get(key)
        except TypeError:  # unhashable key
            return None
    if type(key) is int and _is_seq(cur):
        try:
            return cur[key]
        except IndexError:
            return None
    return None


# ----------------------------------------------------------------- functions


def _f_number(x: Any) -> Any:
    """A number, or numeric text as int (if it looks like one) or float; else null."""
    if _is_num(x):
        return x
    if not isinstance(x, str) or len(x) > 100:
        return None
    with contextlib.suppress(ValueError):
        return int(x)
    try:
        f = float(x)
    except ValueError:
        return None
    return f if math.isfinite(f) else None


def _since(seconds: int) -> Callable[[Any, Any], Any]:
    """``(now, ts) -> float`` units elapsed; ts is a datetime or ISO text; else null."""

    def run(now: Any, ts: Any) -> Any:
        n, t = _as_dt(now), _as_dt(ts)
        return None if n is None or t is None else (n - t).total_seconds() / seconds

    return run


def _f_any(items: Any, field: Any, value: Any) -> bool:
    """True if some element of ``items`` is a mapping whose ``field`` equals ``value``."""
    if not _is_seq(items):
        return False
    return any(isinstance(el, Mapping) and _eq(_step(el, field), value) for el in items)


def _f_sum(items: Any, field: Any) -> Any:
    """Sum of the numeric ``field`` values of the mappings in ``items``; null -> 0."""
    if not _is_seq(items):
        return 0 if items is None else None
    values = (_step(el, field) for el in items if isinstance(el, Mapping))
    return sum(v for v in values if _is_num(v))


def _sized(kinds: Callable[[Any], bool]) -> Callable[[Any], Any]:
    return lambda x: 0 if x is None else len(x) if kinds(x) else None


# name -> (arity, implementation); functions in _NEEDS_NOW get scope["now"] first.
_FUNCTIONS: dict[str, tuple[int, Callable[..., Any]]] = {
    "exists": (1, lambda x: x is not None),
    "len": (1, _sized(lambda x: isinstance(x, str | Mapping) or _is_seq(x))),
    "lower": (1, lambda s: s.lower() if isinstance(s, str) else None),
    "upper": (1, lambda s: s.upper() if isinstance(s, str) else None),
    "contains": (2, lambda haystack, needle: _in(needle, haystack)),
    "starts_with": (2, lambda s, p: isinstance(s, str) and isinstance(p, str) and s.startswith(p)),
    "number": (1, _f_number),
    "days_since": (1, _since(86400)),
    "hours_since": (1, _since(3600)),
    "any": (3, _f_any),
    "sum": (2, _f_sum),
    "count": (1, _sized(_is_seq)),
}
_NEEDS_NOW = frozenset({"days_since", "hours_since"})

# ----------------------------------------------------------------- tokenizer


class _Tok(NamedTuple):
    kind: str  # "num" | "dur" | "str" | "name" | "op" | "end"
    value: Any
    col: int  # 1-based
    text: str


_NUMBER = re.compile(r"([0-9]+(?:\.[0-9]+)?)(\w*)")  # digits, then a duration unit if any
_NAME = re.compile(r"[^\W\d]\w*")  # a letter or _, then letters, digits or _
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "0": "\0", "\\": "\\", "'": "'", '"': '"'}
_HEX = re.compile(r"[0-9a-fA-F]{4}")
_OPS = ("==", "!=", "<=", ">=", "<", ">", "+", "-", "*", "/", "%", "(", ")", "[", "]", ",", ".")
_QUOTES_HINT = "use straight quotes ' or \" around text"
_HINTS = {
    "=": "use '==' to compare values",
    "!": "use 'not' to negate, or '!=' for 'not equal'",
    "&": "use 'and' to combine conditions",
    "|": "use 'or' to combine conditions",
    **dict.fromkeys("\u2018\u2019\u201c\u201d", _QUOTES_HINT),
}
_LITERALS = {"true": True, "false": False, "null": None}
_KEYWORDS = frozenset({"and", "or", "not", "in"})


def _fail(message: str, column: int | None) -> NoReturn:
    raise ConditionError(message, column=column)


def _tokenize(src: str) -> list[_Tok]:
    """Split ``src`` into tokens, ending with an "end" token; ConditionError on bad input."""
    toks: list[_Tok] = []
    i, n = 0, len(src)
    while i < n:
        c, col = src[i], i + 1
        if c.isspace():
            i += 1
        elif m := _NUMBER.match(src, i):
            text, unit = m.groups()
            value: Any = float(text) if "." in text else int(text)
            i = m.end()
            if unit and unit not in _UNITS:
                durations = "durations look like 30d, 12h, 15m, 45s or 2w"
                _fail(f"'{text}{unit}' is not a number or a duration; {durations}", col)
            if unit:
                try:
                    value = timedelta(**{_UNITS[unit]: value})
                except (OverflowError, ValueError):
                    _fail(f"the duration '{text}{unit}' is too large", col)
            toks.append(_Tok("dur" if unit else "num", value, col, text + unit))
        elif m := _NAME.match(src, i):
            toks.append(_Tok("name", m.group(), col, m.group()))
            i = m.end()
        elif c in "'\"":
            i = _read_string(src, i, toks)
        elif op := next((o for o in _OPS if src.startswith(o, i)), None):
            toks.append(_Tok("op", op, col, op))
            i += len(op)
        else:
            hint = _HINTS.get(c)
            _fail(f"unexpected character {c!r}" + (f"; {hint}" if hint else ""), col)
    toks.append(_Tok("end", None, n + 1, "the end of the condition"))
    return toks


def _read_string(src: str, start: int, toks: list[_Tok]) -> int:
    """Append the quoted text starting at ``start`` to ``toks``; return the index after it."""
    quote, out, j, n = src[start], [], start + 1, len(src)
    while j < n and src[j] != quote:
        if src[j] != "\\":
            out.append(src[j])
            j += 1
            continue
        esc = src[j + 1 : j + 2]
        if esc == "u" and _HEX.fullmatch(src, j + 2, j + 6):
            out.append(chr(int(src[j + 2 : j + 6], 16)))
            j += 6
        elif esc and esc in _ESCAPES:
            out.append(_ESCAPES[esc])
            j += 2
        else:
            _fail(f"unknown escape '\\{esc}' in text; write '\\\\' for a backslash", j + 1)
    if j >= n:
        _fail(f"this text is never closed; add the closing {quote}", start + 1)
    toks.append(_Tok("str", "".join(out), start + 1, src[start : j + 1]))
    return j + 1


# -------------------------------------------------------------------- parser


class _Const:
    """A node whose value is known at compile time (enables constant folding)."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __call__(self, scope: Scope) -> Any:
        return self.value


def _describe(tok: _Tok) -> str:
    return tok.text if tok.kind == "end" else repr(tok.text[:20])


class _Parser:
    """Recursive descent over the tokens, building closures and collecting paths."""

    def __init__(self, source: str, roots: frozenset[str]) -> None:
        self.toks, self.pos, self.depth, self.roots = _tokenize(source), 0, 0, roots
        self.paths: set[tuple[str, ...]] = set()

    def peek(self) -> _Tok:
        return self.toks[self.pos]

    def advance(self) -> _Tok:
        self.pos += 1
        return self.toks[self.pos - 1]

    def is_op(self, *ops: str) -> bool:
        return self.peek().kind == "op" and self.peek().value in ops

    def is_word(self, word: str, offset: int = 0) -> bool:
        tok = self.toks[min(self.pos + offset, len(self.toks) - 1)]
        return tok.kind == "name" and tok.value == word

    def expect(self, op: str, message: str) -> None:
        if not self.is_op(op):
            _fail(f"{message}, found {_describe(self.peek())}", self.peek().col)
        self.advance()

    def enter(self, tok: _Tok) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            _fail(f"the condition is nested too deeply (more than {MAX_DEPTH} levels)", tok.col)

    def parse(self) -> Fn:
        if self.peek().kind == "end":
            _fail("the condition is empty", 1)
        fn = self.expression()
        tok = self.peek()
        if tok.kind == "op" and tok.value in ")]":
            _fail(f"'{tok.value}' has nothing to close", tok.col)
        if tok.kind != "end":
            missing = "are you missing 'and', 'or' or an operator?"
            _fail(f"unexpected {_describe(tok)} after a complete expression; {missing}", tok.col)
        return fn

    def expression(self) -> Fn:
        return self.logical("or", lambda: self.logical("and", self.negation))

    def logical(self, word: str, sub: Callable[[], Fn]) -> Fn:
        """n-ary ``and``/``or``: short-circuits and returns a bool."""
        parts = [sub()]
        while self.is_word(word):
            self.advance()
            parts.append(sub())
        if len(parts) == 1:
            return parts[0]
        fns, stop = tuple(parts), word == "or"  # the truth value that decides early

        def run(scope: Scope) -> bool:
            for f in fns:
                if _truthy(f(scope)) is stop:
                    return stop
            return not stop

        return run

    def negation(self) -> Fn:
        if not self.is_word("not"):
            return self.comparison()
        self.enter(self.advance())
        inner = self.negation()
        self.depth -= 1
        return lambda scope: not _truthy(inner(scope))

    def comparison_op(self) -> str | None:
        """Consume and return a comparison operator, if one is next."""
        tok = self.peek()
        if (tok.kind == "op" and tok.value in _COMPARE) or self.is_word("in"):
            self.advance()
            return str(tok.value)
        if self.is_word("not") and self.is_word("in", 1):
            self.pos += 2
            return "not in"
        return None

    def comparison(self) -> Fn:
        left = self.arithmetic(("+", "-"), self.product)
        if (op := self.comparison_op()) is None:
            return left
        right = self.arithmetic(("+", "-"), self.product)
        tok = self.peek()
        if self.comparison_op() is not None:
            _fail("comparisons cannot be chained; use 'and', e.g. a < b and b < c", tok.col)
        cmp = _COMPARE[op]
        if not isinstance(right, _Const):
            return lambda scope: cmp(left(scope), right(scope))
        value = right.value
        if op.endswith("in") and isinstance(value, list) and all(type(v) is str for v in value):
            names, want = frozenset(value), op == "in"  # fast path: name in ['a', 'b']
            return lambda scope: (isinstance(v := left(scope), str) and v in names) is want
        return lambda scope: cmp(left(scope), value)

    def product(self) -> Fn:
        return self.arithmetic(("*", "/", "%"), self.unary)

    def arithmetic(self, ops: tuple[str, ...], sub: Callable[[], Fn]) -> Fn:
        """n-ary left-associative chain, evaluated in a loop; folded if all constant."""
        first, rest = sub(), []
        while self.is_op(*ops):
            rest.append((_ARITH[self.advance().value], sub()))
        if not rest:
            return first
        chain = tuple(rest)

        def run(scope: Scope) -> Any:
            value = first(scope)
            for apply, f in chain:
                value = apply(value, f(scope))
            return value

        return _Const(run({})) if _all_const((first, *(f for _, f in chain))) else run

    def unary(self) -> Fn:
        if not self.is_op("-"):
            return self.primary()
        self.enter(self.advance())
        inner = self.unary()
        self.depth -= 1
        if isinstance(inner, _Const):
            return _Const(_neg(inner.value))
        return lambda scope: _neg(inner(scope))

    def primary(self) -> Fn:
        tok = self.peek()
        fn: Fn
        if tok.kind in ("num", "dur", "str") or (tok.kind == "name" and tok.value in _LITERALS):
            self.advance()
            fn = _Const(_LITERALS.get(tok.value) if tok.kind == "name" else tok.value)
        elif tok.kind == "name" and tok.value not in _KEYWORDS:
            self.advance()
            fn = self.call(tok) if self.is_op("(") else self.path(tok)
        elif self.is_op("("):
            self.enter(self.advance())
            fn = self.expression()
            self.expect(")", f"missing ')' to close the '(' at column {tok.col}")
            self.depth -= 1
        elif self.is_op("["):
            items = self.items("]", f"missing ']' to close the list at column {tok.col}")
            fn = _Const([f({}) for f in items]) if _all_const(items) else _list_of(items)
        else:
            prev = f" after '{self.toks[self.pos - 1].text}'" if self.pos else ""
            found = f" but found {_describe(tok)}" if tok.kind != "end" else ""
            _fail(f"expected an expression{prev}{found}", tok.col)
        if self.is_op(".", "["):
            where = "can only follow a path such as event.properties.name"
            _fail(f"'{self.peek().value}' {where}", self.peek().col)
        return fn

    def items(self, close: str, message: str) -> tuple[Fn, ...]:
        """Comma-separated expressions after an opening '(' or '[' up to ``close``."""
        self.enter(self.advance())
        items: list[Fn] = []
        while not self.is_op(close):
            items.append(self.expression())
            if not self.is_op(","):
                break
            self.advance()
        self.expect(close, message)
        self.depth -= 1
        return tuple(items)

    def path(self, root: _Tok) -> Fn:
        """``ROOT ('.' NAME | '[' expr ']')*``; records the literal prefix for paths()."""
        name = root.value
        if name not in self.roots:
            if name in _FUNCTIONS:
                _fail(f"'{name}' is a function; call it with parentheses: {name}(...)", root.col)
            hint = f" (did you mean '{name.lower()}'?)" if name.lower() in _LITERALS else ""
            known = ", ".join(sorted(self.roots))
            _fail(f"unknown name '{name}'; expected one of: {known}{hint}", root.col)
        path, literal = [name], True
        steps: list[tuple[bool, Any]] = []  # (computed?, key or closure giving the key)
        while self.is_op(".", "["):
            tok = self.advance()
            if tok.value == ".":
                if self.peek().kind != "name":
                    hint = 'use ["..."] for names with spaces or symbols'
                    _fail(f"expected a field name after '.'; {hint}", self.peek().col)
                key: Any = self.advance().value
            else:
                self.enter(tok)
                if self.is_op("]"):
                    _fail("expected an index between '[' and ']'", tok.col)
                index = self.expression()
                self.expect("]", f"missing ']' to close the '[' at column {tok.col}")
                self.depth -= 1
                if not isinstance(index, _Const):
                    steps.append((True, index))
                    literal = False
                    continue
                key = index.value
            steps.append((False, key))
            literal = literal and (isinstance(key, str) or type(key) is int)
            if literal:
                path.append(str(key))
        self.paths.add(tuple(path))
        return _walk(name, tuple(steps))

    def call(self, name_tok: _Tok) -> Fn:
        name = name_tok.value
        if name not in _FUNCTIONS:
            known = ", ".join(sorted(_FUNCTIONS))
            _fail(f"unknown function '{name}'; known functions: {known}", name_tok.col)
        args = list(self.items(")", f"missing ')' to close the call to {name}()"))
        arity, impl = _FUNCTIONS[name]
        if len(args) != arity:
            wanted = f"{arity} argument" + ("" if arity == 1 else "s")
            _fail(f"{name}() takes {wanted} but was given {len(args)}", name_tok.col)
        if name in _NEEDS_NOW:
            self.paths.add(("now",))
            args.insert(0, lambda scope: scope.get("now"))
        if len(args) == 1:
            (a,) = args
            return lambda scope: impl(a(scope))
        if len(args) == 2:
            a, b = args
            return lambda scope: impl(a(scope), b(scope))
        return lambda scope: impl(*[f(scope) for f in args])


def _all_const(fns: tuple[Fn, ...]) -> bool:
    return all(isinstance(f, _Const) for f in fns)


def _list_of(items: tuple[Fn, ...]) -> Fn:
    return lambda scope: [f(scope) for f in items]


def _walk(root: str, steps: tuple[tuple[bool, Any], ...]) -> Fn:
    """A closure reading ``scope[root]`` then each step; null once anything is missing."""
    if not steps:
        return lambda scope: scope.get(root)

    def run(scope: Scope) -> Any:
        cur = scope.get(root)
        for computed, key in steps:
            if cur is None:
                return None
            cur = _step(cur, key(scope) if computed else key)
        return cur

    return run


# ----------------------------------------------------------------------- API


class Condition:
    """A compiled condition; immutable, so safe to share across threads and journeys."""

    __slots__ = ("_fn", "_paths", "roots", "source")

    def __init__(
        self, source: str, roots: frozenset[str], fn: Fn, paths: frozenset[tuple[str, ...]]
    ) -> None:
        self.source, self.roots, self._fn, self._paths = source, roots, fn, paths

    def evaluate(self, scope: Mapping[str, Any]) -> Any:
        """The expression's value; null-safe for JSON-like data (dicts, lists, scalars)."""
        return self._fn(scope)

    def test(self, scope: Mapping[str, Any]) -> bool:
        """The expression's truthiness. Never raises because of the data: errors mean False."""
        try:
            return _truthy(self._fn(scope))
        except Exception:
            return False

    def paths(self) -> set[tuple[str, ...]]:
        """Every path referenced, e.g. ``{("event", "properties", "cart_id")}``.

        A path stops before the first computed index (``event.a[context.k]``
        gives ``("event", "a")`` and ``("context", "k")``); literal list indices
        appear as text (``"0"``); ``days_since``/``hours_since`` add ``("now",)``.
        """
        return set(self._paths)

    def __repr__(self) -> str:
        return f"Condition({self.source!r})"


def compile_condition(source: str, *, roots: frozenset[str] = ROOTS) -> Condition:
    """Compile ``source``; results are cached by ``(source, roots)``.

    Raises ConditionError (with a 1-based ``column`` where one applies) for
    syntax errors, names outside ``roots``, unknown functions, wrong argument
    counts, and sources longer than MAX_LENGTH or nested deeper than MAX_DEPTH.
    """
    if not isinstance(source, str):
        raise ConditionError("a condition must be text")
    if len(source) > MAX_LENGTH:
        raise ConditionError(
            f"the condition is too long ({len(source)} characters; the limit is {MAX_LENGTH})"
        )
    return _compile(source, frozenset(roots))


@functools.lru_cache(maxsize=2048)
def _compile(source: str, roots: frozenset[str]) -> Condition:
    parser = _Parser(source, roots)
    try:
        fn = parser.parse()
    except RecursionError:  # belt and braces: MAX_DEPTH stops real input first
        raise ConditionError("the condition is nested too deeply") from None
    return Condition(source, roots, fn, frozenset(parser.paths))
