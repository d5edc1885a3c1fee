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
class RateLimit:
    """A token bucket's shape: ``rate`` requests a second on average, ``burst`` at once."""

    rate: float
    burst: float

    @classmethod
    def parse(cls, text: str, *, name: str) -> RateLimit | None:
        """``"RATE"`` or ``"RATE:BURST"`` (burst defaults to twice the rate); ``off`` or 0: none."""
        raw = text.strip().lower()
        if raw in ("off", "0", "none"):
            return None
        rate_text, _, burst_text = raw.partition(":")
        try:
            rate = float(rate_text)
            burst = float(burst_text) if burst_text else 2 * rate
        except ValueError:
            raise ConfigError(f"{name} must be RATE or RATE:BURST, or off; got {text!r}") from None
        if rate <= 0 or burst < 1:
            raise ConfigError(f"{name}: the rate must be positive and the burst at least 1")
        return cls(rate, burst)


def _rate(environ: Mapping[str, str], name: str, default: RateLimit | None) -> RateLimit | None:
    raw = environ.get(name)
    return default if raw is None or raw == "" else RateLimit.parse(raw, name=name)


# Per-client token buckets of the public endpoints (see touchline.ops.limits).
RATE_LIMIT_INGEST_KEY = RateLimit(200, 400)  # one shop's SDKs, all visitors together
RATE_LIMIT_INGEST_IP = RateLimit(200, 400)  # caps invented keys, each a store lookup
RATE_LIMIT_TRACKING = RateLimit(50, 100)  # image proxies fetch many customers' pixels
RATE_LIMIT_PAGES = RateLimit(10, 20)  # a person clicking through their own pages
RATE_LIMIT_CALLBACKS = RateLimit(100, 200)  # a provider reporting a bulk send


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
    # "text" or "json" (one object a line); see touchline.ops.logs.
    log_format: str = "text"
    # Bearer token GET /metrics asks for; without one the endpoint is open.
    metrics_token: Secret | None = None
    # Token buckets of the public endpoints; None turns one off.
    rate_limit_ingest_key: RateLimit | None = RATE_LIMIT_INGEST_KEY
    rate_limit_ingest_ip: RateLimit | None = RATE_LIMIT_INGEST_IP
    rate_limit_tracking: RateLimit | None = RATE_LIMIT_TRACKING
    rate_limit_pages: RateLimit | None = RATE_LIMIT_PAGES
    rate_limit_callbacks: RateLimit | None = RATE_LIMIT_CALLBACKS

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
            "log_format": env.get("TOUCHLINE_LOG_FORMAT") or "text",
            "metrics_token": Secret(env["TOUCHLINE_METRICS_TOKEN"])
            if env.get("TOUCHLINE_METRICS_TOKEN")
            else None,
            "rate_limit_ingest_key": _rate(
                env, "TOUCHLINE_RATE_LIMIT_INGEST_KEY", RATE_LIMIT_INGEST_KEY
            ),
            "rate_limit_ingest_ip": _rate(
                env, "TOUCHLINE_RATE_LIMIT_INGEST_IP", RATE_LIMIT_INGEST_IP
            ),
            "rate_limit_tracking": _rate(env, "TOUCHLINE_RATE_LIMIT_TRACKING", RATE_LIMIT_TRACKING),
            "rate_limit_pages": _rate(env, "TOUCHLINE_RATE_LIMIT_PAGES", RATE_LIMIT_PAGES),
            "rate_limit_callbacks": _rate(
                env, "TOUCHLINE_RATE_LIMIT_CALLBACKS", RATE_LIMIT_CALLBACKS
            ),
        }
        if kwargs["log_format"] not in ("text", "json"):
            raise ConfigError("TOUCHLINE_LOG_FORMAT must be text or json")
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
