"""Signed customer links: unsubscribe, preference and double opt-in confirmation.

A link carries a token ``<workspace id>.<signed payload>``. The workspace id
is in clear so the server can find the workspace's signing key; everything
else (kind, profile id, channel, topic, message id, issue time) is packed
into a few bytes and signed with a truncated HMAC-SHA256 under that key.
Nobody without the key can make a token, alter one, or move one to another
workspace, kind or customer.

Tokens are short because they go into SMS: the payload is binary (varints;
one byte for a common channel or topic name), the signature is
:data:`MAC_BYTES` bytes, and the whole is URL-safe base64 without padding —
about 50 characters.

**Links never expire.** An unsubscribe link in a mail from three years ago
must still unsubscribe (the law and the mailbox providers require it), so
``issued_at`` is recorded for the record, never checked. To invalidate every
link of a workspace, replace its link secret.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from sqlalchemy import Connection, select

from touchline.errors import InputError
from touchline.store.db import WRITE, transaction
from touchline.store.tables import workspaces
from touchline.store.workspaces import link_secret, workspace_settings

LinkKind = Literal["unsubscribe", "preferences", "confirm"]

#: Bumped if the payload layout ever changes, so old and new tokens are told apart.
TOKEN_VERSION = 1
#: 128 bits of HMAC-SHA256: forging one takes ~2**128 guesses, and the token stays short.
MAC_BYTES = 16
#: Names (channel, topic) are length-prefixed by one byte.
MAX_NAME_BYTES = 64
#: Names common enough to take one byte (``0x80 + index``). Append only: the index is in old links.
KNOWN_NAMES = (
    "email",
    "sms",
    "telegram",
    "push",
    "whatsapp",
    "viber",
    "call",
    "engaging",
    "selling",
)
#: The error code every refused link answers with.
BAD_LINK = "bad_link"
#: Path of each kind of page under the public URL.
PATHS: Mapping[str, str] = {"unsubscribe": "u", "preferences": "p", "confirm": "c"}

_KIND_CODES: Mapping[str, int] = {"unsubscribe": 1, "preferences": 2, "confirm": 3}
_KINDS_BY_CODE = {code: kind for kind, code in _KIND_CODES.items()}
# Separates the MAC's inputs so no field can pose as another.
_MAC_DOMAIN = b"touchline-link\x00"
_CSRF_DOMAIN = b"touchline-form\x00"
_WORKSPACE = re.compile(r"[A-Za-z0-9_-]{1,32}")
_CSRF_CHARS = 22  # 132 bits of the form MAC, base64
_KNOWN_FLAG = 0x80


@dataclass(frozen=True)
class LinkClaims:
    """What a verified token says."""

    kind: LinkKind
    workspace_id: str
    profile_id: int
    channel: str
    topic: str | None
    message_id: int | None
    issued_at: datetime


def make_token(
    secret: bytes,
    *,
    kind: LinkKind,
    workspace_id: str,
    profile_id: int,
    channel: str,
    topic: str | None = None,
    message_id: int | None = None,
    issued_at: datetime,
) -> str:
    """A signed, URL-safe token for one customer link. Never expires (see module doc)."""
    if kind not in _KIND_CODES:
        raise ValueError(f"unknown link kind {kind!r}")
    if not _WORKSPACE.fullmatch(workspace_id):
        raise ValueError(f"workspace id {workspace_id!r} cannot go into a link")
    if profile_id < 1 or (message_id is not None and message_id < 1):
        raise ValueError("profile and message ids are positive")
    if issued_at.tzinfo is None:
        raise ValueError("issued_at must be timezone-aware")
    payload = bytearray([TOKEN_VERSION << 4 | _KIND_CODES[kind]])
    payload += _varint(profile_id)
    payload += _name(channel, required=True)
    payload += _name(topic or "", required=False)
    payload += _varint(message_id or 0)
    payload += _varint(max(0, int(issued_at.timestamp())))
    mac = _mac(secret, workspace_id, bytes(payload))
    return f"{workspace_id}.{_b64(bytes(payload) + mac)}"


def workspace_of(token: str) -> str:
    """The workspace a token names, unverified; :class:`InputError` ``bad_link`` if malformed."""
    workspace_id, _, body = token.partition(".")
    if not body or not _WORKSPACE.fullmatch(workspace_id):
        raise _bad("this link is malformed")
    return workspace_id


def read_token(secret: bytes, token: str, *, kind: LinkKind) -> LinkClaims:
    """Verify a token made with ``secret`` for ``kind`` and return what it says.

    Any change to the token, a token of another kind, or one signed with
    another workspace's secret raises :class:`InputError` with code
    ``bad_link``. Age is never checked (see module doc).
    """
    workspace_id = workspace_of(token)
    raw = _unb64(token.partition(".")[2])
    if len(raw) <= MAC_BYTES:
        raise _bad("this link is malformed")
    payload, mac = raw[:-MAC_BYTES], raw[-MAC_BYTES:]
    if not hmac.compare_digest(mac, _mac(secret, workspace_id, payload)):
        raise _bad("this link is not valid; it may have been cut short or altered")
    reader = _Reader(payload)
    head = reader.byte()
    found = _KINDS_BY_CODE.get(head & 0x0F)
    if head >> 4 != TOKEN_VERSION or found is None:
        raise _bad("this link is of an unknown kind")
    if found != kind:
        raise _bad(f"this is a {found} link, not a {kind} link")
    profile_id = reader.varint()
    channel = reader.name()
    topic = reader.name() or None
    message_id = reader.varint() or None
    issued = reader.varint()
    if not reader.done() or profile_id < 1 or not channel:
        raise _bad("this link is malformed")
    return LinkClaims(
        kind=found,
        workspace_id=workspace_id,
        profile_id=profile_id,
        channel=channel,
        topic=topic,
        message_id=message_id,
        issued_at=datetime.fromtimestamp(issued, UTC),
    )


def csrf_token(secret: bytes, token: str) -> str:
    """The hidden form value that proves a POST came from the page served for ``token``."""
    digest = hmac.new(secret, _CSRF_DOMAIN + token.encode(), hashlib.sha256).digest()
    return _b64(digest)[:_CSRF_CHARS]


def check_csrf(secret: bytes, token: str, value: str | None) -> bool:
    """Whether ``value`` is the form value :func:`csrf_token` gives for ``token``."""
    return value is not None and hmac.compare_digest(
        value.encode(), csrf_token(secret, token).encode()
    )


def unsubscribe_url(public_url: str, token: str) -> str:
    """The one-click unsubscribe link (``GET`` asks, ``POST`` unsubscribes)."""
    return _url(public_url, "unsubscribe", token)


def preferences_url(public_url: str, token: str) -> str:
    """The preference page link."""
    return _url(public_url, "preferences", token)


def confirm_url(public_url: str, token: str) -> str:
    """The double opt-in confirmation link."""
    return _url(public_url, "confirm", token)


def workspace_link_secret(conn: Connection, workspace_id: str) -> bytes:
    """The workspace's signing key, made (and committed) on first use if it has none.

    Works on a read connection too: a key made inside a transaction that is
    then rolled back would leave links in the world that no key verifies, so
    when ``conn`` is not a write transaction the key is made in one of its own.
    """
    stored = conn.execute(
        select(workspaces.c.link_secret).where(workspaces.c.id == workspace_id)
    ).scalar_one_or_none()
    if stored is not None:
        return bytes.fromhex(stored)
    if conn.get_execution_options().get(WRITE):
        return link_secret(conn, workspace_id)
    with transaction(conn.engine) as writer:
        return link_secret(writer, workspace_id)


def link_for(
    conn: Connection,
    *,
    kind: LinkKind,
    public_url: str,
    workspace_id: str,
    profile_id: int,
    channel: str,
    now: datetime,
    topic: str | None = None,
    message_id: int | None = None,
) -> str:
    """A full signed link of ``kind`` for one customer, e.g. a double opt-in confirmation link."""
    token = make_token(
        workspace_link_secret(conn, workspace_id),
        kind=kind,
        workspace_id=workspace_id,
        profile_id=profile_id,
        channel=channel,
        topic=topic,
        message_id=message_id,
        issued_at=now,
    )
    return _url(public_url, kind, token)


def links_for_message(
    conn: Connection,
    *,
    public_url: str,
    workspace_id: str,
    profile_id: int,
    channel: str,
    message_id: int | None,
    now: datetime,
    topic: str | None = None,
) -> dict[str, str]:
    """The links a marketing message carries, for its metadata.

    ``unsubscribe_url`` withdraws consent for ``channel`` (or only ``topic``
    when given) and ``preferences_url`` opens the preference page. For email,
    ``unsubscribe_mailto`` is added when the workspace settings have
    ``sender.unsubscribe_mailto``; the SMTP channel then writes RFC 8058
    ``List-Unsubscribe`` headers.
    """
    secret = workspace_link_secret(conn, workspace_id)

    def token(kind: LinkKind, topic: str | None) -> str:
        return make_token(
            secret,
            kind=kind,
            workspace_id=workspace_id,
            profile_id=profile_id,
            channel=channel,
            topic=topic,
            message_id=message_id,
            issued_at=now,
        )

    links = {
        "unsubscribe_url": unsubscribe_url(public_url, token("unsubscribe", topic)),
        "preferences_url": preferences_url(public_url, token("preferences", None)),
    }
    if channel == "email":
        sender = workspace_settings(conn, workspace_id).get("sender")
        mailto = sender.get("unsubscribe_mailto") if isinstance(sender, Mapping) else None
        if isinstance(mailto, str) and mailto.strip():
            links["unsubscribe_mailto"] = mailto.strip()
    return links


# -- encoding ---------------------------------------------------------------------------


def _url(public_url: str, kind: str, token: str) -> str:
    return f"{public_url.rstrip('/')}/{PATHS[kind]}/{token}"


def _mac(secret: bytes, workspace_id: str, payload: bytes) -> bytes:
    message = _MAC_DOMAIN + workspace_id.encode() + b"\x00" + payload
    return hmac.new(secret, message, hashlib.sha256).digest()[:MAC_BYTES]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    """Strict URL-safe base64: only the one spelling :func:`_b64` makes is accepted.

    Base64 leaves a few bits of the last character unused; without the
    round-trip check two spellings would decode alike and an "altered"
    token would still verify.
    """
    try:
        data = base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError):
        raise _bad("this link is malformed") from None
    if _b64(data) != text:
        raise _bad("this link is malformed")
    return data


def _varint(value: int) -> bytes:
    """Unsigned LEB128: seven bits a byte, high bit set on all but the last."""
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        out.append(low | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _name(value: str, *, required: bool) -> bytes:
    """One byte for a known name, else a length byte and the UTF-8 text."""
    if required and not value:
        raise ValueError("a channel is required")
    if value in KNOWN_NAMES:
        return bytes([_KNOWN_FLAG | KNOWN_NAMES.index(value)])
    data = value.encode()
    if len(data) > MAX_NAME_BYTES:
        raise ValueError(f"{value!r} is longer than {MAX_NAME_BYTES} bytes")
    return bytes([len(data)]) + data


class _Reader:
    """Reads :func:`make_token`'s payload; anything short or odd is a bad link."""

    _MAX_VARINT_BYTES = 10  # 64 bits

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._at = 0

    def byte(self) -> int:
        if self._at >= len(self._data):
            raise _bad("this link is malformed")
        self._at += 1
        return self._data[self._at - 1]

    def varint(self) -> int:
        value = 0
        for shift in range(0, 7 * self._MAX_VARINT_BYTES, 7):
            b = self.byte()
            value |= (b & 0x7F) << shift
            if not b & 0x80:
                return value
        raise _bad("this link is malformed")

    def name(self) -> str:
        size = self.byte()
        if size & _KNOWN_FLAG:
            index = size & ~_KNOWN_FLAG
            if index >= len(KNOWN_NAMES):
                raise _bad("this link is malformed")
            return KNOWN_NAMES[index]
        end = self._at + size
        if size > MAX_NAME_BYTES or end > len(self._data):
            raise _bad("this link is malformed")
        chunk, self._at = self._data[self._at : end], end
        try:
            return chunk.decode()
        except UnicodeDecodeError:
            raise _bad("this link is malformed") from None

    def done(self) -> bool:
        return self._at == len(self._data)


def _bad(message: str) -> InputError:
    return InputError(message, code=BAD_LINK)


__all__ = [
    "BAD_LINK",
    "LinkClaims",
    "LinkKind",
    "check_csrf",
    "confirm_url",
    "csrf_token",
    "link_for",
    "links_for_message",
    "make_token",
    "preferences_url",
    "read_token",
    "unsubscribe_url",
    "workspace_link_secret",
    "workspace_of",
]
