"""An SMS gateway down for a while: retries deliver every text once it is back. Both backends.

A real dispatcher sends through the generic HTTP SMS channel to a gateway
served on loopback. The gateway answers 503 (and, for a moment, drops the
connection) while it is "down"; the dispatcher backs off and retries on a
frozen clock; once it is up again every message goes out exactly once.
"""

from __future__ import annotations

import asyncio
import json
import textwrap
import threading
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, func, select

from touchline.journeys.loader import LoadedJourney, load_journey_text
from touchline.messaging.channels.sms_http import HttpSmsChannel, HttpSmsConfig
from touchline.messaging.dispatcher import Dispatcher
from touchline.messaging.template_files import load_template_text
from touchline.store.db import transaction
from touchline.store.journeys import apply_journeys
from touchline.store.tables import outbox
from touchline.store.templates import apply_templates
from touchline.store.workspaces import create_workspace
from touchline.testing import FrozenClock, identify, run_until_idle, send_events, track
from touchline.worker.loop import Worker

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
CUSTOMERS = 120

JOURNEY = """
journey: shipped
category: transactional
trigger: {event: Order Shipped}
entry: {reentry: always}
steps:
  - send: {channel: sms, template: shipped}
"""

TEMPLATE = """
template: shipped
channel: sms
text: "Заказ {{ event.properties.order_id }} отправлен"
"""


class Gateway:
    """A loopback SMS gateway that can be down: 503, or a dropped connection, until it is up."""

    def __init__(self) -> None:
        self.up = True
        self.drop = False
        self.accepted: Counter[str] = Counter()  # idempotency key -> texts accepted
        self.refused = 0
        gateway = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length))
                if gateway.drop:
                    gateway.refused += 1
                    self.close_connection = True
                    self.connection.close()
                    return
                if not gateway.up:
                    gateway.refused += 1
                    self._answer(503, {"error": "maintenance"})
                    return
                key = self.headers["Idempotency-Key"]
                gateway.accepted[key] += 1
                self._answer(200, {"id": f"gw-{key}", "to": body["to"]})

            def _answer(self, status: int, payload: Any) -> None:
                reply = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/send"
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )


@pytest.fixture
def gateway() -> Iterator[Gateway]:
    found = Gateway()
    found.thread.start()
    yield found
    found.server.shutdown()
    found.server.server_close()
    found.thread.join()


def fill_outbox(engine: Engine, clock: FrozenClock) -> None:
    ws = create_workspace(engine, "shop", now=T0).id
    journey, template = textwrap.dedent(JOURNEY), textwrap.dedent(TEMPLATE)
    with transaction(engine) as conn:
        spec = load_journey_text(journey, file="j.yaml")
        apply_journeys(conn, ws, [LoadedJourney("j.yaml", spec, journey)], now=T0)
        apply_templates(conn, ws, [load_template_text(template, file="t.yaml")], now=T0)
    people = range(CUSTOMERS)
    send_events(engine, ws, [identify(f"u{i}", phone=f"+7916{i:07d}") for i in people], now=T0)
    send_events(
        engine, ws, [track(f"u{i}", "Order Shipped", {"order_id": i}) for i in people], now=T0
    )
    run_until_idle(Worker(engine, clock=clock, owner="setup", batch=500), clock)


def test_an_sms_gateway_outage_is_retried_until_every_text_is_sent_once(
    engine: Engine, gateway: Gateway
) -> None:
    """503s and dropped connections are transient: after the outage each text goes out once."""
    # given
    clock = FrozenClock(T0)
    fill_outbox(engine, clock)

    async def drive() -> Dispatcher:
        async with httpx.AsyncClient(trust_env=False) as client:
            channel = HttpSmsChannel(
                client,
                config=HttpSmsConfig(
                    url=gateway.url,
                    body_template={"to": "{to}", "text": "{text}"},
                    timeout=5.0,
                ),
            )
            dispatcher = Dispatcher(
                engine, clock=clock, owner="d", channels={"sms": channel}, batch=40
            )
            await dispatcher.run_once()  # 40 go out
            gateway.up = False
            await dispatcher.run_once()  # 40 refused with 503
            gateway.drop = True
            clock.advance(timedelta(minutes=30))
            await dispatcher.run_once()  # connections dropped
            gateway.drop, gateway.up = False, True
            for _ in range(200):
                clock.advance(timedelta(minutes=5))
                if not await dispatcher.run_once():
                    break
            return dispatcher

    # when
    dispatcher = asyncio.run(drive())
    # then
    assert gateway.refused >= 80
    assert dispatcher.totals.retried >= 80
    assert dispatcher.totals.failed == 0
    assert len(gateway.accepted) == CUSTOMERS
    assert set(gateway.accepted.values()) == {1}
    with engine.connect() as conn:
        statuses = dict(
            conn.execute(select(outbox.c.status, func.count()).group_by(outbox.c.status)).all()
        )
        providers = conn.execute(select(outbox.c.provider_id)).scalars().all()
    assert statuses == {"sent": CUSTOMERS}
    assert all(p and p.startswith("gw-") for p in providers)
