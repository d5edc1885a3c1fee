"""Token buckets on the public endpoints: bursts refused with 429 and Retry-After, then refilled.

The app runs in-process on SQLite and PostgreSQL with a monotonic clock the
tests move by hand, so refills are exact and nothing sleeps.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine

from touchline.config import (
    RATE_LIMIT_PAGES,
    ConfigError,
    RateLimit,
    Settings,
)
from touchline.ops.limits import RateLimiter
from touchline.store.workspaces import create_workspace
from touchline.testing import FrozenClock, track
from touchline.web.app import create_app

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
    from fastapi.testclient import TestClient

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
# A syntactically plausible unsubscribe link no workspace signed: answers a 400 page.
BAD_PAGE = "/u/ws_000000000000.AAAAAAAAAAAAAAAAAAAAAA"
OFF = Settings(
    rate_limit_ingest_key=None,
    rate_limit_ingest_ip=None,
    rate_limit_tracking=None,
    rate_limit_pages=None,
    rate_limit_callbacks=None,
)


class Ticker:
    """A monotonic clock that moves only when told to."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def ticker() -> Ticker:
    return Ticker()


@contextmanager
def running(
    engine: Engine, database_url: str, ticker: Ticker, **limits: RateLimit | None
) -> Iterator[TestClient]:
    """The app with every limit off except ``limits``."""
    settings = replace(OFF, database_url=database_url, **limits)  # type: ignore[arg-type]
    app = create_app(settings, engine=engine, clock=FrozenClock(T0), monotonic=ticker)
    with TestClient(app) as client:
        yield client


def assert_limited(response: httpx.Response, *, retry_after: int) -> None:
    """A 429 with ``Retry-After`` in whole seconds and the API's ``{code, message}``."""
    assert response.status_code == 429, response.text
    assert response.headers["retry-after"] == str(retry_after)
    body = response.json()
    assert body["code"] == "rate_limited"
    assert set(body) == {"code", "message"} and body["message"]


# -- bursts and refills -------------------------------------------------------------------


def test_a_page_burst_is_refused_with_429_and_retry_after(
    engine: Engine, database_url: str, ticker: Ticker
) -> None:
    """Three requests of a burst of three pass; the fourth is 429, to come back in 2 s."""
    with running(engine, database_url, ticker, rate_limit_pages=RateLimit(0.5, 3)) as client:
        # when
        passed = [client.get(BAD_PAGE).status_code for _ in range(3)]
        refused = client.get(BAD_PAGE)
    # then: the page itself answered (400, a bad link) until the bucket ran dry
    assert passed == [400, 400, 400]
    assert_limited(refused, retry_after=2)


def test_the_bucket_refills_at_its_rate_up_to_its_burst(
    engine: Engine, database_url: str, ticker: Ticker
) -> None:
    """At 0.5 request/s one request passes again after 2 s; an idle minute refills only the burst."""
    with running(engine, database_url, ticker, rate_limit_pages=RateLimit(0.5, 3)) as client:
        for _ in range(3):
            client.get(BAD_PAGE)
        ticker.advance(1.5)
        assert_limited(client.get(BAD_PAGE), retry_after=1)  # 0.75 token: not yet
        ticker.advance(0.5)
        assert client.get(BAD_PAGE).status_code == 400  # one token back
        assert_limited(client.get(BAD_PAGE), retry_after=2)

        ticker.advance(60)
        after_idle = [client.get(BAD_PAGE).status_code for _ in range(4)]
    assert after_idle == [400, 400, 400, 429]


def test_each_client_ip_has_its_own_bucket(
    engine: Engine, database_url: str, ticker: Ticker
) -> None:
    """One address running dry does not refuse another."""
    settings = replace(OFF, database_url=database_url, rate_limit_pages=RateLimit(1, 1))
    app = create_app(settings, engine=engine, clock=FrozenClock(T0), monotonic=ticker)
    with (
        TestClient(app, client=("198.51.100.1", 4000)) as first,
        TestClient(app, client=("198.51.100.2", 4000)) as second,
    ):
        assert first.get(BAD_PAGE).status_code == 400
        assert first.get(BAD_PAGE).status_code == 429
        assert second.get(BAD_PAGE).status_code == 400


# -- ingest -------------------------------------------------------------------------------


def test_ingest_is_limited_per_write_key(engine: Engine, database_url: str, ticker: Ticker) -> None:
    """One shop's key runs dry on its own; another shop's key still gets in."""
    a = create_workspace(engine, "A", now=T0)
    b = create_workspace(engine, "B", now=T0)
    with running(engine, database_url, ticker, rate_limit_ingest_key=RateLimit(1, 2)) as client:

        def post(key: str) -> httpx.Response:
            return client.post("/v1/track", json=track("u1", "Seen"), auth=(key, ""))

        statuses_a = [post(a.write_key).status_code for _ in range(2)]
        refused = post(a.write_key)
        other = post(b.write_key)
    assert statuses_a == [200, 200]
    assert_limited(refused, retry_after=1)
    assert other.status_code == 200, other.text


def test_ingest_is_limited_per_ip_whatever_the_key(
    engine: Engine, database_url: str, ticker: Ticker
) -> None:
    """Invented keys each cost a store lookup; the address's bucket stops them all the same."""
    with running(engine, database_url, ticker, rate_limit_ingest_ip=RateLimit(1, 2)) as client:
        statuses = [
            client.post(
                "/v1/track", json=track("u1", "Seen"), auth=(f"tlw_invented-key-{n:04d}", "")
            ).status_code
            for n in range(3)
        ]
    assert statuses == [401, 401, 429]


def test_a_key_in_the_body_counts_against_the_address_only(
    engine: Engine, database_url: str, ticker: Ticker
) -> None:
    """The body is not read before the limit, so a body writeKey has no bucket of its own."""
    shop = create_workspace(engine, "A", now=T0)
    with running(engine, database_url, ticker, rate_limit_ingest_key=RateLimit(1, 1)) as client:
        statuses = [
            client.post(
                "/v1/track", json={**track("u1", "Seen"), "writeKey": shop.write_key}
            ).status_code
            for _ in range(3)
        ]
    assert statuses == [200, 200, 200]


# -- which endpoints ----------------------------------------------------------------------


def test_endpoint_groups_do_not_share_buckets(
    engine: Engine, database_url: str, ticker: Ticker
) -> None:
    """With the pages' bucket empty, tracking and callbacks still answer for themselves."""
    limits = {
        "rate_limit_pages": RateLimit(1, 1),
        "rate_limit_tracking": RateLimit(1, 1),
        "rate_limit_callbacks": RateLimit(1, 1),
    }
    with running(engine, database_url, ticker, **limits) as client:
        client.get(BAD_PAGE)
        assert client.get(BAD_PAGE).status_code == 429
        short = client.get("/s/zzzzzzzz", follow_redirects=False)
        callback = client.post("/callbacks/ws_000000000000/nobody", content=b"{}")
        assert short.status_code == 404
        assert callback.status_code == 404
        # and each of those groups has now spent its own single token
        assert client.get("/t/o/anything.gif").status_code == 429
        assert client.post("/callbacks/ws_000000000000/nobody").status_code == 429


def test_private_endpoints_are_never_limited(
    engine: Engine, database_url: str, ticker: Ticker
) -> None:
    """Health checks, the admin API and /metrics are not public: no bucket applies."""
    tiny = RateLimit(1, 1)
    limits = {name: tiny for name in vars(OFF) if name.startswith("rate_limit_")}
    with running(engine, database_url, ticker, **limits) as client:
        statuses = {
            path: [client.get(path).status_code for _ in range(5)]
            for path in ("/healthz", "/admin/v1/journeys", "/metrics")
        }
    assert statuses == {
        "/healthz": [200] * 5,
        "/admin/v1/journeys": [401] * 5,
        "/metrics": [200] * 5,
    }


def test_a_refusal_carries_cors_headers_and_is_counted(
    engine: Engine, database_url: str, ticker: Ticker
) -> None:
    """A browser can read the 429; /metrics counts it by group and by route."""
    with running(engine, database_url, ticker, rate_limit_pages=RateLimit(1, 1)) as client:
        client.get(BAD_PAGE)
        refused = client.get(BAD_PAGE, headers={"Origin": "https://shop.example"})
        exposition = client.get("/metrics").text
    assert refused.status_code == 429
    assert refused.headers["access-control-allow-origin"] == "*"
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(exposition)
        for s in family.samples
    }
    assert samples[("touchline_rate_limited_requests_total", (("group", "pages"),))] == 1
    route = (("method", "GET"), ("route", "/u/{token}"), ("status", "429"))
    assert samples[("touchline_http_requests_total", route)] == 1


# -- settings and the buckets themselves --------------------------------------------------


def test_limits_are_read_from_the_environment() -> None:
    """RATE, RATE:BURST and off are understood; unset variables keep the defaults."""
    settings = Settings.from_env(
        {
            "TOUCHLINE_RATE_LIMIT_INGEST_KEY": "50:80",
            "TOUCHLINE_RATE_LIMIT_TRACKING": "7",
            "TOUCHLINE_RATE_LIMIT_CALLBACKS": "off",
        }
    )
    assert settings.rate_limit_ingest_key == RateLimit(50, 80)
    assert settings.rate_limit_tracking == RateLimit(7, 14)
    assert settings.rate_limit_callbacks is None
    assert settings.rate_limit_pages == RATE_LIMIT_PAGES


@pytest.mark.parametrize("value", ["fast", "10:x", "-1", "5:0.5"])
def test_a_malformed_limit_stops_start_up(value: str) -> None:
    """A limit that does not parse, or cannot pass one request, is a configuration error."""
    with pytest.raises(ConfigError, match="TOUCHLINE_RATE_LIMIT_PAGES"):
        Settings.from_env({"TOUCHLINE_RATE_LIMIT_PAGES": value})


def test_a_clock_stepping_back_does_not_drain_a_bucket(ticker: Ticker) -> None:
    """Elapsed time never counts negative: a step back only pauses the refill."""
    limiter = RateLimiter({"pages": RateLimit(1, 2)}, monotonic=ticker)
    assert limiter.take("pages", "ip") == 0.0
    ticker.now -= 100
    assert limiter.take("pages", "ip") == 0.0
    assert limiter.take("pages", "ip") == pytest.approx(1.0)


def test_past_the_cap_the_least_recently_used_bucket_is_forgotten(ticker: Ticker) -> None:
    """Memory stays bounded; a forgotten client starts again with a full bucket."""
    limiter = RateLimiter({"pages": RateLimit(1, 1)}, monotonic=ticker, max_buckets=2)
    limiter.take("pages", "a")
    limiter.take("pages", "b")
    assert limiter.take("pages", "a") > 0  # "a" is empty, and now the most recent
    limiter.take("pages", "c")  # evicts "b"
    assert len(limiter) == 2
    assert limiter.take("pages", "a") > 0  # still remembered as empty
    assert limiter.take("pages", "b") == 0.0  # forgotten: full again
