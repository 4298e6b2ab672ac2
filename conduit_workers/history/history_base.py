"""The history database's plumbing: engine, retries while it is unreachable, transactions.

:class:`SqlBase` is what :class:`~conduit_workers.history.history.SqlHistory` and its query
groups share; nothing here knows a table.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

from pydantic_core import from_json, to_json
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError, OperationalError

from conduit_workers.errors import StoreUnavailable
from conduit_workers.history.bulk_insert import BulkInsert, supported

log = logging.getLogger(__name__)
T = TypeVar("T")


def now() -> datetime:
    return datetime.now(UTC)


def json_text(value: Any) -> str:
    """The text of a JSON column: pydantic-core's serializer, ~5x faster than ``json.dumps`` on
    the lists of floats and the small dicts each decision and event stores (a decision's
    features: 19 → 2.4 µs). Same values read back (NaN and infinities as Python writes them);
    the text differs only in spacing, exponents (``1e-7``) and non-ASCII left unescaped."""
    return to_json(value, inf_nan_mode="constants").decode()


def json_value(text: str | bytes) -> Any:
    """The value of a JSON column's text: pydantic-core's parser (~4x faster than ``json.loads``
    on a decision's features, a prompt's constraints, a ranking), and ``json.loads`` for what it
    refuses (a lone surrogate escape, which ``json.dumps`` wrote), so the same values as
    ``json.loads`` (0 differences in 900,000 floats; big integers, NaN and infinities alike)."""
    try:
        return from_json(text)
    except ValueError:
        return json.loads(text)


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    # Several worker processes share the file: WAL lets readers and one writer work together.
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


class SqlBase:
    def __init__(self, url: str, *, retry_for_s: float = 60.0, pool_size: int = 5) -> None:
        self.url = url
        self.retry_for_s = retry_for_s
        kwargs: dict[str, Any] = {
            "future": True,
            "json_serializer": json_text,
            "json_deserializer": json_value,
        }
        if url.startswith("sqlite"):
            kwargs["connect_args"] = {"timeout": 30}
        else:
            kwargs.update(pool_size=pool_size, pool_pre_ping=True)
        self.engine: Engine = create_engine(url, **kwargs)
        self._bulks: dict[tuple[str, tuple[str, ...], str | None], BulkInsert] = {}
        if url.startswith("sqlite"):
            event.listen(self.engine, "connect", _sqlite_pragmas)

    # -- plumbing -------------------------------------------------------------------------

    def create_schema(self, auto_migrate: bool = True) -> None:
        """Bring the schema to the newest migration (or, without ``auto_migrate``, check it is
        there and raise :class:`ConfigError` saying to run ``conduit db upgrade``)."""
        from conduit_workers.history.migrate import ensure_current

        self._retry(lambda: ensure_current(self.engine, auto_migrate))

    def dispose(self) -> None:
        self.engine.dispose()

    def _retry(self, fn: Callable[[], T]) -> T:
        """Run ``fn``, retrying while the database is unreachable, up to ``retry_for_s``."""
        deadline = time.monotonic() + self.retry_for_s
        delay = 0.2
        while True:
            try:
                return fn()
            except (OperationalError, DBAPIError) as exc:
                if not _is_transient(exc) or time.monotonic() + delay > deadline:
                    raise StoreUnavailable(
                        f"history database unavailable: {type(exc.orig).__name__}"
                    ) from exc
                log.warning(
                    "history database unavailable (%s); retrying in %.1fs",
                    type(exc.orig).__name__,
                    delay,
                )
                time.sleep(delay)
                delay = min(delay * 2, 5.0)

    def _tx(self, fn: Callable[[Connection], T]) -> T:
        def run() -> T:
            with self.engine.begin() as conn:
                return fn(conn)

        return self._retry(run)

    def _bulk(
        self, table: Any, columns: tuple[str, ...], returning: str | None = None
    ) -> BulkInsert | None:
        """The DB-API bulk insert of these columns (:mod:`.bulk_insert`), or None where the
        driver has none (then ``_insert_ignore`` through SQLAlchemy Core)."""
        key = (table.name, columns, returning)
        bulk = self._bulks.get(key)
        if bulk is None and supported(self.engine.dialect):
            bulk = self._bulks[key] = BulkInsert(self.engine.dialect, table, columns, returning)
        return bulk

    def _insert_ignore(self, table: Any) -> Any:
        dialect = sqlite if self.engine.dialect.name == "sqlite" else postgresql
        return dialect.insert(table).on_conflict_do_nothing()


def chunks(seq: Sequence[T], n: int) -> Iterable[list[T]]:
    for i in range(0, len(seq), n):
        yield list(seq[i : i + n])


def _is_transient(exc: DBAPIError) -> bool:
    if exc.connection_invalidated:
        return True
    text = str(exc.orig).lower()
    return any(
        s in text
        for s in (
            "could not connect",
            "connection refused",
            "server closed the connection",
            "terminating connection",
            "database is locked",
            "the database system is",
            "connection reset",
            "ssl connection has been closed",
            "no connection to the server",
        )
    )
