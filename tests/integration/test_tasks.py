"""The call channel and the operator queue, on SQLite and PostgreSQL (the `engine` fixture).

A ``send`` on channel ``call`` opens a task; operators claim and close it;
closing records a ``Call Completed`` event that journeys wait for and branch on.
"""

from __future__ import annotations

import asyncio
import textwrap
import warnings
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, func, select, text

from touchline.config import Settings
from touchline.errors import Conflict, InputError, NotFound, PermanentDeliveryError
from touchline.journeys.loader import LoadedJourney, load_journey_text
from touchline.messaging.channels.base import OutgoingMessage
from touchline.messaging.channels.callcentre import CallCentreChannel
from touchline.messaging.dispatcher import Dispatcher
from touchline.messaging.template_files import load_template_text
from touchline.store.db import transaction
from touchline.store.journeys import apply_journeys
from touchline.store.tables import events, profiles, tasks
from touchline.store.tasks import (
    CALL_COMPLETED,
    CLAIM_TIMEOUT,
    claim_next,
    claim_task,
    close_task,
    create_task,
    get_task,
    list_tasks,
)
from touchline.store.templates import apply_templates
from touchline.store.workspaces import CreatedWorkspace, create_workspace
from touchline.testing import FrozenClock, identify, run_until_idle, send_events, track
from touchline.web.app import create_app
from touchline.worker.loop import Worker

with warnings.catch_warnings():
    # Starlette's import-time notice that it prefers httpx2; the project tests with httpx.
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
    from fastapi.testclient import TestClient

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)  # a Monday

VIP_CALL = """
journey: vip-upgrade
trigger: {event: Loyalty Tier Reached}
steps:
  - id: call
    send: {channel: call, template: vip-call, purpose: transactional}
  - id: wait-call
    wait_for:
      event: Call Completed
      where: event.properties.journey == 'vip-upgrade'
      timeout: 7d
      on_timeout: not-called
  - id: by-outcome
    branch:
      cases:
        - when: event.properties.outcome == 'sold'
          goto: accepted
      otherwise: declined
  - id: accepted
    update_profile: {set: {vip_upgrade: accepted}}
    next: exit
  - id: declined
    update_profile: {set: {vip_upgrade: declined}}
    next: exit
  - id: not-called
    update_profile: {set: {vip_upgrade: not_called}}
"""

VIP_CALL_TEMPLATE = """
template: vip-call
channel: call
subject: "VIP upgrade for {{ profile.first_name }}"
text: "Greet {{ profile.first_name }} and offer the VIP tier at 10% off."
"""


class Shop:
    """A workspace with customers, a frozen clock, a worker and a dispatcher on the call channel."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.clock = FrozenClock(T0)
        self.ws = create_workspace(engine, "shop", now=T0).id
        self.worker = Worker(engine, clock=self.clock, owner="w1")
        self.channel = CallCentreChannel(engine, clock=self.clock)
        self.dispatcher = Dispatcher(
            engine, clock=self.clock, owner="d1", channels={"call": self.channel}
        )

    def apply(self, journey: str, template: str) -> None:
        text = textwrap.dedent(journey)
        with transaction(self.engine) as conn:
            apply_journeys(
                conn,
                self.ws,
                [LoadedJourney("j.yaml", load_journey_text(text, file="j.yaml"), text)],
                now=self.clock.now(),
            )
            apply_templates(
                conn,
                self.ws,
                [load_template_text(textwrap.dedent(template), file="t.yaml")],
                now=self.clock.now(),
            )

    def send(self, *raws: dict[str, Any]) -> None:
        send_events(self.engine, self.ws, list(raws), now=self.clock.now())
        run_until_idle(self.worker, self.clock)

    def dispatch(self) -> int:
        return asyncio.run(self.dispatcher.run_once(self.clock.now()))

    def customer(self, user_id: str, **traits: Any) -> int:
        """Identify ``user_id`` and return the profile id."""
        self.send(identify(user_id, **traits))
        with self.engine.connect() as conn:
            pid: int = conn.execute(
                select(profiles.c.id).where(profiles.c.user_id == user_id)
            ).scalar_one()
        return pid

    def task(self, profile_id: int, key: str, **fields: Any) -> int:
        values: dict[str, Any] = {
            "reason": "reason",
            "script": "script",
            "due_at": self.clock.now(),
            "now": self.clock.now(),
        }
        values.update(fields)
        with transaction(self.engine) as conn:
            return create_task(conn, self.ws, idempotency_key=key, profile_id=profile_id, **values)

    def claim(self, task_id: int, operator: str) -> dict[str, Any]:
        with transaction(self.engine) as conn:
            return claim_task(conn, self.ws, task_id, operator=operator, now=self.clock.now())

    def close(self, task_id: int, operator: str, outcome: str, **kw: Any) -> dict[str, Any]:
        with transaction(self.engine) as conn:
            return close_task(
                conn,
                self.ws,
                task_id,
                operator=operator,
                outcome=outcome,
                now=self.clock.now(),
                **kw,
            )

    def listed(self, **kw: Any) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            return list_tasks(conn, self.ws, **kw)

    def detail(self, task_id: int) -> dict[str, Any]:
        with self.engine.connect() as conn:
            return get_task(conn, self.ws, task_id)

    def count(self, table: Any, *where: Any) -> int:
        with self.engine.connect() as conn:
            n: int = conn.execute(
                select(func.count()).select_from(table).where(*where)
            ).scalar_one()
        return n

    def traits(self, user_id: str) -> dict[str, Any]:
        with self.engine.connect() as conn:
            row = conn.execute(select(profiles.c.traits).where(profiles.c.user_id == user_id))
            return dict(row.scalar_one() or {})


def message(shop: Shop, profile_id: int, *, key: str = "m-1", **meta: Any) -> OutgoingMessage:
    return OutgoingMessage(
        idempotency_key=key,
        channel="call",
        to="u1",
        text="Offer the VIP tier.",
        subject=meta.pop("subject", "VIP upgrade"),
        metadata={
            "workspace_id": shop.ws,
            "profile_id": profile_id,
            "template": "vip-call",
            **meta,
        },
    )


# -- the channel --------------------------------------------------------------------------


def test_channel_opens_one_task_even_when_a_message_is_sent_twice(engine: Engine) -> None:
    """A resend with the same idempotency key finds the first task instead of opening another."""
    # given
    shop = Shop(engine)
    pid = shop.customer("u1")
    msg = message(shop, pid, priority=5, due_in="2h")
    # when
    first = asyncio.run(shop.channel.send(msg))
    second = asyncio.run(shop.channel.send(msg))
    # then
    assert first.provider_id == second.provider_id
    assert first.status == "queued"
    assert shop.count(tasks) == 1
    (task,) = shop.listed()
    assert first.provider_id == f"task:{task['id']}"
    assert task["reason"] == "VIP upgrade"
    assert task["script"] == "Offer the VIP tier."
    assert task["priority"] == 5
    assert task["due_at"] == (T0 + timedelta(hours=2)).isoformat()
    assert task["status"] == "open"
    assert task["user_id"] == "u1"


def test_channel_falls_back_to_the_template_key_and_defaults(engine: Engine) -> None:
    """Without a subject the reason is the template key; priority 0; due at once."""
    # given
    shop = Shop(engine)
    pid = shop.customer("u1")
    # when
    asyncio.run(shop.channel.send(message(shop, pid, subject=None)))
    # then
    (task,) = shop.listed()
    assert (task["reason"], task["priority"], task["due_at"]) == ("vip-call", 0, T0.isoformat())


def test_channel_refuses_a_message_without_a_customer(engine: Engine) -> None:
    """No profile_id in the metadata is a permanent failure, and opens nothing."""
    # given
    shop = Shop(engine)
    msg = OutgoingMessage(idempotency_key="m", channel="call", to="", text="x")
    # when
    with pytest.raises(PermanentDeliveryError) as info:
        asyncio.run(shop.channel.send(msg))
    # then
    assert info.value.code == "task_without_customer"
    assert shop.count(tasks) == 0


def test_channel_refuses_a_bad_due_in(engine: Engine) -> None:
    """A due_in that is not a duration fails the message with a reason instead of guessing."""
    # given
    shop = Shop(engine)
    pid = shop.customer("u1")
    # when
    with pytest.raises(PermanentDeliveryError) as info:
        asyncio.run(shop.channel.send(message(shop, pid, due_in="tomorrow")))
    # then
    assert info.value.code == "invalid_task"
    assert "tomorrow" in info.value.message
    assert shop.count(tasks) == 0


# -- listing and claiming -----------------------------------------------------------------


def test_list_is_ordered_by_priority_then_due_time_and_filters(engine: Engine) -> None:
    """Higher priority comes first, then earlier due; status and assignee filter."""
    # given
    shop = Shop(engine)
    pid = shop.customer("u1")
    late = shop.task(pid, "late", due_at=T0 + timedelta(hours=2))
    early = shop.task(pid, "early", due_at=T0 + timedelta(hours=1))
    urgent = shop.task(pid, "urgent", due_at=T0 + timedelta(hours=3), priority=10)
    low = shop.task(pid, "low", due_at=T0, priority=-1)
    shop.claim(early, "olga")
    # when
    everything = [t["id"] for t in shop.listed()]
    still_open = [t["id"] for t in shop.listed(status="open")]
    olgas = [t["id"] for t in shop.listed(assignee="olga")]
    due_soon = [t["id"] for t in shop.listed(due_before=T0 + timedelta(hours=1))]
    # then
    assert everything == [urgent, early, late, low]
    assert still_open == [urgent, late, low]
    assert olgas == [early]
    assert due_soon == [early, low]
    with pytest.raises(InputError):
        shop.listed(status="pending")


def test_a_second_operator_cannot_claim_a_claimed_task(engine: Engine) -> None:
    """While Olga holds the claim, Ivan gets task_taken; Olga claiming again renews hers."""
    # given
    shop = Shop(engine)
    task_id = shop.task(shop.customer("u1"), "t")
    shop.claim(task_id, "olga")
    # when
    with pytest.raises(Conflict) as info:
        shop.claim(task_id, "ivan")
    shop.clock.advance(timedelta(minutes=20))
    renewed = shop.claim(task_id, "olga")
    # then
    assert info.value.code == "task_taken"
    assert info.value.status == 409
    assert renewed["assignee"] == "olga"
    assert renewed["claimed_at"] == (T0 + timedelta(minutes=20)).isoformat()
    assert renewed["claim_expires_at"] == (T0 + timedelta(minutes=20) + CLAIM_TIMEOUT).isoformat()


def test_a_stale_claim_can_be_taken_over(engine: Engine) -> None:
    """A claim older than CLAIM_TIMEOUT is abandoned: another operator may take the task."""
    # given
    shop = Shop(engine)
    task_id = shop.task(shop.customer("u1"), "t")
    shop.claim(task_id, "olga")
    shop.clock.advance(CLAIM_TIMEOUT - timedelta(seconds=1))
    with pytest.raises(Conflict):
        shop.claim(task_id, "ivan")
    # when
    shop.clock.advance(timedelta(seconds=1))
    taken = shop.claim(task_id, "ivan")
    # then
    assert taken["assignee"] == "ivan"
    assert taken["status"] == "claimed"
    with pytest.raises(Conflict) as info:
        shop.close(task_id, "olga", "reached")
    assert info.value.code == "task_taken"


def test_claim_next_takes_the_most_urgent_due_task(engine: Engine) -> None:
    """claim_next skips claimed and not-yet-due tasks, then answers None when nothing is left."""
    # given
    shop = Shop(engine)
    pid = shop.customer("u1")
    normal = shop.task(pid, "normal")
    urgent = shop.task(pid, "urgent", priority=3)
    shop.task(pid, "tomorrow", due_at=T0 + timedelta(days=1), priority=9)

    def next_for(operator: str) -> dict[str, Any] | None:
        with transaction(engine) as conn:
            return claim_next(conn, shop.ws, operator=operator, now=shop.clock.now())

    # when
    first, second, third = next_for("olga"), next_for("ivan"), next_for("anna")
    # then
    assert first is not None and (first["id"], first["assignee"]) == (urgent, "olga")
    assert second is not None and (second["id"], second["assignee"]) == (normal, "ivan")
    assert third is None


def test_concurrent_claim_next_skips_a_task_being_claimed(engine: Engine) -> None:
    """On PostgreSQL a second operator gets the next task at once instead of waiting on the first."""
    if engine.dialect.name != "postgresql":
        pytest.skip("SQLite has one writer; concurrent claims are serialised by BEGIN IMMEDIATE")
    # given
    shop = Shop(engine)
    pid = shop.customer("u1")
    urgent = shop.task(pid, "urgent", priority=1)
    normal = shop.task(pid, "normal")
    # when: Olga's claim is not committed yet while Ivan asks
    with transaction(engine) as olga_tx:
        olgas = claim_next(olga_tx, shop.ws, operator="olga", now=T0)
        with transaction(engine) as ivan_tx:
            # Waiting on Olga's row lock would fail here instead of hanging the test.
            ivan_tx.execute(text("SET LOCAL lock_timeout = '2s'"))
            ivans = claim_next(ivan_tx, shop.ws, operator="ivan", now=T0)
    # then
    assert olgas is not None and olgas["id"] == urgent
    assert ivans is not None and ivans["id"] == normal
    assert {t["assignee"] for t in shop.listed(status="claimed")} == {"olga", "ivan"}


def test_claim_of_an_unknown_or_closed_task_is_refused(engine: Engine) -> None:
    """An unknown id is not_found; a closed task is task_closed."""
    # given
    shop = Shop(engine)
    task_id = shop.task(shop.customer("u1"), "t")
    shop.claim(task_id, "olga")
    shop.close(task_id, "olga", "reached")
    # when / then
    with pytest.raises(NotFound):
        shop.claim(task_id + 100, "olga")
    with pytest.raises(Conflict) as info:
        shop.claim(task_id, "ivan")
    assert info.value.code == "task_closed"


# -- closing ------------------------------------------------------------------------------


def test_only_the_operator_holding_the_claim_can_close(engine: Engine) -> None:
    """An open task is task_not_claimed; another operator's is task_taken; bad outcomes are 400."""
    # given
    shop = Shop(engine)
    task_id = shop.task(shop.customer("u1"), "t")
    # when / then
    with pytest.raises(Conflict) as unclaimed:
        shop.close(task_id, "olga", "reached")
    assert unclaimed.value.code == "task_not_claimed"
    shop.claim(task_id, "olga")
    with pytest.raises(Conflict) as taken:
        shop.close(task_id, "ivan", "reached")
    assert taken.value.code == "task_taken"
    with pytest.raises(InputError, match="outcome must be one of"):
        shop.close(task_id, "olga", "maybe")
    closed = shop.close(task_id, "olga", "sold", note="took the annual plan")
    assert (closed["status"], closed["outcome"], closed["note"]) == (
        "closed",
        "sold",
        "took the annual plan",
    )
    assert closed["closed_at"] == T0.isoformat()
    assert closed["follow_up_id"] is None


def test_call_back_opens_a_follow_up_task_due_then(engine: Engine) -> None:
    """call_back needs a future time and opens one new task, once, pointing at the first."""
    # given
    shop = Shop(engine)
    pid = shop.customer("u1")
    task_id = shop.task(pid, "t", reason="Renewal", script="Ask about renewal", priority=2)
    shop.claim(task_id, "olga")
    later = T0 + timedelta(days=1, hours=5)
    with pytest.raises(InputError, match="needs call_back_at"):
        shop.close(task_id, "olga", "call_back")
    with pytest.raises(InputError, match="future"):
        shop.close(task_id, "olga", "call_back", call_back_at=T0 - timedelta(hours=1))
    # when
    closed = shop.close(task_id, "olga", "call_back", call_back_at=later, note="after 14:00")
    shop.clock.set(later + timedelta(minutes=1))  # a retry that arrives after the time still counts
    retried = shop.close(task_id, "olga", "call_back", call_back_at=later, note="after 14:00")
    # then
    assert closed == retried
    assert closed["call_back_at"] == later.isoformat()
    follow_up = shop.detail(closed["follow_up_id"])
    assert follow_up["previous_id"] == task_id
    assert (follow_up["status"], follow_up["assignee"]) == ("open", None)
    assert (follow_up["reason"], follow_up["script"], follow_up["priority"]) == (
        "Renewal",
        "Ask about renewal",
        2,
    )
    assert follow_up["due_at"] == later.isoformat()
    assert shop.count(tasks) == 2
    assert [t["id"] for t in follow_up["history"]] == [task_id]


def test_closing_emits_one_call_completed_event_even_when_retried(engine: Engine) -> None:
    """The event carries the outcome; a retried close emits nothing more; a different one conflicts."""
    # given
    shop = Shop(engine)
    task_id = shop.task(shop.customer("u1"), "t", reason="Renewal")
    shop.claim(task_id, "olga")
    # when
    shop.close(task_id, "olga", "no_answer", note="voicemail")
    shop.close(task_id, "olga", "no_answer", note="voicemail")
    # then
    with engine.connect() as conn:
        rows = conn.execute(select(events).where(events.c.name == CALL_COMPLETED)).all()
    assert len(rows) == 1
    (event,) = rows
    assert event.message_id == f"task:{task_id}:closed"
    assert event.user_id == "u1"
    assert event.timestamp == T0
    assert event.properties == {
        "task_id": task_id,
        "outcome": "no_answer",
        "note": "voicemail",
        "journey": None,
        "reason": "Renewal",
        "operator": "olga",
        "call_back_at": None,
    }
    with pytest.raises(Conflict) as info:
        shop.close(task_id, "olga", "reached")
    assert info.value.code == "task_closed"


def test_task_detail_shows_the_customer_and_recent_events(engine: Engine) -> None:
    """An operator sees traits, the latest events newest first, and no journey for a manual task."""
    # given
    shop = Shop(engine)
    pid = shop.customer("u1", first_name="Anna", plan="pro")
    for n in range(25):
        shop.clock.advance(timedelta(minutes=1))
        shop.send(track("u1", "Page Viewed", {"n": n}))
    task_id = shop.task(pid, "t")
    # when
    detail = shop.detail(task_id)
    # then
    assert detail["customer"]["first_name"] == "Anna"
    assert detail["customer"]["traits"]["plan"] == "pro"
    assert len(detail["events"]) == 20
    assert detail["events"][0]["properties"] == {"n": 24}
    assert detail["journey"] is None
    assert detail["history"] == []


# -- journeys -----------------------------------------------------------------------------


def test_journey_waits_for_the_call_and_branches_on_its_outcome(engine: Engine) -> None:
    """The call step opens a task per customer; each outcome sends its customer down its path."""
    # given
    shop = Shop(engine)
    shop.apply(VIP_CALL, VIP_CALL_TEMPLATE)
    shop.send(identify("u1", first_name="Anna"), identify("u2", first_name="Boris"))
    shop.send(track("u1", "Loyalty Tier Reached"), track("u2", "Loyalty Tier Reached"))
    # when: the dispatcher hands both customers to the queue
    assert shop.dispatch() == 2
    by_user = {t["user_id"]: t for t in shop.listed()}
    anna, boris = by_user["u1"], by_user["u2"]
    shop.clock.advance(timedelta(minutes=10))
    shop.claim(anna["id"], "olga")
    shop.claim(boris["id"], "ivan")
    shop.close(anna["id"], "olga", "sold")
    shop.close(boris["id"], "ivan", "refused", note="not interested")
    run_until_idle(shop.worker, shop.clock)
    # then
    assert anna["reason"] == "VIP upgrade for Anna"
    assert anna["script"] == "Greet Anna and offer the VIP tier at 10% off."
    assert anna["journey"] == "vip-upgrade"
    assert anna["step"] == "call"
    detail = shop.detail(anna["id"])
    assert detail["journey"]["key"] == "vip-upgrade"
    assert detail["journey"]["instance"]["status"] == "completed"
    assert shop.traits("u1")["vip_upgrade"] == "accepted"
    assert shop.traits("u2")["vip_upgrade"] == "declined"


def test_a_journey_whose_call_never_happens_times_out(engine: Engine) -> None:
    """With no Call Completed within the wait, the journey takes its timeout path."""
    # given
    shop = Shop(engine)
    shop.apply(VIP_CALL, VIP_CALL_TEMPLATE)
    shop.send(identify("u1", first_name="Anna"), track("u1", "Loyalty Tier Reached"))
    shop.dispatch()
    # when
    run_until_idle(shop.worker, shop.clock, until=T0 + timedelta(days=8))
    # then
    assert shop.traits("u1")["vip_upgrade"] == "not_called"
    assert shop.listed(status="open")[0]["journey"] == "vip-upgrade"


# -- the admin API ------------------------------------------------------------------------


class Desk:
    """The app with two workspaces, the way an operator's client talks to it."""

    def __init__(self, shop: Shop, client: TestClient) -> None:
        self.shop = shop
        self.client = client
        self.a: CreatedWorkspace = create_workspace(shop.engine, "A", now=T0)
        self.b: CreatedWorkspace = create_workspace(shop.engine, "B", now=T0)

    def get(self, path: str, *, ws: CreatedWorkspace | None = None) -> httpx.Response:
        token = (ws or self.a).admin_token
        return self.client.get(f"/admin/v1/tasks{path}", headers=_bearer(token))

    def post(self, path: str, body: Any, *, ws: CreatedWorkspace | None = None) -> httpx.Response:
        token = (ws or self.a).admin_token
        return self.client.post(f"/admin/v1/tasks{path}", json=body, headers=_bearer(token))

    def task_in(self, ws: CreatedWorkspace, user_id: str, key: str, **fields: Any) -> int:
        send_events(self.shop.engine, ws.id, [identify(user_id)], now=T0)
        with transaction(self.shop.engine) as conn:
            pid = conn.execute(
                select(profiles.c.id).where(
                    profiles.c.workspace_id == ws.id, profiles.c.user_id == user_id
                )
            ).scalar_one()
            return create_task(
                conn,
                ws.id,
                idempotency_key=key,
                profile_id=pid,
                reason=fields.pop("reason", "Renewal"),
                script="Ask about renewal",
                due_at=T0,
                now=T0,
                **fields,
            )


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _error(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"code", "message"} and body["code"] == code, body


@pytest.fixture
def desk(engine: Engine, database_url: str) -> Iterator[Desk]:
    shop = Shop(engine)
    app = create_app(Settings(database_url=database_url), engine=engine, clock=shop.clock)
    with TestClient(app) as client:
        yield Desk(shop, client)


def test_api_round_trip_list_claim_conflict_close(desk: Desk) -> None:
    """List, inspect, claim (409 task_taken for a second operator), close with an outcome."""
    # given
    task_id = desk.task_in(desk.a, "u1", "a-1", priority=1)
    other = desk.task_in(desk.a, "u2", "a-2")
    # when / then
    listed = desk.get("?status=open").json()["tasks"]
    assert [t["id"] for t in listed] == [task_id, other]
    detail = desk.get(f"/{task_id}").json()
    assert detail["customer"]["user_id"] == "u1"
    assert detail["events"][0]["type"] == "identify"

    claimed = desk.post(f"/{task_id}/claim", {"operator": "olga"})
    assert claimed.status_code == 200 and claimed.json()["assignee"] == "olga"
    _error(desk.post(f"/{task_id}/claim", {"operator": "ivan"}), 409, "task_taken")
    _error(
        desk.post(f"/{task_id}/close", {"operator": "ivan", "outcome": "sold"}), 409, "task_taken"
    )
    assert [t["id"] for t in desk.get("?assignee=olga").json()["tasks"]] == [task_id]

    nxt = desk.post("/claim-next", {"operator": "ivan"}).json()["task"]
    assert nxt["id"] == other
    assert desk.post("/claim-next", {"operator": "anna"}).json() == {"task": None}

    _error(
        desk.post(f"/{task_id}/close", {"operator": "olga", "outcome": "meh"}), 400, "invalid_input"
    )
    closed = desk.post(
        f"/{task_id}/close",
        {"operator": "olga", "outcome": "call_back", "call_back_at": "2026-03-03T12:00:00Z"},
    )
    assert closed.status_code == 200, closed.text
    body = closed.json()
    assert (body["status"], body["outcome"]) == ("closed", "call_back")
    follow_up = desk.get(f"/{body['follow_up_id']}").json()
    assert (follow_up["previous_id"], follow_up["due_at"]) == (task_id, "2026-03-03T12:00:00+00:00")
    assert [t["id"] for t in desk.get("?status=closed").json()["tasks"]] == [task_id]


def test_api_hides_another_workspaces_tasks(desk: Desk) -> None:
    """Workspace A's token gets 404 for B's task on every route, and B's list stays B's."""
    # given
    theirs = desk.task_in(desk.b, "u1", "b-1")
    # when / then
    _error(desk.get(f"/{theirs}"), 404, "not_found")
    _error(desk.post(f"/{theirs}/claim", {"operator": "olga"}), 404, "not_found")
    _error(desk.post(f"/{theirs}/close", {"operator": "olga", "outcome": "sold"}), 404, "not_found")
    assert desk.get("").json() == {"tasks": []}
    assert desk.post("/claim-next", {"operator": "olga"}).json() == {"task": None}
    assert [t["id"] for t in desk.get("", ws=desk.b).json()["tasks"]] == [theirs]


def test_api_refuses_bad_requests(desk: Desk) -> None:
    """Unknown status, missing operator, naive call_back_at and no token answer {code, message}."""
    # given
    task_id = desk.task_in(desk.a, "u1", "a-1")
    desk.post(f"/{task_id}/claim", {"operator": "olga"})
    # when / then
    _error(desk.get("?status=pending"), 400, "invalid_input")
    _error(desk.post(f"/{task_id}/claim", {}), 400, "invalid_input")
    _error(
        desk.post(
            f"/{task_id}/close",
            {"operator": "olga", "outcome": "call_back", "call_back_at": "2026-03-03T12:00:00"},
        ),
        400,
        "invalid_input",
    )
    _error(desk.client.get("/admin/v1/tasks"), 401, "unauthorized")
    _error(desk.get("/not-a-number"), 404, "not_found")  # task ids are numbers: no such route
    _error(desk.get(f"/{2**63}"), 400, "invalid_input")  # past a BIGINT: refused, not a 500
