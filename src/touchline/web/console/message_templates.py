"""Message template pages: the list, the editor, and a live preview for a chosen customer.

The preview renders exactly as the dispatcher would (the sandboxed template
engine of :mod:`touchline.messaging.templates`, the customer's traits and
latest event, their own unsubscribe links), as ``touchline preview`` does;
an SMS also shows its encoding, part count and cost
(:mod:`touchline.messaging.sms`). The editor's script posts the form to
``/templates/{key}/preview`` as the marketer types; without the script, "Preview"
does the same as a page load.

Email HTML is shown in a sandboxed ``iframe`` (``srcdoc``, no scripts, an
origin of its own); the page's policy allows the email's inline styles and
remote images, and nothing else more.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from fastapi import APIRouter
from sqlalchemy import Connection, desc, select
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from touchline.errors import NotFound, TouchlineError
from touchline.messaging import sms
from touchline.messaging.dispatcher import profile_scope
from touchline.messaging.links import links_for_message
from touchline.messaging.template_files import CHANNEL_RE, TEMPLATE_KEY_RE
from touchline.messaging.templates import (
    RenderContext,
    RenderError,
    Template,
    TemplateError,
    compile_template,
)
from touchline.store.db import transaction
from touchline.store.tables import events, profiles, templates
from touchline.store.templates import apply_templates
from touchline.web.console.base import (
    PAGE_CSP,
    PREFIX,
    engine_of,
    field,
    guard,
    now_of,
    page,
    read_form,
    redirect,
    run,
)
from touchline.web.console.customers import find_customers

router = APIRouter()

PARTS = ("subject", "html", "text")
#: Longest part accepted from the editor (the renderer's own output limit).
MAX_PART_CHARS = 256 * 1024
#: Email previews need the email's own inline styles and images; scripts stay off.
PREVIEW_CSP = PAGE_CSP.replace("style-src 'self'", "style-src 'self' 'unsafe-inline'").replace(
    "img-src 'self' data:", "img-src 'self' data: https:"
)


@dataclass(frozen=True)
class Preview:
    """A rendered message, or why it could not be rendered."""

    subject: str | None = None
    html: str | None = None
    text: str | None = None
    error: str | None = None
    sms: dict[str, Any] | None = None
    customer: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "subject": self.subject,
            "html": self.html,
            "text": self.text,
            "error": self.error,
            "sms": self.sms,
            "customer": self.customer,
        }


def _template_from(
    key: str, channel: str, parts: dict[str, str], stored: dict[str, Any]
) -> Template:
    """A template with the editor's parts, keeping the stored defaults and UTM settings."""
    return Template(
        name=key,
        channel=channel,
        subject=parts.get("subject") or None,
        html=parts.get("html") or None,
        text=parts.get("text") or None,
        defaults=stored.get("defaults") or {},
        utm=stored.get("utm"),
    )


def _stored(conn: Connection, workspace_id: str, key: str) -> dict[str, Any] | None:
    row = conn.execute(
        select(templates.c.spec, templates.c.channel, templates.c.updated_at).where(
            templates.c.workspace_id == workspace_id, templates.c.key == key
        )
    ).first()
    if row is None:
        return None
    return {**dict(row.spec), "channel": row.channel, "updated_at": row.updated_at}


def _customer(conn: Connection, workspace_id: str, query: str) -> Any:
    """The profile row to preview for: the one ``query`` finds, else the latest seen."""
    ids = find_customers(conn, workspace_id, query) if query.strip() else []
    stmt = select(profiles).where(
        profiles.c.workspace_id == workspace_id,
        profiles.c.merged_into.is_(None),
        profiles.c.erased_at.is_(None),
    )
    if ids:
        stmt = stmt.where(profiles.c.id == ids[0])
    elif query.strip():
        return None
    else:
        stmt = stmt.order_by(desc(profiles.c.last_seen_at), desc(profiles.c.id))
    return conn.execute(stmt.limit(1)).first()


def render_preview(
    conn: Connection,
    workspace_id: str,
    template: Template,
    *,
    customer: str,
    price_per_part: Decimal,
    public_url: str,
    now: Any,
) -> Preview:
    """Render ``template`` for the customer ``customer`` names, as it would be sent."""
    try:
        compiled = compile_template(template)
    except TemplateError as exc:
        return Preview(error=exc.message)
    row = _customer(conn, workspace_id, customer)
    if row is None:
        return Preview(
            error=f"No customer matches {customer!r}." if customer.strip() else "No customers yet."
        )
    last = conn.execute(
        select(events.c.name, events.c.properties, events.c.timestamp)
        .where(
            events.c.workspace_id == workspace_id,
            events.c.profile_id == row.id,
            events.c.type == "track",
        )
        .order_by(events.c.id.desc())
        .limit(1)
    ).first()
    event = (
        {"name": last.name, "properties": last.properties, "timestamp": last.timestamp.isoformat()}
        if last
        else {}
    )
    links = links_for_message(
        conn,
        public_url=public_url,
        workspace_id=workspace_id,
        profile_id=row.id,
        channel=template.channel,
        message_id=None,
        now=now,
    )
    label = row.user_id or row.email or f"#{row.id}"
    try:
        rendered = compiled.render(
            RenderContext(
                profile=profile_scope(row),
                now=now,
                event=event,
                locale=(row.locale or "ru_RU").replace("-", "_"),
                timezone=row.timezone,
                links=links,
            )
        )
    except RenderError as exc:
        return Preview(error=exc.message, customer=label)
    info = None
    if template.channel == "sms":
        analysed = sms.analyse(rendered.text or "")
        info = {
            "encoding": analysed.encoding,
            "characters": analysed.characters,
            "units": analysed.units,
            "parts": analysed.parts,
            "per_part": analysed.per_part,
            "cost": str(sms.cost(analysed, price_per_part=price_per_part)),
        }
    return Preview(
        subject=rendered.subject,
        html=rendered.html,
        text=rendered.text,
        sms=info,
        customer=label,
    )


def _price(text: str) -> Decimal:
    try:
        price = Decimal(text or "0")
    except InvalidOperation:
        return Decimal(0)
    return price if price.is_finite() and price >= 0 else Decimal(0)


@router.get("/templates")
async def template_list(request: Request) -> Response:
    session = await guard(request, "templates")
    ws = session.user.workspace_id

    def work() -> list[Any]:
        with engine_of(request).connect() as conn:
            return list(
                conn.execute(
                    select(templates.c.key, templates.c.channel, templates.c.updated_at)
                    .where(templates.c.workspace_id == ws)
                    .order_by(templates.c.key)
                )
            )

    new = request.query_params.get("new", "").strip()
    if new:
        channel = request.query_params.get("channel", "email")
        if TEMPLATE_KEY_RE.match(new) and CHANNEL_RE.match(channel):
            return redirect(f"{PREFIX}/templates/{new}?channel={channel}")
    rows = await run(work)
    return page(
        request,
        "templates.html",
        session=session,
        section="templates",
        title="Templates",
        templates=rows,
    )


@router.get("/templates/{key}")
async def template_page(request: Request, key: str) -> Response:
    session = await guard(request, "templates")
    ws = session.user.workspace_id
    channel = request.query_params.get("channel", "email")
    customer = request.query_params.get("customer", "")[:320]
    price = request.query_params.get("price", "0")[:20]
    public_url = request.app.state.settings.public_url
    now = now_of(request)

    def work() -> tuple[dict[str, Any], Preview]:
        with engine_of(request).connect() as conn:
            stored = _stored(conn, ws, key)
            if stored is None:
                if not TEMPLATE_KEY_RE.match(key) or not CHANNEL_RE.match(channel):
                    raise NotFound(f"no template {key!r} in this workspace")
                stored = {"channel": channel, "new": True}
            template = _template_from(key, stored["channel"], stored, stored)
            preview = render_preview(
                conn,
                ws,
                template,
                customer=customer,
                price_per_part=_price(price),
                public_url=public_url,
                now=now,
            )
        return stored, preview

    stored, preview = await run(work)
    return _editor(request, session, key, stored, stored, preview, customer, price, [])


def _editor(
    request: Request,
    session: Any,
    key: str,
    stored: dict[str, Any],
    parts: dict[str, Any],
    preview: Preview,
    customer: str,
    price: str,
    problems: list[str],
    *,
    status: int = 200,
) -> Response:
    return page(
        request,
        "template.html",
        session=session,
        section="templates",
        title=f"Template {key}",
        key=key,
        channel=stored["channel"],
        is_new=bool(stored.get("new")),
        stored=stored,
        parts={p: parts.get(p) or "" for p in PARTS},
        preview=preview,
        customer=customer,
        price=price,
        problems=problems,
        status=status,
        headers={"Content-Security-Policy": PREVIEW_CSP},
    )


def _parts(form: FormData) -> dict[str, str]:
    return {p: field(form, p).replace("\r\n", "\n")[:MAX_PART_CHARS] for p in PARTS}


@router.post("/templates/{key}/preview")
async def preview(request: Request, key: str) -> Response:
    """The editor's live preview: the posted parts rendered, as JSON."""
    session = await guard(request, "templates")
    form = await read_form(request, session)
    ws = session.user.workspace_id
    channel = field(form, "channel")[:64] or "email"
    parts = _parts(form)
    public_url = request.app.state.settings.public_url
    now = now_of(request)

    def work() -> Preview:
        with engine_of(request).connect() as conn:
            stored = _stored(conn, ws, key) or {}
            return render_preview(
                conn,
                ws,
                _template_from(key, channel, parts, stored),
                customer=field(form, "customer")[:320],
                price_per_part=_price(field(form, "price")[:20]),
                public_url=public_url,
                now=now,
            )

    found = await run(work)
    return JSONResponse(found.as_dict(), headers={"Cache-Control": "no-store"})


@router.post("/templates/{key}")
async def save_template(request: Request, key: str) -> Response:
    session = await guard(request, "templates")
    form = await read_form(request, session)
    ws = session.user.workspace_id
    channel = field(form, "channel")[:64]
    parts = _parts(form)
    customer = field(form, "customer")[:320]
    price = field(form, "price")[:20]
    public_url = request.app.state.settings.public_url
    now = now_of(request)

    def work() -> tuple[dict[str, Any], list[str], Preview | None]:
        with engine_of(request).connect() as conn:
            stored = _stored(conn, ws, key) or {"channel": channel, "new": True}
        problems: list[str] = []
        if not TEMPLATE_KEY_RE.match(key):
            problems.append("template: a key is letters, digits, '.', '_' or '-'")
        if not CHANNEL_RE.match(channel):
            problems.append("channel: lowercase letters, digits, '_' or '-'")
        if not any(parts.values()):
            problems.append("the template has no subject, html or text")
        template = _template_from(key, channel, parts, stored)
        if not problems:
            try:
                compile_template(template)
            except TemplateError as exc:
                problems.append(exc.message)
        if problems:
            with engine_of(request).connect() as conn:
                shown = render_preview(
                    conn,
                    ws,
                    template,
                    customer=customer,
                    price_per_part=_price(price),
                    public_url=public_url,
                    now=now,
                )
            return stored, problems, shown
        with transaction(engine_of(request)) as conn:
            apply_templates(conn, ws, [template], now=now)
        return stored, [], None

    try:
        stored, problems, shown = await run(work)
    except TouchlineError as exc:
        stored, problems, shown = {"channel": channel}, [exc.message], Preview(error=exc.message)
    if problems:
        stored = {**stored, "channel": channel}
        return _editor(
            request,
            session,
            key,
            stored,
            parts,
            shown or Preview(),
            customer,
            price,
            problems,
            status=400,
        )
    return redirect(f"{PREFIX}/templates/{key}", notice="saved")
