"""daily_reports: one row per UTC day of the nightly cost report.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "daily_reports",
        sa.Column("day", sa.Date, primary_key=True),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("claimed_by", sa.String(200), nullable=True),
        sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("built_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("catalog_version", sa.String(100), nullable=True),
        sa.Column("prompts", sa.Integer, nullable=False),
        sa.Column("calls", sa.Integer, nullable=False),
        sa.Column("errors", sa.Integer, nullable=False),
        sa.Column("input_tokens", sa.BigInteger, nullable=False),
        sa.Column("output_tokens", sa.BigInteger, nullable=False),
        sa.Column("spend_usd", sa.Float, nullable=False),
        sa.Column("reference_cost_usd", sa.Float, nullable=False),
        sa.Column("savings_usd", sa.Float, nullable=False),
        sa.Column("waste_usd", sa.Float, nullable=False),
        sa.Column("mean_rating", sa.Float, nullable=True),
        sa.Column("figures", sa.JSON, nullable=True),
        sa.Column("out_dir", sa.Text, nullable=True),
    )


def downgrade() -> None:
    op.drop_table("daily_reports")
