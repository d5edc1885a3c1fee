"""Making a rendered message measurable: click links, the open pixel, SMS short links.

Runs after rendering (so after UTM parameters were added) and before sending:

* **Email** (:func:`rewrite_email`): every http(s) link of the HTML's
  ``<a>``/``<area>`` tags and of the text part becomes
  ``{public_url}/t/c/{token}``, a signed token carrying the message and the
  destination (:mod:`touchline.measure.tokens`), and the HTML gets a 1×1
  pixel ``{public_url}/t/o/{token}.gif`` before ``</body>``. ``mailto:``,
  ``tel:`` and ``#anchor`` links, the URLs in ``skip`` (the unsubscribe and
  preference links: a person leaving is not campaign traffic, and mailbox
  providers want the unsubscribe link as it is) and touchline's own pages
  are left alone.
* **SMS** (:func:`shorten_sms`): every http(s) URL becomes
  ``{public_url}/s/{code}``, a random base62 code stored in ``short_links``,
  so a message stays within its segments. The code is the same on every
  render of one message, so a retried send carries the same links.

:func:`track_rendered` picks the right one for a channel; it is what the
dispatcher calls.
"""

from __future__ import annotations

import logging
import re
import secrets
from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import datetime
from html import escape as html_escape
from html import unescape as html_unescape

from sqlalchemy import Connection, select

from touchline.errors import StoreError
from touchline.measure.tokens import MAX_URL_BYTES, click_url, make_track_token, open_url
from touchline.messaging.links import workspace_link_secret
from touchline.store.db import WRITE, insert_ignore, transaction
from touchline.store.tables import short_links

log = logging.getLogger("touchline.tracking")

#: Channels whose links are tracked, and how: email is rewritten, SMS shortened.
TRACKED_CHANNELS = ("email", "sms")
#: 8 base62 characters: about 2**47 codes, so guessing a live one is hopeless, and an
#: SMS link stays near 30 characters with a short public host.
SHORT_CODE_CHARS = 8
BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
#: Paths of touchline's own pages under the public URL (unsubscribe, preferences,
#: confirmation, tracking, short links): never tracked, never shortened twice.
OWN_PATHS = ("u/", "p/", "c/", "t/", "s/")
#: Fresh codes tried when one is already taken; with 62**8 codes one retry is already rare.
SHORT_CODE_ATTEMPTS = 5

_TAG = re.compile(r"""<(?:a|area)\b(?:[^>"']|"[^"]*"|'[^']*')*>""", re.IGNORECASE)
_HREF = re.compile(r"""(\shref\s*=\s*)(?:"([^"]*)"|'([^']*)'|([^\s>"']+))""", re.IGNORECASE)
_TEXT_URL = re.compile(r"""https?://[^\s<>"'()\[\]]+""", re.IGNORECASE)
_HTTP = re.compile(r"(?i)https?://")
_BODY_END = re.compile(r"</body\s*>", re.IGNORECASE)
_TRAILING = ".,;:!?"
_CODE = re.compile(rf"[0-9A-Za-z]{{{SHORT_CODE_CHARS}}}")
# A URL in, the URL to put in its place out.
_Rewrite = Callable[[str], str]


@dataclass(frozen=True)
class ShortLink:
    """Where one short code leads, and for which message."""

    code: str
    workspace_id: str
    outbox_id: int
    url: str


def rewrite_email(
    html: str | None,
    text: str | None,
    *,
    public_url: str,
    secret: bytes,
    workspace_id: str,
    outbox_id: int,
    skip: Collection[str] = (),
) -> tuple[str | None, str | None]:
    """The HTML and text parts with tracked links, and the HTML with the open pixel.

    Pure: the tokens carry everything, nothing is stored. See the module
    docstring for which links are left alone.
    """
    base = public_url.rstrip("/")

    def tracked(url: str) -> str:
        if not _trackable(url, base=base, skip=skip) or len(url.encode()) > MAX_URL_BYTES:
            return url
        token = make_track_token(
            secret, kind="click", workspace_id=workspace_id, outbox_id=outbox_id, url=url
        )
        return click_url(base, token)

    if html is not None:
        html = _rewrite_html(html, tracked)
        if f"{base}/t/o/" not in html:  # rewritten before: one pixel is enough
            pixel_token = make_track_token(
                secret, kind="open", workspace_id=workspace_id, outbox_id=outbox_id
            )
            html = add_pixel(html, open_url(base, pixel_token))
    if text is not None:
        text = _rewrite_text(text, tracked)
    return html, text


def add_pixel(html: str, src: str) -> str:
    """``html`` with a 1×1 image of ``src`` just before its last ``</body>`` (or at the end)."""
    pixel = f'<img src="{html_escape(src, quote=True)}" width="1" height="1" alt="">'
    ends = list(_BODY_END.finditer(html))
    if not ends:
        return html + pixel
    at = ends[-1].start()
    return html[:at] + pixel + html[at:]


def shorten_sms(
    conn: Connection,
    text: str,
    *,
    public_url: str,
    workspace_id: str,
    outbox_id: int,
    now: datetime,
    skip: Collection[str] = (),
) -> str:
    """``text`` with each http(s) URL replaced by ``{public_url}/s/{code}``.

    One code per (message, URL), made on the first render and found again on
    every later one. The codes are committed at once, in a transaction of
    their own when ``conn`` is a read connection (the dispatcher renders on
    one), so a link that went out always resolves.
    """
    base = public_url.rstrip("/")
    wanted = []
    for match in _TEXT_URL.finditer(text):
        url = match.group(0).rstrip(_TRAILING)
        if _trackable(url, base=base, skip=skip) and url not in wanted:
            wanted.append(url)
    if not wanted:
        return text
    if conn.get_execution_options().get(WRITE):
        codes = _codes(conn, wanted, workspace_id=workspace_id, outbox_id=outbox_id, now=now)
    else:
        with transaction(conn.engine) as writer:
            codes = _codes(writer, wanted, workspace_id=workspace_id, outbox_id=outbox_id, now=now)
    return _rewrite_text(text, lambda url: f"{base}/s/{codes[url]}" if url in codes else url)


def resolve_short_link(conn: Connection, code: str) -> ShortLink | None:
    """The link behind ``code``, or None for a code touchline never made."""
    if not _CODE.fullmatch(code):
        return None
    row = conn.execute(select(short_links).where(short_links.c.code == code)).first()
    if row is None:
        return None
    return ShortLink(
        code=row.code, workspace_id=row.workspace_id, outbox_id=row.outbox_id, url=row.url
    )


def track_rendered(
    conn: Connection,
    *,
    channel: str,
    html: str | None,
    text: str | None,
    public_url: str,
    workspace_id: str,
    outbox_id: int,
    now: datetime,
    skip: Collection[str] = (),
) -> tuple[str | None, str | None]:
    """A rendered message's HTML and text made measurable for its channel.

    Email: click links and the open pixel, signed with the workspace's link
    key. SMS: short links. Any other channel: unchanged.
    """
    if channel == "email":
        return rewrite_email(
            html,
            text,
            public_url=public_url,
            secret=workspace_link_secret(conn, workspace_id),
            workspace_id=workspace_id,
            outbox_id=outbox_id,
            skip=skip,
        )
    if channel == "sms" and text is not None:
        text = shorten_sms(
            conn,
            text,
            public_url=public_url,
            workspace_id=workspace_id,
            outbox_id=outbox_id,
            now=now,
            skip=skip,
        )
    return html, text


# -- rewriting and codes ----------------------------------------------------------------


def _trackable(url: str, *, base: str, skip: Collection[str]) -> bool:
    if not _HTTP.match(url) or url in skip:
        return False
    own = url.startswith(base + "/") and url[len(base) + 1 :].startswith(OWN_PATHS)
    return not own


def _rewrite_html(html: str, tracked: _Rewrite) -> str:
    def href(match: re.Match[str]) -> str:
        raw = next(g for g in match.groups()[1:] if g is not None)
        url = html_unescape(raw).strip()
        new = tracked(url)
        if new == url:
            return match.group(0)
        return f'{match.group(1)}"{html_escape(new, quote=True)}"'

    return _TAG.sub(lambda tag: _HREF.sub(href, tag.group(0)), html)


def _rewrite_text(text: str, tracked: _Rewrite) -> str:
    def one(match: re.Match[str]) -> str:
        url = match.group(0)
        stripped = url.rstrip(_TRAILING)
        return tracked(stripped) + url[len(stripped) :]

    return _TEXT_URL.sub(one, text)


def _codes(
    conn: Connection, urls: list[str], *, workspace_id: str, outbox_id: int, now: datetime
) -> dict[str, str]:
    existing = conn.execute(
        select(short_links.c.url, short_links.c.code)
        .where(
            short_links.c.workspace_id == workspace_id,
            short_links.c.outbox_id == outbox_id,
            short_links.c.url.in_(urls),
        )
        .order_by(short_links.c.code)
    ).all()
    codes: dict[str, str] = {}
    for row in existing:
        codes.setdefault(row.url, row.code)
    for url in urls:
        if url not in codes:
            codes[url] = _new_code(
                conn, url, workspace_id=workspace_id, outbox_id=outbox_id, now=now
            )
    return codes


def _new_code(
    conn: Connection, url: str, *, workspace_id: str, outbox_id: int, now: datetime
) -> str:
    for _ in range(SHORT_CODE_ATTEMPTS):
        code = "".join(secrets.choice(BASE62) for _ in range(SHORT_CODE_CHARS))
        row = {
            "code": code,
            "workspace_id": workspace_id,
            "outbox_id": outbox_id,
            "url": url,
            "created_at": now,
        }
        if insert_ignore(conn, short_links, row, key=["code"]):
            return code
        log.info("short link code %s was taken; drawing another", code)
    raise StoreError(f"no free short link code after {SHORT_CODE_ATTEMPTS} draws")


__all__ = [
    "BASE62",
    "OWN_PATHS",
    "SHORT_CODE_CHARS",
    "TRACKED_CHANNELS",
    "ShortLink",
    "add_pixel",
    "resolve_short_link",
    "rewrite_email",
    "shorten_sms",
    "track_rendered",
]
