"""The bandit's maths: posterior against the closed form, seeded sampling, decay, peer priors."""

import numpy as np
import pytest

from conduit_workers.domain.bandit import (
    ArmStats,
    Posterior,
    Prior,
    peer_prior_mean,
    pooled_noise_sd,
    thompson_samples,
)
from conduit_workers.domain.records import Update
from conduit_workers.learning.posterior_store import InMemoryPosteriorStore


def _stats(xs, rs, ws=None):
    st = ArmStats.zeros(xs.shape[1])
    for i, (x, r) in enumerate(zip(xs, rs, strict=True)):
        st.add_observation(x, r, 1.0 if ws is None else ws[i])
    return st


def test_posterior_matches_the_closed_form():
    rng = np.random.default_rng(1)
    xs = np.hstack([np.ones((30, 1)), rng.standard_normal((30, 3))])
    rs = rng.random(30)
    ws = rng.uniform(0.5, 2.0, 30)
    prior = Prior(prior_quality=0.4, prior_strength=2.0, context_prior_strength=5.0, noise_sd=0.3)
    post = Posterior.from_stats(_stats(xs, rs, ws), prior)

    lam0 = np.diag([2.0, 5.0, 5.0, 5.0])
    m0 = np.array([0.4, 0, 0, 0])
    w = np.diag(ws)
    precision = lam0 + xs.T @ w @ xs
    mean = np.linalg.solve(precision, lam0 @ m0 + xs.T @ w @ rs)
    np.testing.assert_allclose(post.mean, mean, rtol=1e-10)
    np.testing.assert_allclose(post.cov_unscaled, np.linalg.inv(precision), rtol=1e-10)

    x = np.array([[1.0, 0.2, -0.1, 0.3]])
    mu, sd = post.predict(x)
    assert mu[0] == pytest.approx(float(x[0] @ mean))
    assert sd[0] == pytest.approx(0.3 * np.sqrt(x[0] @ np.linalg.inv(precision) @ x[0]))


def test_sequential_evidence_equals_batch_evidence():
    rng = np.random.default_rng(2)
    xs, rs = rng.standard_normal((10, 3)), rng.random(10)
    batch = _stats(xs, rs)
    a, b = _stats(xs[:4], rs[:4]), _stats(xs[4:], rs[4:])
    a.merge(b)
    np.testing.assert_allclose(a.xx, batch.xx)
    np.testing.assert_allclose(a.xr, batch.xr)


def test_prior_mean_and_quality_prior():
    prior = Prior(prior_quality=0.5)
    empty = ArmStats.zeros(3)
    m = np.array([0.7, 0.1, -0.2])
    assert Posterior.from_stats(empty, prior, prior_mean=m).mean == pytest.approx(m)
    # an explicit hint from the catalog still sets the overall level
    assert Posterior.from_stats(empty, prior, 0.9, prior_mean=m).mean == pytest.approx(
        [0.9, 0.1, -0.2]
    )


def test_thompson_samples_are_reproducible_and_centred_on_the_posterior():
    prior = Prior(noise_sd=0.5)
    st = _stats(np.array([[1.0, 0.0]] * 40), np.ones(40) * 0.8)
    posts = [Posterior.from_stats(st, prior), Posterior.from_stats(ArmStats.zeros(2), prior)]
    x = np.tile([1.0, 0.0], (5000, 1))
    s1, means = thompson_samples(x, posts, np.random.default_rng(7))
    s2, _ = thompson_samples(x, posts, np.random.default_rng(7))
    np.testing.assert_array_equal(s1, s2)
    # closed form: mean (2*0.5 + 40*0.8)/(2+40), sd 0.5/sqrt(42); unobserved: 0.5, 0.5/sqrt(2)
    assert means[0, 0] == pytest.approx(33 / 42)
    assert s1[:, 0].mean() == pytest.approx(33 / 42, abs=0.01)
    assert s1[:, 0].std() == pytest.approx(0.5 / np.sqrt(42), rel=0.05)
    assert s1[:, 1].std() == pytest.approx(0.5 / np.sqrt(2), rel=0.05)
    # exploration scales the spread only
    s3, _ = thompson_samples(x, posts, np.random.default_rng(7), exploration=0.5)
    np.testing.assert_allclose(s3 - means, 0.5 * (s1 - means))


def test_decay_forgets_old_evidence_geometrically():
    store = InMemoryPosteriorStore()
    x = np.array([1.0, 0.0])
    old = _stats(np.array([x] * 10), np.ones(10))
    store.apply([Update("u1", "m", old)], decay=0.9)
    new = _stats(np.array([x] * 2), np.zeros(2))
    store.apply([Update("u2", "m", new)], decay=0.9)
    _, st = store.read(["m"], 2)["m"]
    # the 10 old observations weigh 0.9**2 each once 2 new ones arrive
    assert st.counters["n"] == pytest.approx(10 * 0.81 + 2)
    assert st.counters["r"] == pytest.approx(10 * 0.81)
    assert st.xx[0, 0] == pytest.approx(10 * 0.81 + 2)
    # and the posterior is wider than without decay
    kept = _stats(np.array([x] * 12), np.array([1.0] * 10 + [0.0] * 2))
    prior = Prior()
    assert (
        Posterior.from_stats(st, prior).cov_unscaled[0, 0]
        > Posterior.from_stats(kept, prior).cov_unscaled[0, 0]
    )
    # applying the same update id again changes nothing
    assert store.apply([Update("u2", "m", new)], decay=0.9) == 0


def test_a_new_model_starts_from_its_peers():
    prior = Prior(prior_quality=0.5, prior_strength=2.0, context_prior_strength=4.0)
    assert peer_prior_mean([ArmStats.zeros(3)] * 2, prior, 3) == pytest.approx([0.5, 0, 0])
    rng = np.random.default_rng(3)
    xs = np.hstack([np.ones((200, 1)), rng.standard_normal((200, 2)) * 0.5])
    good = _stats(xs, 0.9 - 0.2 * xs[:, 1])
    fair = _stats(xs, 0.7 - 0.2 * xs[:, 1])
    m = peer_prior_mean([good, fair, ArmStats.zeros(3)], prior, 3)
    assert m[0] == pytest.approx(0.8, abs=0.02)  # the peers' overall level
    assert m[1] == pytest.approx(-0.2, abs=0.03)  # and the contextual trend they share
    newcomer = Posterior.from_stats(ArmStats.zeros(3), prior, prior_mean=m)
    assert newcomer.mean == pytest.approx(m)


def test_noise_estimate_shrinks_from_the_prior_towards_the_rewards_spread():
    prior = Prior(noise_sd=0.5)
    assert pooled_noise_sd([ArmStats.zeros(2)], prior) == pytest.approx(0.5)
    # a model right 90% of the time: Bernoulli sd 0.3
    st = _stats(np.ones((1000, 2)), np.array([1.0] * 900 + [0.0] * 100))
    assert pooled_noise_sd([st], prior) == pytest.approx(np.sqrt((20 * 0.25 + 90) / 1020), rel=1e-6)
    # never above the prior's noise
    st2 = _stats(np.ones((10, 2)), np.array([1.0, 0.0] * 5))
    assert pooled_noise_sd([st2], prior) <= 0.5


def test_price_tier_offsets_follow_the_fitted_slope_and_vanish_without_evidence():
    from conduit_workers.domain.bandit import price_tier_offsets

    lp = np.log(np.array([0.1, 1.0, 10.0, 100.0]))
    assert price_tier_offsets([ArmStats.zeros(1)] * 4, lp) == pytest.approx(np.zeros(4))
    # three priced models seen, quality rising with price; the fourth (dearest) never seen
    arms = [_stats(np.ones((50, 1)), np.full(50, q)) for q in (0.5, 0.6, 0.7)] + [ArmStats.zeros(1)]
    off = price_tier_offsets(arms, lp)
    assert off[0] < off[1] < off[2] < off[3]
    assert off[3] - off[2] == pytest.approx(off[2] - off[1])  # a line in log price
    # flat quality: no offsets
    flat = [_stats(np.ones((50, 1)), np.full(50, 0.6)) for _ in range(3)] + [ArmStats.zeros(1)]
    assert price_tier_offsets(flat, lp) == pytest.approx(np.zeros(4))
