"""Fixtures shared by the acceptance tests, which run touchline as real processes."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from mail_sink import Sink, running_sink
from server import postgres_database


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def store_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """A new, empty SQLite file or a fresh PostgreSQL database cloned from the migrated template."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp('store') / 'touchline.db'}"
        return
    pg_admin = request.getfixturevalue("pg_admin")
    with postgres_database(pg_admin, request.getfixturevalue("pg_template")) as url:
        yield url


@pytest.fixture
def sink() -> Iterator[tuple[Sink, int]]:
    """A mail sink on loopback and its port."""
    with running_sink() as found:
        yield found
