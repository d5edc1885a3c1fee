"""Customer-facing pages: unsubscribe, subscription preferences, double opt-in.

No login: the signed token in the URL (:mod:`touchline.messaging.links`)
names the workspace, the customer and the channel, and nothing else
authenticates. The rules these pages keep:

* ``GET`` never changes anything. Mail scanners and link previews fetch
  every URL in a message; only a ``POST`` unsubscribes or confirms.
* ``POST /u/{token}`` is RFC 8058 one-click unsubscribe (mailbox providers
  post ``List-Unsubscribe=One-Click``) and also the confirmation page's
  button. It is idempotent: a second POST writes nothing and answers 200.
* A bad link answers a 400 HTML page, except for a one-click POST, which
  answers the API's JSON ``{code, message}`` (no person is reading it).
* The preference form carries a CSRF field derived from the token, checked
  on save.
* Russian when the customer's locale starts with ``ru`` or is unknown,
  English otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, StrictUndefined
from sqlalchemy import Connection, Engine, select
from starlette.concurrency import run_in_threadpool

from touchline.errors import InputError, TouchlineError
from touchline.measure.engagement import record_message_event
from touchline.measure.rollups import bump_message
from touchline.messaging.links import (
    BAD_LINK,
    LinkClaims,
    LinkKind,
    check_csrf,
    csrf_token,
    make_token,
    preferences_url,
    read_token,
    workspace_of,
)
from touchline.messaging.policies import MARKETING, ConsentRecord, consent_state
from touchline.store.consent import (
    CONSENT_CHANNELS,
    CONSENT_TOPICS,
    Provenance,
    confirm_pending,
    load_consents,
    record_consent,
    unsubscribe,
)
from touchline.store.db import transaction
from touchline.store.ingest import get_profile
from touchline.store.tables import outbox, workspaces
from touchline.web.public_text import TEXTS, channel_label, language, subject, topic_labels

router = APIRouter(include_in_schema=False)

TEMPLATES = Path(__file__).parent / "templates" / "public"
#: A preference form is a few hundred bytes; anything far larger is not ours.
MAX_FORM_BYTES = 16 * 1024
#: Shown on every preference page, after the link's own channel.
PAGE_CHANNELS = ("email", "sms")
#: Which profile field holds the address a channel's suppression is keyed on.
ADDRESS_FIELDS = {"email": "email", "sms": "phone"}
#: Pages hold a bearer token in their URL: never cached, framed, indexed or referred.
PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "X-Robots-Tag": "noindex, nofollow",
}
BAD_FORM = "bad_form"

_env = Environment(
    loader=FileSystemLoader(TEMPLATES),
    autoescape=True,
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


@dataclass(frozen=True)
class OpenedLink:
    """A verified link with what its pages need: the customer, the shop, the language."""

    token: str
    claims: LinkClaims
    secret: bytes
    profile: dict[str, Any]
    shop: str
    settings: Mapping[str, Any]
    lang: str

    @property
    def profile_id(self) -> int:
        return int(self.profile["id"])


# -- unsubscribe ------------------------------------------------------------------------


@router.get("/u/{token}")
async def unsubscribe_page(request: Request, token: str) -> Response:
    """Ask before unsubscribing; a GET changes nothing (link scanners prefetch it)."""
    try:
        link = await run_in_threadpool(_read, request, token, "unsubscribe")
    except TouchlineError as exc:
        return _error_page(request, exc)
    t = TEXTS[link.lang]
    what = subject(link.lang, link.claims.channel, _topic_label(link))
    return _page(
        "unsubscribe.html",
        link,
        title=t["unsubscribe_title"].format(what=what),
        t=t,
    )


@router.post("/u/{token}")
async def unsubscribe_now(request: Request, token: str) -> Response:
    """RFC 8058 one-click unsubscribe, and the confirmation page's button. Idempotent."""
    try:
        content_type, body = await _read_body(request)
    except InputError as exc:
        return _error_page(request, exc)
    one_click = _is_one_click(content_type, body)
    now = request.app.state.clock.now()

    def run() -> tuple[OpenedLink, str]:
        with transaction(request.app.state.engine) as conn:
            link = _open(conn, token, "unsubscribe")
            claims = link.claims
            where = "one-click" if one_click else "unsubscribe page"
            if claims.message_id is not None:
                where += f" (message #{claims.message_id})"
            changed = unsubscribe(
                conn,
                workspace_id=claims.workspace_id,
                profile_id=link.profile_id,
                channel=claims.channel,
                address=_address(conn, link, claims.channel),
                at=now,
                provenance=_provenance(request, where),
                topic=claims.topic,
            )
            if changed and claims.message_id is not None:  # the message that lost a subscriber
                recorded = record_message_event(
                    conn,
                    workspace_id=claims.workspace_id,
                    outbox_id=claims.message_id,
                    kind="unsubscribed",
                    at=now,
                    detail=where,
                )
                if recorded:
                    bump_message(conn, claims.message_id, at=now, unsubscribed=1)
            return link, _preferences_token(link, now)

    try:
        link, prefs = await run_in_threadpool(run)
    except TouchlineError as exc:
        if one_click:
            raise  # the app answers JSON {code, message}
        return _error_page(request, exc)
    t = TEXTS[link.lang]
    what = subject(link.lang, link.claims.channel, _topic_label(link))
    return _page(
        "unsubscribed.html",
        link,
        title=t["unsubscribed_title"],
        t=t,
        done=t["unsubscribed_body"].format(what=what),
        preferences_url=preferences_url(request.app.state.settings.public_url, prefs),
    )


# -- preferences ------------------------------------------------------------------------


@router.get("/p/{token}")
async def preferences_page(request: Request, token: str) -> Response:
    """Per channel: subscribed or not, and per topic; as the ledger says now."""

    def run() -> tuple[OpenedLink, list[dict[str, Any]]]:
        with request.app.state.engine.connect() as conn:
            link = _open(conn, token, "preferences")
            records = load_consents(conn, link.claims.workspace_id, link.profile_id)
            return link, _channel_states(conn, link, records)

    try:
        link, channels = await run_in_threadpool(run)
    except TouchlineError as exc:
        return _error_page(request, exc)
    t = TEXTS[link.lang]
    return _page(
        "preferences.html",
        link,
        title=t["preferences_title"],
        t=t,
        intro=t["preferences_intro"].format(shop=link.shop),
        channels=channels,
        csrf=csrf_token(link.secret, token),
        saved=request.query_params.get("saved") == "1",
    )


@router.post("/p/{token}")
async def save_preferences(request: Request, token: str) -> Response:
    """Write a grant or withdrawal for each switch the customer changed, then show the page."""
    now = request.app.state.clock.now()
    try:
        _, body = await _read_body(request)
        form = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)

        def run() -> None:
            with transaction(request.app.state.engine) as conn:
                link = _open(conn, token, "preferences")
                if not check_csrf(link.secret, token, _first(form, "csrf")):
                    raise InputError("the form is missing its check field", code=BAD_FORM)
                _apply_preferences(conn, link, form, at=now, request=request)

        await run_in_threadpool(run)
    except TouchlineError as exc:
        return _error_page(request, exc)
    # A relative reference: back to this page (whatever prefix a proxy adds), saying "saved".
    return RedirectResponse("?saved=1", status_code=303, headers=PAGE_HEADERS)


def _channel_states(
    conn: Connection, link: OpenedLink, records: Sequence[ConsentRecord]
) -> list[dict[str, Any]]:
    labels = topic_labels(link.lang, link.settings)
    out = []
    for channel in _page_channels(link.claims.channel, records):
        granted, latest = consent_state(records, channel=channel, purpose=MARKETING)
        address = _address(conn, link, channel)
        out.append(
            {
                "name": channel,
                "label": channel_label(link.lang, channel),
                "address": _masked(address) if address else None,
                "subscribed": granted,
                "pending": not granted and latest is not None and latest.granted,
                "topics": [
                    {
                        "name": topic,
                        "label": labels[topic],
                        "on": _topic_on(records, channel, topic),
                    }
                    for topic in CONSENT_TOPICS
                ],
            }
        )
    return out


def _apply_preferences(
    conn: Connection,
    link: OpenedLink,
    form: Mapping[str, list[str]],
    *,
    at: datetime,
    request: Request,
) -> None:
    """Record only what changed; a re-subscription here is a confirmed grant."""
    ws, pid = link.claims.workspace_id, link.profile_id
    records = load_consents(conn, ws, pid)
    allowed = _page_channels(link.claims.channel, records)
    subscribed = set(form.get("subscribed", []))
    topics_on = set(form.get("topic", []))
    provenance = _provenance(request, "preference page")
    for channel in dict.fromkeys(form.get("channel", [])):
        if channel not in allowed:
            raise InputError(f"channel {channel!r} is not on this page", code=BAD_FORM)
        address = _address(conn, link, channel)
        granted, _ = consent_state(records, channel=channel, purpose=MARKETING)
        wanted = channel in subscribed
        if wanted and not granted:
            record_consent(
                conn,
                workspace_id=ws,
                profile_id=pid,
                channel=channel,
                granted=True,
                at=at,
                provenance=provenance,
                address=address,
            )
        elif granted and not wanted:
            unsubscribe(
                conn,
                workspace_id=ws,
                profile_id=pid,
                channel=channel,
                address=address,
                at=at,
                provenance=provenance,
            )
        for topic in CONSENT_TOPICS:
            on, want_on = _topic_on(records, channel, topic), f"{channel}:{topic}" in topics_on
            if want_on and not on:
                record_consent(
                    conn,
                    workspace_id=ws,
                    profile_id=pid,
                    channel=channel,
                    granted=True,
                    at=at,
                    provenance=provenance,
                    topic=topic,
                    address=address,
                )
            elif on and not want_on:
                unsubscribe(
                    conn,
                    workspace_id=ws,
                    profile_id=pid,
                    channel=channel,
                    address=address,
                    at=at,
                    provenance=provenance,
                    topic=topic,
                )


def _page_channels(first: str, records: Sequence[ConsentRecord]) -> list[str]:
    """The link's channel, then :data:`PAGE_CHANNELS`, then any other the ledger mentions."""
    seen = dict.fromkeys([first, *PAGE_CHANNELS, *sorted({r.channel for r in records})])
    return [c for c in seen if c in CONSENT_CHANNELS]


def _topic_on(records: Sequence[ConsentRecord], channel: str, topic: str) -> bool:
    """A topic is on unless its latest record is a withdrawal."""
    _, latest = consent_state(records, channel=channel, purpose=MARKETING, topic=topic)
    return latest is None or latest.granted


# -- double opt-in ----------------------------------------------------------------------


@router.get("/c/{token}")
async def confirm_page(request: Request, token: str) -> Response:
    """Ask to confirm a pending subscription; a GET confirms nothing."""

    def run() -> tuple[OpenedLink, str]:
        with request.app.state.engine.connect() as conn:
            link = _open(conn, token, "confirm")
            records = load_consents(conn, link.claims.workspace_id, link.profile_id)
        granted, latest = consent_state(records, channel=link.claims.channel, purpose=MARKETING)
        if granted:
            return link, "done"
        return link, "ask" if latest is not None else "nothing"

    try:
        link, state = await run_in_threadpool(run)
    except TouchlineError as exc:
        return _error_page(request, exc)
    return _confirm_answer(request, link, state)


@router.post("/c/{token}")
async def confirm_now(request: Request, token: str) -> Response:
    """Confirm the pending grant. Idempotent: a second POST records nothing."""
    now = request.app.state.clock.now()

    def run() -> tuple[OpenedLink, str]:
        with transaction(request.app.state.engine) as conn:
            link = _open(conn, token, "confirm")
            claims = link.claims
            source = "double opt-in link"
            if claims.message_id is not None:
                source += f" (message #{claims.message_id})"
            confirm_pending(
                conn,
                workspace_id=claims.workspace_id,
                profile_id=link.profile_id,
                channel=claims.channel,
                at=now,
                provenance=_provenance(request, source),
            )
            records = load_consents(conn, claims.workspace_id, link.profile_id)
        granted, _ = consent_state(records, channel=claims.channel, purpose=MARKETING)
        return link, "done" if granted else "nothing"

    try:
        link, state = await run_in_threadpool(run)
    except TouchlineError as exc:
        return _error_page(request, exc)
    return _confirm_answer(request, link, state)


def _confirm_answer(request: Request, link: OpenedLink, state: str) -> Response:
    t = TEXTS[link.lang]
    label = channel_label(link.lang, link.claims.channel)
    now = request.app.state.clock.now()
    return _page(
        "confirm.html",
        link,
        title=t[f"confirm_{state}_title"],
        t=t,
        state=state,
        body=t[f"confirm_{state}_body"].format(shop=link.shop, channel=label),
        preferences_url=preferences_url(
            request.app.state.settings.public_url, _preferences_token(link, now)
        ),
    )


# -- shared -----------------------------------------------------------------------------


def _read(request: Request, token: str, kind: LinkKind) -> OpenedLink:
    engine: Engine = request.app.state.engine
    with engine.connect() as conn:
        return _open(conn, token, kind)


def _open(conn: Connection, token: str, kind: LinkKind) -> OpenedLink:
    """Verify ``token`` against its workspace's secret and load the customer it names."""
    workspace_id = workspace_of(token)
    row = conn.execute(
        select(workspaces.c.name, workspaces.c.link_secret, workspaces.c.settings).where(
            workspaces.c.id == workspace_id
        )
    ).first()
    if row is None or row.link_secret is None:
        raise InputError("this link names no workspace here", code=BAD_LINK)
    secret = bytes.fromhex(row.link_secret)
    claims = read_token(secret, token, kind=kind)
    profile = get_profile(conn, workspace_id, f"#{claims.profile_id}")
    return OpenedLink(
        token=token,
        claims=claims,
        secret=secret,
        profile=profile,
        shop=row.name,
        settings=dict(row.settings or {}),
        lang=language(profile.get("locale")),
    )


def _address(conn: Connection, link: OpenedLink, channel: str) -> str | None:
    """The address to suppress for ``channel``: where the linked message went, else the profile's."""
    field = ADDRESS_FIELDS.get(channel)
    if field is None:
        return None
    if link.claims.message_id is not None and channel == link.claims.channel:
        sent_to = conn.execute(
            select(outbox.c.address).where(
                outbox.c.id == link.claims.message_id,
                outbox.c.workspace_id == link.claims.workspace_id,
            )
        ).scalar_one_or_none()
        if sent_to:
            return str(sent_to)
    value = link.profile.get(field)
    return str(value) if value else None


def _topic_label(link: OpenedLink) -> str | None:
    topic = link.claims.topic
    if topic is None:
        return None
    return topic_labels(link.lang, link.settings).get(topic, topic)


def _preferences_token(link: OpenedLink, now: datetime) -> str:
    claims = link.claims
    return make_token(
        link.secret,
        kind="preferences",
        workspace_id=claims.workspace_id,
        profile_id=link.profile_id,
        channel=claims.channel,
        message_id=claims.message_id,
        issued_at=now,
    )


def _provenance(request: Request, source: str) -> Provenance:
    return Provenance(
        source=source,
        ip=request.client.host if request.client else None,
        user_agent=request.headers.get("user-agent"),
    )


async def _read_body(request: Request) -> tuple[str, bytes]:
    """The request's content type and body, refusing bodies over :data:`MAX_FORM_BYTES`."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise InputError(f"a form is at most {MAX_FORM_BYTES} bytes", code="payload_too_large")
    return request.headers.get("content-type", ""), bytes(body)


def _is_one_click(content_type: str, body: bytes) -> bool:
    """Whether the body is RFC 8058's ``List-Unsubscribe=One-Click``, url-encoded or multipart."""
    if content_type.split(";")[0].strip().lower() == "application/x-www-form-urlencoded":
        form = parse_qs(body.decode("utf-8", "replace"))
        return "One-Click" in form.get("List-Unsubscribe", [])
    return b'name="List-Unsubscribe"' in body and b"One-Click" in body


def _first(form: Mapping[str, list[str]], key: str) -> str | None:
    values = form.get(key)
    return values[0] if values else None


def _masked(address: str) -> str:
    """Enough of an address to recognise it, not enough to learn it from a forwarded link."""
    local, at, domain = address.partition("@")
    if at:
        return f"{local[:2]}***@{domain}"
    return f"***{address[-4:]}" if len(address) > 4 else "***"


def _page(name: str, link: OpenedLink | None, *, status: int = 200, **context: Any) -> HTMLResponse:
    lang = link.lang if link is not None else context.pop("lang")
    html = _env.get_template(name).render(
        lang=lang, shop=link.shop if link is not None else None, **context
    )
    return HTMLResponse(html, status_code=status, headers=PAGE_HEADERS)


def _error_page(request: Request, exc: TouchlineError) -> HTMLResponse:
    """A page for people, never a stack trace: 400 for bad links and forms, 5xx kept generic."""
    lang = language(request.headers.get("accept-language"))
    t = TEXTS[lang]
    if exc.status >= 500:
        kind = "unavailable"
    elif exc.code == BAD_FORM:
        kind = "form"
    elif exc.code in (BAD_LINK, "not_found"):
        kind = "link"
    else:
        kind = "request"
    return _page(
        "error.html",
        None,
        status=exc.status if exc.status >= 500 else 400,
        lang=lang,
        title=t[f"error_{kind}_title"],
        body=t[f"error_{kind}_body"],
    )


__all__ = ["MAX_FORM_BYTES", "PAGE_CHANNELS", "router"]
