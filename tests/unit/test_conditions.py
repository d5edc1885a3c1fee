"""Unit tests for the journey condition language (touchline.journeys.conditions)."""

from __future__ import annotations

import string
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from touchline.errors import ConditionError
from touchline.journeys.conditions import (
    MAX_DEPTH,
    MAX_LENGTH,
    ROOTS,
    Condition,
    compile_condition,
)

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
CREATED = datetime(2024, 4, 21, 12, 0, tzinfo=UTC)

SCOPE: dict[str, Any] = {
    "now": NOW,
    "event": {
        "name": "order_placed",
        "timestamp": "2024-04-30T12:00:00Z",
        "properties": {
            "cart_id": "c-42",
            "Cart ID": "spaced",
            "total": 120.5,
            "count": 3,
            "coupon": None,
            "created": CREATED,
            "tags": ["vip", "new"],
            "products": [
                {"sku": "a", "price": 10, "category": "shoes"},
                {"sku": "b", "price": 15.5, "category": "hats"},
                {"sku": "c", "price": "n/a"},
            ],
        },
    },
    "profile": {"traits": {"city": "Lisbon", "plan": "pro", "age": 30, "score": "42"}},
    "trigger": {"name": "cart_abandoned", "properties": {"total": 99}},
    "context": {"variant": "B", "key": "cart_id"},
}


def ev(source: str, scope: Mapping[str, Any] = SCOPE) -> Any:
    return compile_condition(source).evaluate(scope)


def error_for(source: str, **kwargs: Any) -> ConditionError:
    with pytest.raises(ConditionError) as info:
        compile_condition(source, **kwargs)
    return info.value


# ------------------------------------------------------------------ precedence


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("true or false and false", True),
        ("(true or false) and false", False),
        ("not false and false", False),
        ("not 1 == 2", True),
        ("not 1 + 1 == 2", False),
        ("1 + 2 * 3", 7),
        ("(1 + 2) * 3", 9),
        ("10 - 4 - 3", 3),
        ("2 * 3 % 4", 2),
        ("-2 * 3", -6),
        ("- -2", 2),
        ("-event.properties.count + 1", -2),
        ("1 + 2 == 3 and 2 * 2 == 4", True),
        ("event.properties.count + 1 in [4, 5]", True),
    ],
)
def test_precedence_follows_the_documented_table(source: str, expected: Any) -> None:
    """or < and < not < comparisons < + - < * / % < unary minus, left-associative."""
    assert ev(source) == expected


def test_comparisons_cannot_be_chained() -> None:
    """`a < b < c` is rejected with a hint instead of silently meaning something odd."""
    assert "chained" in error_for("1 < 2 < 3").message


# ------------------------------------------------------------------- operators


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("1 == 1.0", True),
        ("'1' == 1", False),
        ("'1' != 1", True),
        ("true == 1", False),
        ("null == null", True),
        ("null != 0", True),
        ("[1, 'a'] == [1.0, 'a']", True),
        ("2 < 3", True),
        ("3 <= 3", True),
        ("4 > 3.5", True),
        ("3 >= 4", False),
        ("'apple' < 'banana'", True),
        ("'a' < 1", False),
        ("1 > '0'", False),
        ("null < 1", False),
        ("null >= null", False),
        ("true > false", False),
        ("'vip' in event.properties.tags", True),
        ("'gold' not in event.properties.tags", True),
        ("'ord' in event.name", True),
        ("'cart_id' in event.properties", True),
        ("1 in event.properties.coupon", False),
        ("1 in 5", False),
        ("3 in [1.0, 3.0]", True),
        ("'3' in [3]", False),
        ("context.variant in ['A', 'B']", True),
        ("context.variant not in ['A', 'B']", False),
        ("event.properties.count not in ['A', 'B']", True),
    ],
)
def test_comparison_operators(source: str, expected: bool) -> None:
    """Every comparison operator, including cross-type equality and incompatible ordering."""
    assert ev(source) is expected


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("7 + 2", 9),
        ("7 - 2", 5),
        ("7 * 2", 14),
        ("7 / 2", 3.5),
        ("7 % 2", 1),
        ("1.5 + 1", 2.5),
        ("'ab' + 'cd'", "abcd"),
        ("'a' + 1", None),
        ("'a' * 3", None),
        ("[1] + [2]", None),
        ("null + 1", None),
        ("true + 1", None),
        ("1 / 0", None),
        ("1.5 / 0.0", None),
        ("5 % 0", None),
        ("-'a'", None),
        ("-null", None),
    ],
)
def test_arithmetic_operators_and_incompatible_types_give_null(source: str, expected: Any) -> None:
    """+ - * / % on numbers; text concatenation; anything else (or division by zero) is null."""
    assert ev(source) == expected
    if expected is None:
        assert ev(source) is None


def test_and_or_return_booleans() -> None:
    """`and`/`or` yield True/False rather than one of their operands."""
    assert ev("1 and 'x'") is True
    assert ev("0 or ''") is False
    assert ev("null or event.name") is True
    assert ev("not null") is True


class RecordingScope(Mapping[str, Any]):
    """A scope that remembers which roots were looked up."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.data, self.seen = data, []  # type: ignore[var-annotated]

    def __getitem__(self, key: str) -> Any:
        self.seen.append(key)
        return self.data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.data)

    def __len__(self) -> int:
        return len(self.data)


def test_and_or_short_circuit() -> None:
    """The right side of `and`/`or` is not evaluated once the left side decides."""
    scope = RecordingScope(SCOPE)
    assert compile_condition("false and event.name == 'x'").evaluate(scope) is False
    assert compile_condition("true or profile.traits.city == 'x'").evaluate(scope) is True
    assert scope.seen == []
    assert compile_condition("true and context.variant == 'B'").evaluate(scope) is True
    assert scope.seen == ["context"]


# ------------------------------------------------------------ paths and nulls


@pytest.mark.parametrize(
    "source",
    [
        "event.properties.nope",
        "event.properties.nope.deeper.still",
        "event.name.length",
        "profile.traits.age.value",
        "event.properties.tags.first",
        "event.properties.coupon.code",
        "trigger.properties.total.x.y",
    ],
)
def test_missing_paths_are_null(source: str) -> None:
    """A missing key, or stepping into a non-container, yields null rather than raising."""
    assert ev(source) is None


def test_missing_roots_and_empty_scope_are_null_safe() -> None:
    """With nothing in scope every path is null, comparisons are false, test() is False."""
    assert ev("event.name", {}) is None
    assert ev("exists(event.name)", {}) is False
    assert ev("len(event.properties.tags)", {}) == 0
    assert compile_condition("event.properties.total > 100").test({}) is False


def test_null_safe_functions_and_comparisons() -> None:
    """Functions on null give null/0/False, never an error."""
    assert ev("lower(event.properties.nope)") is None
    assert ev("number(event.properties.nope)") is None
    assert ev("event.properties.nope > 3") is False
    assert ev("event.properties.nope == null") is True
    assert ev("exists(event.properties.coupon)") is False


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("event.properties['Cart ID']", "spaced"),
        ('event.properties["cart_id"]', "c-42"),
        ("event['properties']['total']", 120.5),
        ("event.properties.products[0].price", 10),
        ("event.properties.products[1]['sku']", "b"),
        ("event.properties.products[-1].sku", "c"),
        ("event.properties.products[1 + 1].sku", "c"),
        ("event.properties.products[9].price", None),
        ("event.properties.products['0']", None),
        ("event.properties.products[0.5]", None),
        ("event.properties[[1]]", None),
        ("event.properties[context.key]", "c-42"),
        ("event.name[0]", None),
    ],
)
def test_bracket_indexing(source: str, expected: Any) -> None:
    """`[...]` indexes mappings by key and lists by integer; anything else is null."""
    assert ev(source) == expected


@pytest.mark.parametrize(
    "source",
    [
        "event.__class__",
        "event['__class__']",
        "event.name.__class__",
        "event.properties.__dict__",
        "event.properties.tags.__len__",
        "now.__class__",
        "now.year",
        "now.tzinfo",
        "event.properties.products.__getitem__",
        "event.get",
        "event.keys",
    ],
)
def test_dunder_and_python_attributes_are_unreachable(source: str) -> None:
    """Paths never read Python attributes: `event.__class__` and friends are just null."""
    assert ev(source) is None


@pytest.mark.parametrize("source", ["''.__class__", "(event).name", "[1, 2][0]", "len('a').x"])
def test_field_access_only_follows_root_paths(source: str) -> None:
    """`''.__class__`-style expressions cannot even be written: `.`/`[` must follow a path."""
    assert "can only follow a path" in error_for(source).message


# ------------------------------------------------------------- literals and time


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("30d", timedelta(days=30)),
        ("12h", timedelta(hours=12)),
        ("15m", timedelta(minutes=15)),
        ("45s", timedelta(seconds=45)),
        ("2w", timedelta(weeks=2)),
        ("1.5h", timedelta(minutes=90)),
        ("-1d", timedelta(days=-1)),
        ("2 * 12h", timedelta(days=1)),
        ("1d + 12h", timedelta(hours=36)),
        ("1d / 2", timedelta(hours=12)),
        ("1d / 12h", 2.0),
        ("1d / 0", None),
    ],
)
def test_durations_are_timedeltas(source: str, expected: Any) -> None:
    """Duration literals evaluate to timedelta and support timedelta arithmetic."""
    assert ev(source) == expected


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("42", 42),
        ("1.5", 1.5),
        ("'it\\'s'", "it's"),
        ('"a\\"b"', 'a"b'),
        ("'tab\\there'", "tab\there"),
        ("'\\u00e9'", "é"),
        ("'back\\\\slash'", "back\\slash"),
        ("true", True),
        ("false", False),
        ("null", None),
        ("[1, 'a', null,]", [1, "a", None]),
        ("[]", []),
        ("[event.name, 1 + 1]", ["order_placed", 2]),
    ],
)
def test_literals(source: str, expected: Any) -> None:
    """Numbers, quoted text with escapes, booleans, null and lists (trailing comma allowed)."""
    assert ev(source) == expected


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("now - 1d", datetime(2024, 4, 30, 12, 0, tzinfo=UTC)),
        ("now + 1w", datetime(2024, 5, 8, 12, 0, tzinfo=UTC)),
        ("1h + now", datetime(2024, 5, 1, 13, 0, tzinfo=UTC)),
        ("now - event.properties.created", timedelta(days=10)),
        ("now - event.timestamp", timedelta(days=1)),
        ("event.timestamp + 1d", NOW),
        ("now - now", timedelta(0)),
        ("now + 1", None),
        ("now - 'not a date'", None),
        ("'2024-01-02' - '2024-01-01'", None),
        ("event.timestamp < now", True),
        ("event.timestamp > now - 2d", True),
        ("event.properties.created < now - 9d", True),
        ("now - event.properties.created > 1w", True),
        ("'2024-05-01T12:00:00' == now", True),
        ("'2024-05-01T14:00:00+02:00' == now", True),
        ("'2024-05-01' < now", True),
        ("'yesterday' < now", False),
        ("now > 5", False),
    ],
)
def test_datetime_math_with_fixed_datetimes(source: str, expected: Any) -> None:
    """datetime ± timedelta, datetime - datetime; ISO text next to a datetime is parsed (naive = UTC)."""
    assert ev(source) == expected


def test_days_since_and_hours_since_use_now_from_scope() -> None:
    """days_since/hours_since measure from scope['now'] and are null without a usable time."""
    assert ev("days_since(event.timestamp)") == 1.0
    assert ev("hours_since(event.properties.created)") == 240.0
    assert ev("days_since(event.properties.created) >= 10") is True
    assert ev("days_since(null)") is None
    assert ev("days_since('not a date')") is None
    assert ev("days_since(event.timestamp)", {"event": SCOPE["event"]}) is None


# ------------------------------------------------------------------- functions


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("exists(event.name)", True),
        ("exists(event.properties.coupon)", False),
        ("len(event.properties.tags)", 2),
        ("len(event.name)", 12),
        ("len(event.properties)", 8),
        ("len(null)", 0),
        ("len(5)", None),
        ("lower('LiSbOn')", "lisbon"),
        ("upper(profile.traits.city)", "LISBON"),
        ("upper(3)", None),
        ("contains(event.properties.tags, 'vip')", True),
        ("contains(event.name, 'placed')", True),
        ("contains(null, 'x')", False),
        ("starts_with(event.name, 'order_')", True),
        ("starts_with(event.name, 1)", False),
        ("number(profile.traits.score)", 42),
        ("number(' 2.5 ')", 2.5),
        ("number('abc')", None),
        ("number('nan')", None),
        ("number(true)", None),
        ("number(7)", 7),
        ("number(profile.traits.score) > 40", True),
        ("any(event.properties.products, 'category', 'hats')", True),
        ("any(event.properties.products, 'category', 'bags')", False),
        ("any(null, 'category', 'hats')", False),
        ("sum(event.properties.products, 'price')", 25.5),
        ("sum(null, 'price')", 0),
        ("sum('x', 'price')", None),
        ("count(event.properties.products)", 3),
        ("count(null)", 0),
        ("count('abc')", None),
    ],
)
def test_functions(source: str, expected: Any) -> None:
    """Each built-in function, including its null-safe behaviour."""
    assert ev(source) == expected


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("len()", "len() takes 1 argument but was given 0"),
        ("len(1, 2)", "len() takes 1 argument but was given 2"),
        ("any(event.properties.products, 'sku')", "any() takes 3 arguments but was given 2"),
        ("sum(event.properties.products)", "sum() takes 2 arguments but was given 1"),
        ("exists(1, 2, 3)", "exists() takes 1 argument but was given 3"),
    ],
)
def test_function_arity_is_checked_at_compile_time(source: str, message: str) -> None:
    """Calling a function with the wrong number of arguments is a ConditionError at compile."""
    error = error_for(source)
    assert error.message == message
    assert error.column == 1


def test_unknown_function_lists_the_known_ones() -> None:
    """An unknown function's error names every function that does exist."""
    error = error_for("event.name == foo(1)")
    assert error.message.startswith("unknown function 'foo'; known functions: any, contains")
    assert "days_since" in error.message and "starts_with" in error.message
    assert error.column == 15


# ------------------------------------------------------------ names and errors


def test_unknown_root_name_lists_the_roots() -> None:
    """A path must start with a known root; the message lists them in order."""
    error = error_for("foo.bar == 1")
    assert error.message == (
        "unknown name 'foo'; expected one of: context, event, now, profile, trigger"
    )
    assert error.column == 1


def test_custom_roots_restrict_names() -> None:
    """`roots=` decides which names may start a path."""
    roots = frozenset({"profile"})
    assert compile_condition("profile.traits.city", roots=roots).evaluate(SCOPE) == "Lisbon"
    error = error_for("event.name", roots=roots)
    assert error.message == "unknown name 'event'; expected one of: profile"


def test_function_name_without_call_and_capitalised_literals_get_hints() -> None:
    """Common slips (bare function name, `True`) get a hint in the message."""
    assert "call it with parentheses" in error_for("len").message
    assert "did you mean 'true'" in error_for("True").message


@pytest.mark.parametrize(
    ("source", "column", "fragment"),
    [
        ("event.properties.total >", 25, "expected an expression after '>'"),
        ("event.properties.total > )", 26, "expected an expression after '>' but found ')'"),
        ("event.name == 'abc", 15, "never closed; add the closing '"),
        ('event.name == "abc', 15, 'never closed; add the closing "'),
        ("event.name == 'a\\qb'", 17, "unknown escape"),
        ("event.name @ 1", 12, "unexpected character '@'"),
        ("event.name = 'a'", 12, "use '=='"),
        ("event.name == 'a' && true", 19, "use 'and'"),
        ("\u201chello\u201d", 1, "straight quotes"),
        ("(event.name == 'a'", 19, "missing ')' to close the '(' at column 1"),
        ("event.name == 'a')", 18, "')' has nothing to close"),
        ("[1, 2", 6, "missing ']'"),
        ("len(event.name", 15, "missing ')' to close the call to len()"),
        ("event.properties.products[0", 28, "missing ']'"),
        ("event.properties[]", 17, "expected an index"),
        ("event.", 7, "expected a field name after '.'"),
        ("event.name == 'a' event.name", 19, "after a complete expression"),
        ("1 2", 3, "after a complete expression"),
        ("12x > 1", 1, "'12x' is not a number or a duration"),
        ("event.name and", 15, "expected an expression after 'and'"),
        ("not", 4, "expected an expression after 'not'"),
        ("", 1, "the condition is empty"),
        ("   ", 1, "the condition is empty"),
        ("1 not 2", 3, "after a complete expression"),
        ("and", 1, "expected an expression but found 'and'"),
        ("99999999999999999999d", 1, "too large"),
    ],
)
def test_error_messages_and_columns(source: str, column: int, fragment: str) -> None:
    """Syntax errors carry a clear message and the 1-based column of the problem."""
    error = error_for(source)
    assert fragment in error.message
    assert error.column == column


# ------------------------------------------------------------------ limits


def test_nesting_up_to_the_depth_limit_compiles() -> None:
    """MAX_DEPTH levels of parentheses are fine."""
    source = "(" * MAX_DEPTH + "1" + ")" * MAX_DEPTH
    assert ev(source) == 1


@pytest.mark.parametrize(
    "source",
    [
        "(" * (MAX_DEPTH + 1) + "1" + ")" * (MAX_DEPTH + 1),
        "not " * (MAX_DEPTH + 1) + "true",
        "-" * (MAX_DEPTH + 1) + "1",
        "[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1),
        "len(" * (MAX_DEPTH + 1) + "1" + ")" * (MAX_DEPTH + 1),
        "(" * 1000,
        "event" + "[" * 600,
    ],
)
def test_depth_limit_rejects_deep_nesting(source: str) -> None:
    """Nesting beyond MAX_DEPTH is a ConditionError, never a RecursionError."""
    assert "nested too deeply" in error_for(source).message


def test_length_limit() -> None:
    """Sources over MAX_LENGTH characters are refused."""
    assert "too long" in error_for("1" * (MAX_LENGTH + 1)).message


def test_long_flat_chains_evaluate_without_recursion() -> None:
    """A maximal-length `a + a + ...` or `x or x or ...` chain evaluates in a loop."""
    terms = (MAX_LENGTH + 1) // 2
    assert ev("+".join(["1"] * terms)) == terms
    ors = "false or " * ((MAX_LENGTH - 40) // 9) + "event.name == 'order_placed'"
    assert len(ors) <= MAX_LENGTH
    assert ev(ors) is True


# --------------------------------------------------------------- paths, API


def test_paths_lists_every_referenced_path() -> None:
    """paths() returns each path's literal prefix, including ones inside functions and indexes."""
    condition = compile_condition(
        "event.properties.cart_id == profile.traits.city"
        " and exists(event.properties.products[0].price)"
        " and event.properties[context.key] != null"
        " and days_since(event.timestamp) > 1 and 1 < 2"
    )
    assert condition.paths() == {
        ("event", "properties", "cart_id"),
        ("profile", "traits", "city"),
        ("event", "properties", "products", "0", "price"),
        ("event", "properties"),
        ("context", "key"),
        ("event", "timestamp"),
        ("now",),
    }
    assert compile_condition("1 + 1").paths() == set()


def test_paths_returns_a_fresh_set() -> None:
    """Mutating the result of paths() does not change the compiled condition."""
    condition = compile_condition("event.name == 'x'")
    condition.paths().add(("profile",))
    assert condition.paths() == {("event", "name")}


def test_compiled_conditions_are_cached_by_source_and_roots() -> None:
    """The same source and roots give the same Condition object; other roots do not."""
    first = compile_condition("event.name == 'x'")
    assert compile_condition("event.name == 'x'") is first
    assert compile_condition("event.name == 'x'", roots=ROOTS) is first
    other = compile_condition("event.name == 'x'", roots=frozenset({"event"}))
    assert other is not first
    assert isinstance(first, Condition)
    assert first.source == "event.name == 'x'"


def test_a_condition_is_reusable_across_scopes() -> None:
    """One compiled condition evaluates independently against many scopes."""
    condition = compile_condition("event.properties.total >= 100")
    assert condition.test({"event": {"properties": {"total": 100}}}) is True
    assert condition.test({"event": {"properties": {"total": 99}}}) is False
    assert condition.test({"event": {"properties": {"total": "lots"}}}) is False


def test_non_text_source_is_a_condition_error() -> None:
    """Passing something other than a string is reported as a ConditionError."""
    with pytest.raises(ConditionError):
        compile_condition(None)  # type: ignore[arg-type]


class ExplodingMapping(Mapping[str, Any]):
    """A hostile mapping whose every lookup raises."""

    def __getitem__(self, key: str) -> Any:
        raise RuntimeError("boom")

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0


@pytest.mark.parametrize(
    "scope",
    [
        {"event": "not a mapping", "profile": 5, "now": "not a time"},
        {"event": {"properties": ["list", "not", "dict"]}, "profile": {"traits": None}},
        {"event": {"properties": {"total": float("nan"), "products": "oops"}}},
        {"event": {"properties": ExplodingMapping()}},
        ExplodingMapping(),
    ],
)
def test_test_never_raises_on_odd_data(scope: Mapping[str, Any]) -> None:
    """test() turns any data problem into False instead of raising."""
    sources = [
        "event.properties.total > 100 or profile.traits.city == 'x'",
        "sum(event.properties.products, 'price') > 3",
        "days_since(event.timestamp) > 1 and now - 1d < event.properties.total",
        "event.properties[profile.traits] in event.properties",
    ]
    for source in sources:
        assert compile_condition(source).test(scope) is False


# ------------------------------------------------------------------ property


TOKENS = [
    "event", "profile", "now", ".", "name", "properties", "[", "]", "(", ")", ",",
    "0", "1.5", "30d", "'a'", '"b\\n"', "==", "!=", "<", ">=", "+", "-", "*", "/", "%",
    "and", "or", "not", "in", "true", "null", "len", "any", "days_since", "foo", "'",
]  # fmt: skip


@settings(database=None, max_examples=300)
@given(st.text(alphabet=string.printable, max_size=120))
def test_random_printable_text_compiles_or_raises_condition_error(source: str) -> None:
    """Any printable string either compiles or raises ConditionError, never anything else."""
    try:
        condition = compile_condition(source)
    except ConditionError as error:
        assert error.column is None or 1 <= error.column <= len(source) + 1
        return
    assert isinstance(condition.test(SCOPE), bool)


@settings(database=None, max_examples=300)
@given(st.lists(st.sampled_from(TOKENS), max_size=40).map(" ".join))
def test_random_token_soup_compiles_or_raises_condition_error(source: str) -> None:
    """Near-valid token sequences either compile (and test() gives a bool) or raise ConditionError."""
    try:
        condition = compile_condition(source)
    except ConditionError:
        return
    assert isinstance(condition.test(SCOPE), bool)
    assert isinstance(condition.test({}), bool)
