"""Broadcasts through ``/admin/v1/broadcasts`` and ``touchline broadcast``, on SQLite and PostgreSQL."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from broadcast_shop import BroadcastShop
from click.testing import CliRunner
from sqlalchemy import Engine, select

from touchline.cli import main
from touchline.config import Settings
from touchline.store.tables import journeys
from touchline.web.app import create_app

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
    from fastapi.testclient import TestClient

T0 = datetime(2026, 3, 2, 6, 0, tzinfo=UTC)
PROMO = {
    "broadcast": "spring",
    "name": "Spring sale",
    "audience": "vip",
    "channel": "email",
    "template": "promo",
    "properties": {"deadline": "Friday"},
}


class Api:
    """The app on a broadcast shop, with its admin token."""

    def __init__(self, shop: BroadcastShop, client: TestClient) -> None:
        self.shop = shop
        self.client = client
        self.headers = {"Authorization": f"Bearer {shop.workspace.admin_token}"}

    def post(self, path: str, body: Any = None) -> httpx.Response:
        return self.client.post(f"/admin/v1{path}", json=body, headers=self.headers)

    def get(self, path: str) -> httpx.Response:
        return self.client.get(f"/admin/v1{path}", headers=self.headers)


@pytest.fixture
def api(engine: Engine) -> Iterator[Api]:
    shop = BroadcastShop(engine, T0)
    shop.customers(4, segment="vip")
    app = create_app(Settings(), engine=engine, clock=shop.clock)
    with TestClient(app) as client:
        yield Api(shop, client)


def error(response: httpx.Response, status: int, code: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"code", "message"} and body["code"] == code, body
    return str(body["message"])


def test_create_schedule_send_and_show_progress(api: Api) -> None:
    """A draft is created, scheduled, sent by the worker; GET shows the counts as they move."""
    # given
    created = api.post("/broadcasts", PROMO)
    # when
    scheduled = api.post("/broadcasts/spring/schedule", {"send_at": T0.isoformat()})
    api.shop.tick()
    queued = api.get("/broadcasts/spring").json()
    api.shop.dispatch()
    api.shop.settle()
    done = api.get("/broadcasts/spring")
    listed = api.get("/broadcasts")
    # then
    assert created.status_code == 201, created.text
    assert created.json()["status"] == "draft"
    assert scheduled.json()["status"] == "scheduled"
    assert queued["status"] == "sending"
    assert queued["progress"]["queued"] == 4 and queued["progress"]["pending"] == 4
    body = done.json()
    assert body["status"] == "sent" and body["journey"] == "broadcast:spring"
    assert body["progress"]["sent"] == 4 and body["progress"]["pending"] == 0
    assert [b["broadcast"] for b in listed.json()["broadcasts"]] == ["spring"]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"audience": "nobody"}, "audience"),
        ({"template": "missing"}, "template"),
        ({"template": "promo-sms"}, "template"),  # an SMS template on email
        ({"rate": 0}, "rate"),
        ({"local_time": "25:00"}, "local_time"),
        ({"send_at": "soon"}, "send_at"),
        ({"broadcast": "Spring Sale"}, "broadcast"),
        ({"colour": "red"}, "colour"),
        (
            {
                "template": None,
                "ab_test": {"variants": [{"name": "a", "template": "promo-a"}], "sample": 20},
            },
            "ab_test.variants",
        ),
        (
            {
                "template": None,
                "ab_test": {
                    "variants": [
                        {"name": "a", "template": "promo-a"},
                        {"name": "b", "template": "promo-b"},
                    ],
                    "sample": 120,
                },
            },
            "ab_test.sample",
        ),
    ],
)
def test_create_refuses_bad_input_naming_the_field(
    api: Api, change: dict[str, Any], field: str
) -> None:
    """400 invalid_broadcast, and the message starts with the field at fault."""
    body = {k: v for k, v in {**PROMO, **change}.items() if v is not None}
    message = error(api.post("/broadcasts", body), 400, "invalid_broadcast")
    assert message.startswith(f"{field}:"), message


def test_create_refuses_a_taken_key_and_a_non_object(api: Api) -> None:
    """409 broadcast_exists for a second create; 400 for a JSON list."""
    assert api.post("/broadcasts", PROMO).status_code == 201
    error(api.post("/broadcasts", PROMO), 409, "broadcast_exists")
    error(api.post("/broadcasts", [PROMO]), 400, "invalid_broadcast")


def test_cancel_and_the_states_that_refuse_changes(api: Api) -> None:
    """Cancel a scheduled broadcast; it cannot be scheduled or cancelled again; unknown is 404."""
    # given
    api.post("/broadcasts", {**PROMO, "send_at": (T0 + timedelta(days=1)).isoformat()})
    # when
    cancelled = api.post("/broadcasts/spring/cancel")
    # then
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    error(api.post("/broadcasts/spring/cancel"), 409, "broadcast_finished")
    error(api.post("/broadcasts/spring/schedule", {}), 409, "broadcast_started")
    error(api.get("/broadcasts/nope"), 404, "not_found")


def test_a_broadcast_journey_is_never_entered_by_events(api: Api) -> None:
    """The journey row a broadcast registers has no trigger and is not active."""
    api.post("/broadcasts", PROMO)
    with api.shop.engine.connect() as conn:
        row = conn.execute(select(journeys).where(journeys.c.key == "broadcast:spring")).one()
    assert (row.status, row.trigger_event) == ("broadcast", "")


def test_another_workspace_sees_nothing(api: Api, engine: Engine) -> None:
    """A second workspace's token lists none of the first's broadcasts."""
    api.post("/broadcasts", PROMO)
    other = BroadcastShop(engine, T0)
    listed = api.client.get(
        "/admin/v1/broadcasts",
        headers={"Authorization": f"Bearer {other.workspace.admin_token}"},
    )
    assert listed.json() == {"broadcasts": []}
    found = api.client.get(
        "/admin/v1/broadcasts/spring",
        headers={"Authorization": f"Bearer {other.workspace.admin_token}"},
    )
    error(found, 404, "not_found")


FILE = """\
broadcast: spring
name: Spring sale
audience: vip
channel: email
template: promo
properties: {deadline: Friday}
ab_test:
  variants:
    - {name: a, template: promo-a}
    - {name: b, template: promo-b}
  sample: 20
  wait: 2h
"""


def test_the_cli_creates_lists_shows_and_cancels(
    engine: Engine, database_url: str, tmp_path: Path
) -> None:
    """`touchline broadcast create|list|show|cancel` against the store; file errors name line and field."""
    # given
    shop = BroadcastShop(engine, T0)
    shop.customers(3, segment="vip")
    good = tmp_path / "spring.yaml"
    good.write_text(FILE.replace("template: promo\n", ""), encoding="utf-8")
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        FILE.replace("template: promo\n", "").replace("sample: 20", "sample: 200"), encoding="utf-8"
    )
    env = {"TOUCHLINE_DATABASE_URL": database_url, "TOUCHLINE_WORKSPACE": shop.ws}

    def run(*args: str) -> Any:
        return CliRunner().invoke(main, list(args), obj={"engine": engine}, env=env)

    # when
    refused = run("broadcast", "create", str(bad))
    created = run("broadcast", "create", str(good))
    listed = run("broadcast", "list")
    shown = run("broadcast", "show", "spring")
    cancelled = run("broadcast", "cancel", "spring")
    # then
    assert refused.exit_code != 0
    assert f"{bad}:10: ab_test.sample: must be less than or equal to 100" in refused.output
    assert created.exit_code == 0, created.output
    assert "broadcast spring created: draft" in created.output
    assert "spring" in listed.output and "draft" in listed.output
    assert "Spring sale [draft]" in shown.output
    assert cancelled.exit_code == 0, cancelled.output
    assert "cancelled" in cancelled.output
