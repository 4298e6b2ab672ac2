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


SYSTEM = " ".join(
    f"Rule {i}: answer as the style guide of the support team says, in plain words, briefly."
    for i in range(12)
)  # ~170 words, the same on every line of a batch file


def _submit_lines(history, batch, *items):
    parsed = [parse_item(i, max_prompt_chars=5000) for i in items]
    return history.submit(batch, parsed, tag=None, rejected=0, constraints={}).new


def _line(question, user="ann"):
    return {
        "messages": [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": question},
        ],
        "user": user,
    }


def test_lines_sharing_a_system_prompt_are_compared_by_what_they_ask(history, redis_url):
    """OpenAI batch lines of one user with one long system prompt: different questions are not
    re-asks of each other (their whole texts scored >= 0.9); the same question asked again is."""
    sent: list[list[str]] = []
    recent = RedisRecentPrompts(redis.Redis.from_url(redis_url), TEST_PREFIX, window_s=60)
    detector = ReAskDetector(recent, history, 0.9, sent.append)
    first, second = _submit_lines(
        history,
        "b1",
        {**_line("How do I reset my password?"), "id": "1"},
        {**_line("Which plans include phone support?"), "id": "2"},
    )
    # Routed together: two different questions, not a re-ask of each other.
    assert detector.detect(history.load_queries([first, second])) == []
    for q in (first, second):
        history.insert_decisions([DecisionRow(q, "m", ["m"], [1.0], {}, "other", 0.1, 0.0, {})])
        history.record_results([ResultRow(q, "m", "ok", "answer")], [])
    assert sent == []

    (again,) = _submit_lines(history, "b2", {**_line("how do I reset my password"), "id": "3"})
    (other,) = _submit_lines(history, "b3", {**_line("Can I pay by invoice?"), "id": "4"})
    ids = detector.detect(history.load_queries([again, other]))
    assert ids == [f"retry:{first}"], ids


def test_a_user_turn_is_read_for_prompts_of_a_user_only(history):
    anon, named = _submit_lines(
        history,
        "b",
        {"messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "A?"}]},
        _line("B?"),
    )
    rows = {r.id: r for r in history.load_queries([anon, named])}
    assert rows[anon].asked is None and rows[named].asked == "B?"
