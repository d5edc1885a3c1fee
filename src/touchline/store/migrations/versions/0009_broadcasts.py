"""broadcasts

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-27 07:15:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy import Text
from sqlalchemy.dialects import postgresql

import touchline.store.types

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

BIG = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=Text()), "postgresql")


def _when() -> touchline.store.types.UTCDateTime:
    return touchline.store.types.UTCDateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "broadcasts",
        sa.Column("id", BIG, autoincrement=True, nullable=False),
        sa.Column("workspace_id", sa.String(length=32), nullable=False),
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("journey_id", BIG, nullable=False),
        sa.Column("version_id", BIG, nullable=False),
        sa.Column("spec", JSON, nullable=False),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("send_at", _when(), nullable=True),
        sa.Column("next_at", _when(), nullable=True),
        sa.Column("cursor", JSON, nullable=False),
        sa.Column("audience", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("unreachable", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("queued", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("test_ends_at", _when(), nullable=True),
        sa.Column("winner", sa.String(length=64), nullable=True),
        sa.Column("decided_at", _when(), nullable=True),
        sa.Column("decision", JSON, nullable=True),
        sa.Column("lease_owner", sa.String(length=128), nullable=True),
        sa.Column("lease_until", _when(), nullable=True),
        sa.Column("created_at", _when(), nullable=False),
        sa.Column("updated_at", _when(), nullable=False),
        sa.Column("started_at", _when(), nullable=True),
        sa.Column("finished_at", _when(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_broadcasts")),
        sa.UniqueConstraint("workspace_id", "key", name="uq_broadcasts_ws_key"),
    )
    op.create_index("ix_broadcasts_status_next", "broadcasts", ["status", "next_at"], unique=False)
    op.create_table(
        "broadcast_recipients",
        sa.Column("broadcast_id", BIG, nullable=False),
        sa.Column("profile_id", BIG, nullable=False),
        sa.Column("workspace_id", sa.String(length=32), nullable=False),
        sa.Column("phase", sa.String(length=8), nullable=False),
        sa.Column("variant", sa.String(length=64), nullable=True),
        sa.Column("zone", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=8), nullable=False),
        sa.Column("instance_id", BIG, nullable=True),
        sa.Column("outbox_id", BIG, nullable=True),
        sa.PrimaryKeyConstraint("broadcast_id", "profile_id", name=op.f("pk_broadcast_recipients")),
    )
    op.create_index(
        "ix_broadcast_recipients_order",
        "broadcast_recipients",
        ["broadcast_id", "phase", "zone", "profile_id"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index("ix_broadcast_recipients_order", table_name="broadcast_recipients")
    op.drop_table("broadcast_recipients")
    op.drop_index("ix_broadcasts_status_next", table_name="broadcasts")
    op.drop_table("broadcasts")
