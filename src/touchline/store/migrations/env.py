"""Alembic environment: runs on the connection touchline hands it."""

from __future__ import annotations

from alembic import context

from touchline.store.tables import metadata

connection = context.config.attributes.get("connection")
if connection is None:  # `alembic` command line: build an engine from the URL option
    from touchline.store.db import make_engine

    engine = make_engine(
        context.config.get_main_option("sqlalchemy.url") or "sqlite:///touchline.db"
    )
    with engine.begin() as connection:
        context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
        context.run_migrations()
else:
    context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
    context.run_migrations()
