"""segments

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-27 07:15:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy import Text
from sqlalchemy.dialects import postgresql

import touchline.store.types

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

BIG = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=Text()), "postgresql")


def _when() -> touchline.store.types.UTCDateTime:
    return touchline.store.types.UTCDateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "segments",
        sa.Column("id", BIG, autoincrement=True, nullable=False),
        sa.Column("workspace_id", sa.String(length=32), nullable=False),
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("spec", JSON, nullable=False),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("checksum", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("created_at", _when(), nullable=False),
        sa.Column("updated_at", _when(), nullable=False),
        sa.Column("built_at", _when(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_segments")),
        sa.UniqueConstraint("workspace_id", "key", name="uq_segments_ws_key"),
    )
    op.create_table(
        "segment_members",
        sa.Column("segment_id", BIG, nullable=False),
        sa.Column("profile_id", BIG, nullable=False),
        sa.Column("workspace_id", sa.String(length=32), nullable=False),
        sa.Column("entered_at", _when(), nullable=False),
        sa.PrimaryKeyConstraint("segment_id", "profile_id", name=op.f("pk_segment_members")),
    )
    op.create_index(
        "ix_segment_members_ws_profile",
        "segment_members",
        ["workspace_id", "profile_id"],
        unique=False,
    )
    op.create_table(
        "segment_changes",
        sa.Column("id", BIG, autoincrement=True, nullable=False),
        sa.Column("workspace_id", sa.String(length=32), nullable=False),
        sa.Column("segment_id", BIG, nullable=False),
        sa.Column("profile_id", BIG, nullable=False),
        sa.Column("change", sa.String(length=8), nullable=False),
        sa.Column("at", _when(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_segment_changes")),
    )
    op.create_index(
        "ix_segment_changes_segment_at", "segment_changes", ["segment_id", "at"], unique=False
    )
    op.create_index("ix_segment_changes_profile", "segment_changes", ["profile_id"], unique=False)
    op.create_table(
        "segment_timers",
        sa.Column("id", BIG, autoincrement=True, nullable=False),
        sa.Column("workspace_id", sa.String(length=32), nullable=False),
        sa.Column("segment_id", BIG, nullable=False),
        sa.Column("profile_id", BIG, nullable=False),
        sa.Column("due_at", _when(), nullable=False),
        sa.Column("lease_owner", sa.String(length=128), nullable=True),
        sa.Column("lease_until", _when(), nullable=True),
        sa.Column("attempts", sa.SmallInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_segment_timers")),
        sa.UniqueConstraint("segment_id", "profile_id", name="uq_segment_timers_segment_profile"),
    )
    op.create_index("ix_segment_timers_due", "segment_timers", ["due_at"], unique=False)
    op.create_index(
        "ix_segment_timers_ws_profile",
        "segment_timers",
        ["workspace_id", "profile_id"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index("ix_segment_timers_ws_profile", table_name="segment_timers")
    op.drop_index("ix_segment_timers_due", table_name="segment_timers")
    op.drop_table("segment_timers")
    op.drop_table("segment_changes")
    op.drop_index("ix_segment_members_ws_profile", table_name="segment_members")
    op.drop_table("segment_members")
    op.drop_table("segments")
