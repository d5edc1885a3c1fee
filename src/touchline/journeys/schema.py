"""The JSON Schema of journey files, for editors and other tools.

Editors that speak JSON Schema (VS Code with the YAML extension, JetBrains
IDEs) use it to complete fields and flag mistakes while a journey is typed::

    # yaml-language-server: $schema=https://touchline.dev/schema/journey.json

The schema is derived from the pydantic models in :mod:`touchline.journeys.spec`
and then adjusted to how the files are written rather than how Python holds
them: durations are text such as ``1h30m`` (pydantic would say ISO 8601),
times of day ``HH:MM``, optional fields are simply left out (never ``null``),
and each step has exactly one kind. The loader remains the authority; the
schema only has to agree with it on valid files.

A copy is kept next to this module as ``journey.schema.json`` (a test checks it
is current). ``python -m touchline.journeys.schema`` prints the schema, so::

    python -m touchline.journeys.schema > src/touchline/journeys/journey.schema.json

regenerates it, and users can save a copy for their editor the same way.
"""

from __future__ import annotations

import copy
import json
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter

from touchline.journeys.durations import format_duration
from touchline.journeys.spec import KEY_RE, STEP_KINDS, TRIGGER_KINDS, JourneySpec

__all__ = ["SCHEMA_ID", "SCHEMA_PATH", "journey_json_schema", "schema_text"]

SCHEMA_ID = "https://touchline.dev/schema/journey.json"
SCHEMA_PATH = Path(__file__).with_name("journey.schema.json")

# JSON Schema patterns are ECMA-262; these mirror durations.py and spec.KEY_RE.
DURATION_PATTERN = r"^\s*(?:\d+\s*[wdhms]\s*)+$"
TIME_PATTERN = r"^([01]?\d|2[0-3]):([0-5]\d)$"

_DURATION = {
    "type": "string",
    "pattern": DURATION_PATTERN,
    "description": "A duration: numbers with units w, d, h, m, s, e.g. 30m, 1h30m, 7d, 2w.",
    "examples": ["30m", "1h", "1h30m", "1d", "7d", "2w"],
}
_TIME_OF_DAY = {
    "type": "string",
    "pattern": TIME_PATTERN,
    "description": "A time of day on the 24-hour clock, HH:MM, e.g. 10:00 or 18:30.",
    "examples": ["09:00", "10:00", "18:30"],
}
_CONDITION = "A condition, e.g. event.properties.total > 50 and profile.country == 'PT'."
_TARGET = "A step id to go to, or 'exit' to end the journey."

# (definition, property) -> description shown on hover and in completion lists.
_DESCRIPTIONS: dict[tuple[str, str], str] = {
    ("", "journey"): "Stable key of the journey (lowercase letters, digits, '-', '_'); "
    "never change it once customers are inside.",
    ("", "name"): "Human name shown in the UI and reports.",
    ("", "description"): "What the journey is for; free text.",
    ("", "category"): "transactional (service messages), engaging (relationship) or "
    "selling (promotion); decides caps and consent.",
    ("", "status"): "active, or paused: a paused journey admits nobody new.",
    ("", "trigger"): "What puts a customer into the journey: an event, a date of their "
    "profile, or a schedule.",
    ("", "entry"): "Whether a customer may enter again; default: not within 1d.",
    ("", "exit_on"): "Events that take the customer out of the journey at once.",
    ("", "goal"): "The conversion this journey is measured by.",
    ("", "steps"): "What happens, in order; each step has exactly one kind.",
    ("Trigger", "event"): "Event name, exactly as tracked, e.g. Cart Abandoned.",
    ("Trigger", "where"): _CONDITION + " Only matching events enter.",
    ("Entry", "reentry"): "always | never | not_within (default) | once_per_key.",
    ("Entry", "not_within"): "With reentry not_within: time since the last entry "
    "before another is allowed (default 1d).",
    ("Entry", "key"): "With reentry once_per_key: the trigger property naming the entry, "
    "e.g. cart_id.",
    ("EventMatch", "event"): "Event name, exactly as tracked.",
    ("EventMatch", "match"): "A property that must equal the trigger event's, e.g. cart_id.",
    ("EventMatch", "where"): _CONDITION,
    ("Goal", "event"): "Event name that counts as converting, e.g. Order Completed.",
    ("Goal", "match"): "A property that must equal the trigger event's, e.g. cart_id.",
    ("Goal", "where"): _CONDITION,
    ("Goal", "within"): "How long after entry a conversion counts (default 7d).",
    ("Goal", "value"): "Expression for the conversion's value, e.g. event.properties.total.",
    ("Goal", "exit"): "Whether converting ends the journey (default true).",
    ("WaitFor", "event"): "Event name to wait for.",
    ("WaitFor", "match"): "A property that must equal the trigger event's, e.g. cart_id.",
    ("WaitFor", "where"): _CONDITION,
    ("WaitFor", "timeout"): "How long to wait for the event.",
    ("WaitFor", "on_event"): _TARGET + " Default: the next step.",
    ("WaitFor", "on_timeout"): _TARGET + " Default: the next step.",
    ("WaitUntil", "time"): "Local time of day in the customer's time zone.",
    ("WaitUntil", "weekdays"): "Days allowed (mon..sun); default every day.",
    ("Branch", "cases"): "Checked in order; the first whose `when` holds decides.",
    ("Branch", "otherwise"): _TARGET + " Default: the next step.",
    ("BranchCase", "when"): _CONDITION,
    ("BranchCase", "goto"): _TARGET,
    ("Variant", "name"): "Variant name, reported with each send.",
    ("Variant", "percent"): "Share of customers; a split's percentages add up to 100.",
    ("Variant", "goto"): _TARGET + " Default: the next step.",
    ("Send", "channel"): "Channel name, e.g. email, sms, push.",
    ("Send", "template"): "Template key.",
    ("Send", "purpose"): "marketing or transactional; default from the journey's category.",
    ("Send", "when_capped"): "skip (default) or defer when a frequency cap stops the message.",
    ("UpdateProfile", "set"): "Traits to set to fixed values.",
    ("UpdateProfile", "compute"): "Traits to set to the value of an expression.",
    ("UpdateProfile", "unset"): "Traits to remove.",
    ("Step", "id"): "Step id, used by goto targets; default step-N (N counts from 1).",
    ("Step", "next"): _TARGET + " Default: the following step.",
    ("Step", "wait"): "Wait this long, then go on.",
    ("Step", "wait_until"): "Wait until a local time of day (optionally on given weekdays).",
    ("Step", "wait_for"): "Wait for an event, at most `timeout`.",
    ("Step", "branch"): "Go to the first case whose condition holds.",
    ("Step", "split"): "Send customers down variants by percentage (same customer, same variant).",
    ("Step", "send"): "Send a message.",
    ("Step", "update_profile"): "Set, compute or remove profile traits.",
    ("Step", "exit"): "End the journey here: true, or a reason text.",
}

_STEP_SNIPPETS = [
    {"label": "wait", "body": {"id": "$1", "wait": "${2:1h}"}},
    {"label": "wait_until", "body": {"id": "$1", "wait_until": {"time": "${2:10:00}"}}},
    {
        "label": "wait_for",
        "body": {"id": "$1", "wait_for": {"event": "$2", "timeout": "${3:2d}"}},
    },
    {"label": "send", "body": {"id": "$1", "send": {"channel": "${2:email}", "template": "$3"}}},
    {
        "label": "branch",
        "body": {"id": "$1", "branch": {"cases": [{"when": "$2", "goto": "$3"}]}},
    },
    {
        "label": "split",
        "body": {
            "id": "$1",
            "split": [{"name": "a", "percent": 50}, {"name": "b", "percent": 50}],
        },
    },
    {"label": "exit", "body": {"exit": True}},
]


def journey_json_schema() -> dict[str, Any]:
    """The journey file schema (JSON Schema draft 2020-12) as a fresh dict."""
    schema = copy.deepcopy(JourneySpec.model_json_schema())
    defs: dict[str, Any] = schema.pop("$defs")
    for name, definition in [("", schema), *defs.items()]:
        definition.pop("title", None)
        for prop_name, prop in definition.get("properties", {}).items():
            _tidy_property(prop)
            text = _DESCRIPTIONS.get((name, prop_name))
            if text:
                prop["description"] = text
    schema["properties"]["journey"]["pattern"] = KEY_RE.pattern
    step = defs["Step"]
    step["properties"]["id"].pop("default", None)  # "" means "step-N", which is not typed
    step["properties"]["id"]["pattern"] = KEY_RE.pattern
    step["properties"]["id"]["not"] = {"const": "exit"}
    step["oneOf"] = [{"required": [kind]} for kind in STEP_KINDS]
    step["defaultSnippets"] = _STEP_SNIPPETS
    defs["Trigger"]["oneOf"] = [{"required": [kind]} for kind in TRIGGER_KINDS]
    defs["Duration"] = _DURATION
    defs["TimeOfDay"] = _TIME_OF_DAY
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        "title": "touchline journey",
        "description": "A touchline journey file: a trigger event, entry rules, exit events, "
        "a goal, and the steps each customer goes through.",
        **schema,
        "$defs": dict(sorted(defs.items())),
    }


def _tidy_property(prop: dict[str, Any]) -> None:
    """Adjust one property schema in place to how journey files are written."""
    prop.pop("title", None)
    any_of = prop.get("anyOf")
    if any_of is not None:
        kept = [option for option in any_of if option != {"type": "null"}]
        if len(kept) < len(any_of):
            # Optional fields are left out, not written as null.
            prop.pop("default", None)
            prop.pop("anyOf")
            if len(kept) == 1:
                prop.update(kept[0])
            else:
                prop["anyOf"] = kept
    for options in prop.get("anyOf") or [prop]:
        _typed(options)
    if prop.get("$ref") == "#/$defs/Duration":
        default = prop.get("default")
        if isinstance(default, str):
            prop["default"] = format_duration(TypeAdapter(timedelta).validate_python(default))


def _typed(schema: dict[str, Any]) -> None:
    """Durations and times of day refer to their definitions instead of ISO formats."""
    kind = schema.get("format")
    if schema.get("type") == "string" and kind in ("duration", "time"):
        del schema["type"], schema["format"]
        schema["$ref"] = "#/$defs/" + ("Duration" if kind == "duration" else "TimeOfDay")


def schema_text() -> str:
    """The schema as the text of ``journey.schema.json`` (2-space indent, final newline)."""
    return json.dumps(journey_json_schema(), indent=2, ensure_ascii=False) + "\n"


if __name__ == "__main__":
    sys.stdout.write(schema_text())
