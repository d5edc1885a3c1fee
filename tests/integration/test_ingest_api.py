"""The Segment-compatible HTTP endpoints and the app's error contract.

Runs the FastAPI app in-process (Starlette's TestClient) on SQLite and
PostgreSQL.
"""

from __future__ import annotations

import base64
import gzip
import json
import warnings
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import Engine, select

from touchline.config import Settings
from touchline.ingest.segment import MAX_BATCH_BYTES
from touchline.store.db import make_engine
from touchline.store.tables import events, profiles
from touchline.store.workspaces import CreatedWorkspace, create_workspace
from touchline.web.app import create_app

with warnings.catch_warnings():
    # Starlette's own import-time notice that it prefers httpx2 over httpx; the
    # project tests with httpx, which Starlette still supports.
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
    from fastapi.testclient import TestClient

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


class FixedClock:
    def now(self) -> datetime:
        return NOW


@pytest.fixture
def workspace(engine: Engine) -> CreatedWorkspace:
    return create_workspace(engine, "Shop", now=NOW)


@pytest.fixture
def app(engine: Engine) -> FastAPI:
    return create_app(Settings(), engine=engine, clock=FixedClock())


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app) as test_client:
        yield test_client


def basic(key: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{key}:".encode()).decode()}


def stored(engine: Engine) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.execute(select(events).order_by(events.c.id)))


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"code", "message"}
    assert body["code"] == code
    assert body["message"]
    return body


TRACK = {"userId": "u1", "event": "Order Completed", "properties": {"total": 10}}


def test_track_with_basic_auth_is_stored(
    client: TestClient, engine: Engine, workspace: CreatedWorkspace
) -> None:
    """POST /v1/track with the key as Basic user answers like Segment and stores it."""
    response = client.post("/v1/track", json=TRACK, headers=basic(workspace.write_key))
    assert response.status_code == 200
    assert response.json() == {"success": True}
    [row] = stored(engine)
    assert (row.workspace_id, row.type, row.name, row.user_id) == (
        workspace.id,
        "track",
        "Order Completed",
        "u1",
    )
    assert row.received_at == NOW


def test_write_key_in_body_and_bearer_work(
    client: TestClient, engine: Engine, workspace: CreatedWorkspace
) -> None:
    """The key may come from the body's writeKey or an Authorization Bearer header."""
    in_body = client.post("/v1/track", json={**TRACK, "writeKey": workspace.write_key})
    bearer = client.post(
        "/v1/track",
        json={**TRACK, "messageId": "b"},
        headers={"Authorization": f"Bearer {workspace.write_key}"},
    )
    assert in_body.status_code == bearer.status_code == 200
    assert len(stored(engine)) == 2


def test_admin_token_may_send_events(
    client: TestClient, engine: Engine, workspace: CreatedWorkspace
) -> None:
    """An admin token is accepted on the ingest endpoints."""
    response = client.post("/v1/track", json=TRACK, headers=basic(workspace.admin_token))
    assert response.status_code == 200
    assert len(stored(engine)) == 1


@pytest.mark.parametrize(
    ("path", "payload", "kind"),
    [
        ("/v1/i", {"userId": "u1", "traits": {"email": "A@B.CO"}}, "identify"),
        ("/v1/t", TRACK, "track"),
        ("/v1/p", {"anonymousId": "a1", "name": "Home"}, "page"),
        ("/v1/s", {"anonymousId": "a1", "name": "Cart"}, "screen"),
        ("/v1/g", {"userId": "u1", "groupId": "g1"}, "group"),
        ("/v1/a", {"userId": "u1", "previousId": "a1"}, "alias"),
        ("/v1/b", {"batch": [{**TRACK, "type": "track"}]}, "track"),
        ("/v1/import", {"batch": [{**TRACK, "type": "track"}]}, "track"),
        ("/v1/batch", {"batch": [{**TRACK, "type": "track"}]}, "track"),
    ],
)
def test_short_forms_and_import(
    client: TestClient,
    engine: Engine,
    workspace: CreatedWorkspace,
    path: str,
    payload: dict[str, Any],
    kind: str,
) -> None:
    """The analytics.js short paths and /v1/import store the right message type."""
    response = client.post(path, json=payload, headers=basic(workspace.write_key))
    assert response.status_code == 200, response.text
    [row] = stored(engine)
    assert row.type == kind


def test_gzip_body_is_accepted(
    client: TestClient, engine: Engine, workspace: CreatedWorkspace
) -> None:
    """A gzip-encoded body is inflated before parsing."""
    raw = gzip.compress(json.dumps({"batch": [{**TRACK, "type": "track"}]}).encode())
    response = client.post(
        "/v1/batch",
        content=raw,
        headers={**basic(workspace.write_key), "Content-Encoding": "gzip"},
    )
    assert response.status_code == 200, response.text
    assert len(stored(engine)) == 1


def test_text_plain_body_is_accepted(
    client: TestClient, engine: Engine, workspace: CreatedWorkspace
) -> None:
    """Browsers' text/plain bodies (no preflight) are parsed as JSON."""
    response = client.post(
        "/v1/t",
        content=json.dumps({**TRACK, "writeKey": workspace.write_key}),
        headers={"Content-Type": "text/plain"},
    )
    assert response.status_code == 200, response.text
    assert len(stored(engine)) == 1


def test_gzip_bomb_is_refused(client: TestClient, workspace: CreatedWorkspace) -> None:
    """A small gzip body that inflates past 500 KB is payload_too_large."""
    bomb = gzip.compress(b" " * (20 * 1024 * 1024))
    assert len(bomb) < 64 * 1024
    response = client.post(
        "/v1/batch",
        content=bomb,
        headers={**basic(workspace.write_key), "Content-Encoding": "gzip"},
    )
    assert_error(response, 413, "payload_too_large")


@pytest.mark.parametrize(
    ("content", "encoding"),
    [(b"definitely not gzip", "gzip"), (gzip.compress(b"{}", mtime=0)[:-6], "gzip"), (b"{}", "br")],
    ids=["not-gzip", "truncated-gzip", "brotli"],
)
def test_bad_encodings_are_invalid_input(
    client: TestClient, workspace: CreatedWorkspace, content: bytes, encoding: str
) -> None:
    """Broken or truncated gzip and unsupported encodings are invalid_input."""
    response = client.post(
        "/v1/track",
        content=content,
        headers={**basic(workspace.write_key), "Content-Encoding": encoding},
    )
    assert_error(response, 400, "invalid_input")


def test_oversize_event_is_refused(client: TestClient, workspace: CreatedWorkspace) -> None:
    """A single event over 32 KB is payload_too_large (HTTP 413)."""
    big = {**TRACK, "properties": {"blob": "x" * 33 * 1024}}
    response = client.post("/v1/track", json=big, headers=basic(workspace.write_key))
    assert_error(response, 413, "payload_too_large")


def test_oversize_batch_is_refused(client: TestClient, workspace: CreatedWorkspace) -> None:
    """A batch body over 500 KB is payload_too_large (HTTP 413), whatever it holds."""
    item = {**TRACK, "type": "track", "properties": {"blob": "x" * 20 * 1024}}
    raw = json.dumps({"batch": [item] * 30}).encode()
    assert len(raw) > MAX_BATCH_BYTES
    response = client.post("/v1/batch", content=raw, headers=basic(workspace.write_key))
    assert_error(response, 413, "payload_too_large")


@pytest.mark.parametrize(
    ("path", "content", "code"),
    [
        ("/v1/track", b"{oops", "invalid_input"),
        ("/v1/track", b"[]", "invalid_input"),
        ("/v1/track", json.dumps({"event": "E"}).encode(), "missing_identity"),
        ("/v1/alias", json.dumps({"userId": "u"}).encode(), "missing_identity"),
        ("/v1/track", json.dumps({"userId": "u"}).encode(), "invalid_input"),
        ("/v1/batch", json.dumps({"batch": [{"type": "nope"}]}).encode(), "invalid_input"),
    ],
)
def test_bad_payloads_answer_json_errors(
    client: TestClient, workspace: CreatedWorkspace, path: str, content: bytes, code: str
) -> None:
    """Malformed bodies answer 400 with a stable code and a message."""
    response = client.post(path, content=content, headers=basic(workspace.write_key))
    assert_error(response, 400, code)


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Basic " + base64.b64encode(b"tlw_wrong:").decode()},
        {"Authorization": "Basic !!!"},
        {"Authorization": "Digest abc"},
    ],
)
def test_missing_or_wrong_key_is_401(client: TestClient, headers: dict[str, str]) -> None:
    """No key, an unknown key or malformed credentials answer 401 unauthorized."""
    response = client.post("/v1/track", json=TRACK, headers=headers)
    assert_error(response, 401, "unauthorized")


def test_write_key_only_reaches_its_workspace(client: TestClient, engine: Engine) -> None:
    """Events sent with workspace A's key are stored in A, never in B."""
    a = create_workspace(engine, "A", now=NOW)
    b = create_workspace(engine, "B", now=NOW)
    response = client.post("/v1/identify", json={"userId": "u1"}, headers=basic(a.write_key))
    assert response.status_code == 200
    with engine.connect() as conn:
        owners = {row.workspace_id for row in conn.execute(select(profiles))}
    assert owners == {a.id}
    assert {row.workspace_id for row in stored(engine)} == {a.id} != {b.id}


def test_unknown_route_and_wrong_method_are_json(client: TestClient) -> None:
    """Unknown paths answer 404 not_found and wrong methods 405, both as JSON."""
    assert_error(client.get("/v1/nothing-here"), 404, "not_found")
    assert_error(client.get("/v1/track"), 405, "method_not_allowed")


def test_cors_preflight_allows_any_origin(client: TestClient) -> None:
    """A browser preflight for a gzip POST with Authorization is allowed from anywhere."""
    response = client.options(
        "/v1/t",
        headers={
            "Origin": "https://shop.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "Authorization, Content-Type, Content-Encoding",
        },
    )
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == "*"
    assert "POST" in response.headers["access-control-allow-methods"]
    allowed = response.headers["access-control-allow-headers"].lower()
    assert {"authorization", "content-type", "content-encoding"} <= {
        h.strip() for h in allowed.split(",")
    }
    assert "access-control-allow-credentials" not in response.headers


def test_cors_headers_on_answers(client: TestClient, workspace: CreatedWorkspace) -> None:
    """Ordinary answers, errors included, carry the CORS allow-origin header."""
    ok = client.post(
        "/v1/t", json=TRACK, headers={**basic(workspace.write_key), "Origin": "https://a.example"}
    )
    bad = client.post("/v1/t", content=b"{", headers={"Origin": "https://a.example"})
    assert ok.headers["access-control-allow-origin"] == "*"
    assert bad.headers["access-control-allow-origin"] == "*"


def test_health_and_readiness(client: TestClient) -> None:
    """/healthz says the process is up; /readyz that the store answers."""
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ready"}


def test_unreachable_store_is_503_without_details(tmp_path: Any) -> None:
    """With the store unreachable, /readyz and ingest answer 503 without leaking why."""
    broken = make_engine(f"sqlite:///{tmp_path}/missing-dir/x.db")
    app = create_app(Settings(), engine=broken, clock=FixedClock())
    with TestClient(app) as client:
        assert_error(client.get("/readyz"), 503, "store_unavailable")
        body = assert_error(
            client.post("/v1/track", json=TRACK, headers=basic("tlw_abc")), 503, "store_error"
        )
    assert "missing-dir" not in body["message"]


def test_unhandled_error_is_generic_500(app: FastAPI) -> None:
    """An unexpected exception answers 500 internal_error and hides its text."""

    async def explode() -> None:
        raise RuntimeError("secret detail")

    async def typed(n: int) -> dict[str, int]:
        return {"n": n}

    app.add_api_route("/explode", explode, methods=["GET"])
    app.add_api_route("/typed", typed, methods=["GET"])
    with TestClient(app, raise_server_exceptions=False) as client:
        body = assert_error(client.get("/explode"), 500, "internal_error")
        assert body["message"] == "internal error"
        assert_error(client.get("/typed?n=abc"), 400, "invalid_input")
