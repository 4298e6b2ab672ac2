"""Alembic migrations of the history database, run from code (there is no alembic.ini).

``upgrade(engine)`` brings a database to the newest revision under a lock, so that many worker
processes starting at once migrate it once: a PostgreSQL advisory lock held by the migrating
transaction, or an exclusive file lock beside a SQLite file. A database made by the first
release's ``metadata.create_all`` (tables, no ``alembic_version``) is stamped ``0001`` first.
"""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, inspect, text
from sqlalchemy.engine import Connection

from conduit_workers.errors import ConfigError

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
BASELINE = "0001"  # the schema that the first release created with create_all
# pg_advisory_xact_lock key: "conduit" in ASCII, so other applications' locks do not collide.
PG_LOCK_KEY = 0x636F6E64756974


def config(connection: Connection | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def head() -> str:
    """The newest revision the code knows."""
    rev = ScriptDirectory.from_config(config()).get_current_head()
    assert rev is not None
    return rev


def current(engine: Engine) -> str | None:
    """The database's revision (None: never migrated)."""
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


@contextlib.contextmanager
def _sqlite_file_lock(engine: Engine) -> Iterator[None]:
    db = engine.url.database
    if not db or db == ":memory:":
        yield
        return
    lock_path = Path(db + ".migrate-lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def upgrade(engine: Engine, revision: str = "head") -> tuple[str | None, str | None]:
    """Migrate to ``revision``; return (revision before, revision after)."""
    lock: Any = (
        _sqlite_file_lock(engine) if engine.dialect.name == "sqlite" else contextlib.nullcontext()
    )
    with lock, engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("select pg_advisory_xact_lock(:k)"), {"k": PG_LOCK_KEY})
        before = MigrationContext.configure(conn).get_current_revision()
        if before is None and inspect(conn).has_table("queries"):
            command.stamp(config(conn), BASELINE)
            before = BASELINE
        command.upgrade(config(conn), revision)
        after = MigrationContext.configure(conn).get_current_revision()
    return before, after


def downgrade(engine: Engine, revision: str) -> None:
    with engine.begin() as conn:
        command.downgrade(config(conn), revision)


def ensure_current(engine: Engine, auto_migrate: bool) -> None:
    """Migrate (``auto_migrate``) or check that the schema is the code's newest revision."""
    want = head()
    if current(engine) == want:
        return
    if auto_migrate:
        upgrade(engine)
        return
    have = current(engine)
    raise ConfigError(
        f"the history database is at revision {have or 'none'} and this code needs {want}: "
        "run `conduit db upgrade` (or set CONDUIT_DATABASE__AUTO_MIGRATE=true)"
    )


def revision(engine: Engine, message: str) -> None:
    """Draft a new migration from the difference between the database and history_schema.py."""
    with engine.begin() as conn:
        command.revision(config(conn), message=message, autogenerate=True)


__all__ = ["upgrade", "downgrade", "current", "head", "ensure_current", "revision"]
