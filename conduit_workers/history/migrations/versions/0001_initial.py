"""The history schema of the first release: batches, queries, decisions, results, feedback.

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "batches",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("tag", sa.String(200), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("accepted", sa.Integer, nullable=False),
        sa.Column("rejected", sa.Integer, nullable=False),
        sa.Column("constraints", sa.JSON, nullable=False),
    )
    op.create_index("ix_batches_tag", "batches", ["tag"])
    op.create_table(
        "queries",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("external_id", sa.String(200), nullable=True),
        sa.Column("user_name", sa.String(200), nullable=True),
        sa.Column("prompt", sa.Text, nullable=False),
        sa.Column("prompt_chars", sa.Integer, nullable=False),
        sa.Column("metadata", sa.JSON, nullable=False),
        sa.Column("constraints", sa.JSON, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "batch_items",
        sa.Column("batch_id", sa.String(64), sa.ForeignKey("batches.id"), primary_key=True),
        sa.Column("query_id", sa.String(64), sa.ForeignKey("queries.id"), primary_key=True),
        sa.Column("line", sa.Integer, nullable=True),
    )
    op.create_index("ix_batch_items_query", "batch_items", ["query_id"])
    op.create_table(
        "decisions",
        sa.Column("query_id", sa.String(64), sa.ForeignKey("queries.id"), primary_key=True),
        sa.Column("model", sa.String(200), nullable=True),
        sa.Column("ranked", sa.JSON, nullable=False),
        sa.Column("features", sa.JSON, nullable=False),
        sa.Column("utilities", sa.JSON, nullable=False),
        sa.Column("domain", sa.String(20), nullable=False),
        sa.Column("complexity", sa.Float, nullable=False),
        sa.Column("expected_cost_usd", sa.Float, nullable=True),
        sa.Column("posterior_versions", sa.JSON, nullable=False),
        sa.Column("reason", sa.Text, nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "results",
        sa.Column("query_id", sa.String(64), sa.ForeignKey("queries.id"), primary_key=True),
        sa.Column("model", sa.String(200), nullable=True),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("response", sa.Text, nullable=True),
        sa.Column("input_tokens", sa.Integer, nullable=False),
        sa.Column("output_tokens", sa.Integer, nullable=False),
        sa.Column("cost_usd", sa.Float, nullable=False),
        sa.Column("latency_ms", sa.Float, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("fallbacks", sa.Integer, nullable=False),
        sa.Column("error_class", sa.String(60), nullable=True),
        sa.Column("error_message", sa.Text, nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_results_created_at", "results", ["created_at"])
    op.create_table(
        "feedback",
        sa.Column("id", sa.String(200), primary_key=True),
        sa.Column("query_id", sa.String(64), sa.ForeignKey("queries.id"), nullable=False),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("kind", sa.String(20), nullable=False),
        sa.Column("reward", sa.Float, nullable=False),
        sa.Column("weight", sa.Float, nullable=False),
        sa.Column("is_call", sa.Boolean, nullable=False),
        sa.Column("error", sa.Boolean, nullable=False),
        sa.Column("latency_ms", sa.Float, nullable=False),
        sa.Column("in_tokens", sa.Integer, nullable=False),
        sa.Column("out_tokens", sa.Integer, nullable=False),
        sa.Column("cost_usd", sa.Float, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("update_id", sa.String(80), nullable=True),
        sa.Column("applied_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index("ix_feedback_query_id", "feedback", ["query_id"])
    op.create_index("ix_feedback_update_id", "feedback", ["update_id"])


def downgrade() -> None:
    for table in ("feedback", "results", "decisions", "batch_items", "queries", "batches"):
        op.drop_table(table)
