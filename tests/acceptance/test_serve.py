"""``touchline serve`` as a real process, driven over real HTTP on SQLite and PostgreSQL.

Workspaces and journeys are set up with the real CLI (``touchline workspace
create``, ``touchline apply``); everything afterwards goes through the HTTP
API of the running server, curl-style with httpx, bad input included. The
server's worker thread runs on the wall clock, so one test waits a real second.
"""

from __future__ import annotations

import base64
import gzip
import json
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from server import (
    STOP_SECONDS,
    Keys,
    Served,
    create_workspace,
    run_ok,
    serve,
    start_serve,
    wait_for,
)

from touchline.testing import track

# Longest the worker inside `serve` may take to send a reminder due after 1 s.
DELIVERY_SECONDS = 15

CART_REMINDER = """\
journey: cart-reminder
category: selling
trigger: {event: Product Added}
entry: {key: cart_id, reentry: once_per_key}
exit_on:
  - {event: Order Completed, match: cart_id}
steps:
  - id: cool-off
    wait: 1s
  - id: reminder
    send: {channel: email, template: cart-reminder}
"""


def admin(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def assert_error(served: Served, response: httpx.Response, status: int, code: str) -> None:
    """The answer is ``status`` with a JSON body of exactly string ``code`` and ``message``."""
    assert response.status_code == status, served.explain(response)
    assert response.headers["content-type"].startswith("application/json"), served.explain(response)
    body = response.json()
    assert set(body) == {"code", "message"}, served.explain(response)
    assert isinstance(body["message"], str) and body["message"], served.explain(response)
    assert body["code"] == code, served.explain(response)


def profile(served: Served, token: str, user_id: str) -> dict[str, Any]:
    response = served.get(f"/admin/v1/profiles/{user_id}", headers=admin(token))
    assert response.status_code == 200, served.explain(response)
    return response.json()  # type: ignore[no-any-return]


# -- a server shared by the read-mostly tests of this module ------------------------------


@dataclass(frozen=True)
class Shops:
    """One running server with two workspaces."""

    served: Served
    store_url: str
    a: Keys
    b: Keys


@pytest.fixture(scope="module")
def shops(store_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shops]:
    """The server started on the store (migrating it), then two workspaces made with the CLI."""
    with serve(store_url, tmp_path_factory.mktemp("serve")) as served:
        a = create_workspace(store_url, "Shop A")
        b = create_workspace(store_url, "Shop B")
        yield Shops(served, store_url, a, b)


# -- end to end ---------------------------------------------------------------------------


def test_serve_worker_sends_the_reminder_after_a_wall_clock_wait(
    shops: Shops, tmp_path: Path
) -> None:
    """The worker inside `serve` fires a 1 s timer on the wall clock; an ordered cart gets nothing."""
    # given: a journey applied with `touchline apply` to the running server's store
    served, keys = shops.served, shops.a
    pack = tmp_path / "journeys"
    pack.mkdir()
    (pack / "cart-reminder.yaml").write_text(CART_REMINDER, encoding="utf-8")
    applied = run_ok(
        "apply", str(pack), "--workspace", keys.workspace, database_url=shops.store_url
    )
    assert applied.strip() == "cart-reminder: v1 created"

    # when: one cart is left, the other is ordered at once
    sent_at = datetime.now(UTC)
    batch = [
        track("leaver", "Product Added", {"cart_id": "c1"}),
        track("buyer", "Product Added", {"cart_id": "c2"}),
        track("buyer", "Order Completed", {"cart_id": "c2"}),
    ]
    response = served.post("/v1/batch", json={"batch": batch}, headers=basic(keys.write_key))
    assert response.status_code == 200, served.explain(response)

    # then: the reminder reaches the outbox, no earlier than the wait allows ...
    def outbox() -> list[dict[str, Any]]:
        answer = served.get("/admin/v1/outbox", headers=admin(keys.admin_token))
        assert answer.status_code == 200, served.explain(answer)
        return answer.json()["messages"]  # type: ignore[no-any-return]

    [message] = wait_for(outbox, timeout=DELIVERY_SECONDS, what="the cart reminder", served=served)
    assert (message["journey"], message["step"], message["channel"], message["template"]) == (
        "cart-reminder",
        "reminder",
        "email",
        "cart-reminder",
    )
    assert datetime.fromisoformat(message["created_at"]) >= sent_at + timedelta(seconds=1)

    # ... and once both carts are done, the ordered one has exited without a message
    def finished() -> bool:
        answer = served.get("/admin/v1/journeys/cart-reminder", headers=admin(keys.admin_token))
        assert answer.status_code == 200, served.explain(answer)
        return answer.json()["steps"]["finished"] == 2  # type: ignore[no-any-return]

    wait_for(finished, timeout=DELIVERY_SECONDS, what="both carts to finish", served=served)
    assert len(outbox()) == 1
    [left] = profile(served, keys.admin_token, "leaver")["journeys"]
    [bought] = profile(served, keys.admin_token, "buyer")["journeys"]
    assert (left["status"], left["exit_reason"]) == ("completed", "reached the end")
    assert (bought["status"], bought["exit_reason"]) == ("exited", "exit event: Order Completed")


# -- raw HTTP, bad input ------------------------------------------------------------------

OVERSIZE_EVENT = json.dumps({"userId": "u", "event": "E", "properties": {"x": "a" * 33 * 1024}})
# 30 events of 20 KB: each within the event limit, together over the 500 KB batch limit.
EVENT_OF_20KB = {"type": "track", "userId": "u", "event": "E", "properties": {"x": "a" * 20480}}
OVERSIZE_BATCH = json.dumps({"batch": [EVENT_OF_20KB] * 30})

TRACK_BODY = '{"userId": "u", "event": "E"}'
# id -> (method, path, body, who, status, code); `who` is "write", "admin", "wrong" or "none".
BAD_REQUESTS: dict[str, tuple[str, str, str | None, str, int, str]] = {
    "invalid-json": ("POST", "/v1/track", "{not json", "write", 400, "invalid_input"),
    "not-an-object": ("POST", "/v1/track", "[1, 2]", "write", 400, "invalid_input"),
    "no-identity": ("POST", "/v1/track", '{"event": "Viewed"}', "write", 400, "missing_identity"),
    "event-over-32kb": ("POST", "/v1/track", OVERSIZE_EVENT, "write", 413, "payload_too_large"),
    "batch-over-500kb": ("POST", "/v1/batch", OVERSIZE_BATCH, "write", 413, "payload_too_large"),
    "wrong-write-key": ("POST", "/v1/track", TRACK_BODY, "wrong", 401, "unauthorized"),
    "no-write-key": ("POST", "/v1/track", TRACK_BODY, "none", 401, "unauthorized"),
    "admin-api-with-write-key": ("GET", "/admin/v1/journeys", None, "write", 401, "unauthorized"),
    "admin-api-without-token": ("GET", "/admin/v1/outbox", None, "none", 401, "unauthorized"),
    "unknown-route": ("POST", "/v1/nowhere", "{}", "write", 404, "not_found"),
    "unknown-admin-route": ("GET", "/admin/v1/nowhere", None, "admin", 404, "not_found"),
    "wrong-method": ("GET", "/v1/track", None, "write", 405, "method_not_allowed"),
    "unknown-journey": ("GET", "/admin/v1/journeys/nope", None, "admin", 404, "not_found"),
}


def basic(key: str) -> dict[str, str]:
    """HTTP Basic with the key as user name, as Segment's SDKs send it."""
    return {"Authorization": "Basic " + base64.b64encode(f"{key}:".encode()).decode()}


def credentials(shops: Shops, which: str) -> dict[str, str]:
    if which == "none":
        return {}
    if which == "admin":
        return admin(shops.a.admin_token)
    return basic(shops.a.write_key if which == "write" else "tlw_wrong")


@pytest.mark.parametrize(
    ("method", "path", "content", "who", "status", "code"),
    list(BAD_REQUESTS.values()),
    ids=list(BAD_REQUESTS),
)
def test_bad_requests_answer_json_code_and_message(
    shops: Shops, method: str, path: str, content: str | None, who: str, status: int, code: str
) -> None:
    """Bad input over real HTTP answers its documented status and exactly {code, message}."""
    # given
    headers = credentials(shops, who)
    # when
    response = shops.served.request(method, path, content=content, headers=headers)
    # then
    assert_error(shops.served, response, status, code)


def test_gzip_body_is_accepted_and_stored(shops: Shops) -> None:
    """A gzip-encoded batch, as the SDKs send it, is inflated and stored."""
    # given
    body = gzip.compress(json.dumps({"batch": [track("gzip-user", "Viewed Product")]}).encode())
    # when
    response = shops.served.post(
        "/v1/batch", content=body, headers={**basic(shops.a.write_key), "Content-Encoding": "gzip"}
    )
    # then
    assert response.status_code == 200, shops.served.explain(response)
    assert response.json() == {"success": True}
    events = profile(shops.served, shops.a.admin_token, "gzip-user")["events"]
    assert [e["name"] for e in events] == ["Viewed Product"]


def test_text_plain_json_from_a_browser_is_accepted(shops: Shops) -> None:
    """A text/plain POST with the write key in the body (no CORS preflight) is stored."""
    # given
    body = {"writeKey": shops.a.write_key, "userId": "browser-user", "event": "Viewed Cart"}
    # when
    response = shops.served.post(
        "/v1/t",
        content=json.dumps(body),
        headers={"Content-Type": "text/plain;charset=UTF-8", "Origin": "https://shop.example"},
    )
    # then
    assert response.status_code == 200, shops.served.explain(response)
    assert response.headers["access-control-allow-origin"] == "*"
    events = profile(shops.served, shops.a.admin_token, "browser-user")["events"]
    assert [e["name"] for e in events] == ["Viewed Cart"]


def test_the_same_message_id_twice_is_stored_once(shops: Shops) -> None:
    """A retried message (same messageId) answers 200 both times and is stored once."""
    # given
    message = track("retry-user", "Order Completed", {"total": 10}, messageId="msg-retry-1")
    # when
    first = shops.served.post("/v1/track", json=message, headers=basic(shops.a.write_key))
    second = shops.served.post("/v1/track", json=message, headers=basic(shops.a.write_key))
    # then
    assert first.status_code == second.status_code == 200, shops.served.explain(second)
    events = profile(shops.served, shops.a.admin_token, "retry-user")["events"]
    assert [(e["message_id"], e["name"]) for e in events] == [("msg-retry-1", "Order Completed")]


def test_health_and_readiness_answer_200(shops: Shops) -> None:
    """/healthz and /readyz answer 200 on the running server."""
    # when
    health = shops.served.get("/healthz")
    ready = shops.served.get("/readyz")
    # then
    assert (health.status_code, health.json()) == (200, {"status": "ok"}), shops.served.explain(
        health
    )
    assert (ready.status_code, ready.json()) == (200, {"status": "ready"}), shops.served.explain(
        ready
    )


def test_a_workspace_cannot_read_another_workspaces_profile(shops: Shops) -> None:
    """Workspace A's admin token gets 404 for B's customer, by user id or internal id."""
    # given: a customer of workspace B
    sent = shops.served.post(
        "/v1/identify",
        json={"userId": "b-customer", "traits": {"email": "b@example.com"}},
        headers=basic(shops.b.write_key),
    )
    assert sent.status_code == 200, shops.served.explain(sent)
    internal_id = profile(shops.served, shops.b.admin_token, "b-customer")["id"]
    # when
    by_user_id = shops.served.get(
        "/admin/v1/profiles/b-customer", headers=admin(shops.a.admin_token)
    )
    by_internal_id = shops.served.get(
        f"/admin/v1/profiles/%23{internal_id}", headers=admin(shops.a.admin_token)
    )
    # then
    assert_error(shops.served, by_user_id, 404, "not_found")
    assert_error(shops.served, by_internal_id, 404, "not_found")
    assert "b@example.com" not in by_user_id.text + by_internal_id.text


# -- stopping -----------------------------------------------------------------------------


def test_sigterm_stops_serve_cleanly(database_url: str, tmp_path: Path) -> None:
    """SIGTERM makes `touchline serve` shut down gracefully within 10 s."""
    # given: a running server with an open store connection
    served = start_serve(database_url, tmp_path)
    try:
        ready = served.get("/readyz")
        assert ready.status_code == 200, served.explain(ready)
        # when
        started = time.monotonic()
        served.process.send_signal(signal.SIGTERM)
        try:
            code = served.process.wait(timeout=STOP_SECONDS)
        except subprocess.TimeoutExpired:
            pytest.fail(f"still running {STOP_SECONDS}s after SIGTERM\n{served.explain()}")
        took = time.monotonic() - started
    finally:
        served.stop()
    # then: uvicorn's graceful shutdown ran; the exit is 0 or the conventional SIGTERM status
    assert code in (0, -signal.SIGTERM, 128 + signal.SIGTERM), served.explain()
    assert took < STOP_SECONDS
    assert "Finished server process" in served.log_text(), served.explain()
