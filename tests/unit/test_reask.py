import numpy as np

from conduit_workers.domain.reask import find_reasks, text_vector


def test_near_identical_prompts_are_close_and_different_ones_are_not():
    a = text_vector("How do I reverse a linked list in Python?")
    b = text_vector("how do I reverse a linked list in python ?")
    c = text_vector("What is the capital of France?")
    assert float(a @ b) > 0.8
    assert float(a @ c) < 0.3
    assert np.isclose(np.linalg.norm(a), 1.0)
    assert not text_vector("").any()


def test_find_reasks_picks_the_most_similar_earlier_prompt_above_threshold():
    v = {
        k: text_vector(t)
        for k, t in {
            "old1": "explain the french revolution in detail please",
            "old2": "explain the french revolution in detail",
            "other": "write a haiku about autumn leaves",
            "new": "explain the french revolution in detail",
            "new2": "write a haiku about autumn leaves",
        }.items()
    }
    recent = [("old1", v["old1"]), ("old2", v["old2"])]
    found = find_reasks([("new", v["new"]), ("new2", v["new2"])], recent, threshold=0.9)
    assert [(r.query_id, r.earlier_query_id) for r in found] == [("new", "old2")]
    assert found[0].similarity >= 0.99
    # within one chunk, a later prompt repeating an earlier one of the chunk counts too
    chunk = find_reasks([("a", v["other"]), ("b", v["new2"])], [], threshold=0.9)
    assert [(r.query_id, r.earlier_query_id) for r in chunk] == [("b", "a")]
    # and a prompt is never its own retry
    assert find_reasks([("old2", v["old2"])], recent[1:], threshold=0.5) == []
