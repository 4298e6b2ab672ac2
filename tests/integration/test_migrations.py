"""The Alembic migrations build exactly the schema of history_schema.py (PostgreSQL, SQLite)."""

from __future__ import annotations

import threading

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from conduit_workers.errors import ConfigError
from conduit_workers.history import history_schema as t
from conduit_workers.history import migrate
from conduit_workers.history.history import SqlHistory

pytestmark = pytest.mark.integration


def _diff(engine: sa.Engine) -> list:
    with engine.connect() as conn:
        mc = MigrationContext.configure(conn, opts={"compare_type": True})
        return compare_metadata(mc, t.metadata)


@pytest.fixture(params=["postgresql", "sqlite"])
def engine(request, tmp_path):
    url = (
        request.getfixturevalue("pg_url")
        if request.param == "postgresql"
        else f"sqlite:///{tmp_path / 'history.db'}"
    )
    eng = sa.create_engine(url)
    yield eng
    eng.dispose()


def test_migrations_build_the_schema_of_the_code(engine):
    assert migrate.current(engine) is None
    assert migrate.upgrade(engine) == (None, migrate.head())
    assert _diff(engine) == [], (
        "history_schema.py and the migrations differ: add a migration (conduit db revision -m '…')"
    )
    assert migrate.upgrade(engine) == (migrate.head(), migrate.head())  # a no-op


def test_downgrade_to_base_and_up_again(engine):
    migrate.upgrade(engine)
    migrate.downgrade(engine, "base")
    assert set(sa.inspect(engine).get_table_names()) <= {"alembic_version"}
    migrate.upgrade(engine)
    assert _diff(engine) == []


# Columns that later migrations added to the first release's tables.
ADDED_AFTER_0001 = [("batches", "budget_usd"), ("queries", "request"), ("decisions", "floor_mark")]
INDEXES_ADDED_AFTER_0001 = ["ix_decisions_created_at", "ix_feedback_created_at"]


def test_a_database_made_by_create_all_is_stamped_then_upgraded(engine):
    first_release = sa.MetaData()
    for name in ("batches", "queries", "batch_items", "decisions", "results", "feedback"):
        t.metadata.tables[name].to_metadata(first_release)
    first_release.create_all(engine)
    with engine.begin() as conn:
        for table, column in ADDED_AFTER_0001:
            conn.execute(sa.text(f"alter table {table} drop column {column}"))
        for index in INDEXES_ADDED_AFTER_0001:
            conn.execute(sa.text(f"drop index {index}"))
        conn.execute(
            sa.text(
                "insert into batches (id, created_at, accepted, rejected, constraints) "
                "values ('b', '2026-01-01 00:00:00+00', 0, 0, '{}')"
            )
        )
    assert migrate.upgrade(engine) == (migrate.BASELINE, migrate.head())
    assert _diff(engine) == []
    with engine.connect() as conn:
        assert conn.scalar(sa.text("select count(*) from batches")) == 1  # data kept


def test_concurrent_processes_migrate_once(pg_url):
    errors: list[BaseException] = []
    engines = [sa.create_engine(pg_url) for _ in range(4)]

    def run(eng: sa.Engine) -> None:
        try:
            migrate.upgrade(eng)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(e,)) for e in engines]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    assert errors == []
    assert migrate.current(engines[0]) == migrate.head()
    for e in engines:
        e.dispose()


def test_without_auto_migrate_an_old_schema_is_refused_with_the_fix(pg_url):
    history = SqlHistory(pg_url, retry_for_s=1)
    with pytest.raises(ConfigError, match="conduit db upgrade"):
        history.create_schema(auto_migrate=False)
    migrate.upgrade(history.engine)
    history.create_schema(auto_migrate=False)
    history.dispose()
