"""batches.budget_usd: a batch's spending limit (``conduit submit --budget-usd``).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("batches", sa.Column("budget_usd", sa.Float, nullable=True))


def downgrade() -> None:
    op.drop_column("batches", "budget_usd")
