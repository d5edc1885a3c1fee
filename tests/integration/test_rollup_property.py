"""Property: the report rollups always equal a recomputation from the raw facts.

Hypothesis draws a history — which customers get the promo, who opens and
clicks it (people, link scanners, Apple's prefetch, click bursts), what the
provider reports, who orders and when — and plays it through the real code
paths: the worker, the dispatcher, the tracking recorder, the receipt
recorder and attribution. ``daily_stats`` must then equal the same figures
counted from ``message_events``, ``attributions`` and ``instances``.
"""

from __future__ import annotations

import asyncio
import textwrap
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, and_, distinct, func, select

from touchline.journeys.loader import LoadedJourney, load_journey_text
from touchline.measure.engagement import Hit, record_hit
from touchline.messaging.channels.capture import CaptureChannel
from touchline.messaging.dispatcher import Dispatcher
from touchline.messaging.receipts import Receipt, record_receipt
from touchline.messaging.template_files import load_template_text
from touchline.store.db import transaction
from touchline.store.journeys import apply_journeys
from touchline.store.tables import attributions, daily_stats, instances, message_events, outbox
from touchline.store.templates import apply_templates
from touchline.store.workspaces import create_workspace
from touchline.testing import FrozenClock, identify, run_until_idle, send_events, track
from touchline.worker.loop import Worker

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
JOURNEY = """
journey: promo
category: selling
holdout: 20
trigger: {event: Promo}
entry: {reentry: always}
steps:
  - id: mail
    send: {channel: email, template: promo}
"""
TEMPLATE = (
    "template: promo\nchannel: email\nsubject: s\nhtml: '<a href=\"https://s.example/a\">a</a>'\n"
)
AGENTS = {
    "person": "Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0",
    "scanner": "Barracuda Sentinel (EE)",
    "apple": "Mozilla/5.0",
}
CUSTOMERS = 6

hits = st.lists(
    st.tuples(
        st.integers(0, CUSTOMERS - 1),
        st.sampled_from(["opened", "clicked"]),
        st.sampled_from(list(AGENTS)),
        st.integers(0, 3 * 86_400),  # seconds after sending
        st.sampled_from(["https://s.example/a", "https://s.example/b"]),
    ),
    max_size=12,
)
receipts = st.lists(
    st.tuples(st.integers(0, CUSTOMERS - 1), st.sampled_from(["delivered", "bounced"])),
    max_size=4,
)
orders = st.lists(
    st.tuples(st.integers(0, CUSTOMERS - 1), st.integers(1, 8 * 24), st.integers(1, 9_000)),
    max_size=5,
)


def _play(
    engine: Engine,
    hit_plan: list[tuple[int, str, str, int, str]],
    receipt_plan: list[tuple[int, str]],
    order_plan: list[tuple[int, int, int]],
) -> str:
    clock = FrozenClock(T0)
    ws = create_workspace(engine, "shop", now=T0).id
    source = textwrap.dedent(JOURNEY)
    with transaction(engine) as conn:
        apply_journeys(
            conn, ws, [LoadedJourney("p.yaml", load_journey_text(source, file="p"), source)], now=T0
        )
        apply_templates(conn, ws, [load_template_text(TEMPLATE, file="t")], now=T0)
    users = [f"{ws}-u{i}" for i in range(CUSTOMERS)]
    worker = Worker(engine, clock=clock, owner="w")
    raws = [identify(u, email=f"{u}@example.ru", consent={"email": True}) for u in users]
    raws += [track(u, "Promo") for u in users]
    send_events(engine, ws, [{**r, "timestamp": T0.isoformat()} for r in raws], now=T0)
    run_until_idle(worker, clock)
    dispatcher = Dispatcher(
        engine,
        clock=clock,
        owner="d",
        channels={"*": CaptureChannel()},
        public_url="https://t.example",
    )
    asyncio.run(dispatcher.run_once(T0))
    with engine.connect() as conn:
        sent = {
            r.id: r.sent_at
            for r in conn.execute(
                select(outbox.c.id, outbox.c.sent_at).where(outbox.c.workspace_id == ws)
            )
        }
        sent_by_index = dict(
            conn.execute(
                select(outbox.c.id, outbox.c.profile_id)
                .where(outbox.c.workspace_id == ws)
                .order_by(outbox.c.profile_id)
            ).all()
        )
    ids = list(sent_by_index)  # the i-th customer's message, in profile order
    events: list[tuple[datetime, Any]] = []
    for who, kind, agent, after, url in hit_plan:
        if who < len(ids) and sent[ids[who]] is not None:
            at = sent[ids[who]] + timedelta(seconds=after)
            events.append(
                (
                    at,
                    (
                        "hit",
                        Hit(
                            kind,
                            ws,
                            ids[who],
                            at,
                            url if kind == "clicked" else None,
                            "203.0.113.9",
                            AGENTS[agent],
                        ),
                    ),
                )
            )  # type: ignore[arg-type]
    for who, status in receipt_plan:
        if who < len(ids):
            events.append((T0 + timedelta(minutes=1), ("receipt", ids[who], status)))
    for who, hours, revenue in order_plan:
        at = T0 + timedelta(hours=hours)
        events.append((at, ("order", users[who], revenue)))
    for at, what in sorted(events, key=lambda e: e[0]):
        clock.set(max(at, clock.now()))
        if what[0] == "hit":
            with transaction(engine) as conn:
                record_hit(conn, what[1])
        elif what[0] == "receipt":
            with engine.connect() as conn:
                provider_id = conn.execute(
                    select(outbox.c.provider_id).where(outbox.c.id == what[1])
                ).scalar_one()
            if provider_id:
                status = "delivered" if what[2] == "delivered" else "bounced"
                record_receipt(
                    engine,
                    ws,
                    channel="email",
                    provider="email",
                    receipt=Receipt(
                        (provider_id,), status, None, "hard_bounce" if status == "bounced" else None
                    ),  # type: ignore[arg-type]
                    now=at,
                )
        else:
            order = track(what[1], "Order Completed", {"revenue": what[2]})
            send_events(engine, ws, [{**order, "timestamp": at.isoformat()}], now=at)
            run_until_idle(worker, clock)
    return ws


def _rollup(conn: Any, ws: str) -> dict[str, Any]:
    names = [
        "entered",
        "holdout_entered",
        "sent",
        "skipped",
        "delivered",
        "bounced",
        "opened",
        "clicked",
        "machine_opened",
        "machine_clicked",
        "attributed",
        "attributed_revenue",
    ]
    row = conn.execute(
        select(*[func.coalesce(func.sum(daily_stats.c[n]), 0).label(n) for n in names]).where(
            daily_stats.c.workspace_id == ws
        )
    ).one()
    return {n: row._mapping[n] for n in names}


def _recomputed(conn: Any, ws: str) -> dict[str, Any]:
    def events(kind: str, *, machine: bool | None = None, distinct_messages: bool = False) -> int:
        where = [message_events.c.workspace_id == ws, message_events.c.kind == kind]
        if machine is not None:
            where.append(message_events.c.machine.is_(machine))
        counted = (
            func.count(distinct(message_events.c.outbox_id)) if distinct_messages else func.count()
        )
        return int(conn.execute(select(counted).where(and_(*where))).scalar_one())

    all_instances = conn.execute(
        select(func.count()).where(instances.c.workspace_id == ws)
    ).scalar_one()
    held_out = conn.execute(
        select(func.count()).where(outbox.c.workspace_id == ws, outbox.c.reason == "holdout")
    ).scalar_one()
    skipped = conn.execute(
        select(func.count()).where(
            outbox.c.workspace_id == ws, outbox.c.status == "skipped", outbox.c.reason != "holdout"
        )
    ).scalar_one()
    attributed = conn.execute(
        select(func.count(), func.coalesce(func.sum(attributions.c.value), 0)).where(
            attributions.c.workspace_id == ws
        )
    ).one()
    return {
        "entered": all_instances - held_out,
        "holdout_entered": held_out,
        "sent": events("sent"),
        "skipped": skipped,
        "delivered": events("delivered"),
        "bounced": events("bounced"),
        "opened": events("opened", machine=False, distinct_messages=True),
        "clicked": events("clicked", machine=False, distinct_messages=True),
        "machine_opened": events("opened", machine=True),
        "machine_clicked": events("clicked", machine=True),
        "attributed": attributed[0],
        "attributed_revenue": Decimal(attributed[1]),
    }


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(hit_plan=hits, receipt_plan=receipts, order_plan=orders)
def test_rollups_equal_a_recomputation_from_raw_facts(
    engine: Engine,
    hit_plan: list[tuple[int, str, str, int, str]],
    receipt_plan: list[tuple[int, str]],
    order_plan: list[tuple[int, int, int]],
) -> None:
    """Whatever happens, daily_stats sums to what the raw rows say (each example its own workspace)."""
    ws = _play(engine, hit_plan, receipt_plan, order_plan)
    with engine.connect() as conn:
        assert _rollup(conn, ws) == _recomputed(conn, ws)
