"""The console sub-application: its routers, static files, error pages and headers."""

from __future__ import annotations

import logging

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, RedirectResponse, Response
from starlette.staticfiles import StaticFiles

from touchline.errors import AuthError, NotFound, TouchlineError
from touchline.web.console import (
    auth,
    broadcasts,
    customers,
    inbox,
    journeys,
    message_templates,
    overview,
    queue,
    segments,
    settings,
)
from touchline.web.console.base import (
    PREFIX,
    SESSION_COOKIE,
    STATIC,
    Forbidden,
    SecurityHeaders,
    SignInRequired,
    current_session,
    error_page,
)
from touchline.web.console.users import Session

log = logging.getLogger("touchline.web.console")

#: Where a shop's pages load the tracker from (see static/tracker.js).
TRACKER_PATH = "/touchline.js"


def mount(app: FastAPI) -> None:
    """Serve the console under ``/console`` and the site tracker at ``/touchline.js``.

    The sub-application shares the parent's state (store, clock, settings)
    but has its own error pages (HTML, not the API's JSON) and headers.
    """
    console = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    console.state = app.state
    app.state.console_sign_in_limiter = auth.sign_in_limiter()
    console.add_middleware(SecurityHeaders)
    console.add_exception_handler(SignInRequired, _sign_in_required)
    console.add_exception_handler(Forbidden, _forbidden)
    console.add_exception_handler(TouchlineError, _touchline_error)
    console.add_exception_handler(RequestValidationError, _bad_request)
    console.add_exception_handler(StarletteHTTPException, _http_error)
    console.add_exception_handler(Exception, _unhandled)
    console.mount("/static", StaticFiles(directory=STATIC), name="static")
    for module in (
        auth,
        overview,
        journeys,
        message_templates,
        customers,
        segments,
        broadcasts,
        queue,
        inbox,
        settings,
    ):
        console.include_router(module.router)
    app.add_api_route(PREFIX, _to_console, methods=["GET"], include_in_schema=False)
    app.add_api_route(TRACKER_PATH, tracker_script, methods=["GET"], include_in_schema=False)
    app.mount(PREFIX, console)


async def _to_console() -> Response:
    return RedirectResponse(PREFIX + "/", status_code=307)


async def tracker_script() -> Response:
    """The site tracker, cacheable for an hour; any site may load it."""
    return FileResponse(
        STATIC / "tracker.js",
        media_type="text/javascript; charset=utf-8",
        headers={"Cache-Control": "public, max-age=3600", "X-Content-Type-Options": "nosniff"},
    )


async def _sign_in_required(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, SignInRequired)
    from urllib.parse import quote

    response = RedirectResponse(
        f"{PREFIX}/sign-in?next={quote(exc.next_path, safe='')}", status_code=303
    )
    if request.cookies.get(SESSION_COOKIE):  # an expired session: forget it
        response.delete_cookie(SESSION_COOKIE, path=PREFIX)
    return response


async def _forbidden(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, Forbidden)
    session = await _session_or_none(request)
    return error_page(request, session, status=403, title="Not allowed", message=exc.message)


async def _touchline_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, TouchlineError)
    session = await _session_or_none(request)
    if isinstance(exc, NotFound):
        return error_page(request, session, status=404, title="Not found", message=exc.message)
    if isinstance(exc, AuthError):
        return error_page(request, session, status=403, title="Not allowed", message=exc.message)
    if exc.status >= 500:
        log.error("%s on %s %s: %s", exc.code, request.method, request.url.path, exc.message)
        return error_page(
            request,
            session,
            status=exc.status,
            title="Something went wrong",
            message="The store did not answer. Try again in a moment.",
        )
    return error_page(
        request, session, status=exc.status, title="Cannot do that", message=exc.message
    )


async def _bad_request(request: Request, exc: Exception) -> Response:
    # Path parameters that do not parse (a task id that is not a number) name nothing here.
    session = await _session_or_none(request)
    return error_page(request, session, status=404, title="Not found", message="No such page.")


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    session = await _session_or_none(request)
    if exc.status_code == 404:
        return error_page(request, session, status=404, title="Not found", message="No such page.")
    return error_page(
        request, session, status=exc.status_code, title="Cannot do that", message=str(exc.detail)
    )


async def _unhandled(request: Request, exc: Exception) -> Response:
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_page(
        request,
        None,
        status=500,
        title="Something went wrong",
        message="The error is in the server log.",
    )


async def _session_or_none(request: Request) -> Session | None:
    try:
        return await current_session(request)
    except Exception:  # noqa: BLE001 - an error page must render even when the store is down
        return None
