"""Fuzzing journey files: a mutated or random YAML document is a spec or a located error.

The example pack's journeys are mutated (lines dropped, duplicated, swapped,
re-indented, values replaced with odd scalars, characters inserted), and
random YAML documents are generated from random data. Loading must return a
:class:`JourneySpec` or raise :class:`SpecError` whose every problem names
the file, a line inside it (or none) and a field; no other exception.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from touchline.errors import SpecError
from touchline.journeys.loader import load_journey_text
from touchline.journeys.spec import JourneySpec

PACK = Path(__file__).resolve().parents[2] / "examples" / "ecommerce" / "journeys"
EXAMPLES = {path.name: path.read_text(encoding="utf-8") for path in sorted(PACK.glob("*.yaml"))}
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
ODD = [
    "",
    "~",
    "null",
    "true",
    "0",
    "-1",
    "1e999",
    "0x1F",
    "[]",
    "{}",
    "'",
    '"',
    "&a",
    "*a",
    "!!python/object:os.system",
    "!!binary aGk=",
    "<<: *a",
    "? x",
    "|",
    ">",
    "%YAML 1.1",
    "---",
    "...",
    "0s",
    "-1h",
    "99999999999d",
    "25:99",
    "é😀",
    "\t",
    "{{ x }}",
    "event.a ==",
]


def _load(text: str, name: str) -> None:
    try:
        spec = load_journey_text(text, file=name)
    except SpecError as exc:
        assert exc.problems
        lines = text.count("\n") + 2
        for problem in exc.problems:
            assert problem.file == name
            assert problem.line is None or 1 <= problem.line <= lines, problem
            assert problem.field and problem.message
        return
    assert isinstance(spec, JourneySpec)


@st.composite
def mutated(draw: st.DrawFn) -> tuple[str, str]:
    name = draw(st.sampled_from(sorted(EXAMPLES)))
    lines = EXAMPLES[name].splitlines()
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        if not lines:
            break
        at = draw(st.integers(min_value=0, max_value=len(lines) - 1))
        how = draw(st.sampled_from(["drop", "dup", "swap", "indent", "dedent", "value", "insert"]))
        line = lines[at]
        if how == "drop":
            del lines[at]
        elif how == "dup":
            lines.insert(at, line)
        elif how == "swap":
            other = draw(st.integers(min_value=0, max_value=len(lines) - 1))
            lines[at], lines[other] = lines[other], line
        elif how == "indent":
            lines[at] = "  " + line
        elif how == "dedent":
            lines[at] = line.lstrip()
        elif how == "value" and ":" in line:
            lines[at] = line.split(":", 1)[0] + ": " + draw(st.sampled_from(ODD))
        else:
            pos = draw(st.integers(min_value=0, max_value=len(line)))
            lines[at] = line[:pos] + draw(st.sampled_from(ODD)) + line[pos:]
    return name, "\n".join(lines) + "\n"


@FUZZ
@given(case=mutated())
def test_mutated_example_journeys_load_or_fail_with_located_problems(
    case: tuple[str, str],
) -> None:
    """A damaged example journey is a spec or a SpecError naming file, line and field."""
    name, text = case
    _load(text, name)


yaml_data = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.floats(allow_nan=False),
        st.text(max_size=12),
        st.sampled_from(["journey", "trigger", "steps", "send", "wait", "if", "goto", "1h"]),
    ),
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(
            st.one_of(
                st.sampled_from(
                    [
                        "journey",
                        "name",
                        "trigger",
                        "entry",
                        "steps",
                        "id",
                        "send",
                        "wait",
                        "wait_for",
                        "if",
                        "then",
                        "else",
                        "split",
                        "goto",
                        "exit_on",
                        "goal",
                        "event",
                    ]
                ),
                st.text(max_size=6),
            ),
            children,
            max_size=5,
        ),
    ),
    max_leaves=30,
)


@FUZZ
@given(data=yaml_data)
def test_random_yaml_documents_load_or_fail_with_located_problems(data: object) -> None:
    """Any YAML document is a spec or a SpecError with its problems located, never a crash."""
    _load(yaml.safe_dump(data, allow_unicode=True), "random.yaml")


@settings(max_examples=100, deadline=None)
@given(text=st.text(max_size=400))
def test_random_text_loads_or_fails_with_located_problems(text: str) -> None:
    """Arbitrary text (not even YAML) is a SpecError, never another exception."""
    _load(text, "text.yaml")
