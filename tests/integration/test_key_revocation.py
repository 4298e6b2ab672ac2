"""Revoking an API key stops its Batch API batches still running: their requests not started
end ``cancelled`` (error ``api_key_revoked``), which the executor skips; answered requests,
finished batches and other keys' batches are left as they are."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from conduit_workers.domain.chat import ChatMessage, ChatRequest
from conduit_workers.domain.items import parse_item
from conduit_workers.domain.records import ResultRow
from conduit_workers.gateway.batches import status_of
from conduit_workers.history import history_schema as t
from conduit_workers.history.history_gateway import GatewayHistory

pytestmark = pytest.mark.integration


@pytest.fixture
def history(pg_url: str) -> Iterator[GatewayHistory]:
    h = GatewayHistory(pg_url, retry_for_s=5)
    h.create_schema()
    yield h
    h.dispose()


def _api_batch(history: GatewayHistory, batch_id: str, key: str, n: int) -> list[str]:
    items = [
        parse_item({"id": f"{batch_id}-{i}", "prompt": f"{batch_id} {i}"}, max_prompt_chars=100)
        for i in range(n)
    ]
    row = {
        "id": batch_id,
        "key_name": key,
        "input_file_id": "file-x",
        "endpoint": "/v1/chat/completions",
        "completion_window": "24h",
        "metadata": None,
        "errors": [],
    }
    history.submit_api_batch(
        row, f"api:{key}", [(it, ChatRequest((ChatMessage("user", it.prompt),))) for it in items]
    )
    return [it.key for it in items]


def _answered(qid: str) -> ResultRow:
    return ResultRow(qid, "m", "ok", "4", 10, 1, 0.001, 20.0, 1, 0)


def test_revoking_a_key_cancels_the_requests_its_running_batches_have_not_started(
    history: GatewayHistory,
) -> None:
    history.create_key("team")
    history.create_key("other")
    running = _api_batch(history, "b-running", "team", 3)
    finished = _api_batch(history, "b-finished", "team", 1)
    others = _api_batch(history, "b-other", "other", 2)
    history.record_results([_answered(running[0]), _answered(finished[0])], [])

    assert history.revoke_key("team") == 2

    row = history.api_batch("b-running")
    assert row is not None and row["cancelled_at"] is not None
    assert (row["completed"], row["failed"], row["pending"]) == (1, 2, 0)
    assert status_of(row) == "cancelled"
    r = t.results
    with history.engine.connect() as conn:
        ended = conn.execute(
            sa.select(r.c.query_id, r.c.status, r.c.error_class).where(
                r.c.query_id.in_(running[1:])
            )
        ).all()
    assert sorted(ended) == sorted((q, "cancelled", "api_key_revoked") for q in running[1:])

    done = history.api_batch("b-finished")
    assert done is not None and done["cancelled_at"] is None and status_of(done) == "completed"
    other = history.api_batch("b-other")
    assert other is not None and other["cancelled_at"] is None and other["pending"] == len(others)

    assert history.revoke_key("team") is None  # no live key of that name any more
