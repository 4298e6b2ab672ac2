"""warm_start_updates: the evidence each warm start (`conduit learn`) applied, so that
`conduit posteriors --rebuild` restores it with the feedback (it used to restore the feedback
alone, and a warm start had to be loaded again).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-05
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "warm_start_updates",
        sa.Column("id", sa.String(300), primary_key=True),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("stats", sa.JSON(), nullable=False),
        sa.Column("offline_weight", sa.Float(), nullable=False),
        sa.Column("applied_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index(
        "ix_warm_start_updates_applied_at", "warm_start_updates", ["applied_at"], unique=False
    )


def downgrade() -> None:
    op.drop_index("ix_warm_start_updates_applied_at", table_name="warm_start_updates")
    op.drop_table("warm_start_updates")
