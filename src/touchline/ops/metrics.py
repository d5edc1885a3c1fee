"""Prometheus metrics: what the API, the worker and the dispatcher count, and ``GET /metrics``.

One :class:`Metrics` holds every instrument on a registry of its own (never
prometheus_client's global one), so two apps in one process — tests — never
share a count. :func:`touchline.web.app.create_app` makes one and keeps it on
``app.state.metrics``; ``touchline serve`` hands that same object to the
worker and dispatcher threads it starts, which take it as a keyword argument
(``metrics=None``, the default, counts nothing). Passing it down keeps the
counting visible at each call site and needs no process-wide state.

What is counted and where (docs/how-to/operate.md explains each series):

* ingest: events accepted and duplicates per endpoint kind (``/v1/*`` routes);
* timer lateness: fire time minus due time, per fired timer (the worker);
* messages per channel and outcome, and provider errors per channel, kind and
  code (the dispatcher's judge and record steps);
* HTTP requests and their latency by method, route template and status
  (:class:`HttpMetricsMiddleware`), and requests refused by the rate limits;
* queue depth — pending events, due timers, pending outbox — read from the
  store at scrape time by :class:`QueueCollector`, with indexed ``count``
  queries whose answer is reused for :data:`QUEUE_CACHE_SECONDS`;
* the worker's items (events and timers, processed or failed) and the rounds
  a worker or dispatcher lost to an unreachable store.

A ``touchline worker`` process serves its own registry with
:func:`serve_metrics` (``touchline worker --metrics-port N``): the same
series, from a small threaded HTTP server beside the loops.
"""

from __future__ import annotations

import hmac
import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from fastapi import Request
from fastapi.responses import Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    make_wsgi_app,
)
from prometheus_client import generate_latest as _exposition
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import ThreadingWSGIServer
from prometheus_client.registry import Collector
from sqlalchemy import Engine, func, select
from starlette.concurrency import run_in_threadpool
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from touchline.clock import Clock
from touchline.config import Secret
from touchline.errors import AuthError, PermanentDeliveryError, TransientDeliveryError
from touchline.store.tables import EVENT_PENDING, events, outbox, timers

log = logging.getLogger("touchline.metrics")

#: A scrape storm costs the store at most one round of counts per this many seconds.
QUEUE_CACHE_SECONDS = 5.0
#: Timers normally fire within one poll (0.2 s); the long tail shows a backlog.
LATENESS_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
#: Outbox rows still to be handled: waiting, or leased by a dispatcher mid-send.
OUTBOX_WAITING = ("pending", "sending")
#: Methods kept as a label value; anything else is ``other`` (labels must stay few).
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
#: The route label of a request no route matched (scanners' paths must not become labels).
UNMATCHED = "unmatched"
# The dispatcher's row status after a record, as an outcome label.
_RECORDED = {"sent": "sent", "failed": "failed", "skipped": "skipped", "pending": "retry"}
# ... and after the delivery rules judged it.
_JUDGED = {"skipped": "skipped", "pending": "deferred"}


class Metrics:
    """Every touchline instrument, on ``registry`` (a new private one by default)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.ingested = Counter(
            "touchline_ingest_events",
            "Events received on the ingest API, by endpoint kind and result "
            "(accepted, or duplicate of a stored messageId).",
            ["endpoint", "result"],
            registry=r,
        )
        self.timer_lateness = Histogram(
            "touchline_timer_lateness_seconds",
            "How long after its due time each journey timer fired.",
            buckets=LATENESS_BUCKETS,
            registry=r,
        )
        self.messages = Counter(
            "touchline_messages",
            "Outbox messages settled by the dispatcher, by channel and outcome "
            "(sent, failed, retry, skipped, deferred).",
            ["channel", "outcome"],
            registry=r,
        )
        self.provider_errors = Counter(
            "touchline_provider_errors",
            "Delivery errors from channels, by channel, kind (transient, permanent) and code.",
            ["channel", "kind", "code"],
            registry=r,
        )
        self.http_requests = Counter(
            "touchline_http_requests",
            "HTTP requests answered, by method, route template and status.",
            ["method", "route", "status"],
            registry=r,
        )
        self.http_latency = Histogram(
            "touchline_http_request_duration_seconds",
            "Time to answer an HTTP request, by method and route template.",
            ["method", "route"],
            registry=r,
        )
        self.rate_limited = Counter(
            "touchline_rate_limited_requests",
            "Requests refused with 429 by the rate limits, by endpoint group.",
            ["group"],
            registry=r,
        )
        self.worker_items = Counter(
            "touchline_worker_items",
            "Events and timers a worker handled, by kind (event, timer) and result "
            "(processed, failed).",
            ["kind", "result"],
            registry=r,
        )
        self.store_outages = Counter(
            "touchline_store_unavailable_rounds",
            "Worker or dispatcher rounds lost to a store that refused or could not be "
            "reached, by component (worker, dispatcher).",
            ["component"],
            registry=r,
        )

    def count_events(self, endpoint: str, *, accepted: int, duplicates: int) -> None:
        """One ingest request's result."""
        if accepted:
            self.ingested.labels(endpoint, "accepted").inc(accepted)
        if duplicates:
            self.ingested.labels(endpoint, "duplicate").inc(duplicates)

    def observe_lateness(self, seconds: Iterable[float]) -> None:
        """Fired timers' lateness; a timer fired early (a clock step) counts as 0."""
        for value in seconds:
            self.timer_lateness.observe(max(value, 0.0))

    def count_judged(self, channel: str, *, status: str) -> None:
        """A message the delivery rules settled (``skipped``) or put off (``pending``)."""
        outcome = _JUDGED.get(status)
        if outcome is not None:
            self.messages.labels(channel, outcome).inc()

    def count_recorded(self, channel: str, *, status: str, error: Exception | None) -> None:
        """A send result written to the outbox row, and the provider error behind it, if any."""
        self.messages.labels(channel, _RECORDED.get(status, status)).inc()
        if isinstance(error, TransientDeliveryError):
            self.provider_errors.labels(channel, "transient", error.code).inc()
        elif isinstance(error, PermanentDeliveryError):
            self.provider_errors.labels(channel, "permanent", error.code).inc()

    def count_items(self, kind: str, *, processed: int, failed: int) -> None:
        """A worker's batch of events or timers (``kind``) and how it ended."""
        if processed:
            self.worker_items.labels(kind, "processed").inc(processed)
        if failed:
            self.worker_items.labels(kind, "failed").inc(failed)

    def count_outage(self, component: str) -> None:
        """A round of ``component`` (worker, dispatcher) lost to the store."""
        self.store_outages.labels(component).inc()

    def count_limited(self, group: str) -> None:
        self.rate_limited.labels(group).inc()

    def observe_request(self, *, method: str, route: str, status: int, seconds: float) -> None:
        method = method if method in KNOWN_METHODS else "other"
        self.http_requests.labels(method, route, str(status)).inc()
        self.http_latency.labels(method, route).observe(seconds)

    def watch_queues(
        self,
        engine: Engine,
        *,
        clock: Clock,
        monotonic: Callable[[], float] = time.monotonic,
        ttl: float = QUEUE_CACHE_SECONDS,
    ) -> QueueCollector:
        """Report the queue depths of the store behind ``engine`` on every scrape."""
        collector = QueueCollector(engine, clock=clock, monotonic=monotonic, ttl=ttl)
        self.registry.register(collector)
        return collector

    def exposition(self) -> bytes:
        """Everything, in the Prometheus text format (this may query the store)."""
        return _exposition(self.registry)


# -- queue depth --------------------------------------------------------------------------


@dataclass(frozen=True)
class QueueSnapshot:
    events_pending: int
    timers_due: int
    oldest_due_timer: datetime | None
    outbox_pending: int
    outbox_due: int


def read_queues(engine: Engine, *, now: datetime) -> QueueSnapshot:
    """The queue depths at ``now``; each count walks one index.

    ``ix_events_status_id``, ``ix_timers_due`` and ``ix_outbox_status_available``
    serve these, so the cost follows the backlog, not the size of the tables.
    """
    with engine.connect() as conn:
        pending = conn.execute(
            select(func.count()).select_from(events).where(events.c.status == EVENT_PENDING)
        ).scalar_one()
        due, oldest = conn.execute(
            select(func.count(), func.min(timers.c.due_at)).where(timers.c.due_at <= now)
        ).one()
        waiting = outbox.c.status.in_(OUTBOX_WAITING)
        outbox_pending = conn.execute(
            select(func.count()).select_from(outbox).where(waiting)
        ).scalar_one()
        outbox_due = conn.execute(
            select(func.count()).select_from(outbox).where(waiting, outbox.c.available_at <= now)
        ).scalar_one()
    return QueueSnapshot(int(pending), int(due), oldest, int(outbox_pending), int(outbox_due))


class QueueCollector(Collector):
    """Queue-depth gauges read from the store when scraped, cached for ``ttl`` seconds.

    A store that cannot be read reports ``touchline_store_up 0`` and no queue
    gauges (the failure is cached too, so a dead store is not hammered).
    """

    def __init__(
        self, engine: Engine, *, clock: Clock, monotonic: Callable[[], float], ttl: float
    ) -> None:
        self.engine = engine
        self.clock = clock
        self._monotonic = monotonic
        self._ttl = ttl
        self._lock = threading.Lock()
        self._read_at: float | None = None
        self._snapshot: QueueSnapshot | None = None
        self._taken_at: datetime | None = None

    def describe(self) -> Iterator[Metric]:
        # Names only: registering must not query the store.
        yield from self._families(None, None)

    def collect(self) -> Iterator[Metric]:
        snapshot, taken_at = self.snapshot()
        yield from self._families(snapshot, taken_at)

    def snapshot(self) -> tuple[QueueSnapshot | None, datetime | None]:
        """The latest snapshot and when it was taken; re-read once it is ``ttl`` old."""
        with self._lock:  # concurrent scrapes wait for one read instead of each reading
            at = self._monotonic()
            if self._read_at is None or at - self._read_at >= self._ttl:
                now = self.clock.now()
                try:
                    self._snapshot = read_queues(self.engine, now=now)
                except Exception as exc:  # noqa: BLE001 - a scrape must answer whatever happens
                    log.warning("queue depths not read: %s", exc)
                    self._snapshot = None
                self._read_at, self._taken_at = at, now
            return self._snapshot, self._taken_at

    def _families(self, s: QueueSnapshot | None, taken_at: datetime | None) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "touchline_store_up", "1 if the last read of the queue depths succeeded."
        )
        gauges = [
            ("touchline_events_pending", "Ingested events waiting for a worker."),
            ("touchline_timers_due", "Journey timers past their due time, not yet fired."),
            ("touchline_timers_overdue_seconds", "Age of the oldest due timer not yet fired."),
            ("touchline_outbox_pending", "Messages waiting for a dispatcher, or being sent."),
            ("touchline_outbox_due", "Of those, messages whose send time has come."),
        ]
        families = [GaugeMetricFamily(name, text) for name, text in gauges]
        if taken_at is not None:
            up.add_metric([], 0 if s is None else 1)
        if s is not None and taken_at is not None:
            overdue = (taken_at - s.oldest_due_timer).total_seconds() if s.oldest_due_timer else 0
            values = (
                s.events_pending,
                s.timers_due,
                max(overdue, 0),
                s.outbox_pending,
                s.outbox_due,
            )
            for family, value in zip(families, values, strict=True):
                family.add_metric([], value)
        yield up
        yield from families


# -- HTTP ---------------------------------------------------------------------------------


async def metrics_endpoint(request: Request) -> Response:
    """``GET /metrics``: the Prometheus text format; a Bearer token when one is configured."""
    token: Secret | None = request.app.state.settings.metrics_token
    if token is not None:
        scheme, _, given = (request.headers.get("authorization") or "").partition(" ")
        expected = token.reveal().encode()
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), expected):
            raise AuthError("GET /metrics needs Authorization: Bearer <TOUCHLINE_METRICS_TOKEN>")
    metrics: Metrics = request.app.state.metrics
    body = await run_in_threadpool(metrics.exposition)
    return Response(body, media_type=CONTENT_TYPE_LATEST)


class HttpMetricsMiddleware:
    """ASGI middleware counting each HTTP request by method, route template and status.

    The route is the template (``/u/{token}``), never the path, so label
    values stay few; a request no route matches is :data:`UNMATCHED`. A
    request that raises before answering counts as 500.
    """

    def __init__(self, app: ASGIApp, *, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def remember_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, remember_status)
        finally:
            self.metrics.observe_request(
                method=scope["method"],
                route=route_of(scope),
                status=status,
                seconds=time.perf_counter() - started,
            )


def route_of(scope: Scope) -> str:
    """The template of the route that served (or would serve) this request."""
    path = getattr(scope.get("route"), "path", None)
    if isinstance(path, str):
        return path
    # Answered before routing (a 429, a CORS preflight): find the route it was for.
    router = getattr(scope.get("app"), "router", None)
    found = _template(getattr(router, "routes", ()), scope)
    return found if found is not None else UNMATCHED


def _template(routes: Iterable[object], scope: Scope) -> str | None:
    """The first route template matching ``scope``, looking inside included routers.

    touchline includes its routers without a prefix, so an inner route's
    ``path`` is already the whole template.
    """
    for route in routes:
        inner = getattr(route, "original_router", None)  # FastAPI's included router
        if inner is not None:
            found = _template(getattr(inner, "routes", ()), scope)
            if found is not None:
                return found
            continue
        path, matches = getattr(route, "path", None), getattr(route, "matches", None)
        if isinstance(path, str) and matches is not None and matches(scope)[0] is not Match.NONE:
            return path
    return None


# -- a worker's own endpoint --------------------------------------------------------------


class _QuietHandler(WSGIRequestHandler):
    """Scrapes every few seconds are not worth a log line each."""

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib's name
        return


def metrics_wsgi_app(metrics: Metrics, *, token: Secret | None = None) -> Callable[..., Any]:
    """A WSGI app serving ``metrics`` in the Prometheus text format at any path.

    With ``token``, a scrape needs ``Authorization: Bearer <token>`` as the
    API's ``/metrics`` does, else it answers ``401 {code, message}``.
    """
    exposition = make_wsgi_app(metrics.registry)
    if token is None:
        return exposition  # type: ignore[no-any-return]
    expected = token.reveal().encode()

    def guarded(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        scheme, _, given = str(environ.get("HTTP_AUTHORIZATION", "")).partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), expected):
            return exposition(environ, start_response)
        body = json.dumps(
            {
                "code": "unauthorized",
                "message": "metrics need Authorization: Bearer <TOUCHLINE_METRICS_TOKEN>",
            }
        ).encode()
        start_response(
            "401 Unauthorized",
            [("Content-Type", "application/json"), ("Content-Length", str(len(body)))],
        )
        return [body]

    return guarded


@dataclass
class MetricsServer:
    """A running metrics endpoint; ``port`` is the one bound (useful when 0 was asked)."""

    host: str
    port: int
    _server: ThreadingWSGIServer
    _thread: threading.Thread

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def serve_metrics(
    metrics: Metrics, *, host: str, port: int, token: Secret | None = None
) -> MetricsServer:
    """Serve ``metrics`` over HTTP from a daemon thread (a worker process has no web app).

    Port 0 picks a free port; :attr:`MetricsServer.port` says which.
    """
    server = make_server(
        host,
        port,
        metrics_wsgi_app(metrics, token=token),
        server_class=ThreadingWSGIServer,
        handler_class=_QuietHandler,
    )
    thread = threading.Thread(target=server.serve_forever, name="metrics", daemon=True)
    thread.start()
    return MetricsServer(host, int(server.server_port), server, thread)
