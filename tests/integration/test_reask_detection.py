import pytest
import redis

from conduit_workers.domain.items import parse_item
from conduit_workers.domain.records import DecisionRow, ResultRow
from conduit_workers.learning.reask import ReAskDetector
from conduit_workers.learning.recent_prompts import RedisRecentPrompts
from tests.conftest import TEST_PREFIX

pytestmark = pytest.mark.integration


def _submit(history, batch, *items):
    parsed = [parse_item(i, max_prompt_chars=1000) for i in items]
    return history.submit(batch, parsed, tag=None, rejected=0, constraints={}).new


def test_user_reasking_marks_the_earlier_answer_once(history, redis_url):
    sent: list[list[str]] = []
    recent = RedisRecentPrompts(redis.Redis.from_url(redis_url), TEST_PREFIX, window_s=60)
    detector = ReAskDetector(recent, history, 0.9, sent.append)
    (first,) = _submit(history, "b1", {"prompt": "Explain how TCP slow start works", "user": "ann"})
    assert detector.detect(history.load_queries([first])) == []
    history.insert_decisions([DecisionRow(first, "m", ["m"], [1.0], {}, "other", 0.1, 0.0, {})])
    history.record_results([ResultRow(first, "m", "ok", "answer")], [])

    again, others = _submit(
        history,
        "b2",
        {"prompt": "explain how TCP slow start works?", "user": "ann"},
        {"prompt": "Explain how TCP slow start works", "user": "bob"},
    )
    ids = detector.detect(history.load_queries([again, others]))
    assert ids == [f"retry:{first}"] and sent == [ids]
    events, _ = history.claim_feedback(ids, "u")
    assert [(e.query_id, e.model, e.kind, e.reward, e.weight) for e in events] == [
        (first, "m", "retry", 0.0, 1.0)
    ]
    # the same retry seen again (a redelivered task) adds nothing
    assert detector.detect(history.load_queries([again])) == []


def test_detection_is_skipped_when_redis_is_unreachable(history):
    dead = RedisRecentPrompts(
        redis.Redis.from_url(
            "redis://127.0.0.1:1/0", socket_timeout=0.3, socket_connect_timeout=0.3
        ),
        TEST_PREFIX,
        60,
    )
    detector = ReAskDetector(dead, history, 0.9, lambda ids: None)
    (q,) = _submit(history, "b", {"prompt": "hello there", "user": "ann"})
    assert detector.detect(history.load_queries([q])) == []
