"""What every console page shares: templates, sign-in checks, CSRF, headers, errors.

The console is a sub-application mounted at ``/console`` (see
:func:`touchline.web.console.mount`), so its errors are HTML pages and its
security headers apply to every answer it gives, without touching the API's.

* **Sign-in.** :func:`guard` reads the session cookie, finds the live session
  and checks the user's role; no session redirects to the sign-in page, a
  role without access answers 403. Every query a page runs is scoped by the
  signed-in user's ``workspace_id``; ids from URLs are looked up *within* it,
  so another workspace's id is simply not found (404).
* **CSRF.** A signed-in form carries ``csrf_token``, an HMAC of the session
  token (so it needs no storage and dies with the session); the sign-in form,
  which has no session yet, uses a double-submit cookie. :func:`read_form`
  refuses a POST without the right token with 403 before anything else runs.
  ``fetch`` calls send the same token in ``X-CSRF-Token``.
* **Headers.** A Content-Security-Policy allowing scripts and styles from the
  console's own origin only (no inline script at all), no framing, no
  referrer, no caching of pages.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

from jinja2 import Environment, FileSystemLoader, StrictUndefined
from markupsafe import Markup
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from touchline.store.db import transaction
from touchline.web.console.users import (
    ADMIN,
    MARKETER,
    OPERATOR,
    ROLES,
    Session,
    find_session,
    needs_touch,
    touch_session,
)

PREFIX = "/console"
HERE = Path(__file__).parent
TEMPLATES = HERE / "templates"
STATIC = HERE / "static"
#: The session cookie; ``__Host-`` would need https, which a laptop does not have.
SESSION_COOKIE = "tl_console"
#: The sign-in form's double-submit cookie.
SIGN_IN_CSRF_COOKIE = "tl_console_csrf"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"
#: Largest form body read; the biggest form is a journey or template being edited.
MAX_FORM_BYTES = 512 * 1024

#: Sections of the console, in menu order, and the roles that may open them.
SECTIONS: tuple[tuple[str, str, frozenset[str]], ...] = (
    ("overview", "Overview", frozenset(ROLES)),
    ("journeys", "Journeys", frozenset({ADMIN, MARKETER})),
    ("templates", "Templates", frozenset({ADMIN, MARKETER})),
    ("customers", "Customers", frozenset(ROLES)),
    ("segments", "Segments", frozenset({ADMIN, MARKETER})),
    ("broadcasts", "Broadcasts", frozenset({ADMIN, MARKETER})),
    ("queue", "Operator queue", frozenset({ADMIN, OPERATOR})),
    ("inbox", "Inbox", frozenset({ADMIN, MARKETER})),
    ("settings", "Settings", frozenset({ADMIN})),
)
ROLES_OF = {name: roles for name, _, roles in SECTIONS}

#: Every console page: own-origin scripts and styles only, no framing, forms post home.
PAGE_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'; frame-src 'none'"
)
PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "X-Robots-Tag": "noindex, nofollow",
    "Cross-Origin-Opener-Policy": "same-origin",
}

T = TypeVar("T")

env = Environment(
    loader=FileSystemLoader(TEMPLATES),
    autoescape=True,
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


def _plain(value: Any) -> str:
    """A stored value as text: JSON for mappings and lists (escaped by autoescape later)."""
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False, default=str)
    return "" if value is None else str(value)


env.filters["plain"] = _plain


# -- errors the sub-application turns into pages -------------------------------------------


class SignInRequired(Exception):
    """No live session: the browser goes to the sign-in page and comes back after."""

    def __init__(self, next_path: str) -> None:
        super().__init__(next_path)
        self.next_path = next_path


class Forbidden(Exception):
    """Signed in, but this role may not do this, or the form's CSRF token is wrong."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


# -- sessions and roles ------------------------------------------------------------------


def engine_of(request: Request) -> Any:
    return request.app.state.engine


def now_of(request: Request) -> datetime:
    return request.app.state.clock.now()  # type: ignore[no-any-return]


async def run(func: Callable[[], T]) -> T:
    """Run store work off the event loop (the store is synchronous SQLAlchemy)."""
    return await run_in_threadpool(func)


async def current_session(request: Request) -> Session | None:
    token = request.cookies.get(SESSION_COOKIE)
    if not token:
        return None
    now = now_of(request)

    def lookup() -> Session | None:
        engine = engine_of(request)
        with engine.connect() as conn:
            found = find_session(conn, token, now=now)
            stale = found is not None and needs_touch(conn, found.id, now=now)
        if found is not None and stale:
            with transaction(engine) as conn:
                touch_session(conn, found.id, now=now)
        return found

    return await run(lookup)


async def guard(request: Request, section: str) -> Session:
    """The signed-in session, if its role may open ``section``; else sign in or 403."""
    session = await current_session(request)
    if session is None:
        target = request.url.path
        if request.url.query:
            target += "?" + request.url.query
        raise SignInRequired(target if request.method == "GET" else PREFIX + "/")
    if session.user.role not in ROLES_OF[section]:
        raise Forbidden(f"A {session.user.role} cannot open {section}.")
    return session


# -- CSRF ----------------------------------------------------------------------------------


def csrf_token(session: Session) -> str:
    """The session's CSRF token: an HMAC of its secret token, so nothing is stored."""
    return hmac.new(session.token.encode(), b"touchline console csrf", hashlib.sha256).hexdigest()


def check_csrf(session: Session, given: str | None) -> None:
    if not given or not hmac.compare_digest(given, csrf_token(session)):
        raise Forbidden("The form's security token is missing or wrong. Reload the page and retry.")


async def read_form(request: Request, session: Session | None) -> FormData:
    """The posted form, once its CSRF token is checked (403 without it).

    ``session`` None is the sign-in form: its token must equal the
    double-submit cookie set with the form.
    """
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_FORM_BYTES:
        raise Forbidden("The form is too large.")
    form = await request.form(max_files=0, max_fields=200, max_part_size=MAX_FORM_BYTES)
    given = form.get(CSRF_FIELD)
    given = given if isinstance(given, str) else None
    if session is None:
        cookie = request.cookies.get(SIGN_IN_CSRF_COOKIE)
        if not given or not cookie or not hmac.compare_digest(given, cookie):
            raise Forbidden("The sign-in form expired. Reload the page and retry.")
    else:
        check_csrf(session, given)
    return form


def check_header_csrf(request: Request, session: Session) -> None:
    """For ``fetch`` posts: the token comes in the ``X-CSRF-Token`` header."""
    check_csrf(session, request.headers.get(CSRF_HEADER))


def new_sign_in_token() -> str:
    return secrets.token_urlsafe(24)


def field(form: FormData, name: str, default: str = "") -> str:
    value = form.get(name)
    return value if isinstance(value, str) else default


# -- rendering -----------------------------------------------------------------------------


@dataclass(frozen=True)
class NavItem:
    name: str
    label: str
    href: str
    active: bool


def nav(session: Session, active: str) -> list[NavItem]:
    return [
        NavItem(name, label, f"{PREFIX}/{name}", name == active)
        for name, label, roles in SECTIONS
        if session.user.role in roles
    ]


def page(
    request: Request,
    template: str,
    *,
    session: Session | None,
    section: str = "",
    status: int = 200,
    headers: Mapping[str, str] | None = None,
    **context: Any,
) -> HTMLResponse:
    """Render ``template`` inside the layout for the signed-in ``session``."""
    values: dict[str, Any] = {
        "prefix": PREFIX,
        "session": session,
        "user": session.user if session else None,
        "nav": nav(session, section) if session else [],
        "csrf": csrf_token(session) if session else "",
        "section": section,
        "notice": NOTICES.get(request.query_params.get("notice", ""), ""),
        **context,
    }
    html = env.get_template(template).render(values)
    return HTMLResponse(html, status_code=status, headers=dict(headers or {}))


def redirect(path: str, *, notice: str | None = None) -> RedirectResponse:
    """303 to a console path (after a POST the browser GETs the result)."""
    if notice:
        path += ("&" if "?" in path else "?") + "notice=" + quote(notice)
    return RedirectResponse(path, status_code=303)


def markup(svg: str) -> Markup:
    """Server-drawn SVG: built from escaped parts (see charts, flow), shown as is."""
    return Markup(svg)  # noqa: S704 - every text inside was escaped when drawn


#: Messages a redirect may show, by code: a URL never carries text into the page.
NOTICES = {
    "signed_out": "You are signed out.",
    "paused": "The journey is paused: it admits no one; those inside carry on.",
    "resumed": "The journey is active again.",
    "created": "The journey is created.",
    "saved": "Saved.",
    "unchanged": "Nothing changed.",
    "claimed": "The task is yours.",
    "closed": "The task is closed.",
    "no_task": "No task is due now.",
    "revoked": "The key is revoked.",
    "broadcast_draft": "The broadcast is saved as a draft: schedule it when it is ready.",
    "broadcast_scheduled": "The broadcast is scheduled.",
    "broadcast_cancelled": "The broadcast is cancelled: messages still waiting are skipped.",
}


# -- headers on every answer ---------------------------------------------------------------


class SecurityHeaders:
    """ASGI middleware: the console's headers on every answer that does not set its own."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        static = scope["path"].startswith("/static/") or scope["path"].startswith(
            PREFIX + "/static/"
        )

        async def wrapped(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                extra = dict(PAGE_HEADERS)
                if static:
                    extra.pop("Cache-Control")  # CSS and JS may be cached
                extra["Content-Security-Policy"] = PAGE_CSP
                if _is_https(scope):
                    extra["Strict-Transport-Security"] = "max-age=31536000"
                for name, value in extra.items():
                    if name.lower().encode() not in present:
                        headers.append((name.lower().encode(), value.encode()))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, wrapped)


def _is_https(scope: Scope) -> bool:
    return scope.get("scheme") == "https"


def is_https(request: Request) -> bool:
    """Whether the browser reached us over https (uvicorn's proxy headers included)."""
    if request.url.scheme == "https":
        return True
    public: str = request.app.state.settings.public_url
    return public.startswith("https://") and request.url.hostname not in ("127.0.0.1", "localhost")


def error_page(
    request: Request, session: Session | None, *, status: int, title: str, message: str
) -> Response:
    return page(
        request,
        "error.html",
        session=session,
        status=status,
        title=title,
        message=message,
    )
