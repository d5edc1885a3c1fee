"""Parsing Segment HTTP API bodies into IncomingEvent values (pure)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from touchline.errors import InputError, PayloadTooLarge
from touchline.ingest.segment import (
    MAX_BATCH_BYTES,
    MAX_EVENT_BYTES,
    decode_body,
    parse_payload,
    parse_request,
)

RECEIVED = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)


def body(obj: Any) -> bytes:
    return json.dumps(obj).encode()


def parse(kind: str, obj: Any) -> list[Any]:
    return parse_request(body(obj), kind=kind, received_at=RECEIVED).events


def test_track_is_normalised() -> None:
    """A track call keeps ids, event name, properties and context."""
    [event] = parse(
        "track",
        {
            "userId": "u1",
            "event": "Order Completed",
            "properties": {"total": 10.5},
            "context": {"ip": "1.2.3.4"},
            "messageId": "m-1",
        },
    )
    assert event.type == "track"
    assert event.user_id == "u1"
    assert event.anonymous_id is None
    assert event.name == "Order Completed"
    assert event.properties == {"total": 10.5}
    assert event.context == {"ip": "1.2.3.4"}
    assert event.message_id == "m-1"
    assert event.traits is None
    assert event.received_at == RECEIVED


def test_endpoint_decides_type_over_body_type() -> None:
    """A single-event endpoint sets the type even if the body claims another."""
    [event] = parse("identify", {"type": "track", "userId": "u1", "traits": {"a": 1}})
    assert event.type == "identify"
    assert event.traits == {"a": 1}


def test_numeric_user_id_becomes_string() -> None:
    """Numeric ids, which many shops send, are accepted as strings."""
    [event] = parse("identify", {"userId": 42})
    assert event.user_id == "42"


def test_identify_without_traits_has_empty_traits() -> None:
    """identify always carries a traits dict, empty when none were sent."""
    [event] = parse("identify", {"anonymousId": "a1"})
    assert event.traits == {}


def test_missing_identity_is_refused_with_code() -> None:
    """A message with neither userId nor anonymousId is missing_identity."""
    with pytest.raises(InputError) as caught:
        parse("track", {"event": "X"})
    assert caught.value.code == "missing_identity"
    assert caught.value.status == 400
    assert "userId or anonymousId" in caught.value.message


def test_alias_needs_previous_and_user_id() -> None:
    """alias without previousId is missing_identity even with an anonymousId."""
    with pytest.raises(InputError) as caught:
        parse("alias", {"userId": "u1", "anonymousId": "a1"})
    assert caught.value.code == "missing_identity"
    [event] = parse("alias", {"userId": "u1", "previousId": "a1"})
    assert (event.previous_id, event.user_id, event.name) == ("a1", "u1", None)


def test_track_needs_event() -> None:
    """track without an event name is refused, naming the field."""
    with pytest.raises(InputError, match="event is required"):
        parse("track", {"userId": "u1"})


def test_group_needs_group_id() -> None:
    """group without groupId is refused; with it, the id and traits are kept."""
    with pytest.raises(InputError, match="groupId"):
        parse("group", {"userId": "u1"})
    [event] = parse("group", {"userId": "u1", "groupId": 7, "traits": {"plan": "pro"}})
    assert event.group_id == "7"
    assert event.traits == {"plan": "pro"}


@pytest.mark.parametrize(
    ("obj", "field"),
    [
        ({"userId": ["x"], "event": "E"}, "userId"),
        ({"userId": True, "event": "E"}, "userId"),
        ({"userId": "u", "event": 5}, "event"),
        ({"userId": "u", "event": "E", "properties": []}, "properties"),
        ({"userId": "u", "event": "E", "context": "x"}, "context"),
        ({"userId": "u", "event": "E", "timestamp": 1700000000}, "timestamp"),
        ({"userId": "u", "event": "E", "timestamp": "yesterday"}, "timestamp"),
        ({"userId": "u", "event": "E", "sentAt": "2024-13-01T00:00:00Z"}, "sentAt"),
        ({"userId": "u" * 201, "event": "E"}, "userId"),
        ({"userId": "u", "event": "E" * 201}, "event"),
    ],
)
def test_wrong_field_types_name_the_field(obj: dict[str, Any], field: str) -> None:
    """Wrong field types are InputError whose message starts with the field name."""
    with pytest.raises(InputError) as caught:
        parse("track", obj)
    assert caught.value.code == "invalid_input"
    assert caught.value.message.startswith(field)


def test_batch_errors_name_the_index() -> None:
    """Errors inside a batch carry the item's index: batch[1].userId."""
    payload = {
        "batch": [
            {"type": "track", "userId": "u", "event": "E"},
            {"type": "track", "userId": {"id": 1}, "event": "E"},
        ]
    }
    with pytest.raises(InputError, match=r"^batch\[1\]\.userId must be a string"):
        parse("batch", payload)


def test_batch_item_needs_known_type() -> None:
    """Each batch item must carry one of the six message types."""
    with pytest.raises(InputError, match=r"batch\[0\]\.type must be one of"):
        parse("batch", {"batch": [{"type": "click", "userId": "u"}]})


def test_batch_must_be_array_of_objects() -> None:
    """batch must be an array, and its items objects."""
    with pytest.raises(InputError, match="batch must be an array"):
        parse("batch", {"batch": {"type": "track"}})
    with pytest.raises(InputError, match=r"batch\[0\] must be an object"):
        parse("batch", {"batch": ["x"]})


def test_batch_items_carry_their_own_types() -> None:
    """A batch yields one event per item, each typed by the item."""
    events = parse(
        "batch",
        {
            "batch": [
                {"type": "identify", "userId": "u1", "traits": {"email": "a@b.co"}},
                {"type": "track", "userId": "u1", "event": "Viewed"},
                {"type": "page", "anonymousId": "a1", "name": "Home"},
            ]
        },
    )
    assert [e.type for e in events] == ["identify", "track", "page"]


def test_empty_batch_is_no_events() -> None:
    """An empty batch is valid and yields nothing."""
    assert parse("batch", {"batch": []}) == []


@pytest.mark.parametrize(
    "raw",
    [b"{not json", b"[1, 2]", b'"text"', b"\xff\xfe", b'{"userId": NaN, "event": "E"}'],
)
def test_invalid_json_is_input_error(raw: bytes) -> None:
    """Bodies that are not a UTF-8 JSON object are refused as invalid_input."""
    with pytest.raises(InputError) as caught:
        decode_body(raw, kind="track")
    assert caught.value.code == "invalid_input"
    assert "body" in caught.value.message


def test_deeply_nested_json_is_input_error() -> None:
    """Pathological nesting is refused, not a crash."""
    raw = b'{"userId":"u","event":"E","properties":{"a":' + b"[" * 20000 + b"]" * 20000 + b"}}"
    with pytest.raises(InputError):
        decode_body(raw, kind="batch")


@pytest.mark.parametrize("escape", ["\\u0000", "\\ud800"])
def test_unstorable_strings_are_refused_with_path(escape: str) -> None:
    """NUL characters and lone surrogates are refused, naming where they are."""
    raw = ('{"userId":"u","event":"E","properties":{"note":"a' + escape + 'b"}}').encode()
    with pytest.raises(InputError, match=r"properties\.note contains"):
        decode_body(raw, kind="track")


def test_escaped_non_ascii_is_fine() -> None:
    """Ordinary \\u escapes (Cyrillic from ensure_ascii SDKs) pass the check."""
    raw = json.dumps({"userId": "u", "traits": {"firstName": "Иван"}}).encode()
    assert decode_body(raw, kind="identify")["traits"]["firstName"] == "Иван"


def test_event_over_32kb_is_payload_too_large() -> None:
    """A single-event body over 32 KB is payload_too_large with status 413."""
    obj = {"userId": "u", "event": "E", "properties": {"x": "a" * MAX_EVENT_BYTES}}
    with pytest.raises(PayloadTooLarge) as caught:
        parse("track", obj)
    assert caught.value.code == "payload_too_large"
    assert caught.value.status == 413


def test_batch_item_over_32kb_is_payload_too_large() -> None:
    """A batch item over 32 KB is refused even if the batch fits, naming the index."""
    big = {"type": "track", "userId": "u", "event": "E", "properties": {"x": "a" * 33000}}
    small = {"type": "track", "userId": "u", "event": "E"}
    with pytest.raises(PayloadTooLarge, match=r"batch\[1\]"):
        parse("batch", {"batch": [small, big]})


def test_batch_over_500kb_is_payload_too_large() -> None:
    """A batch body over 500 KB is refused before parsing."""
    item = {"type": "track", "userId": "u", "event": "E", "properties": {"x": "a" * 20000}}
    raw = body({"batch": [item] * 30})
    assert len(raw) > MAX_BATCH_BYTES
    with pytest.raises(PayloadTooLarge, match="500 KB"):
        decode_body(raw, kind="batch")


def test_missing_message_id_is_deterministic() -> None:
    """Without messageId the same body yields the same id; a different body another."""
    obj = {"userId": "u", "event": "E", "sentAt": "2026-03-01T11:59:59Z"}
    first = parse("track", obj)[0].message_id
    again = parse("track", dict(reversed(list(obj.items()))))[0].message_id
    other = parse("track", {**obj, "event": "F"})[0].message_id
    assert first == again
    assert first != other
    assert first.startswith("tl_")


def test_identical_batch_items_get_distinct_ids_but_retries_match() -> None:
    """Two identical items of one batch differ; the whole batch retried matches."""
    item = {"type": "track", "userId": "u", "event": "Clicked"}
    payload = {"batch": [item, item], "sentAt": "2026-03-01T11:59:59Z"}
    first = [e.message_id for e in parse("batch", payload)]
    retry = [e.message_id for e in parse("batch", payload)]
    assert first[0] != first[1]
    assert first == retry


def test_timestamp_is_corrected_for_client_skew() -> None:
    """With timestamp and sentAt, time = receivedAt - (sentAt - timestamp)."""
    # The client's clock is 1 hour fast; the event happened 10 s before sending.
    [event] = parse(
        "track",
        {
            "userId": "u",
            "event": "E",
            "timestamp": "2026-03-01T12:59:50Z",
            "sentAt": "2026-03-01T13:00:00Z",
        },
    )
    assert event.timestamp == RECEIVED - timedelta(seconds=10)
    assert event.sent_at == datetime(2026, 3, 1, 13, 0, tzinfo=UTC)


def test_batch_sent_at_applies_to_items() -> None:
    """A batch-level sentAt corrects the items' timestamps."""
    [event] = parse(
        "batch",
        {
            "sentAt": "2026-03-01T09:00:05+03:00",
            "batch": [
                {"type": "track", "userId": "u", "event": "E", "timestamp": "2026-03-01T06:00:00Z"}
            ],
        },
    )
    assert event.timestamp == RECEIVED - timedelta(seconds=5)


def test_timestamp_without_sent_at_is_taken_as_given() -> None:
    """Without sentAt the timestamp is used as is (offsets honoured)."""
    [event] = parse(
        "track", {"userId": "u", "event": "E", "timestamp": "2025-12-31T23:00:00+03:00"}
    )
    assert event.timestamp == datetime(2025, 12, 31, 20, 0, tzinfo=UTC)


def test_no_timestamp_means_received_at() -> None:
    """Without a timestamp the event time is when the server received it."""
    [event] = parse("track", {"userId": "u", "event": "E", "sentAt": "2020-01-01T00:00:00Z"})
    assert event.timestamp == RECEIVED


def test_original_timestamp_is_used_and_corrected() -> None:
    """originalTimestamp stands in for timestamp and is skew-corrected the same way."""
    [event] = parse(
        "track",
        {
            "userId": "u",
            "event": "E",
            "originalTimestamp": "2026-03-01T10:00:00Z",
            "sentAt": "2026-03-01T10:00:30Z",
        },
    )
    assert event.timestamp == RECEIVED - timedelta(seconds=30)


def test_naive_timestamp_is_utc() -> None:
    """A timestamp without an offset is taken as UTC."""
    [event] = parse("track", {"userId": "u", "event": "E", "timestamp": "2026-02-01T08:30:00"})
    assert event.timestamp == datetime(2026, 2, 1, 8, 30, tzinfo=UTC)


def test_page_name_comes_from_field_or_properties() -> None:
    """A page's name is its name field, else properties.name; both land in properties."""
    [named] = parse("page", {"anonymousId": "a", "name": "Cart", "category": "Shop"})
    assert named.name == "Cart"
    assert named.properties == {"name": "Cart", "category": "Shop"}
    [from_props] = parse("screen", {"anonymousId": "a", "properties": {"name": "Home"}})
    assert from_props.name == "Home"
    [unnamed] = parse("page", {"anonymousId": "a", "properties": {"url": "/x"}})
    assert unnamed.name is None


def test_batch_context_is_a_default_for_items() -> None:
    """Batch-level context fills item context keys the item does not set."""
    [event] = parse(
        "batch",
        {
            "context": {"library": {"name": "lib"}, "locale": "ru-RU"},
            "batch": [
                {"type": "track", "userId": "u", "event": "E", "context": {"locale": "en-US"}}
            ],
        },
    )
    assert event.context == {"library": {"name": "lib"}, "locale": "en-US"}


def test_write_key_is_read_from_body() -> None:
    """writeKey in the body is returned; a non-string writeKey is refused."""
    parsed = parse_request(
        body({"writeKey": "tlw_x", "userId": "u", "event": "E"}),
        kind="track",
        received_at=RECEIVED,
    )
    assert parsed.write_key == "tlw_x"
    with pytest.raises(InputError, match="writeKey"):
        parse_request(
            body({"writeKey": 1, "userId": "u", "event": "E"}), kind="track", received_at=RECEIVED
        )


def test_unknown_kind_is_a_programming_error() -> None:
    """Asking for an endpoint kind that does not exist is a ValueError."""
    with pytest.raises(ValueError):
        parse_payload({}, kind="click", received_at=RECEIVED)
