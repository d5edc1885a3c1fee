"""Fuzzing the Segment payload parser: it accepts a body or says why not, and nothing else.

Random JSON trees, wrong types in every field, huge and odd strings, deep
nesting and raw bytes go through :func:`decode_body` and :func:`parse_payload`
for every endpoint kind. The only exception allowed is
:class:`~touchline.errors.InputError` (``invalid_input``, ``missing_identity``,
``payload_too_large``, ``nested_too_deep``); what is accepted is well formed.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from touchline.errors import InputError
from touchline.ingest.segment import (
    EVENT_TYPES,
    MAX_ID_LENGTH,
    IncomingEvent,
    decode_body,
    parse_payload,
)
from touchline.nesting import MAX_JSON_DEPTH

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
KINDS = (*EVENT_TYPES, "batch")
FIELDS = (
    "userId",
    "anonymousId",
    "previousId",
    "groupId",
    "messageId",
    "event",
    "name",
    "category",
    "properties",
    "traits",
    "context",
    "timestamp",
    "originalTimestamp",
    "sentAt",
    "type",
    "writeKey",
    "batch",
)
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=40),
    st.text(alphabet=st.sampled_from("\x00\ud800\udfff\u202e\ufeff😀é"), max_size=5),
    st.sampled_from(["", " ", "2026-03-01T12:00:00Z", "9999-12-31T23:59:59+14:00", "0001-01-01"]),
)
json_trees = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=5),
        st.dictionaries(
            st.one_of(st.sampled_from(FIELDS), st.text(max_size=8)), children, max_size=6
        ),
    ),
    max_leaves=40,
)
messages = st.dictionaries(st.sampled_from(FIELDS), json_trees, max_size=10)
bodies = st.one_of(
    messages,
    st.builds(
        lambda items, extra: {**extra, "batch": items},
        st.lists(st.one_of(messages, json_trees), max_size=6),
        messages,
    ),
    json_trees,
)


def _check_accepted(events: list[IncomingEvent]) -> None:
    for event in events:
        assert event.type in EVENT_TYPES
        assert event.user_id or event.anonymous_id or event.type == "alias"
        assert event.message_id and len(event.message_id) <= MAX_ID_LENGTH
        assert event.timestamp.tzinfo is not None and event.received_at == NOW
        assert isinstance(event.properties, dict) and isinstance(event.context, dict)
        json.dumps(event.properties)  # storable as JSON


def _parse(body: bytes, kind: str) -> None:
    try:
        payload = decode_body(body, kind=kind)
        events = parse_payload(payload, kind=kind, received_at=NOW)
    except InputError as exc:
        assert exc.status in (400, 413) and exc.message
        return
    _check_accepted(events)


@FUZZ
@given(body=bodies, kind=st.sampled_from(KINDS))
def test_random_json_trees_are_accepted_or_refused_with_an_input_error(
    body: Any, kind: str
) -> None:
    """Any JSON value posted to any endpoint parses or raises InputError, never anything else."""
    _parse(
        json.dumps(body, ensure_ascii=False, allow_nan=False).encode("utf-8", "surrogatepass"), kind
    )


@FUZZ
@given(raw=st.binary(max_size=300), kind=st.sampled_from(KINDS))
def test_random_bytes_are_refused_with_an_input_error(raw: bytes, kind: str) -> None:
    """Bytes that are not JSON (or not UTF-8) are an InputError."""
    _parse(raw, kind)


@settings(max_examples=50, deadline=None)
@given(
    depth=st.integers(min_value=MAX_JSON_DEPTH - 3, max_value=20_000), bracket=st.sampled_from("[{")
)
def test_deep_nesting_is_refused_without_recursing(depth: int, bracket: str) -> None:
    """Properties nested past the limit are nested_too_deep, at any depth, and below it accepted."""
    inner = "[" * depth + "]" * depth if bracket == "[" else '{"a":' * depth + "1" + "}" * depth
    # The inner value sits under the body, the batch, the item and its properties.
    item = f'{{"type": "track", "userId": "u", "event": "E", "properties": {{"x": {inner}}}}}'
    body = f'{{"batch": [{item}]}}'.encode()
    try:
        parse_payload(decode_body(body, kind="batch"), kind="batch", received_at=NOW)
    except InputError as exc:
        assert exc.code == "nested_too_deep" and depth + 4 > MAX_JSON_DEPTH
    else:
        assert depth + 4 <= MAX_JSON_DEPTH


@settings(max_examples=30, deadline=None)
@given(size=st.integers(min_value=0, max_value=100_000), field=st.sampled_from(FIELDS))
def test_huge_strings_in_any_field_are_accepted_or_refused(size: int, field: str) -> None:
    """A string of any size in any field is an InputError or a valid event, never a crash."""
    body = {"userId": "u", "event": "E", field: "é" * size}
    _parse(json.dumps(body).encode(), "track")
