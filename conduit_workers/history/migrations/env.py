"""Alembic environment: always given an open connection by ``history.migrate``."""

from __future__ import annotations

from alembic import context

from conduit_workers.history.history_schema import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError(
        "run migrations through `conduit db upgrade` (history.migrate), "
        "which passes the connection; there is no alembic.ini"
    )

context.configure(
    connection=connection,
    target_metadata=metadata,
    # SQLite cannot ALTER most things: batch mode copies the table instead.
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
