"""decisions.floor_mark: where a prompt's answer counts under a quality floor, kept with its
decision (it was a Redis key per prompt, kept 7 days, written on every routed chunk).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("decisions", sa.Column("floor_mark", sa.Text(), nullable=True))


def downgrade() -> None:
    op.drop_column("decisions", "floor_mark")
