"""Oversized, deeply nested and huge-array JSON on the ingest and admin endpoints.

Bodies over a limit answer ``413 payload_too_large`` — by Content-Length
before they are read, or as soon as a chunked upload passes the limit —
and JSON nested past 64 levels answers ``400 nested_too_deep``, without
recursing and without holding the whole upload. Nothing of a refused
request is stored.
"""

from __future__ import annotations

import asyncio
import json
import warnings
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, func, select

from touchline.config import Settings
from touchline.ingest.segment import MAX_BATCH_BYTES, MAX_EVENT_BYTES
from touchline.nesting import MAX_JSON_DEPTH, json_depth
from touchline.store.tables import events
from touchline.store.workspaces import CreatedWorkspace, create_workspace
from touchline.web.app import create_app
from touchline.web.bodies import MAX_REQUEST_BYTES

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
    from fastapi.testclient import TestClient

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
INGEST = ["/v1/track", "/v1/batch", "/v1/identify", "/v1/import"]
ADMIN_JSON = [
    ("POST", "/admin/v1/journeys"),
    ("POST", "/admin/v1/journeys/validate"),
    ("PUT", "/admin/v1/settings"),
    ("POST", "/admin/v1/suppressions"),
    ("POST", "/admin/v1/reports/funnel"),
]


@pytest.fixture
def workspace(engine: Engine) -> CreatedWorkspace:
    return create_workspace(engine, "Shop", now=NOW)


@pytest.fixture
def client(engine: Engine) -> Iterator[TestClient]:
    with TestClient(create_app(Settings(), engine=engine)) as test_client:
        yield test_client


def _headers(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}


def _stored(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(events)).scalar_one())


def _assert_error(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.json()["code"] == code and response.json()["message"], response.text


def _nested(depth: int) -> str:
    return '{"a":' * depth + "1" + "}" * depth


# -- size ---------------------------------------------------------------------------------


@pytest.mark.parametrize("path", INGEST)
def test_ingest_bodies_over_the_limit_are_413(
    client: TestClient, workspace: CreatedWorkspace, engine: Engine, path: str
) -> None:
    """Single-event routes refuse over 32 KB, batch routes over 500 KB: 413, nothing stored."""
    limit = MAX_BATCH_BYTES if path in ("/v1/batch", "/v1/import") else MAX_EVENT_BYTES
    item = {"type": "track", "userId": "u", "event": "E", "properties": {"x": "a" * 20_000}}
    body = {**item, "batch": [item] * (limit // 20_000 + 1)}
    response = client.post(path, content=json.dumps(body), headers=_headers(workspace.write_key))
    _assert_error(response, 413, "payload_too_large")
    assert _stored(engine) == 0


@pytest.mark.parametrize(("method", "path"), ADMIN_JSON)
def test_admin_bodies_over_the_limit_are_413(
    client: TestClient, workspace: CreatedWorkspace, method: str, path: str
) -> None:
    """Any admin body over 5 MB is 413, whatever it holds."""
    body = json.dumps({"files": {"a.yaml": "x" * (MAX_REQUEST_BYTES + 1)}})
    response = client.request(method, path, content=body, headers=_headers(workspace.admin_token))
    _assert_error(response, 413, "payload_too_large")


@pytest.mark.parametrize(
    ("path", "limit"), [("/v1/batch", MAX_BATCH_BYTES), ("/admin/v1/journeys/validate", None)]
)
def test_a_chunked_upload_is_cut_off_at_the_limit_not_read_whole(
    engine: Engine, workspace: CreatedWorkspace, path: str, limit: int | None
) -> None:
    """A 40 MB chunked body without Content-Length is refused once past the limit, unread beyond."""
    # given: the app driven over ASGI, so we see how much of the upload it pulls
    app = create_app(Settings(), engine=engine)
    chunk = b"a" * (64 * 1024)
    pulled = 0
    answer: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        nonlocal pulled
        pulled += len(chunk)
        return {"type": "http.request", "body": chunk, "more_body": pulled < 40 * 1024 * 1024}

    async def send(message: dict[str, Any]) -> None:
        answer.append(message)

    token = workspace.write_key if path.startswith("/v1/") else workspace.admin_token
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"authorization", f"Bearer {token}".encode()),
            (b"content-type", b"application/json"),
        ],
        "client": ("127.0.0.1", 5000),
        "server": ("testserver", 80),
    }
    # when
    asyncio.run(app(scope, receive, send))
    # then
    assert answer[0]["status"] == 413
    assert json.loads(answer[1]["body"])["code"] == "payload_too_large"
    assert pulled <= (limit or MAX_REQUEST_BYTES) + len(chunk), f"read {pulled} bytes"


# -- nesting ------------------------------------------------------------------------------


@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH + 1, 100_000])
@pytest.mark.parametrize("path", ["/v1/track", "/v1/batch"])
def test_ingest_json_nested_past_the_limit_is_400(
    client: TestClient, workspace: CreatedWorkspace, engine: Engine, path: str, depth: int
) -> None:
    """Properties nested deeper than 64 levels are nested_too_deep (as JSON and as text/plain)."""
    body = f'{{"type": "track", "userId": "u", "event": "E", "properties": {_nested(depth)}}}'
    if path in ("/v1/batch", "/v1/import"):
        body = f'{{"batch": [{body}]}}'
    for content_type in ("application/json", "text/plain"):
        headers = {**_headers(workspace.write_key), "Content-Type": content_type}
        response = client.post(path, content=body, headers=headers)
        if len(body) > MAX_BATCH_BYTES or (len(body) > MAX_EVENT_BYTES and "batch" not in body):
            _assert_error(response, 413, "payload_too_large")
        else:
            _assert_error(response, 400, "nested_too_deep")
    assert _stored(engine) == 0


@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH + 1, 500_000])
@pytest.mark.parametrize(("method", "path"), ADMIN_JSON[1:4])
def test_admin_json_nested_past_the_limit_is_400(
    client: TestClient, workspace: CreatedWorkspace, method: str, path: str, depth: int
) -> None:
    """Deep JSON to any admin route is nested_too_deep, before FastAPI parses it."""
    body = '{"files": ' + "[" * depth + "]" * depth + "}"
    response = client.request(method, path, content=body, headers=_headers(workspace.admin_token))
    _assert_error(response, 400, "nested_too_deep")


def test_nesting_at_the_limit_is_accepted(
    client: TestClient, workspace: CreatedWorkspace, engine: Engine
) -> None:
    """A track whose JSON nests exactly 64 levels is stored."""
    body = f'{{"userId": "u", "event": "E", "properties": {_nested(MAX_JSON_DEPTH - 1)}}}'
    assert json_depth(body) == MAX_JSON_DEPTH
    response = client.post("/v1/track", content=body, headers=_headers(workspace.write_key))
    assert response.status_code == 200, response.text
    assert _stored(engine) == 1


# -- huge arrays --------------------------------------------------------------------------


def test_a_batch_of_ten_thousand_tiny_items_is_stored_whole(
    client: TestClient, workspace: CreatedWorkspace, engine: Engine
) -> None:
    """The most events 500 KB can hold are accepted and stored in one request."""
    items = [{"type": "track", "userId": f"u{i % 50}", "event": "E"} for i in range(10_000)]
    body = json.dumps({"batch": items}, separators=(",", ":"))
    assert len(body) < MAX_BATCH_BYTES
    response = client.post("/v1/batch", content=body, headers=_headers(workspace.write_key))
    assert response.status_code == 200, response.text
    assert _stored(engine) == 10_000


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/v1/track", '{"userId": "u", "event": "E", "properties": {"x": [%s]}}'),
        ("POST", "/admin/v1/suppressions", "[%s]"),
        ("POST", "/admin/v1/journeys/validate", '{"files": [%s]}'),
        ("PUT", "/admin/v1/settings", '{"topics": [%s]}'),
    ],
)
def test_huge_arrays_are_refused_cleanly(
    client: TestClient, workspace: CreatedWorkspace, method: str, path: str, body: str
) -> None:
    """Arrays of a million elements get a 4xx {code, message}, never a 5xx."""
    content = body % ",".join(["0"] * 1_000_000)
    token = workspace.write_key if path.startswith("/v1/") else workspace.admin_token
    response = client.request(method, path, content=content, headers=_headers(token))
    assert 400 <= response.status_code < 500, response.text
    assert set(response.json()) == {"code", "message"}
