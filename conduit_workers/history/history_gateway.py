"""What ``conduit serve`` writes and reads in the history database: API keys (hashed), and each
answered call — prompt, decision, result and implicit feedback — in one transaction per batch of
calls, each row once."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.engine import Connection

from conduit_workers.domain.records import DecisionRow, ResultRow
from conduit_workers.domain.rewards import FeedbackEvent
from conduit_workers.errors import InputError
from conduit_workers.history import history_schema as t
from conduit_workers.history.history import SqlHistory
from conduit_workers.history.history_base import now
from conduit_workers.history.history_batches import ApiBatchHistory
from conduit_workers.history.history_feedback import event_row

KEY_PREFIX = "cdt-"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


@dataclass(frozen=True)
class ApiKey:
    name: str
    key_hint: str
    budget_usd_per_day: float | None
    allowed_models: tuple[str, ...] | None
    created_at: Any
    revoked_at: Any = None


@dataclass(frozen=True)
class CallRecord:
    """One answered HTTP call, written behind the response."""

    query_id: str
    prompt: str
    user: str | None
    batch_id: str  # the key's batch of the day (``api-<key>-<day>``), tagged ``api:<key>``
    tag: str
    metadata: dict[str, Any]
    constraints: dict[str, Any]
    decision: DecisionRow
    result: ResultRow
    events: tuple[FeedbackEvent, ...]
    external_id: str | None = None
    asked: str | None = None  # the last user turn, for re-ask detection (not stored)


def _api_key(row: Any) -> ApiKey:
    models = row.allowed_models
    return ApiKey(
        row.name,
        row.key_hint,
        row.budget_usd_per_day,
        tuple(models) if models else None,
        row.created_at,
        row.revoked_at,
    )


class GatewayHistory(SqlHistory, ApiBatchHistory):
    # -- API keys -------------------------------------------------------------------------

    def create_key(
        self,
        name: str,
        *,
        budget_usd_per_day: float | None = None,
        allowed_models: Sequence[str] | None = None,
    ) -> tuple[ApiKey, str]:
        """Make a key named ``name``; return it with the key itself (shown once, never stored).
        A revoked key's name can be used again; a live one's cannot."""
        k = t.api_keys
        key = new_key()
        values = {
            "name": name,
            "key_hash": hash_key(key),
            "key_hint": key[:8],
            "budget_usd_per_day": budget_usd_per_day,
            "allowed_models": list(allowed_models) if allowed_models else None,
            "created_at": now(),
            "revoked_at": None,
        }

        def run(conn: Connection) -> ApiKey:
            old = conn.execute(select(k).where(k.c.name == name)).first()
            if old is not None and old.revoked_at is None:
                raise InputError(
                    f"an API key named {name!r} exists; revoke it first "
                    f"(conduit keys revoke {name}) or choose another name"
                )
            if old is not None:
                conn.execute(update(k).where(k.c.name == name).values(**values))
            else:
                conn.execute(k.insert().values(**values))
            return _api_key(conn.execute(select(k).where(k.c.name == name)).one())

        return self._tx(run), key

    def list_keys(self) -> list[ApiKey]:
        k = t.api_keys
        return self._tx(
            lambda conn: [_api_key(r) for r in conn.execute(select(k).order_by(k.c.name))]
        )

    def revoke_key(self, name: str) -> int | None:
        """Revoke the live key named ``name`` and cancel its API batches still running (their
        requests not started end ``cancelled``, error ``api_key_revoked``), in one
        transaction; how many requests were ended, or None if there is no such key."""
        k = t.api_keys
        stmt = update(k).where(k.c.name == name, k.c.revoked_at.is_(None)).values(revoked_at=now())

        def run(conn: Connection) -> int | None:
            if not conn.execute(stmt).rowcount:
                return None
            return self.cancel_key_batches(conn, name)

        return self._tx(run)

    def key_by_secret(self, key: str) -> ApiKey | None:
        """The live key whose hash matches ``key``, or None."""
        k = t.api_keys
        stmt = select(k).where(k.c.key_hash == hash_key(key), k.c.revoked_at.is_(None))
        row = self._tx(lambda conn: conn.execute(stmt).first())
        return _api_key(row) if row is not None else None

    # -- calls ----------------------------------------------------------------------------

    def record_calls(self, records: Sequence[CallRecord]) -> list[str]:
        """Write the calls (prompt, batch link, decision, result, implicit feedback) in one
        transaction; rows already there are left alone. Returns the feedback event ids."""
        if not records:
            return []
        ts = now()
        batches = {
            r.batch_id: {
                "id": r.batch_id,
                "tag": r.tag,
                "created_at": ts,
                "accepted": 0,
                "rejected": 0,
                "constraints": {},
            }
            for r in records
        }
        queries = [
            {
                "id": r.query_id,
                "external_id": r.external_id,
                "user_name": r.user,
                "prompt": r.prompt,
                "prompt_chars": len(r.prompt),
                "metadata": r.metadata,
                "constraints": r.constraints,
                "created_at": ts,
            }
            for r in records
        ]
        links = [{"batch_id": r.batch_id, "query_id": r.query_id, "line": None} for r in records]
        decisions = [
            {
                **{k: v for k, v in r.decision.__dict__.items() if k != "floor"},
                "floor_mark": r.decision.floor_mark,
                "created_at": ts,
            }
            for r in records
        ]
        results = [{**r.result.__dict__, "created_at": ts} for r in records]
        events = [event_row(e, ts) for r in records for e in r.events]

        def run(conn: Connection) -> list[str]:
            conn.execute(self._insert_ignore(t.batches), list(batches.values()))
            conn.execute(self._insert_ignore(t.queries), queries)
            conn.execute(self._insert_ignore(t.batch_items), links)
            conn.execute(self._insert_ignore(t.decisions), decisions)
            conn.execute(self._insert_ignore(t.results), results)
            if events:
                conn.execute(self._insert_ignore(t.feedback), events)
            return [e["id"] for e in events]

        return self._tx(run)


__all__ = ["GatewayHistory", "ApiKey", "CallRecord", "hash_key", "new_key"]
