"""Fixtures of the fault suite: a private Redis (so a test may kill it), a fresh PostgreSQL
schema, and a running :class:`FaultSystem` with one worker per role."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
import sqlalchemy as sa

from tests.conftest import PG_URL
from tests.faults.harness import FaultSystem, start_system
from tests.faults.services import PrivateRedis


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    return tmp_path


@pytest.fixture
def private_redis(workdir: Path) -> Iterator[PrivateRedis]:
    (workdir / "redis").mkdir()
    r = PrivateRedis(workdir / "redis")
    yield r
    r.stop()


@pytest.fixture
def db_url(pg_engine: sa.Engine) -> Iterator[str]:
    schema = f"f_{uuid.uuid4().hex[:12]}"
    with pg_engine.begin() as conn:
        conn.execute(sa.text(f'create schema "{schema}"'))
    yield f"{PG_URL}?options={quote(f'-csearch_path={schema}')}"
    with pg_engine.begin() as conn:
        conn.execute(sa.text(f'drop schema "{schema}" cascade'))


@pytest.fixture
def system(workdir: Path, private_redis: PrivateRedis, db_url: str) -> Iterator[FaultSystem]:
    s = start_system(workdir, private_redis.url, db_url)
    try:
        yield s
    finally:
        s.stop()
