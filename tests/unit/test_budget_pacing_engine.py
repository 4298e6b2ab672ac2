"""Budget pacing in the engine: the least λ that fits a chunk's allowance, what the choices
leave of it buying upgrades, and each chunk's share of what its batch has left (seeded)."""

from __future__ import annotations

import numpy as np
import pytest

from conduit_workers.domain.budget import allowance_usd, key_ledger
from conduit_workers.domain.constraints import Constraints
from conduit_workers.domain.pacing import fill_allowance, pace
from conduit_workers.execution.budget_pacing import Share
from tests.unit.routing_engines import floor_engine


def test_pace_finds_the_least_lambda_that_fits():
    cost = {0.0: 10.0, 1.0: 6.0, 2.0: 3.0}

    def total(lam: float) -> float:
        return 10.0 if lam < 1.0 else 6.0 if lam < 2.0 else 3.0

    assert pace(total, 12.0) == 0.0
    assert 1.0 <= pace(total, 7.0) < 1.0 + 1e-3
    assert 2.0 <= pace(total, 3.5) < 2.0 + 1e-3
    assert total(pace(total, 1.0)) > 1.0  # nothing fits: the ceiling, the caller falls back
    assert cost  # the table above is what total() encodes


NAMES = ["cheap", "mid", "ref"]
ALL = tuple(NAMES)


def test_what_a_chunk_leaves_buys_the_reference_while_it_is_not_known_worse():
    costs = np.array([[1.0, 2.0, 10.0]] * 3)
    cold = np.full((3, 3), 0.5)  # nothing known: every model at the prior
    # 9 left over: one prompt's upgrade to the reference fits, a second does not.
    up = fill_allowance(["cheap"] * 3, [ALL] * 3, cold, costs, NAMES, "ref", None, 12.0)
    assert up == {0: "ref"}
    # Nothing left: nothing changes.
    assert fill_allowance(["cheap"] * 3, [ALL] * 3, cold, costs, NAMES, "ref", None, 3.0) == {}
    # A dearer model believed better than the choice and the reference is preferred to it.
    means = np.array([[0.5, 0.8, 0.6]] * 3)
    up = fill_allowance(["cheap"] * 3, [ALL] * 3, means, costs, NAMES, "ref", None, 5.0)
    assert up == {0: "mid", 1: "mid"}
    # A prompt that may not go to the reference is not upgraded to it.
    up = fill_allowance(
        ["cheap"], [("cheap", "mid")], cold[:1], costs[:1], NAMES, "ref", None, 100.0
    )
    assert up == {}


def test_the_reference_is_given_up_only_when_known_worse_by_more_than_its_spread():
    costs = np.array([[1.0, 2.0, 10.0]] * 2)
    means = np.array([[0.8, 0.5, 0.6]] * 2)  # the reference rated below the cheap choice
    wide, narrow = np.array([0.85, 0.85]), np.array([0.7, 0.7])
    up = fill_allowance(["cheap"] * 2, [ALL] * 2, means, costs, NAMES, "ref", wide, 100.0)
    assert up == {0: "ref", 1: "ref"}
    assert fill_allowance(["cheap"] * 2, [ALL] * 2, means, costs, NAMES, "ref", narrow, 100.0) == {}
    # Upgrades go first where they gain most per extra dollar.
    means = np.array([[0.5, 0.5, 0.6], [0.3, 0.3, 0.9]])
    up = fill_allowance(["cheap"] * 2, [ALL] * 2, means, costs, NAMES, "ref", None, 11.0)
    assert up == {1: "ref"}


def test_allowances_leave_room_for_calls_dearer_than_expected():
    # A batch of ten chunks whose calls each cost more than the allowance they were chosen
    # within: every chunk can still pay for its calls, the last one included.
    for overrun in (1.0, 1.15, 1.4):
        left = 10.0
        for k in range(0, 320, 32):
            cost = overrun * allowance_usd(left, 32, 320 - k)
            assert cost <= left
            left -= cost
        # ... and what is kept back is small when the calls cost what was expected:
        # 1 / (2·chunks + 1) of the budget.
        assert left <= 10.0 / 21 + 1e-9
    assert allowance_usd(10.0, 32, 320) == pytest.approx(10.0 * 32 / 336)
    assert allowance_usd(3.0, 10, 10) == pytest.approx(2.0)  # a batch of one chunk
    assert allowance_usd(3.0, 0, 10) == 0.0


def test_a_chunk_stays_within_its_allowance():
    eng = floor_engine(None)
    texts = [f"a long question number {i} " + "word " * (20 + i) for i in range(32)]
    ids = [str(i) for i in range(32)]
    free = eng.decide(ids, texts, [Constraints(lambda_cost=0.0)] * 32)
    full = sum(r.expected_cost_usd or 0.0 for r in free)
    for share in (0.9, 0.5, 0.2):
        rows = eng.decide(
            ids, texts, [Constraints(lambda_cost=0.0)] * 32, allowance_usd=share * full
        )
        spent = sum(r.expected_cost_usd or 0.0 for r in rows)
        assert spent <= share * full + 1e-12
        assert any(r.model == "strong" for r in rows)  # the allowance is used, not wasted
    # A cold start under an allowance its draws do not bind: what they leave buys reference
    # answers, and the chunk spends close to its allowance rather than a fraction of it.
    only_strong = Constraints(allowed_models=("strong",))
    dearest = sum(r.expected_cost_usd or 0.0 for r in eng.decide(ids, texts, [only_strong] * 32))
    allowance = 0.8 * dearest  # the draws alone spend about half (two models, nothing known)
    rows = eng.decide(ids, texts, [Constraints()] * 32, allowance_usd=allowance)
    spent = sum(r.expected_cost_usd or 0.0 for r in rows)
    strong = max(r.expected_cost_usd or 0.0 for r in rows)
    assert allowance - strong <= spent <= allowance + 1e-12
    # An allowance that is a cap (an API key's daily budget) only paces: the draws decide.
    rows = eng.decide(
        ids, texts, [Constraints()] * 32, allowance_usd=allowance, spend_allowance=False
    )
    assert sum(r.expected_cost_usd or 0.0 for r in rows) < allowance - strong
    assert Share([0], 1.0, "batch-1").buys_quality
    assert not Share([0], 1.0, key_ledger("team-a", "2026-12-04")).buys_quality
    # Below the cheapest models' cost: every prompt gets its cheapest model.
    rows = eng.decide(ids, texts, [Constraints()] * 32, allowance_usd=0.0)
    assert {r.model for r in rows} == {"cheap"}
