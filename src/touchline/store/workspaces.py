"""Workspaces and their API keys.

A workspace is one shop (one tenant). It has two kinds of key:

* **write keys** (``tlw_...``) go into the shop's site and SDKs; they can only
  send events, so leaking one exposes nothing.
* **admin tokens** (``tla_...``) are for the admin API and CLI. They may also
  send events (handy for imports), but a write key is never accepted where an
  admin token is required.

A key is shown once, when created. The store keeps only its SHA-256 hash (to
look it up) and a short prefix (so people can tell keys apart in lists).

:class:`KeyCache` remembers successful lookups for :data:`KEY_CACHE_TTL`
seconds so the ingest hot path does not query ``api_keys`` on every request.
The price: revoking a key takes up to that long to reach every process (the
process that revokes, when given the cache, forgets the key at once).
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from sqlalchemy import Connection, Engine, insert, select, update
from sqlalchemy.exc import OperationalError

from touchline.errors import AuthError, InputError, NotFound, StoreError
from touchline.ingest.traits import normalize_timezone
from touchline.store.db import transaction
from touchline.store.tables import api_keys, workspaces

KeyKind = Literal["write", "admin"]
KEY_KINDS: tuple[KeyKind, ...] = ("write", "admin")
KEY_PREFIXES: dict[str, str] = {"write": "tlw_", "admin": "tla_"}
# Seconds a successful key lookup is trusted without asking the store again.
KEY_CACHE_TTL = 5.0
# Characters of a key kept in clear, enough to tell keys apart in a list.
SHOWN_PREFIX_LENGTH = 12
_SLUG_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"  # Crockford base32, lower case
_SLUG_LENGTH = 12


@dataclass(frozen=True)
class CreatedWorkspace:
    """A new workspace and its first keys; the keys are never shown again."""

    id: str
    name: str
    write_key: str = field(repr=False)
    admin_token: str = field(repr=False)


@dataclass(frozen=True)
class CreatedKey:
    """A new key: ``key`` is the secret to hand out, ``id`` names it for revocation."""

    id: int
    workspace_id: str
    kind: KeyKind
    prefix: str
    key: str = field(repr=False)


class KeyCache:
    """Successful key lookups, each trusted for ``ttl`` seconds (thread-safe).

    Only hits are cached: an unknown key always reaches the store, so a key
    created a moment ago works at once.
    """

    def __init__(
        self, *, ttl: float = KEY_CACHE_TTL, monotonic: Callable[[], float] = time.monotonic
    ) -> None:
        self._ttl = ttl
        self._monotonic = monotonic
        self._entries: dict[str, tuple[str, str, float]] = {}
        self._lock = threading.Lock()

    def get(self, key_hash: str) -> tuple[str, str] | None:
        """``(workspace_id, kind)`` for a hash looked up recently, else ``None``."""
        with self._lock:
            entry = self._entries.get(key_hash)
            if entry is None:
                return None
            if entry[2] <= self._monotonic():
                del self._entries[key_hash]
                return None
            return entry[0], entry[1]

    def put(self, key_hash: str, workspace_id: str, kind: str) -> None:
        with self._lock:
            self._entries[key_hash] = (workspace_id, kind, self._monotonic() + self._ttl)

    def forget(self, key_hash: str) -> None:
        with self._lock:
            self._entries.pop(key_hash, None)


def create_workspace(
    engine_or_conn: Engine | Connection,
    name: str,
    *,
    now: datetime,
    timezone: str = "UTC",
) -> CreatedWorkspace:
    """Create a workspace with one write key and one admin token.

    ``timezone`` (IANA) is the shop's zone, used for reports and schedules.
    Given an Engine this runs in its own transaction; given a Connection it
    joins the caller's.
    """
    name = name.strip() if isinstance(name, str) else ""
    if not name or len(name) > 200:
        raise InputError("a workspace name must be 1-200 characters")
    if normalize_timezone(timezone) is None:
        raise InputError(f"unknown time zone {timezone!r}; use an IANA name like Europe/Moscow")
    workspace_id = "ws_" + "".join(secrets.choice(_SLUG_ALPHABET) for _ in range(_SLUG_LENGTH))
    with _connection(engine_or_conn) as conn:
        conn.execute(
            insert(workspaces).values(
                id=workspace_id,
                name=name,
                timezone=timezone,
                created_at=now,
                settings={},
                link_secret=secrets.token_hex(32),
            )
        )
        write = create_key(conn, workspace_id, "write", now=now)
        admin = create_key(conn, workspace_id, "admin", now=now)
    return CreatedWorkspace(id=workspace_id, name=name, write_key=write.key, admin_token=admin.key)


def link_secret(conn: Connection, workspace_id: str) -> bytes:
    """The key that signs the workspace's customer links, made on first use if missing."""
    secret = conn.execute(
        select(workspaces.c.link_secret).where(workspaces.c.id == workspace_id)
    ).scalar_one_or_none()
    if secret is None:
        exists = conn.execute(select(workspaces.c.id).where(workspaces.c.id == workspace_id))
        if exists.first() is None:
            raise NotFound(f"no workspace {workspace_id!r}")
        fresh = secrets.token_hex(32)
        conn.execute(
            update(workspaces)
            .where(workspaces.c.id == workspace_id, workspaces.c.link_secret.is_(None))
            .values(link_secret=fresh)
        )
        secret = conn.execute(
            select(workspaces.c.link_secret).where(workspaces.c.id == workspace_id)
        ).scalar_one()
    return bytes.fromhex(secret)


def workspace_settings(conn: Connection, workspace_id: str) -> dict[str, object]:
    """The workspace's settings document (``{}`` when none was saved)."""
    value = conn.execute(
        select(workspaces.c.settings).where(workspaces.c.id == workspace_id)
    ).scalar_one_or_none()
    return dict(value or {})


def create_key(conn: Connection, workspace_id: str, kind: KeyKind, *, now: datetime) -> CreatedKey:
    """Issue a new key of ``kind`` (``"write"`` or ``"admin"``) for the workspace."""
    if kind not in KEY_KINDS:
        raise InputError(f"key kind must be one of {', '.join(KEY_KINDS)}")
    exists = conn.execute(select(workspaces.c.id).where(workspaces.c.id == workspace_id)).first()
    if exists is None:
        raise NotFound(f"no workspace {workspace_id!r}")
    key = KEY_PREFIXES[kind] + secrets.token_urlsafe(24)
    prefix = key[:SHOWN_PREFIX_LENGTH]
    key_id = conn.execute(
        insert(api_keys)
        .values(
            workspace_id=workspace_id,
            kind=kind,
            key_hash=hash_key(key),
            prefix=prefix,
            created_at=now,
        )
        .returning(api_keys.c.id)
    ).scalar_one()
    return CreatedKey(id=key_id, workspace_id=workspace_id, kind=kind, prefix=prefix, key=key)


def revoke_key(
    conn: Connection,
    workspace_id: str,
    key_id: int,
    *,
    now: datetime,
    cache: KeyCache | None = None,
) -> None:
    """Revoke a key of this workspace; revoking twice is harmless.

    Raises :class:`NotFound` if the workspace has no key ``key_id``.
    """
    row = conn.execute(
        select(api_keys.c.key_hash, api_keys.c.revoked_at).where(
            api_keys.c.id == key_id, api_keys.c.workspace_id == workspace_id
        )
    ).first()
    if row is None:
        raise NotFound(f"no key {key_id} in this workspace")
    if row.revoked_at is None:
        conn.execute(update(api_keys).where(api_keys.c.id == key_id).values(revoked_at=now))
    if cache is not None:
        cache.forget(row.key_hash)


def list_keys(conn: Connection, workspace_id: str) -> list[dict[str, object]]:
    """The workspace's keys, oldest first: id, kind, prefix, created_at, revoked_at."""
    rows = conn.execute(
        select(
            api_keys.c.id,
            api_keys.c.kind,
            api_keys.c.prefix,
            api_keys.c.created_at,
            api_keys.c.revoked_at,
        )
        .where(api_keys.c.workspace_id == workspace_id)
        .order_by(api_keys.c.id)
    )
    return [dict(row._mapping) for row in rows]


def authenticate(
    engine_or_conn: Engine | Connection,
    key: str | None,
    *,
    kind: KeyKind,
    cache: KeyCache | None = None,
) -> str:
    """The workspace id ``key`` belongs to, if it may be used for ``kind``.

    ``kind="write"`` accepts write keys and admin tokens; ``kind="admin"``
    accepts admin tokens only. Unknown, revoked and wrong-kind keys raise
    :class:`AuthError`. With a ``cache`` and an Engine, a cached key costs no
    database connection at all.
    """
    if kind not in KEY_KINDS:
        raise ValueError(f"unknown key kind {kind!r}")
    if not key or not isinstance(key, str):
        raise AuthError("an API key is required")
    if not key.startswith(tuple(KEY_PREFIXES.values())):
        raise AuthError("invalid API key")
    key_hash = hash_key(key)
    found = cache.get(key_hash) if cache is not None else None
    if found is None:
        with _reader(engine_or_conn) as conn:
            row = conn.execute(
                select(api_keys.c.workspace_id, api_keys.c.kind).where(
                    api_keys.c.key_hash == key_hash, api_keys.c.revoked_at.is_(None)
                )
            ).first()
        if row is None:
            raise AuthError("invalid API key")
        found = (row.workspace_id, row.kind)
        if cache is not None:
            cache.put(key_hash, *found)
    workspace_id, key_kind = found
    if kind == "admin" and key_kind != "admin":
        raise AuthError("a write key cannot be used on the admin API; use an admin token")
    return workspace_id


def hash_key(key: str) -> str:
    """The hex SHA-256 of a key, which is what ``api_keys`` stores."""
    return hashlib.sha256(key.encode()).hexdigest()


@contextmanager
def _connection(engine_or_conn: Engine | Connection) -> Iterator[Connection]:
    if isinstance(engine_or_conn, Connection):
        yield engine_or_conn
    else:
        with transaction(engine_or_conn) as conn:
            yield conn


@contextmanager
def _reader(engine_or_conn: Engine | Connection) -> Iterator[Connection]:
    if isinstance(engine_or_conn, Connection):
        yield engine_or_conn
    else:
        try:
            with engine_or_conn.connect() as conn:
                yield conn
        except OperationalError as exc:
            raise StoreError(f"the store is unreachable: {exc.orig}") from exc


__all__ = [
    "KEY_CACHE_TTL",
    "CreatedKey",
    "CreatedWorkspace",
    "KeyCache",
    "link_secret",
    "workspace_settings",
    "KeyKind",
    "authenticate",
    "create_key",
    "create_workspace",
    "hash_key",
    "list_keys",
    "revoke_key",
]
