"""A real ``touchline serve`` process fed by Segment's own Python SDK and raw HTTP.

The server runs as the ``touchline serve`` command (see ``server.py``) on a
new SQLite file and on a fresh PostgreSQL database; the tests read the
results straight from that store.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

import httpx
import pytest
import segment.analytics as analytics
from segment.analytics.client import Client
from segment.analytics.request import APIError
from server import Served, serve
from sqlalchemy import Engine, select

from touchline.store.db import make_engine, migrate
from touchline.store.tables import events, identities, profiles
from touchline.store.workspaces import CreatedWorkspace, create_workspace


@dataclass(frozen=True)
class Server:
    url: str
    engine: Engine
    workspace: CreatedWorkspace
    served: Served


@pytest.fixture(scope="module")
def server(store_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A migrated store with one workspace, served by a `touchline serve` process."""
    engine = make_engine(store_url)
    try:
        migrate(engine)
        workspace = create_workspace(engine, "Acceptance Shop", now=datetime.now(UTC))
        with serve(store_url, tmp_path_factory.mktemp("server")) as served:
            yield Server(url=served.url, engine=engine, workspace=workspace, served=served)
    finally:
        engine.dispose()


def profile_of(engine: Engine, workspace_id: str, user_id: str) -> Any:
    with engine.connect() as conn:
        pid = conn.execute(
            select(identities.c.profile_id).where(
                identities.c.workspace_id == workspace_id,
                identities.c.kind == "user_id",
                identities.c.value == user_id,
            )
        ).scalar_one()
        return conn.execute(select(profiles).where(profiles.c.id == pid)).one()


def events_of(engine: Engine, profile_id: int) -> list[Any]:
    with engine.connect() as conn:
        return list(
            conn.execute(
                select(events).where(events.c.profile_id == profile_id).order_by(events.c.id)
            )
        )


def test_segment_sdk_client_events_are_stored(server: Server) -> None:
    """The SDK (gzip, sync) delivers identify/track/page; traits land normalised, visitor merged."""
    client = Client(server.workspace.write_key, host=server.url, gzip=True, sync_mode=True)
    client.track(anonymous_id="anon-1", event="Viewed Product", properties={"sku": "A1"})
    client.page(anonymous_id="anon-1", name="Cart", properties={"url": "/cart"})
    client.identify(
        "sdk-user",
        {
            "email": "  Ivan.Petrov@Example.RU",
            "phone": "8 (916) 123-45-67",
            "birthday": date(1990, 5, 17),
            "firstName": "Ivan",
            "loyalty": "gold",
        },
        anonymous_id="anon-1",
    )
    client.track("sdk-user", "Order Completed", {"total": 99.5, "currency": "RUB"})
    client.flush()

    profile = profile_of(server.engine, server.workspace.id, "sdk-user")
    assert profile.email == "ivan.petrov@example.ru"
    assert (profile.phone, profile.phone_valid) == ("+79161234567", True)
    assert profile.birthday == date(1990, 5, 17)
    assert profile.first_name == "Ivan"
    assert profile.traits == {"loyalty": "gold"}
    stored = events_of(server.engine, profile.id)
    assert [(e.type, e.name) for e in stored] == [
        ("track", "Viewed Product"),
        ("page", "Cart"),
        ("identify", None),
        ("track", "Order Completed"),
    ]
    assert stored[3].properties == {"total": 99.5, "currency": "RUB"}
    assert stored[0].context["library"]["name"] == "analytics-python"


def test_segment_sdk_anonymous_visitor_merges_on_sign_in(server: Server) -> None:
    """A visitor browsing as an existing customer's other device is merged on identify."""
    client = Client(server.workspace.write_key, host=server.url, gzip=True, sync_mode=True)
    client.identify("merge-user", {"email": "m@example.ru"})
    client.track(anonymous_id="anon-2", event="Added To Cart", properties={"sku": "B2"})
    client.identify("merge-user", anonymous_id="anon-2")
    client.flush()

    profile = profile_of(server.engine, server.workspace.id, "merge-user")
    names = [e.name for e in events_of(server.engine, profile.id)]
    assert "Added To Cart" in names
    with server.engine.connect() as conn:
        merged = conn.execute(
            select(profiles.c.merged_into).where(profiles.c.merged_into == profile.id)
        ).all()
    assert len(merged) == 1


def test_segment_module_api_with_batching_consumer(server: Server) -> None:
    """The module-level SDK API (background consumer, batches) delivers and flushes."""
    analytics.write_key = server.workspace.write_key
    analytics.host = server.url
    analytics.gzip = True
    try:
        for n in range(25):
            analytics.track("module-user", "Viewed Product", {"n": n})
        analytics.flush()
    finally:
        analytics.shutdown()
        analytics.default_client = None
        analytics.write_key = analytics.host = None
        analytics.gzip = False
    profile = profile_of(server.engine, server.workspace.id, "module-user")
    assert len(events_of(server.engine, profile.id)) == 25


def test_segment_sdk_sees_a_wrong_key_as_401(server: Server) -> None:
    """The SDK surfaces touchline's 401 {code, message} as an APIError it understands."""
    client = Client("tlw_not-a-real-key", host=server.url, sync_mode=True)
    with pytest.raises(APIError) as caught:
        client.track("someone", "Viewed")
    assert (caught.value.status, caught.value.code) == (401, "unauthorized")


OVERSIZE_EVENT = json.dumps({"userId": "u", "event": "E", "properties": {"x": "a" * 40000}})
OVERSIZE_BATCH = json.dumps(
    {"batch": [{"type": "track", "userId": "u", "event": "e" * 190}] * 2700}
)


@pytest.mark.parametrize(
    ("path", "content", "status", "code"),
    [
        ("/v1/track", "{not json", 400, "invalid_input"),
        ("/v1/track", '{"event": "Viewed"}', 400, "missing_identity"),
        ("/v1/track", OVERSIZE_EVENT, 413, "payload_too_large"),
        ("/v1/batch", OVERSIZE_BATCH, 413, "payload_too_large"),
        ("/v1/nowhere", "{}", 404, "not_found"),
    ],
)
def test_raw_http_bad_input_answers_json(
    server: Server, path: str, content: str, status: int, code: str
) -> None:
    """Bad input over real HTTP answers the documented status and {code, message}."""
    auth = (server.workspace.write_key, "")
    response = httpx.post(f"{server.url}{path}", content=content, auth=auth, timeout=10)
    assert response.status_code == status, server.served.explain(response)
    body = response.json()
    assert set(body) == {"code", "message"}, server.served.explain(response)
    assert body["code"] == code


def test_raw_http_wrong_key_is_401_json(server: Server) -> None:
    """A wrong key over real HTTP answers 401 with {code: unauthorized, message}."""
    response = httpx.post(
        f"{server.url}/v1/track",
        json={"userId": "u", "event": "E"},
        auth=("tlw_wrong", ""),
        timeout=10,
    )
    assert response.status_code == 401, server.served.explain(response)
    assert response.json()["code"] == "unauthorized"


def test_raw_http_text_plain_and_readiness(server: Server) -> None:
    """A browser-style text/plain POST is stored, and /readyz reports the store ready."""
    response = httpx.post(
        f"{server.url}/v1/t",
        content=json.dumps(
            {"writeKey": server.workspace.write_key, "anonymousId": "browser-1", "event": "Viewed"}
        ),
        headers={"Content-Type": "text/plain;charset=UTF-8", "Origin": "https://shop.example"},
        timeout=10,
    )
    assert response.status_code == 200, server.served.explain(response)
    assert response.headers["access-control-allow-origin"] == "*"
    assert httpx.get(f"{server.url}/readyz", timeout=10).json() == {"status": "ready"}
    with server.engine.connect() as conn:
        found = conn.execute(select(events.c.name).where(events.c.anonymous_id == "browser-1"))
        assert found.scalars().all() == ["Viewed"]
