"""Settings, read once from the environment at start-up and passed down.

:meth:`Settings.from_env` is the only place in touchline that reads
``os.environ``; everything else receives a :class:`Settings`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from touchline.errors import ConfigError

DEFAULT_DATABASE_URL = "sqlite:///touchline.db"


class Secret:
    """A string that never shows itself in ``repr`` or ``str``."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


def _int(environ: Mapping[str, str], name: str, default: int) -> int:
    raw = environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from None


@dataclass(frozen=True)
class Settings:
    database_url: str = DEFAULT_DATABASE_URL
    host: str = "127.0.0.1"
    port: int = 8000
    worker_id: str = field(default_factory=lambda: f"{os.uname().nodename}:{os.getpid()}")
    # How long a claimed timer or event stays ours before another worker may take it.
    lease_seconds: int = 60
    # How many due items one worker claims per round trip.
    claim_batch: int = 200
    # Idle poll interval of the worker loop, in milliseconds.
    poll_ms: int = 200
    log_level: str = "INFO"
    # Outgoing mail server; without a host, email is kept by the capture channel.
    smtp_host: str | None = None
    smtp_port: int = 587
    smtp_security: str = "starttls"  # none | starttls | tls
    smtp_username: str | None = None
    smtp_password: Secret | None = None
    smtp_from: str = "touchline@localhost"
    # Where customers reach this server: unsubscribe, preference and confirmation links.
    public_url: str = "http://127.0.0.1:8000"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        url = env.get("TOUCHLINE_DATABASE_URL") or DEFAULT_DATABASE_URL
        if url.startswith("postgresql://") or url.startswith("postgres://"):
            url = "postgresql+psycopg://" + url.split("://", 1)[1]
        host = env.get("TOUCHLINE_HOST", "127.0.0.1")
        port = _int(env, "TOUCHLINE_PORT", 8000)
        kwargs: dict[str, object] = {
            "database_url": url,
            "host": host,
            "port": port,
            "public_url": (env.get("TOUCHLINE_PUBLIC_URL") or f"http://{host}:{port}").rstrip("/"),
            "lease_seconds": _int(env, "TOUCHLINE_LEASE_SECONDS", 60),
            "claim_batch": _int(env, "TOUCHLINE_CLAIM_BATCH", 200),
            "poll_ms": _int(env, "TOUCHLINE_POLL_MS", 200),
            "log_level": env.get("TOUCHLINE_LOG_LEVEL", "INFO"),
        }
        if env.get("TOUCHLINE_SMTP_HOST"):
            security = env.get("TOUCHLINE_SMTP_SECURITY", "starttls")
            if security not in ("none", "starttls", "tls"):
                raise ConfigError("TOUCHLINE_SMTP_SECURITY must be none, starttls or tls")
            kwargs.update(
                smtp_host=env["TOUCHLINE_SMTP_HOST"],
                smtp_port=_int(env, "TOUCHLINE_SMTP_PORT", 587),
                smtp_security=security,
                smtp_username=env.get("TOUCHLINE_SMTP_USERNAME") or None,
                smtp_password=Secret(env["TOUCHLINE_SMTP_PASSWORD"])
                if env.get("TOUCHLINE_SMTP_PASSWORD")
                else None,
                smtp_from=env.get("TOUCHLINE_SMTP_FROM", "touchline@localhost"),
            )
        if env.get("TOUCHLINE_WORKER_ID"):
            kwargs["worker_id"] = env["TOUCHLINE_WORKER_ID"]
        if kwargs["lease_seconds"] <= 0:  # type: ignore[operator]
            raise ConfigError("TOUCHLINE_LEASE_SECONDS must be positive")
        return cls(**kwargs)  # type: ignore[arg-type]
