"""The history writer of `conduit serve`, on PostgreSQL: calls handed over from many threads are
each written once, in fewer transactions than calls; their feedback events are each sent once,
in fewer tasks than writes; a flush has everything written; close sends what is left."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from conduit_workers.domain.records import DecisionRow, ResultRow
from conduit_workers.domain.rewards import CallWeights, call_event
from conduit_workers.gateway.recorder import HistoryRecorder
from conduit_workers.history import history_schema as t
from conduit_workers.history.history_gateway import CallRecord, GatewayHistory

pytestmark = pytest.mark.integration
CALLS = 400


@pytest.fixture
def gateway_history(pg_url: str) -> Iterator[GatewayHistory]:
    h = GatewayHistory(pg_url, retry_for_s=5)
    h.create_schema()
    yield h
    h.dispose()


def _record(i: int) -> CallRecord:
    qid = uuid.uuid4().hex
    return CallRecord(
        query_id=qid,
        prompt=f"Call {i}: what is 2 + {i}?",
        user=None,
        batch_id="api-k-2026-12-02",
        tag="api:k",
        metadata={"api": "chat.completions"},
        constraints={},
        decision=DecisionRow(qid, "m", ["m"], [], {}, "general", 0.0, None, {}),
        result=ResultRow(qid, "m", "ok", "4", 10, 1, 0.001, 20.0, 1, 0),
        events=(call_event(qid, "m", CallWeights(), error=False, latency_ms=20.0),),
    )


def test_calls_are_written_once_and_their_events_sent_once_in_batches(
    gateway_history: GatewayHistory,
) -> None:
    sent: list[list[str]] = []
    writes: list[int] = []
    record_calls = gateway_history.record_calls

    def counting(records: list[CallRecord]) -> list[str]:
        writes.append(len(records))
        return record_calls(records)

    gateway_history.record_calls = counting  # type: ignore[method-assign]
    recorder = HistoryRecorder(gateway_history, sent.append, batch=64, events_batch=100)
    records = [_record(i) for i in range(CALLS)]

    def hand_over(part: list[CallRecord]) -> None:
        for r in part:
            recorder.add(r)

    threads = [threading.Thread(target=hand_over, args=(records[k::8],)) for k in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert recorder.flush(30.0)
    with gateway_history.engine.connect() as conn:
        written = conn.scalar(sa.select(sa.func.count()).select_from(t.results))
    assert written == CALLS and sum(writes) == CALLS
    assert len(writes) < CALLS and max(writes) <= 64
    recorder.close()
    ids = [i for chunk in sent for i in chunk]
    assert sorted(ids) == sorted(e.id for r in records for e in r.events)  # each once
    assert len(sent) <= len(writes)


def test_before_write_runs_ahead_of_every_write_and_at_close(
    gateway_history: GatewayHistory,
) -> None:
    """The HTTP API's floor marks go to Redis there (gateway/routing_state.py): before the rows
    and events of the calls, and what is left when the server stops."""
    order: list[str] = []
    record_calls = gateway_history.record_calls

    def recording(records: list[CallRecord]) -> list[str]:
        order.append(f"write {len(records)}")
        return record_calls(records)

    gateway_history.record_calls = recording  # type: ignore[method-assign]
    recorder = HistoryRecorder(
        gateway_history,
        lambda ids: order.append("send"),
        before_write=lambda: order.append("before"),
    )
    recorder.add(_record(0))
    assert recorder.flush(10.0)
    first_write = order.index("write 1")
    assert "before" in order[:first_write]
    order.clear()
    recorder.close()
    assert "before" in order  # at close too, with nothing left to write
