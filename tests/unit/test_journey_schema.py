"""The journey JSON Schema: current, editor-friendly, and in agreement with the loader."""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path
from typing import Any

import pytest

from touchline.journeys.durations import parse_duration, parse_time_of_day
from touchline.journeys.loader import load_journey_data, load_journey_text
from touchline.journeys.schema import (
    DURATION_PATTERN,
    SCHEMA_ID,
    SCHEMA_PATH,
    TIME_PATTERN,
    journey_json_schema,
    schema_text,
)
from touchline.journeys.spec import STEP_KINDS

ROOT = Path(__file__).parents[2]


def valid_journey_texts() -> dict[str, str]:
    """Journeys the loader accepts: the reference's examples and the examples/ folder."""
    reference = (ROOT / "docs" / "reference" / "journeys.md").read_text(encoding="utf-8")
    blocks = [textwrap.dedent(b) for b in re.findall(r"```yaml\n(.*?)```", reference, re.S)]
    texts = {f"reference-{i}": b for i, b in enumerate(blocks) if re.search(r"^journey:", b, re.M)}
    for path in sorted((ROOT / "examples").rglob("*.y*ml")):
        if "pending" in path.relative_to(ROOT).parts:
            continue  # proposals in a trigger format not supported yet; not loadable on purpose
        text = path.read_text(encoding="utf-8")
        if re.search(r"^journey:", text, re.M):
            texts[str(path.relative_to(ROOT))] = text
    return texts


VALID = valid_journey_texts()

INVALID = {
    "two kinds in a step": "journey: j\ntrigger: {event: E}\nsteps:\n  - {wait: 1h, exit: true}\n",
    "no kind in a step": "journey: j\ntrigger: {event: E}\nsteps:\n  - {id: a}\n",
    "duration without unit": "journey: j\ntrigger: {event: E}\nsteps:\n  - wait: '90'\n",
    "bad time of day": (
        "journey: j\ntrigger: {event: E}\nsteps:\n  - wait_until: {time: '25:00'}\n"
    ),
    "unknown field": "journey: j\ntrigger: {event: E}\nsteps:\n  - wiat: 1h\n",
    "missing trigger": "journey: j\nsteps:\n  - wait: 1h\n",
    "bad journey key": "journey: Big Sale\ntrigger: {event: E}\nsteps:\n  - wait: 1h\n",
    "step id exit": "journey: j\ntrigger: {event: E}\nsteps:\n  - {id: exit, wait: 1h}\n",
    "null optional field": "journey: j\ntrigger: {event: E, where: null}\nsteps:\n  - wait: 1h\n",
}


def test_committed_schema_file_is_current() -> None:
    """journey.schema.json equals journey_json_schema(); regenerate it if this fails."""
    committed = SCHEMA_PATH.read_text(encoding="utf-8")

    assert json.loads(committed) == journey_json_schema(), (
        "run: python -m touchline.journeys.schema > src/touchline/journeys/journey.schema.json"
    )
    assert committed == schema_text()


def test_schema_header_for_editors() -> None:
    """The schema names its draft, id and purpose, as editors expect."""
    schema = journey_json_schema()

    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"] == SCHEMA_ID == "https://touchline.dev/schema/journey.json"
    assert schema["title"] and schema["description"]
    assert set(schema["required"]) == {"journey", "trigger", "steps"}


def test_durations_and_times_are_patterned_text() -> None:
    """Every duration and time of day refers to a text definition with a pattern, not ISO."""
    schema = journey_json_schema()
    text = json.dumps(schema)
    defs = schema["$defs"]

    assert '"format": "duration"' not in text and '"format": "time"' not in text
    assert defs["Duration"]["type"] == "string" and defs["Duration"]["pattern"] == DURATION_PATTERN
    assert defs["TimeOfDay"]["pattern"] == TIME_PATTERN
    assert defs["Step"]["properties"]["wait"]["$ref"] == "#/$defs/Duration"
    assert defs["WaitUntil"]["properties"]["time"]["$ref"] == "#/$defs/TimeOfDay"
    assert defs["Goal"]["properties"]["within"]["default"] == "7d"


@pytest.mark.parametrize(
    ("value", "ok"),
    [("30m", True), ("1h30m", True), ("2w", True), (" 1d 2h ", True), ("90", False),
     ("5 minutes", False), ("1y", False), ("", False)],
)  # fmt: skip
def test_duration_pattern_agrees_with_the_parser(value: str, ok: bool) -> None:
    """The schema's duration pattern accepts what parse_duration accepts."""
    matches = re.match(DURATION_PATTERN, value) is not None
    try:
        parse_duration(value)
        parsed = True
    except ValueError:
        parsed = False

    assert matches is parsed is ok


@pytest.mark.parametrize(
    ("value", "ok"),
    [("10:00", True), ("9:05", True), ("23:59", True), ("24:00", False), ("10:60", False),
     ("10", False), ("10:00:00", False)],
)  # fmt: skip
def test_time_pattern_agrees_with_the_parser(value: str, ok: bool) -> None:
    """The schema's time pattern accepts what parse_time_of_day accepts."""
    matches = re.match(TIME_PATTERN, value) is not None
    try:
        parse_time_of_day(value)
        parsed = True
    except ValueError:
        parsed = False

    assert matches is parsed is ok


def test_exit_step_accepts_text_or_boolean() -> None:
    """`exit:` is typed as `true` or a reason text, and each step needs exactly one kind."""
    step = journey_json_schema()["$defs"]["Step"]

    assert step["properties"]["exit"]["anyOf"] == [
        {"const": True, "type": "boolean"},
        {"type": "string"},
    ]
    assert step["oneOf"] == [{"required": [kind]} for kind in STEP_KINDS]


def test_optional_fields_are_not_nullable() -> None:
    """Optional fields are simply left out, so the schema offers no `null` anywhere."""
    assert '"null"' not in json.dumps(journey_json_schema())


def test_every_field_has_a_description() -> None:
    """Editors show a description on hover for every field of every definition."""
    schema = journey_json_schema()
    missing = [
        f"{name or 'JourneySpec'}.{prop}"
        for name, definition in [("", schema), *schema["$defs"].items()]
        for prop, body in definition.get("properties", {}).items()
        if not body.get("description")
    ]

    assert missing == []


# ------------------------------------------------------- with jsonschema installed


def validator() -> Any:
    jsonschema = pytest.importorskip("jsonschema")
    schema = journey_json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


@pytest.mark.parametrize("name", VALID)
def test_valid_journeys_validate_against_the_schema(name: str) -> None:
    """Every journey the loader accepts (docs and examples/) is valid under the schema."""
    text = VALID[name]
    load_journey_text(text, file=name)  # the loader accepts it ...
    errors = [e.message for e in validator().iter_errors(load_journey_data(text, file=name))]

    assert errors == []  # ... and so does the schema


@pytest.mark.parametrize("name", INVALID)
def test_invalid_journeys_fail_the_schema(name: str) -> None:
    """The schema is not vacuous: typical mistakes are flagged in the editor too."""
    data = load_journey_data(INVALID[name], file=name)

    assert not validator().is_valid(data)
