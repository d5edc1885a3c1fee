"""The migrations build exactly the schema that ``store.tables`` declares."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine

from touchline.store.tables import metadata


def test_migrated_schema_matches_the_declared_tables(engine: Engine) -> None:
    # Type and server-default comparisons are off: the custom types render differently
    # per dialect while storing the same thing.
    with engine.connect() as conn:
        context = MigrationContext.configure(
            conn, opts={"compare_type": False, "compare_server_default": False}
        )
        diff = compare_metadata(context, metadata)
    assert diff == []
