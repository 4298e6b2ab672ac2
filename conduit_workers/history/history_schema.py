"""History database schema (SQLAlchemy Core): batches, queries, decisions, results, feedback,
daily reports, API keys.

Every change here needs a migration in ``conduit_workers/history/migrations/versions/``
(``conduit db revision -m "what changed"`` drafts one); a test compares the two.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Date,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)

metadata = MetaData()

batches = Table(
    "batches",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("tag", String(200), nullable=True, index=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("accepted", Integer, nullable=False),
    Column("rejected", Integer, nullable=False),
    Column("constraints", JSON, nullable=False),
    # The batch's spending limit (``conduit submit --budget-usd``); NULL: no budget.
    Column("budget_usd", Float, nullable=True),
)

# One row per distinct prompt; ``id`` is the idempotency key.
queries = Table(
    "queries",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("external_id", String(200), nullable=True),
    Column("user_name", String(200), nullable=True),
    Column("prompt", Text, nullable=False),
    Column("prompt_chars", Integer, nullable=False),
    Column("metadata", JSON, nullable=False),
    Column("constraints", JSON, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    # The OpenAI request (messages, temperature, …) of a prompt from the Batch API; NULL: the
    # prompt alone, as one user message.
    Column("request", JSON, nullable=True),
)

batch_items = Table(
    "batch_items",
    metadata,
    Column("batch_id", String(64), ForeignKey("batches.id"), primary_key=True),
    Column("query_id", String(64), ForeignKey("queries.id"), primary_key=True),
    Column("line", Integer, nullable=True),
    Index("ix_batch_items_query", "query_id"),
)

decisions = Table(
    "decisions",
    metadata,
    Column("query_id", String(64), ForeignKey("queries.id"), primary_key=True),
    Column("model", String(200), nullable=True),  # NULL: no model satisfies the constraints
    Column("ranked", JSON, nullable=False),
    Column("features", JSON, nullable=False),
    Column("utilities", JSON, nullable=False),
    Column("domain", String(20), nullable=False),
    Column("complexity", Float, nullable=False),
    Column("expected_cost_usd", Float, nullable=True),
    Column("posterior_versions", JSON, nullable=False),
    Column("reason", Text, nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False, index=True),
    # Where the answer counts under a quality floor (quality_floor.FloorMark.encode): its
    # rating feeds that stream's estimate. NULL: routed without a floor.
    Column("floor_mark", Text, nullable=True),
)

results = Table(
    "results",
    metadata,
    Column("query_id", String(64), ForeignKey("queries.id"), primary_key=True),
    Column("model", String(200), nullable=True),
    # ok | error | unroutable | unavailable | over_budget
    Column("status", String(20), nullable=False),
    Column("response", Text, nullable=True),
    Column("input_tokens", Integer, nullable=False, default=0),
    Column("output_tokens", Integer, nullable=False, default=0),
    Column("cost_usd", Float, nullable=False, default=0.0),
    Column("latency_ms", Float, nullable=False, default=0.0),
    Column("attempts", Integer, nullable=False, default=0),
    Column("fallbacks", Integer, nullable=False, default=0),
    Column("error_class", String(60), nullable=True),
    Column("error_message", Text, nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False, index=True),
)

feedback = Table(
    "feedback",
    metadata,
    Column("id", String(200), primary_key=True),
    Column("query_id", String(64), ForeignKey("queries.id"), nullable=False, index=True),
    Column("model", String(200), nullable=False),
    Column("kind", String(20), nullable=False),
    Column("reward", Float, nullable=False),
    Column("weight", Float, nullable=False),
    Column("is_call", Boolean, nullable=False, default=False),
    Column("error", Boolean, nullable=False, default=False),
    Column("latency_ms", Float, nullable=False, default=0.0),
    Column("in_tokens", Integer, nullable=False, default=0),
    Column("out_tokens", Integer, nullable=False, default=0),
    Column("cost_usd", Float, nullable=False, default=0.0),
    Column("created_at", DateTime(timezone=True), nullable=False, index=True),
    # Set when a feedback task claims the event; the posterior update carries this id.
    Column("update_id", String(80), nullable=True, index=True),
    Column("applied_at", DateTime(timezone=True), nullable=True),
)

# One row per UTC day: the nightly cost report's totals (the full figures in ``figures``).
# ``status`` is ``building`` while a run holds the day's claim, ``done`` once written; a
# second scheduled run of the same day finds the row and does nothing.
daily_reports = Table(
    "daily_reports",
    metadata,
    Column("day", Date, primary_key=True),
    Column("status", String(20), nullable=False),
    Column("claimed_by", String(200), nullable=True),
    Column("claimed_at", DateTime(timezone=True), nullable=False),
    Column("built_at", DateTime(timezone=True), nullable=True),
    Column("catalog_version", String(100), nullable=True),
    Column("prompts", Integer, nullable=False, default=0),
    Column("calls", Integer, nullable=False, default=0),
    Column("errors", Integer, nullable=False, default=0),
    Column("input_tokens", BigInteger, nullable=False, default=0),
    Column("output_tokens", BigInteger, nullable=False, default=0),
    Column("spend_usd", Float, nullable=False, default=0.0),
    Column("reference_cost_usd", Float, nullable=False, default=0.0),
    Column("savings_usd", Float, nullable=False, default=0.0),
    Column("waste_usd", Float, nullable=False, default=0.0),
    Column("mean_rating", Float, nullable=True),
    Column("figures", JSON, nullable=True),
    Column("out_dir", Text, nullable=True),
)

# API keys of `conduit serve` (`conduit keys create`): only the SHA-256 of a key is stored.
api_keys = Table(
    "api_keys",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("key_hash", String(64), nullable=False, unique=True),
    Column("key_hint", String(16), nullable=False),  # the key's first characters, for people
    Column("budget_usd_per_day", Float, nullable=True),
    Column("allowed_models", JSON, nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("revoked_at", DateTime(timezone=True), nullable=True),
)

# Files uploaded to the HTTP API (``POST /v1/files``, purpose ``batch``): the text as sent.
api_files = Table(
    "api_files",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("key_name", String(64), nullable=False),
    Column("purpose", String(20), nullable=False),
    Column("filename", String(200), nullable=False),
    Column("bytes", Integer, nullable=False),
    Column("content", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

# Batches made through the HTTP API (``POST /v1/batches``); their prompts are a ``batches`` row
# of the same id. ``errors``: the input lines refused, with their reasons.
api_batches = Table(
    "api_batches",
    metadata,
    Column("id", String(64), ForeignKey("batches.id"), primary_key=True),
    Column("key_name", String(64), nullable=False, index=True),
    Column("input_file_id", String(64), nullable=False),
    Column("endpoint", String(100), nullable=False),
    Column("completion_window", String(20), nullable=False),
    Column("metadata", JSON, nullable=True),
    Column("errors", JSON, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("cancelled_at", DateTime(timezone=True), nullable=True),
)

# Evidence a warm start (`conduit learn`) applied to the posteriors, one row per update and
# model: the update's statistics as the posterior store took them (``ArmStats.to_fields``) and
# the offline weight the quality floors were told. Not feedback of any prompt of the history,
# so kept apart; ``conduit posteriors --rebuild`` replays it with the feedback, in the order
# applied.
warm_start_updates = Table(
    "warm_start_updates",
    metadata,
    Column("id", String(300), primary_key=True),  # the posterior update id: <update>:<model>
    Column("model", String(200), nullable=False),
    Column("stats", JSON, nullable=False),
    Column("offline_weight", Float, nullable=False),
    Column("applied_at", DateTime(timezone=True), nullable=False, index=True),
)
