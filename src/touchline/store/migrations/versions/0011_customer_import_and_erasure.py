"""customer import and erasure

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-27 07:15:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy import Text
from sqlalchemy.dialects import postgresql

import touchline.store.types

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

BIG = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=Text()), "postgresql")


def _when() -> touchline.store.types.UTCDateTime:
    return touchline.store.types.UTCDateTime(timezone=True)


def _count(name: str) -> sa.Column[int]:
    return sa.Column(name, sa.Integer(), server_default="0", nullable=False)


def upgrade() -> None:
    with op.batch_alter_table("profiles") as batch:
        batch.add_column(sa.Column("erased_at", _when(), nullable=True))
    op.create_table(
        "import_jobs",
        sa.Column("id", BIG, autoincrement=True, nullable=False),
        sa.Column("workspace_id", sa.String(length=32), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("checksum", sa.String(length=64), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("format", sa.String(length=8), nullable=False),
        sa.Column("status", sa.String(length=12), nullable=False),
        _count("last_line"),
        _count("rows"),
        _count("imported"),
        _count("duplicates"),
        _count("rejected"),
        _count("consents"),
        sa.Column("started_at", _when(), nullable=False),
        sa.Column("updated_at", _when(), nullable=False),
        sa.Column("finished_at", _when(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_import_jobs")),
        sa.UniqueConstraint(
            "workspace_id", "kind", "checksum", name="uq_import_jobs_ws_kind_checksum"
        ),
    )
    op.create_table(
        "import_rejections",
        sa.Column("id", BIG, autoincrement=True, nullable=False),
        sa.Column("workspace_id", sa.String(length=32), nullable=False),
        sa.Column("job_id", BIG, nullable=False),
        sa.Column("line", sa.Integer(), nullable=False),
        sa.Column("field", sa.String(length=200), nullable=False),
        sa.Column("reason", sa.String(length=500), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_import_rejections")),
    )
    op.create_index(
        "ix_import_rejections_job_line", "import_rejections", ["job_id", "line"], unique=False
    )
    op.create_table(
        "erasures",
        sa.Column("id", BIG, autoincrement=True, nullable=False),
        sa.Column("workspace_id", sa.String(length=32), nullable=False),
        sa.Column("profile_id", BIG, nullable=False),
        sa.Column("user_hash", sa.String(length=80), nullable=True),
        sa.Column("requested_by", sa.String(length=200), nullable=False),
        sa.Column("at", _when(), nullable=False),
        sa.Column("counts", JSON, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_erasures")),
    )
    op.create_index(
        "ix_erasures_ws_profile", "erasures", ["workspace_id", "profile_id"], unique=False
    )
    op.create_index(
        "ix_erasures_ws_user_hash", "erasures", ["workspace_id", "user_hash"], unique=False
    )


def downgrade() -> None:
    op.drop_index("ix_erasures_ws_user_hash", table_name="erasures")
    op.drop_index("ix_erasures_ws_profile", table_name="erasures")
    op.drop_table("erasures")
    op.drop_index("ix_import_rejections_job_line", table_name="import_rejections")
    op.drop_table("import_rejections")
    op.drop_table("import_jobs")
    with op.batch_alter_table("profiles") as batch:
        batch.drop_column("erased_at")
