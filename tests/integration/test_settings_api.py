"""``GET`` and ``PUT /admin/v1/settings`` on SQLite and PostgreSQL: masking, validation, secrets kept."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine

from touchline.config import Settings
from touchline.store.workspaces import CreatedWorkspace, create_workspace, workspace_settings
from touchline.testing import FrozenClock
from touchline.web.app import create_app

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
    from fastapi.testclient import TestClient

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
API_KEY = "smsaero-api-key-0123456789"
DOCUMENT: dict[str, Any] = {
    "default_timezone": "Europe/Moscow",
    "sender": {"sms_sender": "Shop"},
    "channels": {
        "sms": {"provider": "smsaero", "email": "owner@example.ru", "api_key": API_KEY},
        "email": {"provider": "capture", "callback_secret": "email-callback-secret-42"},
    },
}


class Admin:
    def __init__(self, engine: Engine, client: TestClient) -> None:
        self.engine = engine
        self.client = client
        self.a: CreatedWorkspace = create_workspace(engine, "Shop A", now=T0)
        self.b: CreatedWorkspace = create_workspace(engine, "Shop B", now=T0)

    def get(self, *, token: str | None = None) -> httpx.Response:
        return self.client.get("/admin/v1/settings", headers=self._auth(token))

    def put(self, body: Any, *, token: str | None = None) -> httpx.Response:
        return self.client.put("/admin/v1/settings", json=body, headers=self._auth(token))

    def stored(self, ws: str) -> dict[str, Any]:
        with self.engine.connect() as conn:
            return workspace_settings(conn, ws)

    def _auth(self, token: str | None) -> dict[str, str]:
        return {"Authorization": f"Bearer {token or self.a.admin_token}"}


@pytest.fixture
def admin(engine: Engine, database_url: str) -> Iterator[Admin]:
    app = create_app(Settings(database_url=database_url), engine=engine, clock=FrozenClock(T0))
    with TestClient(app) as client:
        yield Admin(engine, client)


def test_a_new_workspace_has_an_empty_document(admin: Admin) -> None:
    """GET on a fresh workspace answers {}."""
    response = admin.get()
    assert response.status_code == 200
    assert response.json() == {}


def test_put_stores_the_document_and_answers_it_masked(admin: Admin) -> None:
    """PUT stores the secrets in clear and answers (and GET shows) them masked."""
    # when
    response = admin.put(DOCUMENT)
    # then
    assert response.status_code == 200, response.text
    shown = response.json()
    assert shown["channels"]["sms"]["api_key"] == "••••6789"
    assert shown["channels"]["email"]["callback_secret"] == "••••t-42"
    assert shown["sender"] == {"sms_sender": "Shop"}
    assert admin.get().json() == shown
    assert admin.stored(admin.a.id) == DOCUMENT


def test_putting_the_masked_document_back_keeps_the_secrets(admin: Admin) -> None:
    """GET, edit a plain field, PUT back: the stored secrets are unchanged."""
    admin.put(DOCUMENT)
    edited = admin.get().json()
    edited["sender"]["sms_sender"] = "ShopTwo"
    response = admin.put(edited)
    assert response.status_code == 200, response.text
    stored = admin.stored(admin.a.id)
    assert stored["channels"]["sms"]["api_key"] == API_KEY
    assert stored["channels"]["email"]["callback_secret"] == "email-callback-secret-42"
    assert stored["sender"]["sms_sender"] == "ShopTwo"


@pytest.mark.parametrize(
    ("body", "path"),
    [
        ({"channels": {"sms": {"provider": "twillio"}}}, "channels.sms.provider:"),
        ({"chanels": {}}, "chanels:"),
        ({"caps": [{"limit": 1}]}, "caps[0].window:"),
        ({"sender": {"sms_sender": "A much too long sender"}}, "sender.sms_sender:"),
    ],
)
def test_an_invalid_document_is_refused_with_the_field_path(
    admin: Admin, body: dict[str, Any], path: str
) -> None:
    """A bad document answers 400 invalid_settings naming the field, and nothing is stored."""
    admin.put(DOCUMENT)
    response = admin.put(body)
    assert response.status_code == 400
    answer = response.json()
    assert set(answer) == {"code", "message"}
    assert answer["code"] == "invalid_settings"
    assert answer["message"].startswith(path), answer
    assert admin.stored(admin.a.id) == DOCUMENT


def test_a_masked_secret_for_a_new_provider_is_refused(admin: Admin) -> None:
    """Switching provider while sending a masked token cannot store the mask as the secret."""
    admin.put(DOCUMENT)
    body = {
        "channels": {
            "sms": {
                "provider": "twilio",
                "account_sid": "AC1",
                "auth_token": "••••6789",
                "from_number": "Shop",
            }
        }
    }
    response = admin.put(body)
    assert response.status_code == 400
    assert response.json()["message"].startswith("channels.sms.auth_token:")


def test_the_body_must_be_a_json_object(admin: Admin) -> None:
    """A JSON list, or no JSON at all, answers 400 invalid_settings."""
    assert admin.put(["not", "an", "object"]).json()["code"] == "invalid_settings"
    response = admin.client.put(
        "/admin/v1/settings",
        content=b"{nope",
        headers={
            "Authorization": f"Bearer {admin.a.admin_token}",
            "Content-Type": "application/json",
        },
    )
    assert response.status_code == 400


def test_settings_are_per_workspace(admin: Admin) -> None:
    """A's document is neither visible nor changed through B's token."""
    admin.put(DOCUMENT)
    assert admin.get(token=admin.b.admin_token).json() == {}
    admin.put({"topics": {"news": "News"}}, token=admin.b.admin_token)
    assert admin.stored(admin.a.id) == DOCUMENT
    assert admin.stored(admin.b.id) == {"topics": {"news": "News"}}


def test_settings_need_an_admin_token(admin: Admin) -> None:
    """A write key or no key answers 401."""
    assert admin.get(token=admin.a.write_key).status_code == 401
    assert admin.client.put("/admin/v1/settings", json={}).status_code == 401
