"""date triggers and schedules

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-27 07:15:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy import Text
from sqlalchemy.dialects import postgresql

import touchline.store.types

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


BIG = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=Text()), "postgresql")


def _when() -> touchline.store.types.UTCDateTime:
    return touchline.store.types.UTCDateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "time_triggers",
        sa.Column("id", BIG, autoincrement=True, nullable=False),
        sa.Column("workspace_id", sa.String(length=32), nullable=False),
        sa.Column("journey_id", BIG, nullable=False),
        sa.Column("kind", sa.String(length=8), nullable=False),
        sa.Column("rule", JSON, nullable=False),
        sa.Column("next_run_at", _when(), nullable=True),
        sa.Column("run_at", _when(), nullable=True),
        sa.Column("done_through", BIG, nullable=False),
        sa.Column("run_size", sa.Integer(), nullable=False),
        sa.Column("last_run_at", _when(), nullable=True),
        sa.Column("last_run_size", sa.Integer(), nullable=True),
        sa.Column("note", sa.String(length=500), nullable=True),
        sa.Column("lease_owner", sa.String(length=128), nullable=True),
        sa.Column("lease_until", _when(), nullable=True),
        sa.Column("attempts", sa.SmallInteger(), nullable=False),
        sa.Column("updated_at", _when(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_time_triggers")),
        sa.UniqueConstraint("journey_id", name=op.f("uq_time_triggers_journey_id")),
    )
    op.create_index("ix_time_triggers_next_run", "time_triggers", ["next_run_at"], unique=False)
    op.create_index(
        "ix_time_triggers_ws_kind", "time_triggers", ["workspace_id", "kind"], unique=False
    )
    op.create_table(
        "date_timers",
        sa.Column("id", BIG, autoincrement=True, nullable=False),
        sa.Column("workspace_id", sa.String(length=32), nullable=False),
        sa.Column("journey_id", BIG, nullable=False),
        sa.Column("profile_id", BIG, nullable=False),
        sa.Column("occurrence", sa.Date(), nullable=True),
        sa.Column("due_at", _when(), nullable=True),
        sa.Column("handled", sa.Date(), nullable=True),
        sa.Column("outcome", sa.String(length=8), nullable=True),
        sa.Column("handled_at", _when(), nullable=True),
        sa.Column("error", sa.String(length=500), nullable=True),
        sa.Column("lease_owner", sa.String(length=128), nullable=True),
        sa.Column("lease_until", _when(), nullable=True),
        sa.Column("attempts", sa.SmallInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_date_timers")),
        sa.UniqueConstraint("journey_id", "profile_id", name="uq_date_timers_journey_profile"),
    )
    op.create_index("ix_date_timers_due", "date_timers", ["due_at"], unique=False)
    op.create_index(
        "ix_date_timers_ws_profile", "date_timers", ["workspace_id", "profile_id"], unique=False
    )


def downgrade() -> None:
    op.drop_index("ix_date_timers_ws_profile", table_name="date_timers")
    op.drop_index("ix_date_timers_due", table_name="date_timers")
    op.drop_table("date_timers")
    op.drop_index("ix_time_triggers_ws_kind", table_name="time_triggers")
    op.drop_index("ix_time_triggers_next_run", table_name="time_triggers")
    op.drop_table("time_triggers")
