"""Signed tracking tokens: the open pixel and the click redirect of an email.

A token is ``<workspace id>.<signed payload>``, like the customer links of
:mod:`touchline.messaging.links` and signed with the same workspace key, but
under its own MAC domain, so an unsubscribe token can never pass for a click
token or the other way round. The payload is a head byte (version and kind),
the outbox id as a varint and, for a click, the destination URL in UTF-8.

The destination travels inside the token instead of in a table: a click is
answered from the token alone (no lookup that a busy store could fail), and
nothing but a URL touchline signed can ever be redirected to, so the click
route is no open redirect.

Like the customer links, tracking tokens never expire; replacing a
workspace's link secret invalidates all of them.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from dataclasses import dataclass
from typing import Literal

from touchline.errors import InputError

TrackKind = Literal["open", "click"]

#: Bumped if the payload layout ever changes, so old and new tokens are told apart.
TOKEN_VERSION = 1
#: 128 bits of HMAC-SHA256: out of reach of guessing, and a click link stays readable.
MAC_BYTES = 16
#: Longest destination a click token carries; longer URLs are left untracked.
MAX_URL_BYTES = 2000
#: The error code every refused tracking link answers with (the same as customer links).
BAD_LINK = "bad_link"

_KIND_CODES = {"open": 1, "click": 2}
_KINDS_BY_CODE = {code: kind for kind, code in _KIND_CODES.items()}
# Separates tracking MACs from the customer links' MACs made with the same key.
_MAC_DOMAIN = b"touchline-track\x00"
_WORKSPACE = re.compile(r"[A-Za-z0-9_-]{1,32}")
_MAX_VARINT_BYTES = 10  # 64 bits
_HTTP = re.compile(r"(?i)https?://")


@dataclass(frozen=True)
class TrackClaims:
    """What a verified tracking token says: the message and, for a click, where to go."""

    kind: TrackKind
    workspace_id: str
    outbox_id: int
    url: str | None


def make_track_token(
    secret: bytes, *, kind: TrackKind, workspace_id: str, outbox_id: int, url: str | None = None
) -> str:
    """A signed, URL-safe token for one message's open pixel or one of its links.

    ``url`` is required for a click (an http(s) URL of at most
    :data:`MAX_URL_BYTES` bytes) and refused for an open.
    """
    if kind not in _KIND_CODES:
        raise ValueError(f"unknown tracking kind {kind!r}")
    if not _WORKSPACE.fullmatch(workspace_id):
        raise ValueError(f"workspace id {workspace_id!r} cannot go into a link")
    if outbox_id < 1:
        raise ValueError("outbox ids are positive")
    payload = bytearray([TOKEN_VERSION << 4 | _KIND_CODES[kind]])
    payload += _varint(outbox_id)
    if kind == "click":
        if url is None or not _HTTP.match(url):
            raise ValueError("a click token needs an http(s) URL")
        data = url.encode()
        if len(data) > MAX_URL_BYTES:
            raise ValueError(f"the URL is longer than {MAX_URL_BYTES} bytes")
        payload += data
    elif url is not None:
        raise ValueError("an open token carries no URL")
    mac = _mac(secret, workspace_id, bytes(payload))
    return f"{workspace_id}.{_b64(bytes(payload) + mac)}"


def track_workspace(token: str) -> str:
    """The workspace a token names, unverified; :class:`InputError` ``bad_link`` if malformed."""
    workspace_id, _, body = token.partition(".")
    if not body or not _WORKSPACE.fullmatch(workspace_id):
        raise _bad("this link is malformed")
    return workspace_id


def read_track_token(secret: bytes, token: str, *, kind: TrackKind) -> TrackClaims:
    """Verify a token made with ``secret`` for ``kind`` and return what it says.

    Any change to the token, a token of the other kind, or one signed with
    another workspace's key raises :class:`InputError` with code ``bad_link``.
    """
    workspace_id = track_workspace(token)
    raw = _unb64(token.partition(".")[2])
    if len(raw) <= MAC_BYTES:
        raise _bad("this link is malformed")
    payload, mac = raw[:-MAC_BYTES], raw[-MAC_BYTES:]
    if not hmac.compare_digest(mac, _mac(secret, workspace_id, payload)):
        raise _bad("this link is not valid; it may have been cut short or altered")
    head = payload[0]
    found = _KINDS_BY_CODE.get(head & 0x0F)
    if head >> 4 != TOKEN_VERSION or found is None:
        raise _bad("this link is of an unknown kind")
    if found != kind:
        raise _bad(f"this is not a tracking link of kind {kind!r}")
    outbox_id, end = _read_varint(payload, 1)
    rest = payload[end:]
    url: str | None = None
    if found == "click":
        try:
            url = rest.decode()
        except UnicodeDecodeError:
            raise _bad("this link is malformed") from None
        if not _HTTP.match(url):
            raise _bad("this link is malformed")
    elif rest:
        raise _bad("this link is malformed")
    if outbox_id < 1:
        raise _bad("this link is malformed")
    return TrackClaims(kind=found, workspace_id=workspace_id, outbox_id=outbox_id, url=url)


def open_url(public_url: str, token: str) -> str:
    """The open pixel's address for an open token."""
    return f"{public_url.rstrip('/')}/t/o/{token}.gif"


def click_url(public_url: str, token: str) -> str:
    """The click redirect's address for a click token."""
    return f"{public_url.rstrip('/')}/t/c/{token}"


# -- encoding ---------------------------------------------------------------------------


def _mac(secret: bytes, workspace_id: str, payload: bytes) -> bytes:
    message = _MAC_DOMAIN + workspace_id.encode() + b"\x00" + payload
    return hmac.new(secret, message, hashlib.sha256).digest()[:MAC_BYTES]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    """Strict URL-safe base64: a second spelling of the same bytes is refused, so
    an altered token never verifies by decoding to the original."""
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


def _read_varint(data: bytes, at: int) -> tuple[int, int]:
    """The varint starting at ``at`` and the index after it."""
    value = 0
    for shift in range(0, 7 * _MAX_VARINT_BYTES, 7):
        if at >= len(data):
            break
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, at
    raise _bad("this link is malformed")


def _bad(message: str) -> InputError:
    return InputError(message, code=BAD_LINK)


__all__ = [
    "BAD_LINK",
    "MAX_URL_BYTES",
    "TrackClaims",
    "TrackKind",
    "click_url",
    "make_track_token",
    "open_url",
    "read_track_token",
    "track_workspace",
]
