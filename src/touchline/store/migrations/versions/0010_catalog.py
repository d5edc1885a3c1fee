"""catalog

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-27 07:15:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy import Text
from sqlalchemy.dialects import postgresql

import touchline.store.types

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

BIG = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=Text()), "postgresql")


def _when() -> touchline.store.types.UTCDateTime:
    return touchline.store.types.UTCDateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "products",
        sa.Column("workspace_id", sa.String(length=32), nullable=False),
        sa.Column("product_id", sa.String(length=200), nullable=False),
        sa.Column("name", sa.String(length=500), nullable=False),
        sa.Column("url", sa.Text(), nullable=True),
        sa.Column("image", sa.Text(), nullable=True),
        sa.Column("price", sa.Numeric(precision=18, scale=2), nullable=True),
        sa.Column("currency", sa.String(length=3), nullable=True),
        sa.Column("category", sa.String(length=200), nullable=True),
        sa.Column("in_stock", sa.Boolean(), nullable=False),
        sa.Column("attributes", JSON, nullable=False),
        sa.Column("price_basis", sa.Numeric(precision=18, scale=2), nullable=True),
        sa.Column("restocks", sa.Integer(), server_default="0", nullable=False),
        sa.Column("price_drops", sa.Integer(), server_default="0", nullable=False),
        sa.Column("archived_at", _when(), nullable=True),
        sa.Column("created_at", _when(), nullable=False),
        sa.Column("updated_at", _when(), nullable=False),
        sa.PrimaryKeyConstraint("workspace_id", "product_id", name=op.f("pk_products")),
    )
    op.create_index(
        "ix_products_ws_category", "products", ["workspace_id", "category"], unique=False
    )
    op.create_table(
        "product_interest",
        sa.Column("workspace_id", sa.String(length=32), nullable=False),
        sa.Column("product_id", sa.String(length=200), nullable=False),
        sa.Column("profile_id", BIG, nullable=False),
        sa.Column("viewed_at", _when(), nullable=True),
        sa.Column("requested_at", _when(), nullable=True),
        sa.Column("purchased_at", _when(), nullable=True),
        sa.Column("restock_notified_at", _when(), nullable=True),
        sa.Column("price_notified_at", _when(), nullable=True),
        sa.PrimaryKeyConstraint(
            "workspace_id", "product_id", "profile_id", name=op.f("pk_product_interest")
        ),
    )
    op.create_index(
        "ix_product_interest_ws_profile",
        "product_interest",
        ["workspace_id", "profile_id"],
        unique=False,
    )
    op.create_table(
        "product_pairs",
        sa.Column("workspace_id", sa.String(length=32), nullable=False),
        sa.Column("product_id", sa.String(length=200), nullable=False),
        sa.Column("other_id", sa.String(length=200), nullable=False),
        sa.Column("orders", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint(
            "workspace_id", "product_id", "other_id", name=op.f("pk_product_pairs")
        ),
    )
    op.create_table(
        "product_stats",
        sa.Column("workspace_id", sa.String(length=32), nullable=False),
        sa.Column("product_id", sa.String(length=200), nullable=False),
        sa.Column("orders", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("workspace_id", "product_id", name=op.f("pk_product_stats")),
    )
    op.create_index(
        "ix_product_stats_ws_orders", "product_stats", ["workspace_id", "orders"], unique=False
    )
    op.create_table(
        "catalog_alerts",
        sa.Column("id", BIG, autoincrement=True, nullable=False),
        sa.Column("workspace_id", sa.String(length=32), nullable=False),
        sa.Column("product_id", sa.String(length=200), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("occurrence", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=12), nullable=False),
        sa.Column("at", _when(), nullable=False),
        sa.Column("viewed_since", _when(), nullable=False),
        sa.Column("requested_since", _when(), nullable=True),
        sa.Column("properties", JSON, nullable=False),
        sa.Column("cursor", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("fired", sa.Integer(), server_default="0", nullable=False),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.Column("finished_at", _when(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_catalog_alerts")),
        sa.UniqueConstraint(
            "workspace_id",
            "product_id",
            "kind",
            "occurrence",
            name=op.f("uq_catalog_alerts_workspace_id_product_id_kind_occurrence"),
        ),
    )
    op.create_index("ix_catalog_alerts_status_id", "catalog_alerts", ["status", "id"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_catalog_alerts_status_id", table_name="catalog_alerts")
    op.drop_table("catalog_alerts")
    op.drop_index("ix_product_stats_ws_orders", table_name="product_stats")
    op.drop_table("product_stats")
    op.drop_table("product_pairs")
    op.drop_index("ix_product_interest_ws_profile", table_name="product_interest")
    op.drop_table("product_interest")
    op.drop_index("ix_products_ws_category", table_name="products")
    op.drop_table("products")
