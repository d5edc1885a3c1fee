"""A worker process's own Prometheus endpoint: `touchline worker --metrics-port N`.

The endpoint serves the same series as the API's ``/metrics`` for what the
worker and its dispatcher do: queue depths, timer lateness, items handled,
messages by channel and outcome, provider errors, and rounds lost to the
store. It honours ``TOUCHLINE_METRICS_TOKEN`` like the API.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import Engine

from touchline.clock import SystemClock
from touchline.config import Secret
from touchline.errors import TransientDeliveryError
from touchline.journeys.loader import LoadedJourney, load_journey_text
from touchline.messaging.template_files import load_template_text
from touchline.ops.metrics import Metrics, MetricsServer, serve_metrics
from touchline.store.db import transaction
from touchline.store.journeys import apply_journeys
from touchline.store.templates import apply_templates
from touchline.store.workspaces import create_workspace
from touchline.testing import identify, send_events, track

CUSTOMERS = 30
JOURNEY = """
journey: thanks
category: transactional
trigger: {event: Order Completed}
entry: {reentry: always}
steps:
  - wait: 1s
  - send: {channel: email, template: thanks}
"""
TEMPLATE = """
template: thanks
channel: email
subject: "Thanks"
text: "Thank you for order {{ event.properties.order_id }}"
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _value(text: str, series: str) -> float:
    """The value of one sample line, e.g. ``touchline_messages_total{channel="email",...}``."""
    for line in text.splitlines():
        if line.startswith(series + " ") or line == series:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


@pytest.fixture
def served(engine: Engine) -> Iterator[tuple[Metrics, MetricsServer]]:
    metrics = Metrics()
    metrics.watch_queues(engine, clock=SystemClock(), ttl=0)
    server = serve_metrics(metrics, host="127.0.0.1", port=0)
    yield metrics, server
    server.close()


def test_the_worker_endpoint_serves_queue_depths_and_worker_counts(
    served: tuple[Metrics, MetricsServer],
) -> None:
    """A scrape shows the store's queues and what the worker and dispatcher counted."""
    # given
    metrics, server = served
    metrics.count_items("event", processed=5, failed=1)
    metrics.observe_lateness([0.3, 2.0])
    metrics.count_recorded(
        "sms", status="pending", error=TransientDeliveryError("x", code="timeout")
    )
    metrics.count_outage("dispatcher")
    # when
    text = httpx.get(f"http://127.0.0.1:{server.port}/metrics", timeout=5).text
    # then
    assert _value(text, "touchline_store_up") == 1
    assert _value(text, "touchline_events_pending") == 0
    assert "touchline_timers_due " in text and "touchline_outbox_pending " in text
    assert _value(text, 'touchline_worker_items_total{kind="event",result="processed"}') == 5
    assert _value(text, 'touchline_worker_items_total{kind="event",result="failed"}') == 1
    assert _value(text, "touchline_timer_lateness_seconds_count") == 2
    assert _value(text, 'touchline_messages_total{channel="sms",outcome="retry"}') == 1
    assert (
        _value(
            text, 'touchline_provider_errors_total{channel="sms",code="timeout",kind="transient"}'
        )
        == 1
    )
    assert _value(text, 'touchline_store_unavailable_rounds_total{component="dispatcher"}') == 1


def test_the_worker_endpoint_wants_the_metrics_token_when_one_is_set(engine: Engine) -> None:
    """With a token configured, a scrape without it is 401 {code, message}; with it, 200."""
    server = serve_metrics(Metrics(), host="127.0.0.1", port=0, token=Secret("scrape-secret-42"))
    url = f"http://127.0.0.1:{server.port}/metrics"
    try:
        refused = httpx.get(url, timeout=5)
        wrong = httpx.get(url, headers={"Authorization": "Bearer nope"}, timeout=5)
        allowed = httpx.get(url, headers={"Authorization": "Bearer scrape-secret-42"}, timeout=5)
    finally:
        server.close()
    assert refused.status_code == 401 and refused.json()["code"] == "unauthorized"
    assert wrong.status_code == 401
    assert allowed.status_code == 200 and "touchline_messages_total" in allowed.text


def _prepare(engine: Engine) -> None:
    now = datetime.now(UTC) - timedelta(seconds=5)
    ws = create_workspace(engine, "shop", now=now).id
    journey, template = textwrap.dedent(JOURNEY), textwrap.dedent(TEMPLATE)
    with transaction(engine) as conn:
        spec = load_journey_text(journey, file="thanks.yaml")
        apply_journeys(conn, ws, [LoadedJourney("thanks.yaml", spec, journey)], now=now)
        apply_templates(conn, ws, [load_template_text(template, file="thanks.yaml")], now=now)
    people = range(CUSTOMERS)
    send_events(engine, ws, [identify(f"u{i}", email=f"u{i}@example.com") for i in people], now=now)
    send_events(
        engine, ws, [track(f"u{i}", "Order Completed", {"order_id": i}) for i in people], now=now
    )


def test_a_worker_process_counts_its_work_on_metrics_port(
    engine: Engine, database_url: str, tmp_path: Path
) -> None:
    """`touchline worker --metrics-port N`: a scrape shows the events, timers and sends it did."""
    # given: 30 orders, each waiting 1 s and then mailed through the capture channel
    _prepare(engine)
    port = _free_port()
    log = tmp_path / "worker.log"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("TOUCHLINE_")},
        "TOUCHLINE_DATABASE_URL": database_url,
        "TOUCHLINE_POLL_MS": "50",
        "TOUCHLINE_LOG_LEVEL": "INFO",
    }
    with log.open("ab") as out:
        worker = subprocess.Popen(
            [sys.executable, "-m", "touchline.cli", "worker", "--metrics-port", str(port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=out,
        )
    sent = 'touchline_messages_total{channel="email",outcome="sent"}'
    text = ""
    try:
        # when: scraped until every message is counted
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            assert worker.poll() is None, log.read_text()[-3000:]
            try:
                text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
            except httpx.TransportError:
                text = ""
            if _value(text, sent) >= CUSTOMERS:
                break
            time.sleep(0.2)
    finally:
        worker.terminate()
        worker.wait(timeout=30)
    # then
    assert _value(text, sent) == CUSTOMERS, text[-3000:]
    processed = _value(text, 'touchline_worker_items_total{kind="event",result="processed"}')
    assert processed >= 2 * CUSTOMERS  # at least the identify and the order of each customer
    assert (
        _value(text, 'touchline_worker_items_total{kind="timer",result="processed"}') == CUSTOMERS
    )
    assert _value(text, "touchline_timer_lateness_seconds_count") == CUSTOMERS
    assert _value(text, "touchline_store_up") == 1
    assert re.search(rf"metrics on http://127\.0\.0\.1:{port}/metrics", log.read_text())
