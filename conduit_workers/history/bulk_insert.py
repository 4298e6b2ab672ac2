"""Bulk ``INSERT … ON CONFLICT DO NOTHING`` of the hot paths' rows, through the DB-API cursor.

SQLAlchemy Core's executemany builds and processes a parameter dict per row
(``construct_params`` and the bind processors: ~10 µs a row of 13 columns on SQLite), about
half of what storing a chunk's results or decisions costs. Here the statement's text is made
once per (table, columns, rows per statement) and each row is a tuple: the same column types'
bind processors (SQLAlchemy's own, of the engine's dialect: SQLite's datetime text and
booleans, the JSON serializer) are applied to the columns that have one, and the rows go in
multi-row ``VALUES`` statements, as SQLAlchemy's "insertmanyvalues" sends them, with the same
``RETURNING`` (the rows this statement inserted). Only for SQLite and psycopg2 (their
paramstyles ``qmark`` and ``format``/``pyformat``); :func:`supported` says when.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import Table
from sqlalchemy.engine import Connection, Dialect

ROWS_PER_STATEMENT = 250  # 13 columns: 3,250 parameters, far below both databases' limits
_PLACEHOLDER = {"qmark": "?", "format": "%s", "pyformat": "%s"}


def supported(dialect: Dialect) -> bool:
    return dialect.name in ("sqlite", "postgresql") and dialect.paramstyle in _PLACEHOLDER


class BulkInsert:
    """Inserts rows (tuples in ``columns``' order) into ``table``, skipping rows whose key is
    there already; with ``returning``, returns that column of the rows inserted."""

    def __init__(
        self, dialect: Dialect, table: Table, columns: Sequence[str], returning: str | None = None
    ) -> None:
        if not supported(dialect):
            raise ValueError(f"no bulk insert for {dialect.name} ({dialect.paramstyle})")
        missing = [
            c.name
            for c in table.columns
            if c.name not in columns and (c.default is not None or c.server_default is not None)
        ]
        if missing:  # SQLAlchemy would fill these in; this path does not
            raise ValueError(f"{table.name}: columns with defaults not given: {missing}")
        self.table = table
        self.columns = tuple(columns)
        self.returning = returning
        self._mark = _PLACEHOLDER[dialect.paramstyle]
        self._quote = dialect.identifier_preparer.quote
        self._processors: list[tuple[int, Callable[[Any], Any]]] = []
        for i, name in enumerate(self.columns):
            col_type = table.c[name].type
            process = col_type.dialect_impl(dialect).bind_processor(dialect)
            if process is not None:
                self._processors.append((i, process))
        self._sql: dict[int, str] = {}

    def sql(self, n_rows: int) -> str:
        """The statement's text for ``n_rows`` rows."""
        text = self._sql.get(n_rows)
        if text is None:
            one = "(" + ", ".join([self._mark] * len(self.columns)) + ")"
            text = (
                f"INSERT INTO {self._quote(self.table.name)} "
                f"({', '.join(self._quote(c) for c in self.columns)}) VALUES "
                + ", ".join([one] * n_rows)
                + " ON CONFLICT DO NOTHING"
            )
            if self.returning is not None:
                text += f" RETURNING {self._quote(self.returning)}"
            self._sql[n_rows] = text
        return text

    def params(self, rows: Sequence[Sequence[Any]]) -> list[Any]:
        """The rows' values, processed as SQLAlchemy binds them, in one flat list."""
        flat: list[Any] = []
        if not self._processors:
            for row in rows:
                flat.extend(row)
            return flat
        procs = self._processors
        for row in rows:
            values = list(row)
            for i, process in procs:
                values[i] = process(values[i])
            flat.extend(values)
        return flat

    def __call__(self, conn: Connection, rows: Sequence[Sequence[Any]]) -> list[Any]:
        out: list[Any] = []
        for start in range(0, len(rows), ROWS_PER_STATEMENT):
            part = rows[start : start + ROWS_PER_STATEMENT]
            result = conn.exec_driver_sql(self.sql(len(part)), tuple(self.params(part)))
            if self.returning is not None:
                out.extend(r[0] for r in result)
        return out


__all__ = ["ROWS_PER_STATEMENT", "BulkInsert", "supported"]
