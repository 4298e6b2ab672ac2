"""Fixtures for real services: a dedicated Redis db and a PostgreSQL schema per test.

Redis: ``CONDUIT_TEST_REDIS_URL`` (default db 15), flushed before and after each test; the suite
refuses to start on a db holding keys it did not write. PostgreSQL: ``CONDUIT_TEST_DATABASE_URL``
(default the local ``test`` database), one fresh schema per test. A missing service skips the
tests that need it, except under CI (``CI`` set), where it fails them.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import redis
import sqlalchemy as sa

from conduit_workers.domain.catalog import Catalog, parse_catalog
from conduit_workers.history.history import SqlHistory

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data"
SAMPLE = ROOT / "conduit_workers" / "data" / "mmlu_sample.jsonl"
TEST_PREFIX = "conduit-test"


def strong_and_cheap(
    strong_prior: float | None = None, cheap_prior: float | None = None
) -> Catalog:
    """The two-model catalog of the routing tests: ``strong`` (the reference, 10/30 USD per
    million tokens) and ``cheap`` (0.5/0.5), optionally with quality priors."""
    models: list[dict[str, object]] = [
        {"name": "strong", "input_price_per_mtok_usd": 10.0, "output_price_per_mtok_usd": 30.0},
        {"name": "cheap", "input_price_per_mtok_usd": 0.5, "output_price_per_mtok_usd": 0.5},
    ]
    for m, prior in zip(models, (strong_prior, cheap_prior), strict=True):
        m["provider"] = "openai"
        if prior is not None:
            m["quality_prior"] = prior
    return parse_catalog({"reference": "strong", "models": models}, {})


REDIS_URL = os.environ.get("CONDUIT_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
PG_URL = os.environ.get(
    "CONDUIT_TEST_DATABASE_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/test"
)


def client_on(redis_url: str, pg_url: str) -> Any:
    """A ``ConduitClient`` on the test Redis (the tests' key prefix) and database."""
    from conduit_workers.settings import DatabaseSettings, RedisSettings, Settings
    from producers.api import ConduitClient

    return ConduitClient(
        Settings(
            redis=RedisSettings(url=redis_url, key_prefix=TEST_PREFIX),
            database=DatabaseSettings(url=pg_url),
        )
    )


def scrape(collector: str, redis_url: str, pg_url: str) -> list[Any]:
    """The samples one scrape of a ``producers.metrics`` collector (its class name) gives, on
    the test Redis and database."""
    from prometheus_client.core import CollectorRegistry
    from prometheus_client.exposition import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from producers import metrics

    client = client_on(redis_url, pg_url)
    try:
        reg = CollectorRegistry()
        reg.register(getattr(metrics, collector)(client))
        text = generate_latest(reg).decode()
    finally:
        client.close()
    return [x for fam in text_string_to_metric_families(text) for x in fam.samples]


def _unavailable(what: str, exc: BaseException) -> None:
    msg = f"{what} is not reachable ({type(exc).__name__}: {exc})"
    if os.environ.get("CI"):
        pytest.fail(msg + "; CI must provide it (.ci/run starts it)")
    pytest.skip(msg)


@pytest.fixture(scope="session")
def redis_client() -> redis.Redis:
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except (redis.RedisError, OSError) as exc:
        _unavailable(f"Redis at {REDIS_URL}", exc)
    foreign = [
        k
        for k in client.scan_iter(count=1000)
        if not k.startswith(TEST_PREFIX.encode())
        and not k.startswith((b"_kombu", b"route", b"execute", b"feedback", b"unacked"))
    ]
    if foreign:
        pytest.exit(
            f"refusing to run: Redis {REDIS_URL} holds keys the tests did not write "
            f"(e.g. {foreign[0]!r}); point CONDUIT_TEST_REDIS_URL at an empty db",
            2,
        )
    return client


@pytest.fixture
def redis_url(redis_client: redis.Redis) -> Iterator[str]:
    redis_client.flushdb()
    yield REDIS_URL
    redis_client.flushdb()


@pytest.fixture(scope="session")
def pg_engine() -> Iterator[sa.Engine]:
    engine = sa.create_engine(PG_URL)
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("select 1"))
    except sa.exc.OperationalError as exc:
        _unavailable(f"PostgreSQL at {PG_URL}", exc)
    yield engine
    engine.dispose()


@pytest.fixture
def pg_url(pg_engine: sa.Engine) -> Iterator[str]:
    """A URL whose connections live in a fresh schema, dropped after the test."""
    schema = f"t_{uuid.uuid4().hex[:12]}"
    with pg_engine.begin() as conn:
        conn.execute(sa.text(f'create schema "{schema}"'))
    sep = "&" if "?" in PG_URL else "?"
    yield f"{PG_URL}{sep}options={quote(f'-csearch_path={schema}')}"
    with pg_engine.begin() as conn:
        conn.execute(sa.text(f'drop schema "{schema}" cascade'))


@pytest.fixture
def history(pg_url: str) -> Iterator[SqlHistory]:
    """A history database in a fresh PostgreSQL schema, migrated."""
    h = SqlHistory(pg_url, retry_for_s=5)
    h.create_schema()
    yield h
    h.dispose()


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.exists():
        pytest.skip(f"{SHARED_DATA} is not here")
    return SHARED_DATA
