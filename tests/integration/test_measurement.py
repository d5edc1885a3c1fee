"""From send to revenue: message events, report rollups and last-touch attribution.

A real dispatcher sends through the capture channel with tracking on; the
customer clicks through the tracking route and orders; the order is
attributed to the message and every counter lands in ``daily_stats``.
Both backends.
"""

from __future__ import annotations

import asyncio
import re
import textwrap
import warnings
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import Engine, func, select, update

from touchline.config import Settings
from touchline.journeys.loader import LoadedJourney, load_journey_text
from touchline.messaging import sms
from touchline.messaging.channels.capture import CaptureChannel
from touchline.messaging.dispatcher import Dispatcher
from touchline.messaging.registry import ChannelRegistry
from touchline.messaging.template_files import load_template_text
from touchline.store.db import transaction
from touchline.store.journeys import apply_journeys
from touchline.store.tables import attributions, daily_stats, message_events, workspaces
from touchline.store.templates import apply_templates
from touchline.store.workspaces import create_workspace
from touchline.testing import FrozenClock, identify, run_until_idle, send_events, track
from touchline.web.app import create_app
from touchline.worker.loop import Worker

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
    from fastapi.testclient import TestClient

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
PUBLIC_URL = "https://t.shop.example"
BROWSER = {"user-agent": "Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0"}

JOURNEY = """
journey: sale
category: selling
trigger: {event: Sale Started}
entry: {reentry: always}
steps:
  - id: mail
    send: {channel: email, template: sale}
"""

TEMPLATE = """
template: sale
channel: email
subject: Распродажа
html: '<p><a href="https://shop.example/sale">Скидки</a></p>'
"""


class Shop:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.clock = FrozenClock(T0)
        self.ws = create_workspace(engine, "shop", now=T0).id
        source = textwrap.dedent(JOURNEY)
        with transaction(engine) as conn:
            apply_journeys(
                conn,
                self.ws,
                [LoadedJourney("j.yaml", load_journey_text(source, file="j"), source)],
                now=T0,
            )
            apply_templates(
                conn, self.ws, [load_template_text(textwrap.dedent(TEMPLATE), file="t")], now=T0
            )
        self.worker = Worker(engine, clock=self.clock, owner="w")
        self.capture = CaptureChannel()
        self.dispatcher = Dispatcher(
            engine,
            clock=self.clock,
            owner="d",
            channels={"*": self.capture},
            public_url=PUBLIC_URL,
        )
        self.app = create_app(Settings(public_url=PUBLIC_URL), engine=engine, clock=self.clock)

    def events(self, *raws: dict[str, Any]) -> None:
        stamped = [{**r, "timestamp": self.clock.now().isoformat()} for r in raws]
        send_events(self.engine, self.ws, stamped, now=self.clock.now())
        run_until_idle(self.worker, self.clock)

    def send_sale(self, user: str) -> str:
        """Run the sale journey for ``user``; return the tracked click path of the mail sent."""
        self.events(
            identify(user, email=f"{user}@example.ru", consent={"email": True}),
            track(user, "Sale Started"),
        )
        asyncio.run(self.dispatcher.run_once(self.clock.now()))
        html = self.capture.messages[-1].html or ""
        (link,) = re.findall(r'href="(https://t\.shop\.example/t/c/[^"]+)"', html)
        return link.removeprefix(PUBLIC_URL)

    def stats(self, **where: Any) -> dict[str, Any]:
        columns = [
            c
            for c in daily_stats.c
            if c.name not in ("workspace_id", "day", "journey_id", "step_id", "variant", "channel")
        ]
        with self.engine.connect() as conn:
            row = conn.execute(
                select(*[func.coalesce(func.sum(c), 0).label(c.name) for c in columns]).where(
                    daily_stats.c.workspace_id == self.ws,
                    *[daily_stats.c[k] == v for k, v in where.items()],
                )
            ).one()
        return {k: v for k, v in row._mapping.items() if v}

    def attributed(self) -> list[tuple[str, Decimal | None]]:
        with self.engine.connect() as conn:
            return [(r.touch, r.value) for r in conn.execute(select(attributions))]


def test_a_clicked_email_earns_the_order_and_every_counter_is_kept(engine: Engine) -> None:
    """Sent, clicked, attributed and revenue land on the message's row; entries on the journey's."""
    # given
    shop = Shop(engine)
    path = shop.send_sale("u1")
    shop.clock.advance(timedelta(hours=2))
    with TestClient(shop.app) as client:
        assert client.get(path, headers=BROWSER, follow_redirects=False).status_code == 302
    # when: the order comes a day later
    shop.clock.advance(timedelta(days=1))
    shop.events(track("u1", "Order Completed", {"order_id": "o1", "revenue": 2500}))
    # then
    assert shop.attributed() == [("clicked", Decimal("2500.00"))]
    assert shop.stats(step_id="mail", channel="email") == {
        "sent": 1,
        "clicked": 1,
        "attributed": 1,
        "attributed_revenue": Decimal("2500.00"),
    }
    assert shop.stats(step_id="", channel="") == {"entered": 1}
    with engine.connect() as conn:
        kinds = list(
            conn.execute(select(message_events.c.kind).order_by(message_events.c.id)).scalars()
        )
    assert kinds == ["sent", "clicked"]


def test_an_order_outside_the_click_window_is_nobody_s(engine: Engine) -> None:
    """A click six days before the order is past the 5-day window: no attribution."""
    shop = Shop(engine)
    path = shop.send_sale("u1")
    shop.clock.advance(timedelta(hours=1))
    with TestClient(shop.app) as client:
        client.get(path, headers=BROWSER, follow_redirects=False)
    shop.clock.advance(timedelta(days=6))
    shop.events(track("u1", "Order Completed", {"order_id": "o1", "revenue": 100}))
    assert shop.attributed() == []


def test_a_scanner_click_earns_nothing(engine: Engine) -> None:
    """A link scanner clicking a second after delivery is no touch: the order stays unattributed."""
    shop = Shop(engine)
    path = shop.send_sale("u1")
    shop.clock.advance(timedelta(seconds=1))
    with TestClient(shop.app) as client:
        client.get(path, headers={"user-agent": "Mozilla/5.0"}, follow_redirects=False)
    shop.clock.advance(timedelta(hours=3))
    shop.events(track("u1", "Order Completed", {"order_id": "o1", "revenue": 100}))
    assert shop.attributed() == []
    assert shop.stats(step_id="mail", channel="email").get("machine_clicked") == 1


def test_an_order_processed_twice_is_attributed_once(engine: Engine) -> None:
    """The same order event (same messageId) sent again attributes and counts nothing more."""
    shop = Shop(engine)
    path = shop.send_sale("u1")
    shop.clock.advance(timedelta(hours=1))
    with TestClient(shop.app) as client:
        client.get(path, headers=BROWSER, follow_redirects=False)
    order = track("u1", "Order Completed", {"order_id": "o1", "revenue": 700})
    order["messageId"] = "order-o1"
    shop.events(order)
    shop.events(order)
    assert shop.attributed() == [("clicked", Decimal("700.00"))]
    assert shop.stats(step_id="mail", channel="email")["attributed"] == 1


SPLIT_JOURNEY = """
journey: ab
category: selling
trigger: {event: Cart Left}
entry: {reentry: always}
goal: {event: Order Completed, within: 7d, value: event.properties.revenue}
steps:
  - id: test
    split:
      - {name: a, percent: 50}
      - {name: b, percent: 50}
  - wait: 1h
"""


def test_split_rows_count_entries_and_goal_conversions_per_variant(engine: Engine) -> None:
    """Each split variant's row counts who got it and their goal conversions, with revenue."""
    # given
    shop = Shop(engine)
    source = textwrap.dedent(SPLIT_JOURNEY)
    with transaction(engine) as conn:
        apply_journeys(
            conn,
            shop.ws,
            [LoadedJourney("ab.yaml", load_journey_text(source, file="ab"), source)],
            now=T0,
        )
    users = [f"u{i}" for i in range(20)]
    shop.events(*[track(u, "Cart Left") for u in users])
    # when: the first five order
    shop.events(*[track(u, "Order Completed", {"revenue": 100}) for u in users[:5]])
    # then
    a, b = shop.stats(step_id="test", variant="a"), shop.stats(step_id="test", variant="b")
    assert a["entered"] + b["entered"] == 20 and a["entered"] > 0 and b["entered"] > 0
    assert a.get("converted", 0) + b.get("converted", 0) == 5
    assert a.get("revenue", 0) + b.get("revenue", 0) == Decimal("500.00")
    assert shop.stats(step_id="", channel="")["converted"] == 5


SMS_JOURNEY = """
journey: flash
category: selling
trigger: {event: Flash Sale}
entry: {reentry: always}
steps:
  - send: {channel: sms, template: flash}
"""

SMS_TEMPLATE = """
template: flash
channel: sms
text: >-
  Только сегодня: скидка 30% на всю обувь и сумки в нашем магазине, доставка бесплатно.
  Успейте до полуночи!
"""


def test_sms_parts_and_their_cost_land_on_the_message_s_row(engine: Engine) -> None:
    """channels.sms.price_per_part prices every part sent; reports get parts and cost."""
    # given: a Cyrillic text of two parts, and a price per part in the workspace settings
    clock = FrozenClock(T0)
    ws = create_workspace(engine, "shop", now=T0).id
    source = textwrap.dedent(SMS_JOURNEY)
    with transaction(engine) as conn:
        apply_journeys(
            conn, ws, [LoadedJourney("j.yaml", load_journey_text(source, file="j"), source)], now=T0
        )
        apply_templates(
            conn, ws, [load_template_text(textwrap.dedent(SMS_TEMPLATE), file="t")], now=T0
        )
        conn.execute(
            update(workspaces)
            .where(workspaces.c.id == ws)
            .values(settings={"channels": {"sms": {"provider": "capture", "price_per_part": 2.45}}})
        )
    capture = CaptureChannel()
    registry = ChannelRegistry(engine, defaults={"*": capture}, clock=clock)
    dispatcher = Dispatcher(
        engine, clock=clock, owner="d", channels={"*": capture}, registry=registry
    )
    send_events(
        engine,
        ws,
        [
            identify("anna", phone="+79161234567", consent={"sms": True}),
            track("anna", "Flash Sale"),
        ],
        now=T0,
    )
    run_until_idle(Worker(engine, clock=clock, owner="w"), clock)
    # when
    asyncio.run(dispatcher.run_once(clock.now()))
    # then
    (sent,) = capture.messages
    assert sms.analyse(sent.text).parts == 2
    with engine.connect() as conn:
        parts, cost = conn.execute(
            select(func.sum(daily_stats.c.sms_parts), func.sum(daily_stats.c.sms_cost)).where(
                daily_stats.c.workspace_id == ws, daily_stats.c.channel == "sms"
            )
        ).one()
    assert (parts, Decimal(cost)) == (2, Decimal("4.90"))
