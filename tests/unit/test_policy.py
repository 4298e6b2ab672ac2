"""Utility, constraints and the engine's decisions (in-memory store, no services)."""

import numpy as np
import pytest

from conduit_workers.domain.bandit import ArmStats
from conduit_workers.domain.catalog import Catalog, ModelSpec
from conduit_workers.domain.constraints import Constraints
from conduit_workers.domain.learning import learn
from conduit_workers.domain.policy import Expectations, choose, expected_costs, reference_cost
from conduit_workers.domain.rewards import EXPLICIT, FeedbackEvent
from conduit_workers.learning.posterior_store import InMemoryPosteriorStore
from conduit_workers.routing.embedder import HashingEmbedder
from conduit_workers.routing.engine import RoutingEngine
from conduit_workers.settings import RouterSettings

URL = "http://127.0.0.1:1/v1"
CHEAP = ModelSpec("cheap", "openai-compatible", 0.5, 1.0, base_url=URL)
STRONG = ModelSpec("strong", "openai", 10.0, 30.0)
SPECS = [CHEAP, STRONG]
EXPS = [Expectations(100, 500), Expectations(100, 2000)]


def _choose(samples, constraints, lam=0.2, cost_scale=None, means=None):
    samples = np.atleast_2d(np.asarray(samples, dtype=float))
    costs = expected_costs(np.full(samples.shape[0], 400.0), SPECS, EXPS)
    lat = np.array([e.latency_ms for e in EXPS])
    return choose(
        samples,
        samples if means is None else means,
        costs,
        lat,
        SPECS,
        [constraints] * samples.shape[0],
        lam,
        0.0,
        cost_scale,
    )


def test_expected_costs_are_tokens_times_prices():
    costs = expected_costs(np.array([400.0]), SPECS, EXPS)
    # 400 chars ≈ 100 tokens + 8 of framing, 100 output tokens
    assert costs[0, 0] == pytest.approx((108 * 0.5 + 100 * 1.0) / 1e6)
    assert costs[0, 1] == pytest.approx((108 * 10 + 100 * 30) / 1e6)


def test_utility_trades_quality_against_cost():
    # strong is 0.1 better; at λ=0.2 saving ~all of its cost is worth more than 0.1
    assert _choose([0.7, 0.8], Constraints()).pop().model == "cheap"
    assert _choose([0.7, 0.8], Constraints(lambda_cost=0.05)).pop().model == "strong"
    ch = _choose([0.7, 0.8], Constraints())[0]
    assert ch.ranked == ("cheap", "strong")
    assert ch.utility["strong"] == pytest.approx(0.8 - 0.2)


def test_reference_cost_is_the_reference_model_or_the_dearest():
    ref = reference_cost(108, SPECS, EXPS, "cheap")
    assert ref == pytest.approx((108 * 0.5 + 100 * 1.0) / 1e6)
    assert reference_cost(108, SPECS, EXPS) == pytest.approx((108 * 10 + 100 * 30) / 1e6)
    # with the cheap model as the unit, λ weighs the strong one's cost 26 times over
    assert _choose([0.7, 0.8], Constraints(lambda_cost=0.01), cost_scale=ref)[0].model == "cheap"


def test_hard_constraints_filter_and_explain():
    assert _choose([0.7, 0.8], Constraints(allowed_models=("strong",)))[0].model == "strong"
    assert _choose([0.9, 0.8], Constraints(allowed_providers=("openai",)))[0].model == "strong"
    assert _choose([0.7, 0.9], Constraints(lambda_cost=0.0, max_cost_usd=0.001))[0].model == "cheap"
    assert (
        _choose([0.7, 0.9], Constraints(lambda_cost=0.0, max_latency_ms=1000))[0].model == "cheap"
    )
    assert _choose([0.5, 0.9], Constraints(min_quality=0.6))[0].model == "strong"


def test_an_unroutable_prompt_gets_no_model_and_a_clear_reason():
    ch = _choose([0.5, 0.6], Constraints(min_quality=0.95, max_cost_usd=0.01))[0]
    assert ch.model is None and ch.ranked == ()
    assert "no model satisfies" in ch.reason
    assert "min_quality=0.95" in ch.reason and "best expected 0.60" in ch.reason
    ch = _choose([0.5, 0.6], Constraints(max_cost_usd=1e-9))[0]
    assert ch.model is None and "max_cost_usd" in ch.reason and "cheapest expected" in ch.reason


def test_expectations_shrink_to_the_prior_with_one_pseudo_call():
    st = ArmStats.zeros(2)
    st.add_call(error=False, latency_ms=300, in_tokens=10, out_tokens=50, cost_usd=0.0)
    e = Expectations.from_stats(st, CHEAP, default_out_tokens=250, default_latency_ms=1000)
    assert e.out_tokens == pytest.approx(150) and e.latency_ms == pytest.approx(650)


def _engine(store, models=(CHEAP, STRONG), **kw):
    kw.setdefault("quality_floor", None)  # these tests are about λ_cost's trade-off
    settings = RouterSettings(projection_dim=4, seed=0, **kw)
    cat = Catalog(models=tuple(models), reference="strong")
    return RoutingEngine(cat, store, HashingEmbedder(64), settings, np.random.default_rng(0))


def test_engine_learns_the_better_trade_off_and_reports_unroutable_prompts():
    store = InMemoryPosteriorStore()
    eng = _engine(store, lambda_cost=0.2)
    texts = [f"question number {i} about topic {i % 7}" for i in range(64)]
    for step in range(12):
        qids = [f"q{step}-{i}" for i in range(64)]
        rows = eng.decide(qids, texts, [Constraints()] * 64)
        ctx = {r.query_id: np.array(r.features) for r in rows}
        # cheap is always right, strong always wrong: the engine must settle on cheap
        events = [
            FeedbackEvent(
                f"e{r.query_id}",
                r.query_id,
                r.model,
                EXPLICIT,
                1.0 if r.model == "cheap" else 0.0,
                1.0,
            )
            for r in rows
        ]
        learn(store, events, ctx, eng.dim, f"u{step}", 1.0)
    assert sum(r.model == "cheap" for r in rows) >= 60
    rows = eng.decide(["x"], ["anything"], [Constraints(max_cost_usd=0.0)])
    assert rows[0].model is None and "max_cost_usd" in rows[0].reason
    assert rows[0].domain in ("code", "math", "reasoning", "writing", "other")


def test_a_model_added_later_is_explored_from_its_peers_prior():
    store = InMemoryPosteriorStore()
    eng = _engine(store, lambda_cost=0.0)
    texts = [f"prompt {i}" for i in range(32)]
    for step in range(10):
        rows = eng.decide([f"a{step}-{i}" for i in range(32)], texts, [Constraints()] * 32)
        ctx = {r.query_id: np.array(r.features) for r in rows}
        events = [
            FeedbackEvent(f"e{r.query_id}", r.query_id, r.model, EXPLICIT, 0.6, 1.0) for r in rows
        ]
        learn(store, events, ctx, eng.dim, f"u{step}", 1.0)
    newcomer = ModelSpec("new", "openai-compatible", 0.1, 0.1, base_url=URL)
    eng2 = _engine(store, (CHEAP, STRONG, newcomer), lambda_cost=0.0)
    posts, _, versions = eng2.posteriors()
    assert versions["new"] == 0
    # it starts at the peers' level (0.6), not at the flat 0.5 guess, and wider than them
    x = np.array(rows[0].features)[None, :]
    mu, sd = posts[2].predict(x)
    mu_peer, sd_peer = posts[0].predict(x)
    assert mu[0] == pytest.approx(0.6, abs=0.05)
    assert sd[0] > 2 * sd_peer[0]
    # and Thompson Sampling tries it
    rows = eng2.decide([f"n{i}" for i in range(64)], texts * 2, [Constraints()] * 64)
    assert any(r.model == "new" for r in rows)


def test_failing_model_loses_traffic_through_its_success_rate():
    """Errors only (no ratings): the cheap model that fails every call must lose its share."""
    import numpy as np

    from conduit_workers.domain.bandit import ArmStats
    from conduit_workers.domain.catalog import parse_catalog
    from conduit_workers.domain.records import Update
    from conduit_workers.learning.posterior_store import InMemoryPosteriorStore
    from conduit_workers.routing.embedder import HashingEmbedder
    from conduit_workers.routing.engine import RoutingEngine
    from conduit_workers.settings import RouterSettings

    catalog = parse_catalog(
        {
            "reference": "big",
            "models": [
                {
                    "name": "big",
                    "provider": "openai-compatible",
                    "base_url": "http://x/v1",
                    "input_price_per_mtok_usd": 10.0,
                    "output_price_per_mtok_usd": 30.0,
                },
                {
                    "name": "cheap",
                    "provider": "openai-compatible",
                    "base_url": "http://x/v1",
                    "input_price_per_mtok_usd": 0.1,
                    "output_price_per_mtok_usd": 0.1,
                },
            ],
        },
        {},
    )
    store = InMemoryPosteriorStore()
    engine = RoutingEngine(
        catalog,
        store,
        HashingEmbedder(),
        RouterSettings(seed=3, quality_floor=None),
        rng=np.random.default_rng(3),
    )
    prompts = [f"question number {i} about a topic" for i in range(40)]
    from conduit_workers.domain.constraints import Constraints

    def share_cheap() -> float:
        rows = engine.decide([str(i) for i in range(40)], prompts, [Constraints()] * 40)
        return sum(r.model == "cheap" for r in rows) / 40

    before = share_cheap()
    failed = ArmStats.zeros(engine.dim)
    for _ in range(10):
        failed.add_call(error=True, latency_ms=50.0, in_tokens=0, out_tokens=0, cost_usd=0.0)
    store.apply([Update("u", "cheap", failed)])
    after = share_cheap()
    assert before > 0.5  # cheap wins while nothing is known
    assert after < 0.2


def _choose_one_at_a_time(samples, means, costs, latencies, specs, constraints, lc0, ll0, scale):
    """choose() as it was written before it was vectorised: one prompt at a time."""
    names = [s.name for s in specs]
    lat_scale = max(float(latencies.max()), 1e-9)
    out = []
    for i in range(samples.shape[0]):
        c = constraints[i]
        lc = lc0 if c.lambda_cost is None else c.lambda_cost
        ll = ll0 if c.lambda_latency is None else c.lambda_latency
        util = samples[i] - lc * costs[i] / scale - ll * latencies / lat_scale
        feasible = np.ones(len(names), dtype=bool)
        if c.allowed_models is not None:
            feasible &= np.array([n in c.allowed_models for n in names])
        if c.allowed_providers is not None:
            feasible &= np.array([s.provider in c.allowed_providers for s in specs])
        if c.max_cost_usd is not None:
            feasible &= costs[i] <= c.max_cost_usd
        if c.max_latency_ms is not None:
            feasible &= latencies <= c.max_latency_ms
        if c.min_quality is not None:
            feasible &= means[i] >= c.min_quality
        utilities = {names[j]: float(util[j]) for j in range(len(names))}
        if not feasible.any():
            out.append((None, (), utilities))
            continue
        order = [j for j in np.argsort(-util, kind="stable") if feasible[j]]
        out.append((names[order[0]], tuple(names[j] for j in order), utilities))
    return out


def test_choose_for_the_whole_chunk_gives_the_same_choices_as_one_prompt_at_a_time():
    rng = np.random.default_rng(7)
    specs = [
        ModelSpec(f"m{j}", ("openai", "anthropic", "openai-compatible")[j % 3], 0.1 * j, 0.3 * j)
        for j in range(7)
    ]
    exps = [Expectations(50 + 30 * j, 300 + 400 * j) for j in range(7)]
    n = 400
    samples = rng.normal(0.6, 0.2, (n, 7))
    samples[:, 3] = samples[:, 4]  # ties: the stable order decides
    means = rng.normal(0.6, 0.1, (n, 7))
    costs = expected_costs(rng.uniform(50, 5000, n), specs, exps)
    lat = np.array([e.latency_ms for e in exps])
    options = [
        Constraints(),
        Constraints(lambda_cost=0.0),
        Constraints(lambda_cost=3, lambda_latency=0.5),
        Constraints(allowed_models=("m2", "m5")),
        Constraints(allowed_providers=("anthropic",)),
        Constraints(max_cost_usd=float(np.median(costs))),
        Constraints(max_latency_ms=1000.0),
        Constraints(min_quality=0.7),
        Constraints(allowed_models=("nope",)),
    ]
    cons = [options[int(k)] for k in rng.integers(0, len(options), n)]
    for scale in (None, 0.004):
        got = choose(samples, means, costs, lat, specs, cons, 0.2, 0.1, scale)
        per_row = (
            np.maximum(costs.max(axis=1, keepdims=True), 1e-12)
            if scale is None
            else np.full((n, 1), scale)
        )
        want = [
            _choose_one_at_a_time(
                samples[i : i + 1],
                means[i : i + 1],
                costs[i : i + 1],
                lat,
                specs,
                [cons[i]],
                0.2,
                0.1,
                per_row[i],
            )[0]
            for i in range(n)
        ]
        assert [(c.model, c.ranked, c.utility) for c in got] == want
