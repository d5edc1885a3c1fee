"""The admin API (``/admin/v1``): journey packs, journeys, profiles, the outbox, auth.

Runs the FastAPI app in-process (Starlette's TestClient) on SQLite and
PostgreSQL, with a frozen clock. Events come in through the app's own
ingest endpoints; a :class:`Worker` driven by :func:`run_until_idle` moves
customers through the journeys.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine

from touchline.config import Settings
from touchline.store.workspaces import CreatedWorkspace, create_workspace
from touchline.testing import FrozenClock, run_until_idle, track
from touchline.web.app import create_app
from touchline.worker.loop import Worker

with warnings.catch_warnings():
    # Starlette's own import-time notice that it prefers httpx2 over httpx; the
    # project tests with httpx, which Starlette still supports.
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
    from fastapi.testclient import TestClient

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)  # a Monday

CART = """\
journey: abandoned-cart
name: Abandoned cart
category: selling
trigger: {event: Product Added}
entry: {key: cart_id, reentry: once_per_key}
exit_on:
  - {event: Order Completed, match: cart_id}
goal: {event: Order Completed, match: cart_id, within: 7d, value: event.properties.total}
steps:
  - id: cool-off
    wait: 1h
  - id: reminder
    send: {channel: email, template: cart-reminder}
  - id: last-call-wait
    wait: 23h
  - id: last-call
    send: {channel: sms, template: cart-last-call}
"""
WELCOME = """\
journey: welcome
trigger: {event: Signed Up}
entry: {reentry: never}
steps:
  - id: hello
    send: {channel: email, template: welcome}
"""
# Line 4 of this file holds the zero wait.
ZERO_WAIT = """\
journey: broken
trigger: {event: Signed Up}
steps:
  - wait: 0s
  - send: {channel: email, template: never-sent}
"""


class Shop:
    """The app on the store, two workspaces, a frozen clock and a worker."""

    def __init__(self, engine: Engine, client: TestClient, clock: FrozenClock) -> None:
        self.engine = engine
        self.client = client
        self.clock = clock
        self.a: CreatedWorkspace = create_workspace(engine, "Shop A", now=T0)
        self.b: CreatedWorkspace = create_workspace(engine, "Shop B", now=T0)
        self.worker = Worker(engine, clock=clock, owner="test-worker")

    def get(self, path: str, *, token: str | None = None) -> httpx.Response:
        return self.client.get(f"/admin/v1{path}", headers=bearer(token or self.a.admin_token))

    def post(self, path: str, *, token: str | None = None, **kwargs: Any) -> httpx.Response:
        return self.client.post(
            f"/admin/v1{path}", headers=bearer(token or self.a.admin_token), **kwargs
        )

    def apply(self, files: dict[str, str], *, token: str | None = None) -> httpx.Response:
        return self.post("/journeys", token=token, json={"files": files})

    def send(self, *messages: dict[str, Any], write_key: str | None = None) -> None:
        """Post the messages as one batch at the clock's time, then run the worker until idle."""
        response = self.client.post(
            "/v1/batch",
            json={"batch": list(messages)},
            headers=bearer(write_key or self.a.write_key),
        )
        assert response.status_code == 200, response.text
        run_until_idle(self.worker, self.clock)

    def advance(self, delta: timedelta) -> None:
        run_until_idle(self.worker, self.clock, until=self.clock.now() + delta)

    def ok(self, response: httpx.Response) -> Any:
        assert response.status_code == 200, response.text
        return response.json()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def assert_error(response: httpx.Response, status: int, code: str) -> str:
    """The answer is ``status`` with exactly ``{code, message}``; returns the message."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"code", "message"}, body
    assert body["code"] == code, body
    assert isinstance(body["message"], str) and body["message"], body
    return body["message"]  # type: ignore[no-any-return]


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock(T0)


@pytest.fixture
def shop(engine: Engine, database_url: str, clock: FrozenClock) -> Iterator[Shop]:
    app = create_app(Settings(database_url=database_url), engine=engine, clock=clock)
    with TestClient(app) as client:
        yield Shop(engine, client, clock)


# -- applying packs -----------------------------------------------------------------------


def test_apply_reports_created_unchanged_and_updated_with_versions(shop: Shop) -> None:
    """Applying reports per journey whether it was created, unchanged or updated, and its version."""
    # given
    first = shop.apply({"cart.yaml": CART, "welcome.yaml": WELCOME})
    # when
    again = shop.apply(
        {"cart.yaml": CART + "# a comment changes nothing\n", "welcome.yaml": WELCOME}
    )
    changed = shop.apply(
        {
            "cart.yaml": CART.replace("template: cart-last-call", "template: cart-final"),
            "welcome.yaml": WELCOME,
        }
    )
    # then
    assert shop.ok(first) == {
        "applied": [
            {"journey": "abandoned-cart", "version": 1, "change": "created"},
            {"journey": "welcome", "version": 1, "change": "created"},
        ]
    }
    assert shop.ok(again)["applied"] == [
        {"journey": "abandoned-cart", "version": 1, "change": "unchanged"},
        {"journey": "welcome", "version": 1, "change": "unchanged"},
    ]
    assert shop.ok(changed)["applied"] == [
        {"journey": "abandoned-cart", "version": 2, "change": "updated"},
        {"journey": "welcome", "version": 1, "change": "unchanged"},
    ]
    detail = shop.ok(shop.get("/journeys/abandoned-cart"))
    assert detail["version"] == 2
    assert [v["version"] for v in detail["versions"]] == [1, 2]
    assert "cart-final" in detail["source"]


def test_an_invalid_pack_is_refused_whole_naming_file_and_line(shop: Shop) -> None:
    """One bad file makes the whole pack 400 invalid_journey (file:line in the message); nothing applies."""
    # given: version 1 of the cart journey is live
    shop.ok(shop.apply({"cart.yaml": CART}))
    updated_cart = CART.replace("wait: 1h", "wait: 2h")
    # when: a pack updating it and adding a good and a bad journey
    response = shop.apply(
        {"cart.yaml": updated_cart, "welcome.yaml": WELCOME, "broken.yaml": ZERO_WAIT}
    )
    # then
    message = assert_error(response, 400, "invalid_journey")
    assert "broken.yaml:4" in message
    assert "steps[0].wait" in message
    listed = shop.ok(shop.get("/journeys"))["journeys"]
    assert [(j["journey"], j["version"]) for j in listed] == [("abandoned-cart", 1)]
    assert "wait: 1h" in shop.ok(shop.get("/journeys/abandoned-cart"))["source"]


def test_two_files_with_the_same_journey_key_are_refused(shop: Shop) -> None:
    """A pack where two files claim one journey key is invalid, and names both files."""
    # when
    response = shop.apply({"one.yaml": WELCOME, "two.yaml": WELCOME})
    # then
    message = assert_error(response, 400, "invalid_journey")
    assert "one.yaml" in message and "two.yaml" in message
    assert shop.ok(shop.get("/journeys")) == {"journeys": []}


@pytest.mark.parametrize(
    "body",
    [{}, {"files": {}}, {"files": ["cart.yaml"]}, {"files": {"cart.yaml": 42}}],
    ids=["no-files", "empty-files", "files-not-a-mapping", "file-not-text"],
)
def test_a_malformed_pack_body_is_invalid_input(shop: Shop, body: dict[str, Any]) -> None:
    """A body that is not {files: {name: text}} answers 400 invalid_input."""
    assert_error(shop.post("/journeys", json=body), 400, "invalid_input")


def test_validate_lists_every_problem_and_applies_nothing(shop: Shop) -> None:
    """/journeys/validate lists each problem with file, line and field, and changes nothing."""
    # given
    not_a_mapping = "- just\n- a list\n"
    # when
    bad = shop.post(
        "/journeys/validate",
        json={"files": {"broken.yaml": ZERO_WAIT, "list.yaml": not_a_mapping, "ok.yaml": WELCOME}},
    )
    good = shop.post("/journeys/validate", json={"files": {"cart.yaml": CART, "w.yaml": WELCOME}})
    # then
    result = shop.ok(bad)
    assert result["valid"] is False
    assert [(p["file"], p["line"], p["field"]) for p in result["problems"]] == [
        ("broken.yaml", 4, "steps[0].wait"),
        ("list.yaml", 1, "(document)"),
    ]
    assert all(p["message"] for p in result["problems"])
    assert shop.ok(good) == {
        "valid": True,
        "journeys": ["abandoned-cart", "welcome"],
        "problems": [],
    }
    assert shop.ok(shop.get("/journeys")) == {"journeys": []}


# -- reading journeys ---------------------------------------------------------------------


def test_list_and_detail_describe_the_current_version(shop: Shop) -> None:
    """GET /journeys lists each journey's header; the detail adds versions, spec and source."""
    # given
    shop.ok(shop.apply({"cart.yaml": CART, "welcome.yaml": WELCOME}))
    # when
    listed = shop.ok(shop.get("/journeys"))["journeys"]
    detail = shop.ok(shop.get("/journeys/abandoned-cart"))
    # then
    assert listed == [
        {
            "journey": "abandoned-cart",
            "name": "Abandoned cart",
            "status": "active",
            "category": "selling",
            "trigger": "Product Added",
            "version": 1,
            "updated_at": T0.isoformat(),
        },
        {
            "journey": "welcome",
            "name": "welcome",
            "status": "active",
            "category": "engaging",
            "trigger": "Signed Up",
            "version": 1,
            "updated_at": T0.isoformat(),
        },
    ]
    assert detail["versions"] == [{"version": 1, "created_at": T0.isoformat()}]
    assert detail["source"] == CART
    assert [s["id"] for s in detail["spec"]["steps"]] == [
        "cool-off",
        "reminder",
        "last-call-wait",
        "last-call",
    ]
    assert detail["steps"] == {
        "entered": 0,
        "finished": 0,
        "conversions": 0,
        "revenue": 0.0,
        "by_step": {},
    }
    assert_error(shop.get("/journeys/no-such-journey"), 404, "not_found")


def test_step_counts_follow_customers_through_the_journey(shop: Shop) -> None:
    """Step counts show who waits where, who entered each step, exits and conversions."""
    # given: three carts; one ordered after 10 minutes
    shop.ok(shop.apply({"cart.yaml": CART}))
    shop.send(*(track(f"u{n}", "Product Added", {"cart_id": f"c{n}"}) for n in (1, 2, 3)))
    shop.clock.advance(timedelta(minutes=10))
    shop.send(track("u2", "Order Completed", {"cart_id": "c2", "total": 50}))
    # when: two hours on, the others had their reminder and wait for the last call
    shop.advance(timedelta(hours=2))
    midway = shop.ok(shop.get("/journeys/abandoned-cart"))["steps"]
    # ... then u3 orders and two days pass
    shop.send(track("u3", "Order Completed", {"cart_id": "c3", "total": 70}))
    shop.advance(timedelta(days=2))
    final = shop.ok(shop.get("/journeys/abandoned-cart"))["steps"]
    # then
    assert (midway["entered"], midway["finished"], midway["conversions"]) == (3, 1, 1)
    assert midway["by_step"]["last-call-wait"] == {
        "waiting": 2,
        "entered": 2,
        "exited": 0,
        "converted": 0,
    }
    assert midway["by_step"]["cool-off"] == {
        "waiting": 0,
        "entered": 3,
        "exited": 1,
        "converted": 1,
    }
    assert final == {
        "entered": 3,
        "finished": 3,
        "conversions": 2,
        "revenue": 120.0,
        "by_step": {
            "cool-off": {"waiting": 0, "entered": 3, "exited": 1, "converted": 1},
            "reminder": {"waiting": 0, "entered": 2, "exited": 0, "converted": 0},
            "last-call-wait": {"waiting": 0, "entered": 2, "exited": 1, "converted": 1},
            "last-call": {"waiting": 0, "entered": 1, "exited": 0, "converted": 0},
        },
    }


def test_pause_stops_new_entries_and_resume_admits_again(shop: Shop) -> None:
    """A paused journey admits no one while those inside carry on; resuming admits again."""
    # given: u1 is inside the cart journey
    shop.ok(shop.apply({"cart.yaml": CART}))
    shop.send(track("u1", "Product Added", {"cart_id": "c1"}))
    # when: paused, u2 adds a cart; resumed, u3 does
    paused = shop.post("/journeys/abandoned-cart/pause")
    status_while_paused = shop.ok(shop.get("/journeys"))["journeys"][0]["status"]
    shop.send(track("u2", "Product Added", {"cart_id": "c2"}))
    shop.advance(timedelta(hours=2))
    resumed = shop.post("/journeys/abandoned-cart/resume")
    shop.send(track("u3", "Product Added", {"cart_id": "c3"}))
    # then
    assert shop.ok(paused) == {"journey": "abandoned-cart", "status": "paused"}
    assert shop.ok(resumed) == {"journey": "abandoned-cart", "status": "active"}
    assert status_while_paused == "paused"
    assert shop.ok(shop.get("/journeys/abandoned-cart"))["status"] == "active"
    assert [j["step"] for j in shop.ok(shop.get("/profiles/u1"))["journeys"]] == ["last-call-wait"]
    assert shop.ok(shop.get("/profiles/u2"))["journeys"] == []
    assert [j["step"] for j in shop.ok(shop.get("/profiles/u3"))["journeys"]] == ["cool-off"]
    assert_error(shop.post("/journeys/no-such-journey/pause"), 404, "not_found")


# -- profiles and the outbox --------------------------------------------------------------


def test_profile_detail_shows_traits_events_and_journeys(shop: Shop) -> None:
    """A profile, by user id or #id, carries its traits, events newest first and journeys."""
    # given
    shop.ok(shop.apply({"cart.yaml": CART}))
    shop.send(
        {"type": "identify", "userId": "u1", "traits": {"email": "Ann@Example.com", "vip": True}},
        track("u1", "Product Added", {"cart_id": "c1"}),
    )
    shop.clock.advance(timedelta(minutes=5))
    shop.send(track("u1", "Order Completed", {"cart_id": "c1", "total": 30}))
    # when
    by_user_id = shop.ok(shop.get("/profiles/u1"))
    by_internal_id = shop.ok(shop.get(f"/profiles/%23{by_user_id['id']}"))
    # then
    assert by_internal_id == by_user_id
    assert (by_user_id["user_id"], by_user_id["email"]) == ("u1", "ann@example.com")
    assert by_user_id["traits"] == {"vip": True}
    assert {"kind": "user_id", "value": "u1"} in by_user_id["identities"]
    assert [(e["type"], e["name"]) for e in by_user_id["events"]] == [
        ("track", "Order Completed"),
        ("track", "Product Added"),
        ("identify", None),
    ]
    [inside] = by_user_id["journeys"]
    assert {k: v for k, v in inside.items() if k != "exit_reason"} == {
        "journey": "abandoned-cart",
        "status": "exited",
        "step": "cool-off",
        "entered_at": T0.isoformat(),
        "ended_at": (T0 + timedelta(minutes=5)).isoformat(),
    }
    # The order is both the journey's goal and its exit event; either may end it.
    assert inside["exit_reason"] in (
        "goal reached: Order Completed",
        "exit event: Order Completed",
    )


@pytest.mark.parametrize(
    ("ref", "status", "code"),
    [
        ("nobody", 404, "not_found"),
        ("%23999999", 404, "not_found"),
        ("%23abc", 400, "invalid_input"),
    ],
    ids=["unknown-user-id", "unknown-internal-id", "malformed-internal-id"],
)
def test_unknown_or_malformed_profile_refs_are_json_errors(
    shop: Shop, ref: str, status: int, code: str
) -> None:
    """Unknown profiles are 404 not_found; a malformed #id is 400 invalid_input."""
    assert_error(shop.get(f"/profiles/{ref}"), status, code)


def test_a_user_id_with_a_slash_can_be_looked_up(shop: Shop) -> None:
    """A customer whose user id contains '/' is found by that id (percent-encoded)."""
    # given
    shop.send({"type": "identify", "userId": "shop/42", "traits": {"email": "s@example.com"}})
    # when
    response = shop.get("/profiles/shop%2F42")
    # then
    assert shop.ok(response)["user_id"] == "shop/42"


def test_outbox_lists_messages_newest_first_with_filters(shop: Shop) -> None:
    """GET /outbox lists recorded messages newest first; status and limit narrow it."""
    # given: u1 gets the 1 h email and the 24 h SMS; u2 the 1 h email
    shop.ok(shop.apply({"cart.yaml": CART}))
    shop.send(track("u1", "Product Added", {"cart_id": "c1"}))
    shop.advance(timedelta(minutes=30))
    shop.send(track("u2", "Product Added", {"cart_id": "c2"}))
    shop.advance(timedelta(hours=2))
    shop.send(track("u2", "Order Completed", {"cart_id": "c2"}))
    shop.advance(timedelta(days=1))
    # when
    everything = shop.ok(shop.get("/outbox"))["messages"]
    newest = shop.ok(shop.get("/outbox?limit=1"))["messages"]
    pending = shop.ok(shop.get("/outbox?status=pending"))["messages"]
    sent = shop.ok(shop.get("/outbox?status=sent"))["messages"]
    # then
    assert [(m["step"], m["channel"], m["template"], m["created_at"]) for m in everything] == [
        ("last-call", "sms", "cart-last-call", (T0 + timedelta(hours=24)).isoformat()),
        ("reminder", "email", "cart-reminder", (T0 + timedelta(minutes=90)).isoformat()),
        ("reminder", "email", "cart-reminder", (T0 + timedelta(hours=1)).isoformat()),
    ]
    assert {(m["journey"], m["purpose"], m["status"]) for m in everything} == {
        ("abandoned-cart", "marketing", "pending")
    }
    assert len({m["idempotency_key"] for m in everything}) == 3
    assert newest == everything[:1]
    assert pending == everything
    assert sent == []
    assert_error(shop.get("/outbox?limit=0"), 400, "invalid_input")
    assert_error(shop.get("/outbox?limit=1001"), 400, "invalid_input")


# -- authentication and isolation ---------------------------------------------------------

ADMIN_ROUTES = [
    ("GET", "/admin/v1/journeys"),
    ("GET", "/admin/v1/journeys/abandoned-cart"),
    ("POST", "/admin/v1/journeys"),
    ("POST", "/admin/v1/journeys/validate"),
    ("POST", "/admin/v1/journeys/abandoned-cart/pause"),
    ("POST", "/admin/v1/journeys/abandoned-cart/resume"),
    ("GET", "/admin/v1/profiles/u1"),
    ("GET", "/admin/v1/outbox"),
]


@pytest.mark.parametrize(("method", "path"), ADMIN_ROUTES, ids=[p for _, p in ADMIN_ROUTES])
@pytest.mark.parametrize(
    "credentials",
    ["none", "unknown-token", "write-key", "empty-bearer"],
)
def test_admin_routes_need_an_admin_token(
    shop: Shop, method: str, path: str, credentials: str
) -> None:
    """Every admin route answers 401 unauthorized without a valid admin token; a write key is refused."""
    # given
    headers = {
        "none": {},
        "unknown-token": bearer("tla_not-a-real-token"),
        "write-key": bearer(shop.a.write_key),
        "empty-bearer": {"Authorization": "Bearer "},
    }[credentials]
    # when
    response = shop.client.request(
        method, path, headers=headers, json={"files": {"w.yaml": WELCOME}}
    )
    # then
    assert_error(response, 401, "unauthorized")
    assert shop.ok(shop.get("/journeys")) == {"journeys": []}


def test_a_workspace_sees_nothing_of_another(shop: Shop) -> None:
    """Workspace B's admin token cannot list, read, pause or look up anything of workspace A."""
    # given: A has a journey, a customer inside it and a message
    shop.ok(shop.apply({"cart.yaml": CART}))
    shop.send(track("u1", "Product Added", {"cart_id": "c1"}))
    shop.advance(timedelta(hours=2))
    a_profile_id = shop.ok(shop.get("/profiles/u1"))["id"]
    b = shop.b.admin_token
    # when / then: B sees none of it
    assert shop.ok(shop.get("/journeys", token=b)) == {"journeys": []}
    assert_error(shop.get("/journeys/abandoned-cart", token=b), 404, "not_found")
    assert_error(shop.post("/journeys/abandoned-cart/pause", token=b), 404, "not_found")
    assert_error(shop.get("/profiles/u1", token=b), 404, "not_found")
    assert_error(shop.get(f"/profiles/%23{a_profile_id}", token=b), 404, "not_found")
    assert shop.ok(shop.get("/outbox", token=b)) == {"messages": []}
    # and A's journey is untouched by B's attempt to pause it
    assert shop.ok(shop.get("/journeys/abandoned-cart"))["status"] == "active"


def test_the_same_journey_key_is_independent_per_workspace(shop: Shop) -> None:
    """B applying a journey key A also uses creates B's own version 1; A's stays as it was."""
    # given: A is on version 2 of the cart journey
    shop.ok(shop.apply({"cart.yaml": CART}))
    shop.ok(shop.apply({"cart.yaml": CART.replace("wait: 1h", "wait: 2h")}))
    # when
    applied = shop.apply({"cart.yaml": CART}, token=shop.b.admin_token)
    # then
    assert shop.ok(applied)["applied"] == [
        {"journey": "abandoned-cart", "version": 1, "change": "created"}
    ]
    assert shop.ok(shop.get("/journeys/abandoned-cart"))["version"] == 2
    b_detail = shop.ok(shop.get("/journeys/abandoned-cart", token=shop.b.admin_token))
    assert [v["version"] for v in b_detail["versions"]] == [1]


# -- templates ----------------------------------------------------------------------

WELCOME_TEMPLATE = """\
template: welcome
channel: email
subject: "Добро пожаловать, {{ profile.first_name }}"
text: "Рады знакомству!"
defaults:
  profile.first_name: друг
"""


def test_put_template_creates_then_updates_and_lists_it(shop: Shop) -> None:
    """PUT stores a template, a changed source updates it, and GET lists and shows it."""
    # given / when
    first = shop.client.put(
        "/admin/v1/templates/welcome",
        json={"source": WELCOME_TEMPLATE},
        headers=bearer(shop.a.admin_token),
    )
    again = shop.client.put(
        "/admin/v1/templates/welcome",
        json={"source": WELCOME_TEMPLATE.replace("Рады", "Очень рады")},
        headers=bearer(shop.a.admin_token),
    )
    # then
    assert shop.ok(first) == {"template": "welcome", "change": "created"}
    assert shop.ok(again) == {"template": "welcome", "change": "updated"}
    listed = shop.ok(shop.get("/templates"))["templates"]
    assert [(t["template"], t["channel"]) for t in listed] == [("welcome", "email")]
    assert shop.ok(shop.get("/templates/welcome"))["spec"]["text"] == "Очень рады знакомству!"


def test_put_template_with_a_syntax_error_names_part_and_line(shop: Shop) -> None:
    """A Jinja syntax error answers 400 naming the field and the template line; nothing is stored."""
    # given
    broken = WELCOME_TEMPLATE.replace("{{ profile.first_name }}", "{{ profile.first_name ")
    # when
    response = shop.client.put(
        "/admin/v1/templates/welcome", json={"source": broken}, headers=bearer(shop.a.admin_token)
    )
    # then
    message = assert_error(response, 400, "invalid_template")
    assert "subject" in message and "welcome.yaml:3" in message
    assert shop.ok(shop.get("/templates"))["templates"] == []


def test_template_key_must_match_the_url_and_workspaces_are_separate(shop: Shop) -> None:
    """The URL names the template; another workspace's token cannot read it."""
    # given
    shop.client.put(
        "/admin/v1/templates/welcome",
        json={"source": WELCOME_TEMPLATE},
        headers=bearer(shop.a.admin_token),
    )
    # when
    mismatch = shop.client.put(
        "/admin/v1/templates/other",
        json={"source": WELCOME_TEMPLATE},
        headers=bearer(shop.a.admin_token),
    )
    foreign = shop.get("/templates/welcome", token=shop.b.admin_token)
    # then
    assert_error(mismatch, 400, "invalid_input")
    assert_error(foreign, 404, "not_found")


def test_outbox_items_show_deferrals_and_delivery_reports(shop: Shop) -> None:
    """Each outbox item carries deferred_reason, deferrals, delivery_status and delivery_at."""
    from sqlalchemy import update

    from touchline.store.db import transaction
    from touchline.store.tables import outbox

    # given: two reminders; the first was held twice by quiet hours, sent, then delivered
    shop.ok(shop.apply({"cart.yaml": CART}))
    shop.send(track("u1", "Product Added", {"cart_id": "c1"}))
    shop.send(track("u2", "Product Added", {"cart_id": "c2"}))
    shop.advance(timedelta(hours=2))
    first, second = sorted(m["id"] for m in shop.ok(shop.get("/outbox"))["messages"])
    delivered_at = T0 + timedelta(hours=12)
    with transaction(shop.engine) as conn:
        conn.execute(
            update(outbox)
            .where(outbox.c.id == first)
            .values(
                status="sent",
                sent_at=T0 + timedelta(hours=11),
                deferred_reason="quiet_hours",
                deferrals=2,
                delivery_status="delivered",
                delivery_at=delivered_at,
            )
        )
        conn.execute(update(outbox).where(outbox.c.id == second).values(status="sending"))
    # when
    by_id = {m["id"]: m for m in shop.ok(shop.get("/outbox"))["messages"]}
    sending = shop.ok(shop.get("/outbox?status=sending"))["messages"]
    # then
    fields = ("status", "deferred_reason", "deferrals", "delivery_status", "delivery_at")
    assert {k: by_id[first][k] for k in fields} == {
        "status": "sent",
        "deferred_reason": "quiet_hours",
        "deferrals": 2,
        "delivery_status": "delivered",
        "delivery_at": delivered_at.isoformat(),
    }
    assert {k: by_id[second][k] for k in fields} == {
        "status": "sending",
        "deferred_reason": None,
        "deferrals": 0,
        "delivery_status": None,
        "delivery_at": None,
    }
    assert [m["id"] for m in sending] == [second]
