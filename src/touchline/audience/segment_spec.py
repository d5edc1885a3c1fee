"""The segment file format: YAML in, a validated :class:`SegmentSpec` out.

A segment names the customers who match one condition tree::

    segment: repeat-buyers
    name: Repeat buyers
    match:
      all:
        - event: Order Completed
          within: 90d
          count: {at_least: 3}
        - consent: email

Problems are reported like journey files': every one at once, each with its
file, line and dotted field (the YAML reading and the pydantic translation are
the journey loader's). The kinds of condition, their fields and what they mean
are in ``docs/reference/segments.md``; :mod:`touchline.audience.segment_eval`
gives them meaning, :mod:`touchline.audience.segment_sql` turns them into SQL.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
from datetime import timedelta
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from touchline.errors import ConditionError, SpecError, SpecProblem
from touchline.journeys.durations import format_duration, parse_duration
from touchline.journeys.spec import KEY_RE, SEGMENT_ENTERED, SEGMENT_EXITED

__all__ = [
    "CONDITION_KINDS",
    "SEGMENT_ENTERED",
    "SEGMENT_EXITED",
    "MESSAGE_KINDS",
    "Compare",
    "Condition",
    "SegmentError",
    "SegmentSpec",
    "load_segment_text",
    "segment_checksum",
    "segment_to_data",
]

CONDITION_KINDS = ("all", "any", "not", "event", "first", "last", "messages", "profile", "consent")
"""Each condition mapping has exactly one of these keys; it says what kind it is."""

#: The fields each kind of condition may carry besides its own key.
ALLOWED_FIELDS: dict[str, frozenset[str]] = {
    "all": frozenset(),
    "any": frozenset(),
    "not": frozenset(),
    "event": frozenset({"where", "within", "count", "sum", "without"}),
    "first": frozenset({"where", "within", "before"}),
    "last": frozenset({"where", "within", "before"}),
    "messages": frozenset({"channel", "within", "count"}),
    "profile": frozenset(),
    "consent": frozenset({"topic"}),
}

#: ``message_events`` kinds a ``messages:`` condition may count.
MESSAGE_KINDS = ("sent", "delivered", "opened", "clicked", "bounced", "complained", "unsubscribed")

#: Property names a ``where:`` or ``sum:`` may read: they become JSON paths in SQL.
PROPERTY_RE = re.compile(r'^[^"\\\x00-\x1f]{1,100}$')


class SegmentError(SpecError):
    """A segment file (or a folder of them) is invalid; ``problems`` lists them all."""

    code = "invalid_segment"


def _duration(value: Any) -> timedelta:
    return value if isinstance(value, timedelta) else parse_duration(value)


Duration = Annotated[timedelta, BeforeValidator(_duration)]
Number = int | float


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Compare(_Model):
    """Bounds on a number; every bound given must hold (``at_least: 3, at_most: 5``)."""

    at_least: Number | None = None
    more_than: Number | None = None
    at_most: Number | None = None
    less_than: Number | None = None
    exactly: Number | None = None

    @model_validator(mode="after")
    def _some_bound(self) -> Compare:
        if all(getattr(self, name) is None for name in BOUNDS):
            raise ValueError(f"give at least one of {', '.join(BOUNDS)}")
        for name in BOUNDS:
            if isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a number, not true or false")
        return self

    def bounds(self) -> tuple[tuple[str, float | int], ...]:
        """``(operator, value)`` pairs, e.g. ``((">=", 3),)``; operators as in SQL."""
        return tuple(
            (op, getattr(self, name))
            for name, op in BOUNDS.items()
            if getattr(self, name) is not None
        )

    def test(self, value: Any) -> bool:
        return all(_OPS[op](value, bound) for op, bound in self.bounds())


BOUNDS = {"at_least": ">=", "more_than": ">", "at_most": "<=", "less_than": "<", "exactly": "=="}
_OPS = {
    ">=": lambda a, b: a >= b,
    ">": lambda a, b: a > b,
    "<=": lambda a, b: a <= b,
    "<": lambda a, b: a < b,
    "==": lambda a, b: a == b,
}
AT_LEAST_ONCE = Compare(at_least=1)


class SumOf(Compare):
    """Bounds on the sum of one numeric property, e.g. ``{property: revenue, more_than: 10000}``."""

    property: str = Field(min_length=1, max_length=100)


def _as_list(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


class Condition(_Model):
    """One node of the tree; exactly one of :data:`CONDITION_KINDS` is set."""

    all: list[Condition] | None = Field(default=None, min_length=1)
    any: list[Condition] | None = Field(default=None, min_length=1)
    not_: Condition | None = Field(default=None, alias="not")
    event: str | None = Field(default=None, min_length=1, max_length=200)
    first: str | None = Field(default=None, min_length=1, max_length=200)
    last: str | None = Field(default=None, min_length=1, max_length=200)
    messages: Annotated[
        list[Literal[MESSAGE_KINDS]] | None, BeforeValidator(_as_list)  # type: ignore[valid-type]
    ] = Field(default=None, min_length=1)
    profile: str | None = Field(default=None, min_length=1)
    consent: str | None = Field(default=None, min_length=1, max_length=64)
    where: dict[str, str | bool | int | float] | None = None
    within: Duration | None = None
    before: Duration | None = None
    count: Compare | None = None
    sum: SumOf | None = None
    without: str | None = Field(default=None, min_length=1, max_length=200)
    channel: str | None = Field(default=None, min_length=1, max_length=64)
    topic: str | None = Field(default=None, min_length=1, max_length=64)

    @model_validator(mode="after")
    def _one_kind(self) -> Condition:
        kinds = self.kinds()
        if len(kinds) != 1:
            found = ", ".join(kinds) or "none"
            raise ValueError(
                f"a condition needs exactly one of {', '.join(CONDITION_KINDS)} (found: {found})"
            )
        return self

    def kinds(self) -> list[str]:
        return [k for k in CONDITION_KINDS if getattr(self, _attr(k)) is not None]

    @property
    def kind(self) -> str:
        return self.kinds()[0]


def _attr(kind: str) -> str:
    return "not_" if kind == "not" else kind


def _match(value: Any) -> Any:
    """A list at the top of ``match:`` means all of it."""
    return {"all": value} if isinstance(value, list) else value


class SegmentSpec(_Model):
    segment: str = Field(description="stable key of the segment, e.g. repeat-buyers")
    name: str | None = Field(default=None, max_length=200)
    description: str | None = None
    match: Annotated[Condition, BeforeValidator(_match)]

    @model_validator(mode="after")
    def _key(self) -> SegmentSpec:
        if not KEY_RE.match(self.segment):
            raise ValueError(
                "segment key must be 1-64 characters of lowercase letters, digits, '-' or '_'"
            )
        return self


Loc = tuple[str | int, ...]


def semantic_problems(spec: SegmentSpec) -> list[tuple[Loc, str]]:
    """What the field validators cannot see: fields that do not fit the kind, expressions."""
    problems: list[tuple[Loc, str]] = []
    _walk(spec.match, ("match",), problems)
    return problems


def _walk(cond: Condition, loc: Loc, problems: list[tuple[Loc, str]]) -> None:
    kind = cond.kind
    allowed = ALLOWED_FIELDS[kind]
    for name in type(cond).model_fields:
        field_kind = "not" if name == "not_" else name
        if field_kind in CONDITION_KINDS or getattr(cond, name) is None:
            continue
        if field_kind not in allowed:
            where = ", ".join(sorted(allowed)) or "nothing else"
            problems.append(
                ((*loc, field_kind), f"{field_kind}: does not go with {kind}: (allowed: {where})")
            )
    for name, value in (cond.where or {}).items():
        if not PROPERTY_RE.match(name):
            problems.append(
                (
                    (*loc, "where", name),
                    "property names may not hold quotes, backslashes or control characters",
                )
            )
        if isinstance(value, float) and value != value:
            problems.append(((*loc, "where", name), "must be an ordinary number"))
    for name in ("within", "before"):
        value = getattr(cond, name)
        if value is not None and value <= timedelta():
            problems.append(((*loc, name), "must be longer than zero"))
    if kind == "event":
        if cond.count is not None and cond.sum is not None:
            problems.append(((*loc, "sum"), "give count: or sum:, not both"))
        if cond.sum is not None and not PROPERTY_RE.match(cond.sum.property):
            problems.append(
                ((*loc, "sum", "property"), "property names may not hold quotes or backslashes")
            )
        if cond.without is not None and cond.within is None:
            problems.append(
                (
                    (*loc, "without"),
                    "without: needs within:, the window both events are looked for in",
                )
            )
    if kind in ("first", "last") and (cond.within is None) == (cond.before is None):
        problems.append(
            (
                loc,
                f"{kind}: needs exactly one of within: (at most that long ago) or before: (more than that long ago)",
            )
        )
    if kind == "profile":
        from touchline.audience.segment_traits import TraitError, parse_trait_condition

        try:
            parse_trait_condition(cond.profile or "")
        except (ConditionError, TraitError) as exc:
            column = f" (column {exc.column})" if getattr(exc, "column", None) else ""
            problems.append(((*loc, "profile"), f"{exc.message}{column}"))
    if kind == "consent":
        from touchline.store.consent import CONSENT_CHANNELS, CONSENT_TOPICS

        if cond.consent not in CONSENT_CHANNELS:
            problems.append(
                ((*loc, "consent"), f"must be one of {', '.join(sorted(CONSENT_CHANNELS))}")
            )
        if cond.topic is not None and cond.topic not in CONSENT_TOPICS:
            problems.append(((*loc, "topic"), f"must be one of {', '.join(CONSENT_TOPICS)}"))
    for index, child in enumerate(cond.all or cond.any or []):
        _walk(child, (*loc, kind, index), problems)
    if cond.not_ is not None:
        _walk(cond.not_, (*loc, "not"), problems)


# --------------------------------------------------------------------- loading


def load_segment_text(text: str, *, file: str) -> SegmentSpec:
    """Parse and validate one segment document; :class:`SegmentError` lists every problem."""
    from touchline.journeys.loader import _field, _translate, line_of, read_yaml, sorted_problems

    try:
        data, lines, problems = read_yaml(text, file=file)
    except SpecError as exc:
        raise SegmentError(exc.problems) from None
    if not isinstance(data, dict):
        message = "a segment file must be a mapping of fields (segment:, name:, match:)"
        problems.append(SpecProblem(file, lines.get((), 1), "(document)", message))
        raise SegmentError(sorted_problems(problems))
    try:
        spec = SegmentSpec.model_validate(data)
    except ValidationError as exc:
        reported = {p.field for p in problems}
        for path, message in _translate(exc, data):
            if _field(path) in reported:
                continue
            if message.startswith("unknown field"):
                message = _unknown_field(path)
            problems.append(SpecProblem(file, line_of(lines, path), _field(path), message))
        raise SegmentError(sorted_problems(problems)) from None
    for loc, message in semantic_problems(spec):
        problems.append(SpecProblem(file, line_of(lines, loc), _field(loc), message))
    if problems:
        raise SegmentError(sorted_problems(problems))
    return spec


def _unknown_field(path: Loc) -> str:
    name = str(path[-1])
    if len(path) == 1:
        fields = list(SegmentSpec.model_fields)
    elif path[-2] in ("count", "sum"):
        fields = list(SumOf.model_fields if path[-2] == "sum" else Compare.model_fields)
    else:
        fields = [*CONDITION_KINDS, *sorted({f for fs in ALLOWED_FIELDS.values() for f in fs})]
    close = difflib.get_close_matches(name, fields, n=1, cutoff=0.6)
    if close:
        return f"unknown field {name!r}; did you mean {close[0]!r}?"
    return f"unknown field {name!r}; allowed here: {', '.join(fields)}"


# ------------------------------------------------------------------ normal form


def segment_to_data(spec: SegmentSpec) -> dict[str, Any]:
    """The spec as JSON-safe data in normal form; ``model_validate`` reads it back equal."""
    data = _plain(spec)
    assert isinstance(data, dict)
    return data


def _plain(value: Any) -> Any:
    if isinstance(value, BaseModel):
        out: dict[str, Any] = {}
        for name, field in type(value).model_fields.items():
            v = getattr(value, name)
            if v is not None:
                out[field.alias or name] = _plain(v)
        return out
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, timedelta):
        return format_duration(value)
    return value


def segment_checksum(spec: SegmentSpec) -> str:
    """SHA-256 of the canonical JSON of the ``match`` tree: who is a member, nothing else.

    Layout, comments, the name and the description do not count, so renaming a
    segment neither rebuilds it nor changes a cached evaluation.
    """
    canonical = json.dumps(
        segment_to_data(spec)["match"], sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()
