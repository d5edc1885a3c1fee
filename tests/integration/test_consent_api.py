"""The admin consent API: ledger export (JSON and CSV), grants and withdrawals, suppressions.

Runs the app in-process on SQLite and PostgreSQL with a frozen clock; two
workspaces prove that one admin token sees nothing of the other workspace.
"""

from __future__ import annotations

import csv
import io
import warnings
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine

from touchline.config import Settings
from touchline.store.consent import LEDGER_FIELDS
from touchline.store.workspaces import CreatedWorkspace, create_workspace
from touchline.testing import FrozenClock, identify, send_events
from touchline.web.app import create_app

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
    from fastapi.testclient import TestClient

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


class Admin:
    """Two workspaces, each with a customer ``cust-1``, and the admin API of the first."""

    def __init__(self, engine: Engine, client: TestClient, clock: FrozenClock) -> None:
        self.client = client
        self.clock = clock
        self.a: CreatedWorkspace = create_workspace(engine, "Shop A", now=T0)
        self.b: CreatedWorkspace = create_workspace(engine, "Shop B", now=T0)
        for ws in (self.a, self.b):
            send_events(
                engine,
                ws.id,
                [identify("cust-1", email="anna@example.com", phone="+79161234567")],
                now=T0,
            )

    def call(
        self, method: str, path: str, *, token: str | None = None, **kwargs: Any
    ) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token or self.a.admin_token}"}
        return self.client.request(method, f"/admin/v1{path}", headers=headers, **kwargs)

    def ok(self, response: httpx.Response) -> Any:
        assert response.status_code == 200, response.text
        return response.json()


@pytest.fixture
def admin(engine: Engine, database_url: str) -> Iterator[Admin]:
    clock = FrozenClock(T0)
    app = create_app(Settings(database_url=database_url), engine=engine, clock=clock)
    with TestClient(app) as client:
        yield Admin(engine, client, clock)


def assert_error(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"code", "message"} and body["code"] == code, body


GRANT = {
    "channel": "email",
    "granted": True,
    "source": "https://shop.example/checkout",
    "text_version": "offer-2026-01",
    "ip": "203.0.113.7",
    "user_agent": "Mozilla/5.0",
}


def test_a_grant_is_recorded_with_every_field(admin: Admin) -> None:
    """POST consents appends a grant carrying source, wording, IP, user agent and the address."""
    # when
    answer = admin.ok(admin.call("POST", "/profiles/cust-1/consents", json=GRANT))
    # then
    assert answer["recorded"] is True
    row = answer["consent"]
    assert {k: row[k] for k in GRANT if k != "granted"} == {
        k: v for k, v in GRANT.items() if k != "granted"
    }
    assert row["granted"] is True and row["confirmed"] is True
    assert row["address"] == "anna@example.com"
    assert row["purpose"] == "marketing" and row["topic"] is None
    assert row["at"] == T0.isoformat()
    ledger = admin.ok(admin.call("GET", "/profiles/cust-1/consents"))
    assert ledger["user_id"] == "cust-1"
    assert ledger["consents"] == [row]


def test_the_consent_route_wins_over_the_profile_route(admin: Admin) -> None:
    """/profiles/{ref}/consents reaches the ledger, not the profile route reading 'cust-1/consents'."""
    # when
    ledger = admin.call("GET", "/profiles/cust-1/consents")
    profile = admin.call("GET", "/profiles/cust-1")
    # then
    assert set(admin.ok(ledger)) == {"profile_id", "user_id", "consents"}
    assert admin.ok(profile)["user_id"] == "cust-1"
    by_id = admin.ok(admin.call("GET", f"/profiles/%23{admin.ok(profile)['id']}/consents"))
    assert by_id["user_id"] == "cust-1"


def test_source_defaults_to_admin_api_and_withdrawal_is_idempotent(admin: Admin) -> None:
    """A withdrawal without source says 'admin api', suppresses the address, and repeats as a no-op."""
    # given
    admin.ok(admin.call("POST", "/profiles/cust-1/consents", json=GRANT))
    admin.clock.advance(timedelta(days=1))
    # when
    first = admin.ok(
        admin.call("POST", "/profiles/cust-1/consents", json={"channel": "email", "granted": False})
    )
    second = admin.ok(
        admin.call("POST", "/profiles/cust-1/consents", json={"channel": "email", "granted": False})
    )
    # then
    assert first["recorded"] is True
    assert first["consent"]["source"] == "admin api"
    assert first["consent"]["granted"] is False
    assert second == {"recorded": False, "consent": None}
    rows = admin.ok(admin.call("GET", "/profiles/cust-1/consents"))["consents"]
    assert [r["granted"] for r in rows] == [True, False]
    suppressions = admin.ok(admin.call("GET", "/suppressions"))["suppressions"]
    assert [(s["channel"], s["address"], s["reason"]) for s in suppressions] == [
        ("email", "anna@example.com", "unsubscribe")
    ]


def test_topic_pending_and_backdated_changes(admin: Admin) -> None:
    """A topic withdrawal suppresses nothing; a pending grant is unconfirmed; 'at' may be earlier."""
    # when
    topic = admin.ok(
        admin.call(
            "POST",
            "/profiles/cust-1/consents",
            json={"channel": "email", "granted": False, "topic": "selling"},
        )
    )
    pending = admin.ok(
        admin.call(
            "POST",
            "/profiles/cust-1/consents",
            json={
                "channel": "sms",
                "granted": True,
                "confirmed": False,
                "at": "2026-01-15T12:00:00+03:00",
            },
        )
    )
    # then
    assert topic["consent"]["topic"] == "selling"
    assert admin.ok(admin.call("GET", "/suppressions"))["suppressions"] == []
    assert pending["consent"]["confirmed"] is False
    assert pending["consent"]["address"] == "+79161234567"
    assert pending["consent"]["at"] == "2026-01-15T09:00:00+00:00"


@pytest.mark.parametrize(
    "body",
    [
        {"channel": "pigeon", "granted": True},
        {"channel": "email", "granted": True, "topic": "transactional"},
        {"channel": "email", "granted": True, "at": "2026-03-02T09:00:00"},
        {"channel": "email", "granted": True, "at": "2027-01-01T00:00:00+00:00"},
        {"channel": "email"},
    ],
)
def test_bad_consent_changes_are_refused(admin: Admin, body: dict[str, Any]) -> None:
    """Unknown channel or topic, a naive or future time, a missing field: 400 and nothing written."""
    assert_error(admin.call("POST", "/profiles/cust-1/consents", json=body), 400, "invalid_input")
    assert admin.ok(admin.call("GET", "/profiles/cust-1/consents"))["consents"] == []


def test_csv_export_has_every_ledger_field(admin: Admin) -> None:
    """?format=csv answers text/csv with a filename and one column per LEDGER_FIELDS entry."""
    # given: a grant, and a withdrawal whose user agent looks like a formula
    admin.ok(admin.call("POST", "/profiles/cust-1/consents", json=GRANT))
    admin.clock.advance(timedelta(hours=2))
    admin.ok(
        admin.call(
            "POST",
            "/profiles/cust-1/consents",
            json={"channel": "email", "granted": False, "user_agent": "=HYPERLINK(1)"},
        )
    )
    # when
    response = admin.call("GET", "/profiles/cust-1/consents", params={"format": "csv"})
    # then
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/csv")
    profile_id = admin.ok(admin.call("GET", "/profiles/cust-1"))["id"]
    assert response.headers["content-disposition"] == (
        f'attachment; filename="consents-{admin.a.id}-{profile_id}.csv"'
    )
    rows = list(csv.DictReader(io.StringIO(response.content.decode("utf-8-sig"))))
    assert tuple(rows[0]) == LEDGER_FIELDS
    json_rows = admin.ok(admin.call("GET", "/profiles/cust-1/consents"))["consents"]
    assert [r["id"] for r in rows] == [str(r["id"]) for r in json_rows]
    grant, withdrawal = rows
    assert grant["granted"] == "true" and withdrawal["granted"] == "false"
    assert grant["source"] == GRANT["source"]
    assert grant["text_version"] == "offer-2026-01"
    assert grant["ip"] == "203.0.113.7"
    assert grant["user_agent"] == "Mozilla/5.0"
    assert grant["address"] == "anna@example.com"
    assert grant["at"] == T0.isoformat()
    assert grant["topic"] == ""
    assert withdrawal["user_agent"] == "'=HYPERLINK(1)"


def test_suppressions_can_be_listed_added_and_lifted(admin: Admin) -> None:
    """A manual suppression shows in the list (filtered by channel) and DELETE lifts it."""
    # given
    entry = {"channel": "email", "address": " Bounced@Example.com ", "reason": "hard_bounce"}
    # when
    added = admin.ok(admin.call("POST", "/suppressions", json=entry))
    again = admin.ok(admin.call("POST", "/suppressions", json=entry))
    admin.ok(
        admin.call(
            "POST",
            "/suppressions",
            json={"channel": "sms", "address": "+79160000000", "reason": "stop_reply"},
        )
    )
    emails = admin.ok(admin.call("GET", "/suppressions", params={"channel": "email"}))
    everything = admin.ok(admin.call("GET", "/suppressions"))
    removed = admin.ok(admin.call("DELETE", "/suppressions", json=entry))
    removed_again = admin.ok(admin.call("DELETE", "/suppressions", json=entry))
    # then
    assert (added, again) == ({"added": True}, {"added": False})
    assert [(s["address"], s["reason"]) for s in emails["suppressions"]] == [
        ("bounced@example.com", "hard_bounce")
    ]
    assert len(everything["suppressions"]) == 2
    assert (removed, removed_again) == ({"removed": True}, {"removed": False})
    left = admin.ok(admin.call("GET", "/suppressions"))["suppressions"]
    assert [s["channel"] for s in left] == ["sms"]


def test_an_unknown_suppression_reason_is_refused(admin: Admin) -> None:
    """Only the known reasons may be added or lifted."""
    entry = {"channel": "email", "address": "a@example.com", "reason": "dislike"}
    assert_error(admin.call("POST", "/suppressions", json=entry), 400, "invalid_input")
    assert_error(admin.call("DELETE", "/suppressions", json=entry), 400, "invalid_input")


def test_another_workspaces_token_sees_nothing(admin: Admin) -> None:
    """Workspace B's token reads none of A's consents or suppressions and lifts none of them."""
    # given: A has a grant and a suppression; B has a customer with the same user id
    admin.ok(admin.call("POST", "/profiles/cust-1/consents", json=GRANT))
    entry = {"channel": "email", "address": "anna@example.com", "reason": "complaint"}
    admin.ok(admin.call("POST", "/suppressions", json=entry))
    other = admin.b.admin_token
    # when
    b_ledger = admin.ok(admin.call("GET", "/profiles/cust-1/consents", token=other))
    a_profile = admin.ok(admin.call("GET", "/profiles/cust-1"))["id"]
    b_by_a_id = admin.call("GET", f"/profiles/%23{a_profile}/consents", token=other)
    b_list = admin.ok(admin.call("GET", "/suppressions", token=other))
    b_delete = admin.ok(admin.call("DELETE", "/suppressions", json=entry, token=other))
    # then
    assert b_ledger["consents"] == []
    assert_error(b_by_a_id, 404, "not_found")
    assert b_list == {"suppressions": []}
    assert b_delete == {"removed": False}
    assert len(admin.ok(admin.call("GET", "/suppressions"))["suppressions"]) == 1
    assert len(admin.ok(admin.call("GET", "/profiles/cust-1/consents"))["consents"]) == 1


def test_the_consent_api_needs_an_admin_token(admin: Admin) -> None:
    """A write key, or no key, gets 401 on every consent route."""
    for method, path in (
        ("GET", "/profiles/cust-1/consents"),
        ("POST", "/profiles/cust-1/consents"),
        ("GET", "/suppressions"),
        ("POST", "/suppressions"),
        ("DELETE", "/suppressions"),
    ):
        response = admin.call(method, path, token=admin.a.write_key, json={})
        assert_error(response, 401, "unauthorized")
    assert_error(admin.client.get("/admin/v1/suppressions"), 401, "unauthorized")
