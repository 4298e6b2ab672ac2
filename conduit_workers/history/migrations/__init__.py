"""Alembic migrations of the history database (see ``conduit_workers.history.migrate``)."""
