"""Two shops with journeys, customers, messages, tasks and rollups, and a console app on them.

Shared by the console's TestClient tests. Shop A has everything the pages
show; shop B exists so that tests can prove A's things stay out of B's
console. One customer of A carries markup in their name and traits, so every
page that shows a customer can be checked for escaping.
"""

from __future__ import annotations

import asyncio
import re
import warnings
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from argon2 import PasswordHasher
from sqlalchemy import Engine, select

from touchline.config import Settings
from touchline.journeys.loader import LoadedJourney, load_journey_text
from touchline.measure.rollups import bump
from touchline.messaging.channels.capture import CaptureChannel
from touchline.messaging.dispatcher import Dispatcher
from touchline.messaging.template_files import load_template_text
from touchline.store.db import transaction
from touchline.store.journeys import apply_journeys
from touchline.store.tables import journeys, outbox, profiles
from touchline.store.tasks import create_task
from touchline.store.templates import apply_templates
from touchline.store.workspaces import create_workspace
from touchline.testing import FrozenClock, identify, run_until_idle, send_events, track
from touchline.web.app import create_app
from touchline.web.console import users
from touchline.web.console.users import create_user
from touchline.worker.loop import Worker

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
    from fastapi.testclient import TestClient

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)  # a Monday
PASSWORD = "correct horse battery"
MARKUP = "<script>alert('pwned')</script>"
IMG = '<img src=x onerror="alert(1)">'

CART = """\
journey: abandoned-cart
name: Abandoned cart
category: selling
holdout: 10
trigger: {event: Product Added}
entry: {key: cart_id, reentry: once_per_key}
exit_on:
  - {event: Order Completed, match: cart_id}
goal: {event: Order Completed, match: cart_id, within: 7d, value: event.properties.revenue}
steps:
  - id: cool-off
    wait: 1h
  - id: reminder
    send: {channel: email, template: cart-reminder}
  - id: by-phone
    branch:
      cases:
        - when: exists(profile.phone)
          goto: last-call
      otherwise: exit
  - id: last-call
    send: {channel: sms, template: cart-sms}
"""
THANKS = """\
journey: thanks
name: Order thanks
category: transactional
trigger: {event: Order Completed}
entry: {reentry: always}
steps:
  - id: thank
    send: {channel: email, template: thanks}
"""
B_ONLY = """\
journey: b-secret
name: B's own journey
trigger: {event: Signed Up}
steps:
  - id: hello
    send: {channel: email, template: thanks}
"""
TEMPLATES = (
    """\
template: thanks
channel: email
subject: "{{ profile.first_name }}, thank you for order {{ event.properties.order_id }}"
html: |
  <html><body><p>Order {{ event.properties.order_id }}: {{ event.properties.revenue | money }}</p>
  <p><a href="https://shop.example/orders/{{ event.properties.order_id }}">Your order</a></p></body></html>
defaults:
  profile.first_name: Friend
""",
    """\
template: cart-reminder
channel: email
subject: "You left something in your cart"
html: "<p>Hello {{ profile.first_name }}, your cart {{ event.properties.cart_id }} waits.</p>"
defaults:
  profile.first_name: there
""",
    """\
template: cart-sms
channel: sms
text: "{{ profile.first_name }}, your cart waits: https://shop.example/cart/{{ event.properties.cart_id }}"
defaults:
  profile.first_name: Hi
""",
)


#: argon2 at its smallest: the tests check the console, not the hash's cost.
FAST_HASHER = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)


def fast_passwords(monkeypatch: pytest.MonkeyPatch) -> None:
    """Hash the test users' passwords cheaply (the real cost is ~0.4 s a hash)."""
    monkeypatch.setattr(users, "_hasher", FAST_HASHER)


@dataclass
class World:
    engine: Engine
    clock: FrozenClock
    app: Any
    a: str  # workspace ids
    b: str
    anna: int  # profile ids in A
    mallory: int  # the customer with markup in their name, in A
    bob: int  # a customer of B
    task_a: int
    task_b: int
    message_a: int  # a captured message of A
    message_b: int

    def client(self) -> TestClient:
        return TestClient(self.app, follow_redirects=False)

    def signed_in(self, email: str) -> Browser:
        browser = Browser(self.client())
        browser.sign_in(email)
        return browser


class Browser:
    """A TestClient that signs in through the form and posts forms with their CSRF token."""

    def __init__(self, client: TestClient) -> None:
        self.client = client
        self.csrf = ""

    def sign_in(self, email: str, password: str = PASSWORD) -> httpx.Response:
        form = self.client.get("/console/sign-in")
        token = csrf_of(form.text)
        response = self.client.post(
            "/console/sign-in",
            data={"csrf_token": token, "email": email, "password": password, "next": "/console/"},
        )
        if response.status_code == 303:
            self.csrf = csrf_of(self.client.get("/console/customers").text)
        return response

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.client.get(path, **kwargs)

    def post(self, path: str, data: dict[str, Any] | None = None, **kwargs: Any) -> httpx.Response:
        return self.client.post(path, data={"csrf_token": self.csrf, **(data or {})}, **kwargs)


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert found, "no CSRF field in the page"
    return found.group(1)


def build(engine: Engine) -> World:
    """Both shops, their users, and everything the pages read."""
    clock = FrozenClock(T0)
    a = create_workspace(engine, "Shop A", now=clock.now()).id
    b = create_workspace(engine, "Shop B", now=clock.now()).id
    with transaction(engine) as conn:
        for email, role, ws in (
            ("admin@a.example", "admin", a),
            ("marketer@a.example", "marketer", a),
            ("operator@a.example", "operator", a),
            ("marketer@b.example", "marketer", b),
            ("admin@b.example", "admin", b),
        ):
            create_user(conn, ws, email=email, password=PASSWORD, role=role, now=clock.now())
        templates = [load_template_text(t, file="t.yaml") for t in TEMPLATES]
        apply_templates(conn, a, templates, now=clock.now())
        apply_templates(conn, b, templates[:1], now=clock.now())
        for ws, sources in ((a, (CART, THANKS)), (b, (B_ONLY, THANKS))):
            loaded = [
                LoadedJourney(f"{i}.yaml", load_journey_text(s, file=f"{i}.yaml"), s)
                for i, s in enumerate(sources)
            ]
            apply_journeys(conn, ws, loaded, now=clock.now())
    send_events(
        engine,
        a,
        [
            identify("u-anna", email="anna@example.com", phone="+79161234567", first_name="Anna"),
            identify("u-mallory", email="mallory@example.com", first_name=MARKUP, nickname=IMG),
            track("u-anna", "Product Added", {"cart_id": "c-1", "name": "Kettle"}),
            track("u-mallory", "Order Completed", {"order_id": "o-9", "revenue": 1990}),
        ],
        now=clock.now(),
    )
    send_events(
        engine,
        b,
        [
            identify("u-bob", email="bob@example.com", first_name="Bob"),
            track("u-bob", "Order Completed", {"order_id": "b-1", "revenue": 10}),
        ],
        now=clock.now(),
    )
    worker = Worker(engine, clock=clock, owner="w")
    run_until_idle(worker, clock)
    dispatcher = Dispatcher(engine, clock=clock, owner="d", channels={"*": CaptureChannel()})
    while asyncio.run(dispatcher.run_once(clock.now())):
        pass
    with transaction(engine) as conn:

        def pid(ws: str, user: str) -> int:
            return int(
                conn.execute(
                    select(profiles.c.id).where(
                        profiles.c.workspace_id == ws, profiles.c.user_id == user
                    )
                ).scalar_one()
            )

        anna, mallory, bob = pid(a, "u-anna"), pid(a, "u-mallory"), pid(b, "u-bob")
        task_a = create_task(
            conn,
            a,
            idempotency_key="call:anna",
            profile_id=anna,
            reason="Cart left twice",
            script="Ask whether delivery cost was the problem.",
            due_at=clock.now() - timedelta(minutes=5),
            now=clock.now(),
        )
        create_task(
            conn,
            a,
            idempotency_key="call:mallory",
            profile_id=mallory,
            reason=MARKUP,
            script=IMG,
            due_at=clock.now() + timedelta(days=1),
            now=clock.now(),
        )
        task_b = create_task(
            conn,
            b,
            idempotency_key="call:bob",
            profile_id=bob,
            reason="B's call",
            script="B's script",
            due_at=clock.now() - timedelta(minutes=5),
            now=clock.now(),
        )
        messages = {
            ws: conn.execute(
                select(outbox.c.id).where(outbox.c.workspace_id == ws, outbox.c.status == "sent")
            ).scalar_one()
            for ws in (a, b)
        }
        cart = conn.execute(
            select(journeys.c.id).where(
                journeys.c.workspace_id == a, journeys.c.key == "abandoned-cart"
            )
        ).scalar_one()
        for days_ago in range(3):
            at = clock.now() - timedelta(days=days_ago)
            bump(
                conn,
                workspace_id=a,
                at=at,
                journey_id=cart,
                step_id="reminder",
                channel="email",
                sent=100 + days_ago,
                delivered=95,
                opened=40,
                clicked=12,
                attributed=3,
                attributed_revenue=4500,
                unsubscribed=1,
            )
            bump(
                conn,
                workspace_id=a,
                at=at,
                journey_id=cart,
                step_id="last-call",
                channel="sms",
                sent=30,
                delivered=29,
                clicked=4,
            )
            bump(
                conn,
                workspace_id=a,
                at=at,
                journey_id=cart,
                step_id="",
                entered=90,
                holdout_entered=10,
                converted=9,
                revenue=13500,
                revenue_sq=20250000,
            )
    app = create_app(
        Settings(database_url=str(engine.url), public_url="http://touchline.test"),
        engine=engine,
        clock=clock,
    )
    return World(
        engine=engine,
        clock=clock,
        app=app,
        a=a,
        b=b,
        anna=anna,
        mallory=mallory,
        bob=bob,
        task_a=task_a,
        task_b=task_b,
        message_a=messages[a],
        message_b=messages[b],
    )
