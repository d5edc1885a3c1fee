"""The HTTP application: ``create_app(settings)`` builds it, uvicorn serves it.

Error contract: every error answer is JSON ``{"code", "message"}`` with a
stable ``code``:

* a :class:`~touchline.errors.TouchlineError` answers with its ``code`` and
  ``status``; for 5xx statuses the message is generic and details are logged;
* FastAPI request validation failures are ``400 invalid_input``;
* a body over 5 MB is ``413 payload_too_large``, JSON nested deeper than 64
  levels ``400 nested_too_deep`` (:mod:`touchline.web.bodies`);
* a store error is ``503 store_busy`` (with ``Retry-After``) when another
  writer held the lock past the timeout, ``507 store_full`` when the disk or
  database is full, else ``503 store_error``; nothing was written;
* unknown routes are ``404 not_found``, wrong methods ``405 method_not_allowed``;
* anything else is ``500 internal_error`` with the message ``"internal error"``
  (the traceback goes to the log, never to the client).

CORS is open (any origin, no credentials) so browsers can post events from a
shop's own pages; the write key is not a secret from the shop's visitors.

``app.openapi()`` builds the OpenAPI document, error shapes included
(:mod:`touchline.web.openapi`); it is not served.

``app_from_env`` is the uvicorn factory:
``uvicorn --factory touchline.web.app:app_from_env``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from touchline.clock import Clock, SystemClock
from touchline.config import Settings
from touchline.errors import StoreError, TouchlineError
from touchline.ops.limits import RateLimiter, RateLimitMiddleware, limits_from
from touchline.ops.logs import configure_logging
from touchline.ops.metrics import HttpMetricsMiddleware, Metrics, metrics_endpoint
from touchline.store.db import make_engine, migrate, store_error
from touchline.store.workspaces import KeyCache
from touchline.web import console, public, track
from touchline.web.api import admin, callbacks, consent, experiments, ingest, promo, reports, tasks
from touchline.web.api import broadcasts as broadcasts_api
from touchline.web.api import catalog as catalog_api
from touchline.web.api import privacy as privacy_api
from touchline.web.api import segments as segments_api
from touchline.web.api import settings as settings_api
from touchline.web.bodies import BodyGuardMiddleware
from touchline.web.openapi import ERROR_RESPONSES, openapi_document

log = logging.getLogger("touchline.web")

_HTTP_CODES = {
    400: "invalid_input",  # FastAPI's "There was an error parsing the body"
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
}
_GENERIC_5XX = {
    503: "the service is temporarily unavailable",
    507: "the store is out of space",
}
_GENERIC_CODES = {
    "store_busy": "the store is busy; try again shortly",
}


def create_app(
    settings: Settings,
    *,
    engine: Engine | None = None,
    clock: Clock | None = None,
    monotonic: Callable[[], float] = time.monotonic,
) -> FastAPI:
    """The touchline HTTP app.

    ``engine`` defaults to one built from ``settings.database_url`` (the
    schema is not migrated here; see :func:`app_from_env`); ``clock`` to the
    system clock. Both, the settings and a :class:`KeyCache` live on
    ``app.state`` for the routers, with the app's own :class:`Metrics`
    (``app.state.metrics``, served at ``/metrics``) and the rate limits'
    buckets (``app.state.rate_limiter``). ``monotonic`` refills the buckets
    and ages the cached queue depths; tests pass one they can move.
    """
    app = FastAPI(
        title="touchline",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        responses=ERROR_RESPONSES,
    )
    app.openapi = lambda: openapi_document(app)  # type: ignore[method-assign]
    app.state.settings = settings
    app.state.engine = engine if engine is not None else make_engine(settings.database_url)
    app.state.clock = clock if clock is not None else SystemClock()
    app.state.key_cache = KeyCache()
    app.state.metrics = metrics = Metrics()
    metrics.watch_queues(app.state.engine, clock=app.state.clock, monotonic=monotonic)
    app.state.rate_limiter = RateLimiter(limits_from(settings), monotonic=monotonic)

    # Each add wraps the ones before: the rate limits sit inside CORS (a 429 carries its
    # headers), and the request metrics outside both (they count 429s and preflights too).
    # The body guard is innermost: a rate-limited request's body is never read.
    app.add_middleware(BodyGuardMiddleware)
    app.add_middleware(
        RateLimitMiddleware, limiter=app.state.rate_limiter, on_limited=metrics.count_limited
    )
    app.add_middleware(
        CORSMiddleware,
        allow_origins=["*"],
        allow_credentials=False,
        allow_methods=["GET", "POST", "OPTIONS"],
        allow_headers=["Authorization", "Content-Type", "Content-Encoding"],
        max_age=86400,
    )
    app.add_middleware(HttpMetricsMiddleware, metrics=metrics)
    app.add_exception_handler(TouchlineError, _touchline_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(DBAPIError, _store_error)
    app.add_exception_handler(Exception, _unhandled_error)

    app.add_api_route("/healthz", healthz, methods=["GET"])
    app.add_api_route("/readyz", readyz, methods=["GET"])
    app.add_api_route("/metrics", metrics_endpoint, methods=["GET"], include_in_schema=False)
    app.include_router(ingest.router)
    app.include_router(consent.router)  # before admin: its /profiles/{ref:path} would match
    app.include_router(privacy_api.router)  # before admin, as consent
    app.include_router(admin.router)
    app.include_router(tasks.router)
    app.include_router(promo.router)
    app.include_router(catalog_api.router)
    app.include_router(public.router)
    app.include_router(track.router)
    app.include_router(settings_api.router)
    app.include_router(callbacks.router)
    app.include_router(reports.router)
    app.include_router(experiments.router)
    app.include_router(broadcasts_api.router)
    app.include_router(segments_api.router)
    console.mount(app)  # /console pages and the /touchline.js site tracker
    return app


def app_from_env() -> FastAPI:
    """uvicorn factory: settings from the environment, store migrated, app built."""
    settings = Settings.from_env()
    configure_logging(
        settings.log_level,
        fmt=settings.log_format,
        secrets=(settings.smtp_password, settings.metrics_token),
    )
    logging.getLogger("touchline").setLevel(settings.log_level.upper())
    engine = make_engine(settings.database_url)
    migrate(engine)
    return create_app(settings, engine=engine)


async def healthz() -> dict[str, str]:
    """The process is up and serving requests."""
    return {"status": "ok"}


async def readyz(request: Request) -> JSONResponse:
    """The store answers ``select 1``; 503 ``store_unavailable`` when it does not."""
    engine: Engine = request.app.state.engine
    try:
        await run_in_threadpool(_ping, engine)
    except Exception:  # noqa: BLE001 - any failure means "not ready"
        log.warning("readiness check failed", exc_info=True)
        return _error(503, "store_unavailable", "the store is not reachable")
    return JSONResponse({"status": "ready"})


def _ping(engine: Engine) -> None:
    # A raw DBAPI connection: no transaction, so SQLite's writer lock is not taken.
    conn = engine.raw_connection()
    try:
        cursor = conn.cursor()
        cursor.execute("select 1")
        cursor.fetchall()
        cursor.close()
    finally:
        conn.close()


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"code": code, "message": message}, status_code=status)


async def _touchline_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, TouchlineError)
    if exc.status >= 500:
        log.error("%s on %s %s: %s", exc.code, request.method, request.url.path, exc.message)
        message = _GENERIC_CODES.get(exc.code) or _GENERIC_5XX.get(exc.status, "internal error")
        response = _error(exc.status, exc.code, message)
        retry_after = getattr(exc, "retry_after", None)
        if retry_after is not None:
            response.headers["Retry-After"] = str(retry_after)
        return response
    return _error(exc.status, exc.code, exc.message)


async def _store_error(request: Request, exc: Exception) -> JSONResponse:
    """A driver error that escaped a route (a read, say): answered as the store error it is."""
    assert isinstance(exc, DBAPIError)
    translated: StoreError = store_error(exc)
    return await _touchline_error(request, translated)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    problems = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error.get("loc", ()))
        problems.append(f"{where}: {error.get('msg', 'invalid')}" if where else error.get("msg"))
    return _error(400, "invalid_input", "; ".join(problems) or "invalid request")


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = _HTTP_CODES.get(exc.status_code, f"http_{exc.status_code}")
    if exc.status_code == 404:
        message = f"no such endpoint: {request.method} {request.url.path}"
    else:
        message = str(exc.detail)
    response = _error(exc.status_code, code, message)
    if exc.headers:
        response.headers.update(exc.headers)
    if exc.status_code == 405:
        # The router names only the first route of the path; a path may have several.
        response.headers["Allow"] = ", ".join(_allowed_methods(request))
    return response


def _allowed_methods(request: Request) -> list[str]:
    """Every method some route of this request's path answers (one route per method)."""
    methods: set[str] = set()
    for route in request.app.router.routes:
        route_methods = getattr(route, "methods", None)
        if route_methods and route.matches(request.scope)[0] is not Match.NONE:
            methods.update(route_methods)
    return sorted(methods)


async def _unhandled_error(request: Request, exc: Exception) -> JSONResponse:
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return _error(500, "internal_error", "internal error")
