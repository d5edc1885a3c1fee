"""Operations on SQLite and PostgreSQL: ``GET /metrics`` and what it counts; no key in any log.

The app runs in-process with a frozen clock (journey time) and a monotonic
ticker the tests move by hand (the queue-depth cache). A worker and a
dispatcher report into the app's own metrics, as under ``touchline serve``.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import textwrap
import warnings
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine, create_engine

from touchline.config import Secret, Settings
from touchline.errors import PermanentDeliveryError, TransientDeliveryError
from touchline.journeys.loader import LoadedJourney, load_journey_text
from touchline.messaging.channels.base import OutgoingMessage, SendResult
from touchline.messaging.dispatcher import Dispatcher
from touchline.messaging.template_files import load_template_text
from touchline.ops.metrics import QUEUE_CACHE_SECONDS, Metrics
from touchline.store.db import transaction
from touchline.store.journeys import apply_journeys
from touchline.store.templates import apply_templates
from touchline.store.workspaces import CreatedWorkspace, create_workspace
from touchline.testing import FrozenClock, identify, run_until_idle, track
from touchline.web.app import create_app
from touchline.worker.loop import Worker

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
    from fastapi.testclient import TestClient

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
OPERATE_DOC = Path(__file__).parents[2] / "docs" / "how-to" / "operate.md"
BAD_PAGE = "/u/ws_000000000000.AAAAAAAAAAAAAAAAAAAAAA"

JOURNEY = """
journey: thanks
trigger: {event: Order Completed}
entry: {reentry: always}
steps:
  - wait: 1h
  - send: {channel: email, template: thanks}
"""
TEMPLATE = """
template: thanks
channel: email
subject: Спасибо
text: Спасибо за заказ
"""

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


class Ticker:
    """A monotonic clock that moves only when told to."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Scripted:
    """An email channel answering per address: ``ok@`` accepted, ``flaky@`` refused twice."""

    name = "email"

    def __init__(self) -> None:
        self.tries: dict[str, int] = {}

    async def send(self, message: OutgoingMessage) -> SendResult:
        n = self.tries[message.to] = self.tries.get(message.to, 0) + 1
        if message.to.startswith("flaky@"):
            if n == 1:
                raise TransientDeliveryError("421 busy", code="smtp_transient")
            raise PermanentDeliveryError("550 no such mailbox", code="recipient_refused")
        return SendResult(provider_id=f"p-{message.to}")

    async def aclose(self) -> None:
        return None


class Shop:
    """The app, one workspace with the journey, a worker reporting into the app's metrics."""

    def __init__(self, engine: Engine, client: TestClient, clock: FrozenClock, ticker: Ticker):
        self.engine = engine
        self.client = client
        self.clock = clock
        self.ticker = ticker
        self.metrics: Metrics = client.app.state.metrics  # type: ignore[attr-defined]
        self.ws: CreatedWorkspace = create_workspace(engine, "Shop", now=T0)
        text = textwrap.dedent(JOURNEY)
        with transaction(engine) as conn:
            journey = load_journey_text(text, file="j.yaml")
            apply_journeys(conn, self.ws.id, [LoadedJourney("j.yaml", journey, text)], now=T0)
            template = load_template_text(textwrap.dedent(TEMPLATE), file="t.yaml")
            apply_templates(conn, self.ws.id, [template], now=T0)
        self.worker = Worker(engine, clock=clock, owner="w", metrics=self.metrics)

    def post(self, path: str, body: dict[str, Any]) -> httpx.Response:
        response = self.client.post(path, json=body, auth=(self.ws.write_key, ""))
        assert response.status_code == 200, response.text
        return response

    def order(self, user: str, *, email: str | None = None) -> None:
        """An identify (with ``email``) and an order, posted as one batch."""
        traits = {"consent": {"email": True}, **({"email": email} if email else {})}
        self.post(
            "/v1/batch", {"batch": [identify(user, **traits), track(user, "Order Completed")]}
        )

    def scrape(self, *, fresh: bool = True) -> Samples:
        """Every sample of ``GET /metrics``; ``fresh`` first lets the queue cache expire."""
        if fresh:
            self.ticker.advance(QUEUE_CACHE_SECONDS)
        response = self.client.get("/metrics")
        assert response.status_code == 200, response.text
        return parse(response.text)


def parse(exposition: str) -> Samples:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(exposition)
        for s in family.samples
    }


@pytest.fixture
def shop(engine: Engine, database_url: str) -> Iterator[Shop]:
    clock, ticker = FrozenClock(T0), Ticker()
    app = create_app(
        Settings(database_url=database_url), engine=engine, clock=clock, monotonic=ticker
    )
    with TestClient(app) as client:
        yield Shop(engine, client, clock, ticker)


# -- ingest, queues, timers ----------------------------------------------------------------


def test_ingest_counts_accepted_and_duplicate_events_by_endpoint(shop: Shop) -> None:
    """A batch of two is two accepted on ``batch``; a repeated messageId is a ``track`` duplicate."""
    shop.post("/v1/batch", {"batch": [identify("u1"), track("u1", "Seen", messageId="m-1")]})
    shop.post("/v1/track", track("u1", "Seen", messageId="m-1"))

    samples = shop.scrape()

    def ingested(endpoint: str, result: str) -> float | None:
        labels = (("endpoint", endpoint), ("result", result))
        return samples.get(("touchline_ingest_events_total", labels))

    assert ingested("batch", "accepted") == 2
    assert ingested("track", "duplicate") == 1
    assert ingested("track", "accepted") is None


def test_queue_gauges_follow_events_timers_and_the_outbox(shop: Shop) -> None:
    """Pending events, then a due (and overdue) timer, then a due message, as the work moves."""
    # given: an order whose message waits an hour
    shop.order("u1", email="anna@example.ru")
    pending = shop.scrape()
    assert pending[("touchline_events_pending", ())] == 2
    assert pending[("touchline_store_up", ())] == 1

    # when the worker takes the events, the timer is not due yet
    run_until_idle(shop.worker, shop.clock)
    waiting = shop.scrape()
    assert waiting[("touchline_events_pending", ())] == 0
    assert waiting[("touchline_timers_due", ())] == 0
    assert waiting[("touchline_timers_overdue_seconds", ())] == 0

    # when 90 minutes pass with no worker, the timer is half an hour overdue
    shop.clock.advance(timedelta(minutes=90))
    overdue = shop.scrape()
    assert overdue[("touchline_timers_due", ())] == 1
    assert overdue[("touchline_timers_overdue_seconds", ())] == 1800

    # when the worker fires it, the message waits in the outbox
    run_until_idle(shop.worker, shop.clock)
    queued = shop.scrape()
    assert queued[("touchline_timers_due", ())] == 0
    assert queued[("touchline_outbox_pending", ())] == 1
    assert queued[("touchline_outbox_due", ())] == 1


def test_queue_depths_are_reused_until_the_cache_expires(shop: Shop) -> None:
    """Scrapes within the cache window do not query the store again; the next one does."""
    shop.post("/v1/track", track("u1", "Seen", messageId="m-1"))
    first = shop.scrape()
    shop.post("/v1/track", track("u1", "Seen", messageId="m-2"))

    cached = shop.scrape(fresh=False)
    shop.ticker.advance(QUEUE_CACHE_SECONDS - 0.1)
    still = shop.scrape(fresh=False)
    later = shop.scrape()

    assert first[("touchline_events_pending", ())] == 1
    assert cached[("touchline_events_pending", ())] == 1
    assert still[("touchline_events_pending", ())] == 1
    assert later[("touchline_events_pending", ())] == 2


def test_the_worker_observes_how_late_each_timer_fired(shop: Shop) -> None:
    """A timer fired 30 minutes after its due time adds one 1800 s observation."""
    shop.order("u1", email="anna@example.ru")
    run_until_idle(shop.worker, shop.clock)
    shop.clock.advance(timedelta(minutes=90))
    run_until_idle(shop.worker, shop.clock)

    samples = shop.scrape()

    name = "touchline_timer_lateness_seconds"
    assert samples[(f"{name}_count", ())] == 1
    assert samples[(f"{name}_sum", ())] == 1800
    assert samples[(f"{name}_bucket", (("le", "600.0"),))] == 0
    assert samples[(f"{name}_bucket", (("le", "1800.0"),))] == 1


# -- the dispatcher ------------------------------------------------------------------------


def test_the_dispatcher_counts_outcomes_and_provider_errors(shop: Shop) -> None:
    """Sent, skipped, retry then failed, by channel; each provider error by kind and code."""
    # given: three customers' messages due
    shop.order("ok", email="ok@example.ru")
    shop.order("flaky", email="flaky@example.ru")
    shop.order("nobody")  # no email address: the rules skip it
    run_until_idle(shop.worker, shop.clock, until=shop.clock.now() + timedelta(hours=1))
    dispatcher = Dispatcher(
        shop.engine,
        clock=shop.clock,
        owner="d",
        channels={"email": Scripted()},
        metrics=shop.metrics,
    )

    # when: one round, then another after the retry back-off
    asyncio.run(dispatcher.run_once(shop.clock.now()))
    shop.clock.advance(timedelta(hours=2))
    asyncio.run(dispatcher.run_once(shop.clock.now()))

    # then
    samples = shop.scrape()
    outcomes = {
        dict(labels)["outcome"]: value
        for (name, labels), value in samples.items()
        if name == "touchline_messages_total" and dict(labels)["channel"] == "email"
    }
    assert outcomes == {"sent": 1, "skipped": 1, "retry": 1, "failed": 1}
    errors = {
        (dict(labels)["kind"], dict(labels)["code"]): value
        for (name, labels), value in samples.items()
        if name == "touchline_provider_errors_total"
    }
    assert errors == {("transient", "smtp_transient"): 1, ("permanent", "recipient_refused"): 1}


# -- HTTP ----------------------------------------------------------------------------------


def test_requests_are_counted_by_route_template_not_path(shop: Shop) -> None:
    """A page is counted under ``/u/{token}``; a path no route knows under ``unmatched``."""
    assert shop.client.get(BAD_PAGE).status_code == 400
    assert shop.client.get("/wp-login.php").status_code == 404
    assert shop.client.post("/v1/t", json=track("u1", "Seen")).status_code == 401

    samples = shop.scrape()

    def requests(method: str, route: str, status: int) -> float | None:
        labels = (("method", method), ("route", route), ("status", str(status)))
        return samples.get(("touchline_http_requests_total", labels))

    assert requests("GET", "/u/{token}", 400) == 1
    assert requests("GET", "unmatched", 404) == 1
    assert requests("POST", "/v1/t", 401) == 1
    assert not any("ws_000000000000" in str(labels) for _, labels in samples)
    latency = (
        "touchline_http_request_duration_seconds_count",
        (("method", "GET"), ("route", "/u/{token}")),
    )
    assert samples[latency] == 1


def test_metrics_ask_for_the_configured_token(engine: Engine, database_url: str) -> None:
    """With TOUCHLINE_METRICS_TOKEN set, only ``Bearer <token>`` scrapes; errors never echo it."""
    token = "scrape-" + secrets.token_urlsafe(16)
    settings = Settings(database_url=database_url, metrics_token=Secret(token))
    with TestClient(create_app(settings, engine=engine, clock=FrozenClock(T0))) as client:
        missing = client.get("/metrics")
        wrong = client.get("/metrics", headers={"Authorization": "Bearer not-it"})
        basic = client.get("/metrics", auth=(token, ""))
        right = client.get("/metrics", headers={"Authorization": f"Bearer {token}"})
    for refused in (missing, wrong, basic):
        assert refused.status_code == 401
        assert refused.json()["code"] == "unauthorized"
        assert token not in refused.text
    assert right.status_code == 200
    assert right.headers["content-type"].startswith("text/plain")
    assert "touchline_store_up 1.0" in right.text


def test_an_unreadable_store_reports_store_up_zero(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The scrape still answers: store_up 0, no queue gauges, and a warning in the log."""
    broken = create_engine(f"sqlite:///{tmp_path}/missing-dir/touchline.db")
    metrics = Metrics()
    metrics.watch_queues(broken, clock=FrozenClock(T0))

    with caplog.at_level(logging.WARNING, logger="touchline.metrics"):
        samples = parse(metrics.exposition().decode())

    assert samples[("touchline_store_up", ())] == 0
    assert ("touchline_events_pending", ()) not in samples
    assert "queue depths not read" in caplog.text


def test_every_series_is_documented(shop: Shop) -> None:
    """Each metric family /metrics exposes is explained in docs/how-to/operate.md."""
    response = shop.client.get("/metrics")
    documented = set(re.findall(r"`(touchline_[a-z_]+)`", OPERATE_DOC.read_text(encoding="utf-8")))
    # Counters are documented by their exposed name, with the _total suffix; the
    # client library's own *_created timestamps need no words.
    exposed = {
        f"{f.name}_total" if f.type == "counter" else f.name
        for f in text_string_to_metric_families(response.text)
        if not f.name.endswith("_created")
    }
    assert len(exposed) == 15
    assert exposed <= documented, exposed - documented


# -- no secrets in logs or answers -------------------------------------------------------------


def test_no_key_reaches_the_logs_or_an_error_answer(
    shop: Shop, caplog: pytest.LogCaptureFixture
) -> None:
    """Valid and invalid write keys and a bad admin token: none is logged, none is echoed."""
    invented_write = "tlw_" + secrets.token_urlsafe(24)
    invented_admin = "tla_" + secrets.token_urlsafe(24)
    keys = (shop.ws.write_key, invented_write, invented_admin)
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.INFO, logger="sqlalchemy.engine")  # SQL and its parameters too

    answers = [
        shop.client.post("/v1/track", json=track("u1", "Seen"), auth=(shop.ws.write_key, "")),
        shop.client.post("/v1/track", json=track("u1", "Seen"), auth=(invented_write, "")),
        shop.client.post("/v1/track", json={**track("u1", "Seen"), "writeKey": invented_write}),
        shop.client.get(
            "/admin/v1/journeys", headers={"Authorization": f"Bearer {invented_admin}"}
        ),
        shop.client.get(
            "/admin/v1/journeys", headers={"Authorization": f"Bearer {shop.ws.write_key}"}
        ),
    ]

    assert [a.status_code for a in answers] == [200, 401, 401, 401, 401]
    assert any(r.name.startswith("sqlalchemy.engine") for r in caplog.records)
    for key in keys:
        assert key not in caplog.text
        for answer in answers:
            assert key not in answer.text
            assert key not in str(answer.headers)
