"""Fuzzing the condition language: any text compiles to a Condition or is a ConditionError.

A compiled condition then evaluates against random data without raising:
conditions are written by marketers and run on customers' events.
"""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from touchline.errors import ConditionError
from touchline.journeys.conditions import Condition, compile_condition

FUZZ = settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# Pieces of the language, so random text often gets past the tokenizer.
PIECES = [
    "event",
    "profile",
    "trigger",
    ".",
    "properties",
    "total",
    "traits",
    "[",
    "]",
    "(",
    ")",
    "'a'",
    '"b"',
    "1",
    "2.5",
    "-",
    "+",
    "*",
    "/",
    "%",
    "==",
    "!=",
    "<",
    "<=",
    ">",
    ">=",
    " and ",
    " or ",
    "not ",
    " in ",
    "true",
    "false",
    "null",
    ",",
    "len",
    "lower",
    "number",
    "any",
    "sum",
    "days_since",
    "exists",
    "[0]",
    "'",
    '"',
    "\\",
    "\x00",
    "é",
    "😀",
    " ",
]
sources = st.one_of(
    st.text(max_size=80),
    st.lists(st.sampled_from(PIECES), max_size=30).map("".join),
    st.integers(min_value=0, max_value=3000).map(lambda n: "(" * n + "1" + ")" * n),
    st.integers(min_value=0, max_value=3000).map(lambda n: "not " * n + "true"),
    st.integers(min_value=0, max_value=3000).map(lambda n: "-" * n + "1"),
)
data = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=10)),
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=20,
)
scopes = st.fixed_dictionaries(
    {},
    optional={
        "event": st.dictionaries(st.sampled_from(["properties", "name", "timestamp"]), data),
        "profile": st.dictionaries(st.sampled_from(["traits", "email"]), data),
        "trigger": data,
    },
)


@FUZZ
@given(source=sources)
def test_any_text_is_a_condition_or_a_condition_error(source: str) -> None:
    """compile_condition returns a Condition or raises ConditionError; nothing else escapes."""
    try:
        condition = compile_condition(source)
    except ConditionError as exc:
        assert exc.message
        assert exc.column is None or 1 <= exc.column <= len(source) + 1
        return
    assert isinstance(condition, Condition)


@FUZZ
@given(source=st.lists(st.sampled_from(PIECES), max_size=20).map("".join), scope=scopes)
def test_compiled_conditions_never_raise_on_data(source: str, scope: dict[str, Any]) -> None:
    """A condition that compiles tests any scope to a bool without raising."""
    try:
        condition = compile_condition(source)
    except ConditionError:
        return
    assert condition.test(scope) in (True, False)
