"""Signing in and out of the console.

The sign-in form posts an email and a password. Attempts are limited per
client address and per email (:data:`SIGN_IN_LIMIT`), on top of argon2's own
cost; a wrong email and a wrong password get the same answer in the same
time. A successful sign-in starts a new session (a token fixed before sign-in
is never reused) and sets the cookie HttpOnly, SameSite=Lax, and Secure
when the browser came over https.
"""

from __future__ import annotations

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from touchline.config import RateLimit
from touchline.ops.limits import RateLimiter
from touchline.store.db import transaction
from touchline.web.console.base import (
    PREFIX,
    ROLES_OF,
    SECTIONS,
    SESSION_COOKIE,
    SIGN_IN_CSRF_COOKIE,
    current_session,
    engine_of,
    field,
    guard,
    is_https,
    new_sign_in_token,
    now_of,
    page,
    read_form,
    redirect,
    run,
)
from touchline.web.console.users import (
    SESSION_LIFETIME,
    authenticate_password,
    end_session,
    normal_email,
    start_session,
)

router = APIRouter()

#: Sign-in attempts: a burst of 10, then one every 6 seconds, per client address and per email.
SIGN_IN_LIMIT = RateLimit(rate=1 / 6, burst=10)
#: How long the sign-in form's double-submit cookie lives.
SIGN_IN_FORM_SECONDS = 3600


def sign_in_limiter() -> RateLimiter:
    """The app's sign-in buckets (one set per app, in its memory)."""
    return RateLimiter({"ip": SIGN_IN_LIMIT, "email": SIGN_IN_LIMIT})


def safe_next(value: str | None) -> str:
    """Where to go after signing in: a console path only, never another site."""
    if not value or not value.startswith(PREFIX + "/") or value.startswith("//"):
        return PREFIX + "/"
    if "\\" in value or any(ord(c) < 32 for c in value):
        return PREFIX + "/"
    return value


@router.get("/")
async def home(request: Request) -> Response:
    """The first section the user's role may open."""
    session = await guard(request, "customers")  # every role may open customers
    for name, _, roles in SECTIONS:
        if session.user.role in roles:
            return redirect(f"{PREFIX}/{name}")
    return redirect(f"{PREFIX}/customers")


@router.get("/sign-in")
async def sign_in_page(request: Request) -> Response:
    session = await current_session(request)
    target = safe_next(request.query_params.get("next"))
    if session is not None:
        return redirect(target)
    return _form(request, target=target, email="", error="")


def _form(request: Request, *, target: str, email: str, error: str, status: int = 200) -> Response:
    token = new_sign_in_token()
    response = page(
        request,
        "sign_in.html",
        session=None,
        title="Sign in",
        target=target,
        email=email,
        error=error,
        sign_in_csrf=token,
        status=status,
    )
    response.set_cookie(
        SIGN_IN_CSRF_COOKIE,
        token,
        max_age=SIGN_IN_FORM_SECONDS,
        path=PREFIX,
        httponly=True,
        samesite="strict",
        secure=is_https(request),
    )
    return response


@router.post("/sign-in")
async def sign_in(request: Request) -> Response:
    form = await read_form(request, None)
    email = field(form, "email")[:320]
    password = field(form, "password")
    target = safe_next(field(form, "next"))
    client = request.client.host if request.client else "-"
    limiter: RateLimiter = request.app.state.console_sign_in_limiter
    if limiter.take("ip", client) or limiter.take("email", normal_email(email)):
        return _form(
            request,
            target=target,
            email=email,
            error="Too many attempts. Wait a minute and try again.",
            status=429,
        )
    now = now_of(request)

    def work() -> str | None:
        with transaction(engine_of(request)) as conn:
            user_id = authenticate_password(conn, email, password)
            if user_id is None:
                return None
            return start_session(
                conn,
                user_id,
                now=now,
                ip=client,
                user_agent=request.headers.get("user-agent"),
            )

    token = await run(work)
    if token is None:
        return _form(
            request, target=target, email=email, error="Wrong email or password.", status=401
        )
    response = redirect(target)
    response.set_cookie(
        SESSION_COOKIE,
        token,
        max_age=int(SESSION_LIFETIME.total_seconds()),
        path=PREFIX,
        httponly=True,
        samesite="lax",
        secure=is_https(request),
    )
    response.delete_cookie(SIGN_IN_CSRF_COOKIE, path=PREFIX)
    return response


@router.post("/sign-out")
async def sign_out(request: Request) -> Response:
    session = await guard(request, "customers")
    await read_form(request, session)

    def work() -> None:
        with transaction(engine_of(request)) as conn:
            end_session(conn, session.token)

    await run(work)
    response = redirect(f"{PREFIX}/sign-in", notice="signed_out")
    response.delete_cookie(SESSION_COOKIE, path=PREFIX)
    return response


__all__ = ["ROLES_OF", "router", "safe_next"]
