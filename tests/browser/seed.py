"""A shop worth looking at, written into a SQLite store before the server starts.

The example pack's journeys and templates; a few customers who are inside
the abandoned-cart journey right now, one who ordered (and got a
confirmation the server's dispatcher will capture); call tasks for the
operator; and thirty days of report rollups so the overview's charts have
something to draw. Everything is relative to the real clock, since the
server under test runs on it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from argon2 import PasswordHasher
from sqlalchemy import select

from touchline.journeys.loader import load_journey_dir
from touchline.measure.rollups import bump
from touchline.messaging.template_files import load_template_dir
from touchline.store.db import make_engine, migrate, transaction
from touchline.store.journeys import apply_journeys
from touchline.store.tables import journeys, profiles
from touchline.store.tasks import create_task
from touchline.store.templates import apply_templates
from touchline.store.workspaces import create_workspace
from touchline.testing import FrozenClock, identify, run_until_idle, send_events, track
from touchline.web.console import users
from touchline.worker.loop import Worker

PACK = Path(__file__).resolve().parents[2] / "examples" / "ecommerce"
PASSWORD = "correct horse battery"
MARKETER = "maria@shop.example"
OPERATOR = "oleg@shop.example"
#: Days of rollups drawn on the overview.
HISTORY_DAYS = 30


@dataclass(frozen=True)
class Seeded:
    workspace: str
    write_key: str


def seed(database_url: str) -> Seeded:
    """Fill an empty store at ``database_url``; returns the workspace and its write key."""
    engine = make_engine(database_url)
    migrate(engine)
    now = datetime.now(UTC).replace(microsecond=0)
    clock = FrozenClock(now - timedelta(minutes=20))
    # The seed's own hashes may be cheap: the server re-hashes at full cost on sign-in.
    users._hasher = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
    created = create_workspace(engine, "shop.example", now=clock.now(), timezone="Europe/Moscow")
    ws = created.id
    with transaction(engine) as conn:
        users.create_user(
            conn,
            ws,
            email=MARKETER,
            password=PASSWORD,
            role="marketer",
            name="Maria",
            now=clock.now(),
        )
        users.create_user(
            conn,
            ws,
            email=OPERATOR,
            password=PASSWORD,
            role="operator",
            name="Oleg",
            now=clock.now(),
        )
        apply_templates(conn, ws, load_template_dir(PACK / "templates"), now=clock.now())
        apply_journeys(conn, ws, load_journey_dir(PACK / "journeys"), now=clock.now())
    people = [
        ("u-1001", "anna@example.com", "+79161234501", "Анна"),
        ("u-1002", "boris@example.com", "+79161234502", "Борис"),
        ("u-1003", "vera@example.com", None, "Вера"),
        ("u-1004", "gleb@example.com", "+79161234504", "Глеб"),
        ("u-1005", "dina@example.com", None, "Дина"),
    ]
    raws = []
    for user_id, email, phone, name in people:
        traits = {"email": email, "first_name": name, "consent": {"email": True, "sms": True}}
        if phone:
            traits["phone"] = phone
        raws.append(identify(user_id, **traits))
    for i, (user_id, *_rest) in enumerate(people[:4]):
        raws.append(
            track(
                user_id,
                "Product Added",
                {
                    "cart_id": f"c-{i}",
                    "product_id": f"p-{i}",
                    "name": "Чайник",
                    "price": 2490,
                    "quantity": 1,
                },
            )
        )
    raws.append(
        track(
            "u-1005",
            "Order Completed",
            {
                "order_id": "o-77",
                "revenue": 4980,
                "products": [{"product_id": "p-9", "name": "Плед", "price": 4980, "quantity": 1}],
            },
        )
    )
    send_events(engine, ws, raws, now=clock.now())
    run_until_idle(Worker(engine, clock=clock, owner="seed"), clock)
    with transaction(engine) as conn:
        ids = dict(
            conn.execute(
                select(profiles.c.user_id, profiles.c.id).where(profiles.c.workspace_id == ws)
            ).all()
        )
        for n, (user_id, reason) in enumerate(
            (("u-1002", "Cart left twice: call about delivery"), ("u-1004", "Big cart, no order"))
        ):
            create_task(
                conn,
                ws,
                idempotency_key=f"seed-call-{n}",
                profile_id=ids[user_id],
                reason=reason,
                script="Greet by name. Ask whether delivery or price stopped the order; offer free delivery.",
                priority=5 - n,
                due_at=now - timedelta(minutes=30),
                now=clock.now(),
            )
        journey_ids = dict(
            conn.execute(
                select(journeys.c.key, journeys.c.id).where(journeys.c.workspace_id == ws)
            ).all()
        )
        for day in range(HISTORY_DAYS):
            at = now - timedelta(days=day)
            wave = 1 + 0.35 * math.sin(day / 3.0)
            for key, channel, step, base in (
                ("abandoned-cart", "email", "first-reminder", 420),
                ("abandoned-cart", "sms", "last-reminder-sms", 160),
                ("welcome", "email", "welcome-promo", 260),
                ("review-request", "email", "ask", 140),
            ):
                sent = int(base * wave)
                bump(
                    conn,
                    workspace_id=ws,
                    at=at,
                    journey_id=journey_ids[key],
                    step_id=step,
                    channel=channel,
                    sent=sent,
                    delivered=int(sent * 0.97),
                    opened=int(sent * (0.38 + 0.04 * math.cos(day))) if channel == "email" else 0,
                    clicked=int(sent * 0.09),
                    attributed=int(sent * 0.025),
                    attributed_revenue=int(sent * 0.025) * 3150,
                    unsubscribed=int(sent * 0.003),
                )
            for key, entered, converted in (
                ("abandoned-cart", 380, 41),
                ("welcome", 250, 18),
                ("review-request", 130, 22),
            ):
                e = int(entered * wave)
                bump(
                    conn,
                    workspace_id=ws,
                    at=at,
                    journey_id=journey_ids[key],
                    step_id="",
                    entered=e,
                    holdout_entered=e // 9,
                    converted=int(converted * wave),
                    holdout_converted=int(converted * wave) // 14,
                    revenue=int(converted * wave) * 3150,
                    revenue_sq=int(converted * wave) * 3150 * 3150,
                    holdout_revenue=int(converted * wave) // 14 * 3150,
                    holdout_revenue_sq=int(converted * wave) // 14 * 3150 * 3150,
                )
    engine.dispose()
    return Seeded(workspace=ws, write_key=created.write_key)
