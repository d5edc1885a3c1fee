"""Console users and their sessions, in the store.

A console user belongs to one workspace and has one role (:data:`ROLES`).
Passwords are kept as argon2id hashes (argon2-cffi's defaults: 64 MiB, 3
passes), never in clear; a hash made with older parameters is upgraded on
the next successful sign-in.

A session is a random token in an HttpOnly cookie. The store keeps only the
token's SHA-256, so a copy of the database signs nobody in. A session ends
when the user signs out, after :data:`SESSION_IDLE` without a request, or
:data:`SESSION_LIFETIME` after sign-in, whichever comes first; disabling a
user or changing their password ends all of their sessions.

Every function takes the caller's connection; writes expect a transaction.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy import Connection, delete, insert, select, update

from touchline.errors import Conflict, InputError, NotFound
from touchline.store.tables import console_sessions, console_users, workspaces

ADMIN, MARKETER, OPERATOR = "admin", "marketer", "operator"
ROLES = (ADMIN, MARKETER, OPERATOR)
#: A session unused this long is over: a laptop left signed in overnight signs in again.
SESSION_IDLE = timedelta(hours=12)
#: However busy, a session lasts at most this long after sign-in.
SESSION_LIFETIME = timedelta(days=7)
#: ``last_seen_at`` is written at most this often, so reading pages costs no write each time.
TOUCH_EVERY = timedelta(minutes=5)
#: Shortest password accepted; length beats composition rules (NIST SP 800-63B).
MIN_PASSWORD = 10
#: argon2 hashes any length, but a megabyte "password" is an attack on the CPU.
MAX_PASSWORD = 1024
MAX_EMAIL = 320

_hasher = PasswordHasher()
# Verified against when the email is unknown, so a wrong email takes as long as a
# wrong password and sign-in answers do not tell which emails exist. Made on first
# use: hashing costs as much as a sign-in, too much for every import.
_dummy: dict[str, str] = {}


def _dummy_hash() -> str:
    if "hash" not in _dummy:
        _dummy["hash"] = _hasher.hash(secrets.token_urlsafe(16))
    return _dummy["hash"]


@dataclass(frozen=True)
class ConsoleUser:
    """Who is signed in: the console checks ``role`` and scopes every query by ``workspace_id``."""

    id: int
    workspace_id: str
    workspace_name: str
    email: str
    name: str | None
    role: str

    @property
    def label(self) -> str:
        return self.name or self.email


@dataclass(frozen=True)
class Session:
    """A signed-in browser: the user, and the raw token its CSRF tokens derive from."""

    id: int
    token: str
    user: ConsoleUser


def normal_email(email: str) -> str:
    return email.strip().casefold()


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def hash_password(password: str) -> str:
    """An argon2id hash of ``password``; InputError when it is too short or too long."""
    check_password(password)
    return _hasher.hash(password)


def check_password(password: str) -> None:
    if len(password) < MIN_PASSWORD:
        raise InputError(f"a password needs at least {MIN_PASSWORD} characters")
    if len(password) > MAX_PASSWORD:
        raise InputError(f"a password is at most {MAX_PASSWORD} characters")


def create_user(
    conn: Connection,
    workspace_id: str,
    *,
    email: str,
    password: str,
    role: str,
    now: datetime,
    name: str | None = None,
) -> int:
    """Add a console user to a workspace; Conflict ``user_exists`` if the email is taken."""
    email = normal_email(email)
    if "@" not in email or len(email) > MAX_EMAIL:
        raise InputError("an email address is needed to sign in with")
    if role not in ROLES:
        raise InputError(f"role must be one of {', '.join(ROLES)}")
    if conn.execute(select(workspaces.c.id).where(workspaces.c.id == workspace_id)).first() is None:
        raise NotFound(f"no workspace {workspace_id!r}")
    if conn.execute(select(console_users.c.id).where(console_users.c.email == email)).first():
        raise Conflict(f"a console user {email} already exists", code="user_exists")
    user_id: int = conn.execute(
        insert(console_users)
        .values(
            workspace_id=workspace_id,
            email=email,
            name=(name or "").strip() or None,
            role=role,
            password_hash=hash_password(password),
            created_at=now,
            password_changed_at=now,
        )
        .returning(console_users.c.id)
    ).scalar_one()
    return user_id


def set_password(conn: Connection, email: str, password: str, *, now: datetime) -> None:
    """Replace a user's password and end every session they have."""
    password_hash = hash_password(password)
    row = conn.execute(
        select(console_users.c.id).where(console_users.c.email == normal_email(email))
    ).first()
    if row is None:
        raise NotFound(f"no console user {email}")
    conn.execute(
        update(console_users)
        .where(console_users.c.id == row.id)
        .values(password_hash=password_hash, password_changed_at=now)
    )
    conn.execute(delete(console_sessions).where(console_sessions.c.user_id == row.id))


def list_users(conn: Connection, workspace_id: str | None = None) -> list[dict[str, Any]]:
    query = select(
        console_users.c.id,
        console_users.c.workspace_id,
        console_users.c.email,
        console_users.c.name,
        console_users.c.role,
        console_users.c.last_signed_in_at,
        console_users.c.disabled_at,
    ).order_by(console_users.c.workspace_id, console_users.c.email)
    if workspace_id is not None:
        query = query.where(console_users.c.workspace_id == workspace_id)
    return [dict(r._mapping) for r in conn.execute(query)]


def authenticate_password(conn: Connection, email: str, password: str) -> int | None:
    """The id of the enabled user with this email and password, else None (same cost either way)."""
    if len(password) > MAX_PASSWORD:
        return None
    row = conn.execute(
        select(console_users.c.id, console_users.c.password_hash).where(
            console_users.c.email == normal_email(email), console_users.c.disabled_at.is_(None)
        )
    ).first()
    stored = row.password_hash if row is not None else _dummy_hash()
    try:
        _hasher.verify(stored, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return None
    if row is None:
        return None
    if _hasher.check_needs_rehash(stored):
        conn.execute(
            update(console_users)
            .where(console_users.c.id == row.id)
            .values(password_hash=_hasher.hash(password))
        )
    return int(row.id)


def start_session(
    conn: Connection,
    user_id: int,
    *,
    now: datetime,
    ip: str | None = None,
    user_agent: str | None = None,
) -> str:
    """A new session for the user; returns the token for the cookie (never stored)."""
    workspace_id = conn.execute(
        select(console_users.c.workspace_id).where(console_users.c.id == user_id)
    ).scalar_one()
    token = secrets.token_urlsafe(32)
    conn.execute(
        insert(console_sessions).values(
            workspace_id=workspace_id,
            user_id=user_id,
            token_hash=hash_token(token),
            created_at=now,
            last_seen_at=now,
            expires_at=now + SESSION_LIFETIME,
            ip=(ip or "")[:64] or None,
            user_agent=(user_agent or "")[:500] or None,
        )
    )
    conn.execute(
        update(console_users).where(console_users.c.id == user_id).values(last_signed_in_at=now)
    )
    # Old sessions of anyone are cleared as people sign in: no sweeper process needed.
    conn.execute(delete(console_sessions).where(console_sessions.c.expires_at <= now))
    return token


def find_session(conn: Connection, token: str | None, *, now: datetime) -> Session | None:
    """The live session of ``token`` and its user; None when unknown, expired or idle too long."""
    if not token or len(token) > 200:
        return None
    row = conn.execute(
        select(
            console_sessions.c.id,
            console_sessions.c.last_seen_at,
            console_sessions.c.expires_at,
            console_users.c.id.label("user_id"),
            console_users.c.workspace_id,
            console_users.c.email,
            console_users.c.name,
            console_users.c.role,
            workspaces.c.name.label("workspace_name"),
        )
        .join(console_users, console_users.c.id == console_sessions.c.user_id)
        .join(workspaces, workspaces.c.id == console_users.c.workspace_id)
        .where(
            console_sessions.c.token_hash == hash_token(token),
            console_users.c.disabled_at.is_(None),
            # A session is bound to the workspace it was opened in.
            console_sessions.c.workspace_id == console_users.c.workspace_id,
        )
    ).first()
    if row is None or row.expires_at <= now or row.last_seen_at + SESSION_IDLE <= now:
        return None
    user = ConsoleUser(
        id=row.user_id,
        workspace_id=row.workspace_id,
        workspace_name=row.workspace_name,
        email=row.email,
        name=row.name,
        role=row.role,
    )
    return Session(id=row.id, token=token, user=user)


def needs_touch(conn: Connection, session_id: int, *, now: datetime) -> bool:
    seen = conn.execute(
        select(console_sessions.c.last_seen_at).where(console_sessions.c.id == session_id)
    ).scalar()
    return seen is not None and seen + TOUCH_EVERY <= now


def touch_session(conn: Connection, session_id: int, *, now: datetime) -> None:
    conn.execute(
        update(console_sessions).where(console_sessions.c.id == session_id).values(last_seen_at=now)
    )


def end_session(conn: Connection, token: str) -> None:
    conn.execute(delete(console_sessions).where(console_sessions.c.token_hash == hash_token(token)))


def disable_user(conn: Connection, email: str, *, now: datetime) -> None:
    """Stop a user signing in and end their sessions; the row stays for the record."""
    row = conn.execute(
        select(console_users.c.id).where(console_users.c.email == normal_email(email))
    ).first()
    if row is None:
        raise NotFound(f"no console user {email}")
    conn.execute(update(console_users).where(console_users.c.id == row.id).values(disabled_at=now))
    conn.execute(delete(console_sessions).where(console_sessions.c.user_id == row.id))
