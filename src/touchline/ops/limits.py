"""Token buckets in front of the public endpoints.

Anyone on the internet can reach the ingest API, the tracking links, the
customer pages and the provider callbacks. Each request to one of them takes
a token from its client's bucket; an empty bucket answers ``429`` with
``Retry-After`` (whole seconds) and the API's JSON ``{"code": "rate_limited",
"message": ...}`` — the customer pages answer JSON here too, not HTML: a
person does not click twenty times a second, so whoever reads it is a script.

Buckets, each with its own :class:`~touchline.config.RateLimit` from Settings:

* ``ingest`` (``/v1/*``): one per client IP and one per key in the
  ``Authorization`` header (a key sent only in the body counts against the
  IP's bucket alone: the body is not read before the limit is checked);
* ``tracking`` (``/t/*``, ``/s/*``), ``pages`` (``/u/*``, ``/p/*``,
  ``/c/*``) and ``callbacks`` (``/callbacks/*``): one per client IP.

The client IP is the ASGI peer address. Behind a reverse proxy that is the
proxy, unless uvicorn is told to trust its ``X-Forwarded-For``
(``FORWARDED_ALLOW_IPS``, uvicorn's own setting): see docs/how-to/operate.md.

Buckets live in this process's memory. With several API processes each has
its own, so a client may get up to N times the limit; that is enough to stop
floods and scripts, which is what this is for, not to meter anybody exactly.
"""

from __future__ import annotations

import hashlib
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from touchline.config import RateLimit, Settings
from touchline.errors import TouchlineError
from touchline.web.api.ingest import key_from_authorization

RATE_LIMITED = "rate_limited"
#: Buckets kept at most; the least recently used go first (a forgotten bucket is a full one).
MAX_BUCKETS = 100_000
#: Path prefix -> endpoint group. Anything else is not limited.
GROUPS: tuple[tuple[str, str], ...] = (
    ("/v1/", "ingest"),
    ("/t/", "tracking"),
    ("/s/", "tracking"),
    ("/u/", "pages"),
    ("/p/", "pages"),
    ("/c/", "pages"),
    ("/callbacks/", "callbacks"),
)


def group_of(path: str) -> str | None:
    """The endpoint group a request path belongs to, or ``None`` if it is not limited."""
    for prefix, group in GROUPS:
        if path.startswith(prefix):
            return group
    return None


def limits_from(settings: Settings) -> dict[str, RateLimit | None]:
    """The limit of each bucket kind, by the names :class:`RateLimitMiddleware` uses."""
    return {
        "ingest_ip": settings.rate_limit_ingest_ip,
        "ingest_key": settings.rate_limit_ingest_key,
        "tracking": settings.rate_limit_tracking,
        "pages": settings.rate_limit_pages,
        "callbacks": settings.rate_limit_callbacks,
    }


@dataclass
class _Bucket:
    tokens: float
    at: float


class RateLimiter:
    """Token buckets by ``(limit name, client)``, refilled from ``monotonic`` (thread-safe)."""

    def __init__(
        self,
        limits: Mapping[str, RateLimit | None],
        *,
        monotonic: Callable[[], float] = time.monotonic,
        max_buckets: int = MAX_BUCKETS,
    ) -> None:
        self.limits = dict(limits)
        self._monotonic = monotonic
        self._max = max_buckets
        self._buckets: OrderedDict[tuple[str, str], _Bucket] = OrderedDict()
        self._lock = threading.Lock()

    def take(self, name: str, client: str) -> float:
        """Take a token from ``client``'s ``name`` bucket: 0.0 if granted, else seconds to wait.

        A limit that is off (``None``) or unknown always grants. A refused
        request takes nothing, so a client that keeps knocking gets in as soon
        as the rate allows, no later.
        """
        limit = self.limits.get(name)
        if limit is None:
            return 0.0
        now = self._monotonic()
        with self._lock:
            bucket = self._buckets.get((name, client))
            if bucket is None:
                bucket = _Bucket(tokens=limit.burst, at=now)
                self._buckets[(name, client)] = bucket
                if len(self._buckets) > self._max:
                    self._buckets.popitem(last=False)
            else:
                self._buckets.move_to_end((name, client))
                # max(): a clock that steps back must not drain the bucket.
                elapsed = max(now - bucket.at, 0.0)
                bucket.tokens = min(limit.burst, bucket.tokens + elapsed * limit.rate)
                bucket.at = now
            if bucket.tokens >= 1:
                bucket.tokens -= 1
                return 0.0
            return (1 - bucket.tokens) / limit.rate

    def __len__(self) -> int:
        return len(self._buckets)


class RateLimitMiddleware:
    """ASGI middleware answering 429 for a public request whose bucket is empty.

    ``on_limited(group)`` is called for every refused request (the metrics
    count them).
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        limiter: RateLimiter,
        on_limited: Callable[[str], None] | None = None,
    ) -> None:
        self.app = app
        self.limiter = limiter
        self.on_limited = on_limited

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        group = group_of(scope["path"]) if scope["type"] == "http" else None
        if group is None:
            await self.app(scope, receive, send)
            return
        wait = self._check(group, scope)
        if wait <= 0:
            await self.app(scope, receive, send)
            return
        if self.on_limited is not None:
            self.on_limited(group)
        seconds = max(1, math.ceil(wait))
        response = JSONResponse(
            {"code": RATE_LIMITED, "message": f"too many requests; retry in {seconds} s"},
            status_code=429,
            headers={"Retry-After": str(seconds)},
        )
        await response(scope, receive, send)

    def _check(self, group: str, scope: Scope) -> float:
        client = scope.get("client")
        ip = client[0] if client else "unknown"
        if group != "ingest":
            return self.limiter.take(group, ip)
        wait = self.limiter.take("ingest_ip", ip)
        if wait > 0:
            return wait
        key = _header_key(scope)
        return self.limiter.take("ingest_key", key) if key is not None else 0.0


def _header_key(scope: Scope) -> str | None:
    """A digest of the key in the Authorization header: buckets never hold a key itself."""
    for name, value in scope.get("headers", ()):
        if name == b"authorization":
            try:
                key = key_from_authorization(value.decode("latin-1"))
            except TouchlineError:  # a malformed header: the route will refuse it
                return None
            if key is None:
                return None
            return hashlib.blake2b(key.encode(), digest_size=16).hexdigest()
    return None
