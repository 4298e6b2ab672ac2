"""The Batch API's rows in the history database: uploaded files, batches made from them (each
prompt with its OpenAI request, linked to a ``batches`` row of the same id), their counts, and
cancellation."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.engine import Connection

from conduit_workers.domain.chat import ChatRequest
from conduit_workers.domain.items import PromptItem
from conduit_workers.history import history_schema as t
from conduit_workers.history.history_base import SqlBase, chunks, now

CANCELLED = "cancelled"


class ApiBatchHistory(SqlBase):
    # -- files ----------------------------------------------------------------------------

    def add_file(self, key_name: str, purpose: str, filename: str, content: str) -> dict[str, Any]:
        row = {
            "id": f"file-{uuid.uuid4().hex}",
            "key_name": key_name,
            "purpose": purpose,
            "filename": filename[:200],
            "bytes": len(content.encode("utf-8")),
            "content": content,
            "created_at": now(),
        }
        self._tx(lambda conn: conn.execute(t.api_files.insert().values(**row)))
        return row

    def get_file(self, file_id: str) -> dict[str, Any] | None:
        f = t.api_files
        row = self._tx(lambda conn: conn.execute(select(f).where(f.c.id == file_id)).first())
        return dict(row._mapping) if row is not None else None

    # -- batches --------------------------------------------------------------------------

    def submit_api_batch(
        self,
        batch: dict[str, Any],
        tag: str,
        items: Sequence[tuple[PromptItem, ChatRequest]],
    ) -> list[str]:
        """Record a batch (``batch``: the ``api_batches`` row) and its prompts, in one
        transaction; return the ids of the prompts not known before."""
        ts = now()

        def run(conn: Connection) -> list[str]:
            keys = [it.key for it, _ in items]
            known: set[str] = set()
            for chunk in chunks(keys, 1000):
                known.update(conn.scalars(select(t.queries.c.id).where(t.queries.c.id.in_(chunk))))
            conn.execute(
                t.batches.insert().values(
                    id=batch["id"], tag=tag, created_at=ts, accepted=len(items),
                    rejected=len(batch["errors"]), constraints={},
                )
            )  # fmt: skip
            conn.execute(t.api_batches.insert().values(**batch, created_at=ts))
            rows = [
                {
                    "id": it.key,
                    "external_id": it.external_id,
                    "user_name": it.user,
                    "prompt": it.prompt,
                    "prompt_chars": len(it.prompt),
                    "metadata": it.metadata,
                    "constraints": it.constraints.to_json(),
                    "created_at": ts,
                    "request": req.to_json(),
                }
                for it, req in items
                if it.key not in known
            ]
            links = [
                {"batch_id": batch["id"], "query_id": it.key, "line": it.line} for it, _ in items
            ]
            for part in chunks(rows, 500):
                conn.execute(self._insert_ignore(t.queries), part)
            for part in chunks(links, 1000):
                conn.execute(self._insert_ignore(t.batch_items), part)
            return [str(r["id"]) for r in rows]

        return self._tx(run)

    def api_batch(self, batch_id: str, key_name: str | None = None) -> dict[str, Any] | None:
        """The batch's row with its counts (``total``, ``completed``, ``failed``), or None
        (also when it belongs to another key)."""
        ab = t.api_batches
        stmt = select(ab).where(ab.c.id == batch_id)
        if key_name is not None:
            stmt = stmt.where(ab.c.key_name == key_name)

        def run(conn: Connection) -> dict[str, Any] | None:
            row = conn.execute(stmt).first()
            return self._with_counts(conn, dict(row._mapping)) if row is not None else None

        return self._tx(run)

    def api_batches(self, key_name: str, limit: int, after: str | None) -> list[dict[str, Any]]:
        """The key's batches, newest first, after the batch ``after`` (pagination)."""
        ab = t.api_batches

        def run(conn: Connection) -> list[dict[str, Any]]:
            stmt = select(ab).where(ab.c.key_name == key_name)
            if after is not None:
                pivot = conn.scalar(select(ab.c.created_at).where(ab.c.id == after))
                if pivot is not None:
                    stmt = stmt.where(ab.c.created_at < pivot)
            stmt = stmt.order_by(ab.c.created_at.desc(), ab.c.id).limit(limit)
            return [self._with_counts(conn, dict(r._mapping)) for r in conn.execute(stmt)]

        return self._tx(run)

    def _with_counts(self, conn: Connection, row: dict[str, Any]) -> dict[str, Any]:
        bi, r = t.batch_items, t.results
        stmt = (
            select(r.c.status, func.count())
            .select_from(bi.outerjoin(r, r.c.query_id == bi.c.query_id))
            .where(bi.c.batch_id == row["id"])
            .group_by(r.c.status)
        )
        counts = {status: int(n) for status, n in conn.execute(stmt)}
        row["total"] = sum(counts.values())
        row["completed"] = counts.get("ok", 0)
        row["failed"] = sum(n for s, n in counts.items() if s not in (None, "ok"))
        row["pending"] = counts.get(None, 0)
        return row

    def cancel_api_batch(self, batch_id: str) -> int:
        """Mark the batch cancelled and end every prompt of it not answered yet with status
        ``cancelled`` (the executor skips prompts with a result); return how many."""
        ab = t.api_batches

        def run(conn: Connection) -> int:
            ts = now()
            conn.execute(
                update(ab)
                .where(ab.c.id == batch_id, ab.c.cancelled_at.is_(None))
                .values(cancelled_at=ts)
            )
            return self._end_pending(
                conn,
                ab.c.id == batch_id,
                ts,
                "batch_cancelled",
                "the batch was cancelled before this request started",
            )

        return self._tx(run)

    def _end_pending(
        self, conn: Connection, which: Any, ts: Any, error_class: str, message: str
    ) -> int:
        """End the prompts not answered yet of the API batches ``which`` selects with status
        ``cancelled`` (the executor skips prompts with a result); how many."""
        ab, bi, r = t.api_batches, t.batch_items, t.results
        todo = list(
            conn.scalars(
                select(bi.c.query_id)
                .select_from(
                    ab.join(bi, bi.c.batch_id == ab.c.id).outerjoin(
                        r, r.c.query_id == bi.c.query_id
                    )
                )
                .where(which, r.c.query_id.is_(None))
            )
        )
        rows = [
            {
                "query_id": q,
                "model": None,
                "status": CANCELLED,
                "error_class": error_class,
                "error_message": message,
                "created_at": ts,
            }
            for q in todo
        ]
        for part in chunks(rows, 1000):
            conn.execute(self._insert_ignore(r), part)
        return len(rows)

    def cancel_key_batches(self, conn: Connection, key_name: str) -> int:
        """A key revoked (in ``conn``'s transaction): its API batches still running are
        cancelled, their requests not started ended as ``api_key_revoked``; how many."""
        ab, bi, r = t.api_batches, t.batch_items, t.results
        ts = now()
        running = (
            select(bi.c.batch_id)
            .select_from(bi.outerjoin(r, r.c.query_id == bi.c.query_id))
            .where(r.c.query_id.is_(None))
        )
        ids = list(
            conn.scalars(
                select(ab.c.id).where(
                    ab.c.key_name == key_name, ab.c.cancelled_at.is_(None), ab.c.id.in_(running)
                )
            )
        )
        if not ids:
            return 0
        conn.execute(update(ab).where(ab.c.id.in_(ids)).values(cancelled_at=ts))
        return self._end_pending(
            conn,
            ab.c.id.in_(ids),
            ts,
            "api_key_revoked",
            f"the API key {key_name!r} that created this batch was revoked before this "
            "request started",
        )
