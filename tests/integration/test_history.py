import numpy as np
import pytest

from conduit_workers.domain.items import parse_item
from conduit_workers.domain.records import DecisionRow, ResultRow
from conduit_workers.domain.rewards import FeedbackEvent

pytestmark = pytest.mark.integration


def _items(*prompts):
    return [
        parse_item({"prompt": p}, line=i + 1, max_prompt_chars=1000) for i, p in enumerate(prompts)
    ]


def _decide(history, qids, model="m"):
    history.insert_decisions(
        [
            DecisionRow(
                q, model, [model], [1.0, 0.5], {model: 0.5}, "other", 0.1, 0.001, {model: 0}
            )
            for q in qids
        ]
    )


def test_resubmission_links_known_prompts_instead_of_adding_them(history):
    first = history.submit("b1", _items("a", "b", "a"), tag="t", rejected=1, constraints={})
    assert len(first.new) == 2 and first.existing == []
    second = history.submit("b2", _items("b", "c"), tag=None, rejected=0, constraints={})
    assert len(second.new) == 1 and second.existing == [first.new[1]]
    assert history.batch_progress("b2") == (2, 0)
    assert [r["id"] for r in history.batch_results("b2")] == [first.new[1], second.new[0]]


def test_decisions_and_results_are_written_once(history):
    sub = history.submit(
        "b", _items("a", "b"), tag=None, rejected=0, constraints={"lambda_cost": 0.2}
    )
    qa, qb = sub.new
    rows = history.load_queries([qa, qb])
    assert [r.prompt for r in rows] == ["a", "b"] and rows[0].batch_constraints == {
        "lambda_cost": 0.2
    }
    _decide(history, [qa])
    _decide(history, [qa], model="other")  # a redelivered route task: ignored
    assert [r.id for r in history.load_queries([qa, qb])] == [qb]
    execution = history.load_for_execution([qa, qb])
    assert [(e.query_id, e.model) for e in execution] == [(qa, "m")]
    ev = FeedbackEvent(
        f"implicit:{qa}:m", qa, "m", "implicit", 1.0, 0.0, is_call=True, cost_usd=0.2
    )
    res = ResultRow(qa, "m", "ok", "answer", 3, 1, 0.2, 10.0, 1, 0)
    assert history.record_results([res], [ev]) == [qa]
    assert history.record_results([res], [ev]) == []
    assert history.load_for_execution([qa]) == []
    assert history.batch_progress("b") == (2, 1)
    assert history.unanswered([qa, qb]) == [qb]


def test_feedback_is_claimed_by_one_update_only(history):
    sub = history.submit("b", _items("a", "b"), tag=None, rejected=0, constraints={})
    qa, qb = sub.new
    _decide(history, [qa, qb])
    events = [FeedbackEvent(f"explicit:{q}", q, "m", "explicit", 1.0, 1.0) for q in (qa, qb)]
    assert history.add_feedback(events) == [e.id for e in events]
    assert history.add_feedback(events) == []
    mine, contexts = history.claim_feedback([events[0].id], "u1")
    assert [e.id for e in mine] == [events[0].id]
    np.testing.assert_array_equal(contexts[qa], [1.0, 0.5])
    # a second task holding both ids claims only the one still free
    theirs, _ = history.claim_feedback([e.id for e in events], "u2")
    assert [e.id for e in theirs] == [events[1].id]
    # the first task, redelivered, sees its own claim again until it is marked applied
    again, _ = history.claim_feedback([events[0].id], "u1")
    assert [e.id for e in again] == [events[0].id]
    history.mark_applied("u1")
    assert history.claim_feedback([events[0].id], "u1")[0] == []
    assert history.unapplied_feedback_ids() == [events[1].id]


def test_answered_by_resolves_ids_and_external_ids_in_one_call(history):
    items = [parse_item({"id": f"q{i}", "prompt": f"p{i}"}, max_prompt_chars=10) for i in range(3)]
    sub = history.submit("b", items, tag=None, rejected=0, constraints={})
    q0, q1, q2 = sub.new
    _decide(history, [q0, q1])
    history.record_results([ResultRow(q0, "m", "ok"), ResultRow(q1, "m", "error")], [])
    got = history.answered_by(["q0", q0, "q1", "q2", "nope"])
    assert got == {"q0": (q0, "m"), q0: (q0, "m")}  # q1 failed, q2 unanswered, nope unknown


@pytest.mark.parametrize("db", ["postgresql", "sqlite"])
def test_json_columns_read_back_the_values_written(db, request, tmp_path):
    """JSON columns are written by pydantic-core's serializer (history_base.json_text): the
    features the feedback learns from and a decision's ranking (a non-ASCII model name) read
    back as written, on both databases; NaN and infinities too on SQLite."""
    from conduit_workers.history.history import SqlHistory

    if db == "postgresql":
        history = request.getfixturevalue("history")
    else:
        history = SqlHistory(f"sqlite:///{tmp_path / 'h.db'}")
        history.create_schema()
    features = [1e-07, -0.0, 0.1 + 0.2, 123456.789, 2.5e-300]
    if db == "sqlite":  # PostgreSQL refuses them in JSON, as it did json.dumps's
        features += [float("nan"), float("inf")]
    q = history.submit("b", _items("a"), tag=None, rejected=0, constraints={}).new[0]
    model = "modèle-ü"
    history.insert_decisions(
        [DecisionRow(q, model, [model], features, {model: -1e-7}, "other", 0.1, None, {model: 3})]
    )
    event = FeedbackEvent(f"explicit:{q}", q, model, "explicit", 1.0, 1.0)
    history.add_feedback([event])
    _, contexts = history.claim_feedback([event.id], "u1")
    np.testing.assert_array_equal(contexts[q], features)  # NaN equal to NaN here
    assert [e.model for e in history.load_for_execution([q])] == [model]
    assert history.load_for_execution([q])[0].ranked == [model]
