"""The quality floor's maths and the engine holding it (seeded); budget pacing is in
test_budget_pacing_engine.py."""

from __future__ import annotations

import math

import numpy as np
import pytest

from conduit_workers.domain import floor as fl
from conduit_workers.domain import floor_calibration as fc
from conduit_workers.domain.constraints import Constraints, parse_constraints
from conduit_workers.domain.learning import update_id_for
from conduit_workers.domain.rewards import EXPLICIT, FeedbackEvent
from conduit_workers.routing.engine import RoutingEngine
from conduit_workers.routing.quality_floor import FloorMark, floor_of
from conduit_workers.settings import RouterSettings
from tests.unit.routing_engines import floor_engine

PARAMS = fl.FloorParams(floor=0.95)


def counts(pred: float = 0.9, **strata: tuple[float, float, float]) -> fl.FloorCounts:
    """Counters from stratum -> (decided, ratings, mean rating); ``alt_x`` is ``alt:x``; the
    posterior predicts the reference's quality at ``pred`` on every prompt."""
    fields: dict[str, float] = dict.fromkeys(fl.CAL, 0.0)
    for name, (d, m, mean) in strata.items():
        s = {"audit": fl.AUDIT, "policy": fl.POLICY}.get(name, fl.alt(name.removeprefix("alt_")))
        fields[fl.DECIDED + s] = d
        fields[fl.RATED + s] = m
        fields[fl.SUM + s] = m * mean
        fields[fl.SQUARES + s] = m * mean  # 0/1 ratings: r² = r
        if s.startswith("ref:"):
            for k, v in zip(
                fl.CAL,
                (m, m * pred, m * pred * pred, m * mean, m * pred * mean, m * mean),
                strict=False,
            ):
                fields[k] += v
        else:
            fields[fl.ALT_PRED] = fields.get(fl.ALT_PRED, 0.0) + d * pred
    return fl.FloorCounts.of(fields)


def test_constraints_take_a_quality_floor_in_0_1():
    assert parse_constraints({"quality_floor": 0.9}).quality_floor == 0.9
    for bad in (1.5, -0.1, "x", True):
        with pytest.raises(ValueError, match="quality_floor"):
            parse_constraints({"quality_floor": bad})
    assert (
        Constraints(quality_floor=0.9).merged_over(Constraints(quality_floor=0.5)).quality_floor
        == 0.9
    )


def test_a_prompt_is_under_the_default_floor_unless_it_says_otherwise():
    settings = RouterSettings()
    assert floor_of(Constraints(), settings) == settings.quality_floor == 0.95
    assert floor_of(Constraints(quality_floor=0.9), settings) == 0.9
    assert floor_of(Constraints(quality_floor=0.0), settings) is None  # --quality-floor 0
    assert floor_of(Constraints(lambda_cost=0.3), settings) is None  # the expert setting


def test_the_router_starts_at_the_reference_until_the_reference_is_rated():
    assert fl.slack(fl.FloorCounts.of({}), 0.95) is None
    strata = fl.gate(fl.FloorCounts.of({}), PARAMS, [fl.alt("cheap")] * 5, [False] * 5)
    assert strata == [fl.AUDIT] * 5


def test_reference_answers_earn_slack_and_a_poor_model_spends_it():
    c = counts(audit=(400, 120, 0.9))
    s = fl.slack(c, 0.95)
    assert s is not None
    assert s.total == pytest.approx(400 * 0.05 * s.q_ref)  # (1 − F)·q_ref per reference answer
    assert s.pessimistic(1.0) > 0
    # A model rated 0.5 costs ~0.36 of slack per prompt: the gate lets a few prompts go to
    # it, then keeps the rest at the reference.
    c = counts(audit=(400, 120, 0.9), alt_cheap=(20, 20, 0.5))
    out = fl.gate(c, PARAMS, [fl.alt("cheap")] * 32, [False] * 32, [0.9] * 32)
    assert out.count(fl.POLICY) > 0 and out[-1] == fl.POLICY
    k = out.count(fl.alt("cheap"))
    after = fl.slack(c, 0.95, {fl.alt("cheap"): k, fl.POLICY: 32 - k}, 0.9 * k)
    assert after is not None and after.pessimistic(1.0) >= 0


def test_a_model_as_good_as_the_reference_takes_every_prompt():
    c = counts(0.8, audit=(400, 120, 0.8), alt_cheap=(600, 180, 0.82))
    out = fl.gate(c, PARAMS, [fl.alt("cheap")] * 32, [False] * 32, [0.8] * 32)
    assert out == [fl.alt("cheap")] * 32


def test_a_model_never_rated_is_valued_pessimistically():
    c = counts(audit=(40, 12, 0.9))
    s = fl.slack(c, 0.95)
    new = fl.slack(c, 0.95, {fl.alt("new"): 1}, 0.9)
    assert s is not None and new is not None
    assert new.total < s.total and new.sd > s.sd
    # Trying it costs slack: allowed once forty reference answers have earned it, not after ten.
    assert fl.gate(c, PARAMS, [fl.alt("new")], [False], [0.9]) == [fl.alt("new")]
    few = counts(audit=(10, 3, 0.9))
    assert fl.gate(few, PARAMS, [fl.alt("new")], [False], [0.9]) == [fl.POLICY]


def test_the_dual_variable_rises_with_slack_and_falls_without():
    rich = counts(audit=(2000, 600, 0.9))
    poor = counts(audit=(100, 30, 0.9), alt_cheap=(1900, 570, 0.6))
    assert fl.dual_step(rich, PARAMS, 32) > 0
    assert fl.dual_step(poor, PARAMS, 32) < 0
    assert fl.dual_step(fl.FloorCounts.of({}), PARAMS, 32) == 0.0
    assert fl.clamp_log_lambda(100.0, PARAMS) == pytest.approx(math.log(PARAMS.lambda_max))


def test_the_dual_never_takes_lambda_below_its_start():
    # Where λ fell towards 0 the policy offered the gate dear near-reference models that save
    # little per point of quality (bench/README.md): the gate keeps the floor, λ only rises.
    params = fl.FloorParams(floor=0.95)
    poor = counts(audit=(100, 30, 0.9), alt_cheap=(1900, 570, 0.6))
    assert fl.dual_step(poor, params, 32) < 0
    lowest = fl.clamp_log_lambda(poor.log_lambda(params) - 10.0, params)
    assert lowest == pytest.approx(math.log(params.lambda_init))
    assert RouterSettings().floor_lambda_min == RouterSettings().floor_lambda_init


def test_audit_share_decays_with_the_reference_ratings():
    shares = [fl.audit_share(counts(audit=(m * 3, m, 0.9)), PARAMS) for m in (0, 100, 10_000)]
    assert shares[0] == 1.0 and shares[0] > shares[1] > shares[2] == PARAMS.audit_min


def test_the_calibration_follows_the_ratings_not_the_posterior():
    # The posterior predicts 0.9 for the reference; its rated answers say 0.6: the reference's
    # quality where it did not answer is taken from the ratings.
    c = counts(0.9, audit=(400, 400, 0.6), alt_cheap=(400, 120, 0.58))
    cal = fl.calibration(c)
    assert cal.a == pytest.approx(0.6, abs=0.01) and cal.p_bar == pytest.approx(0.9)
    assert cal.total(10, 9.0)[0] == pytest.approx(6.0, abs=0.1)
    s = fl.slack(c, 0.95)
    assert s is not None and s.q_ref == pytest.approx(0.6, abs=0.01)
    assert s.total == pytest.approx(400 * 0.6 * 0.05 + 400 * (0.58 - 0.95 * 0.6), abs=1.0)


def _fit(rows: tuple[tuple[float, float, int], ...]) -> fc.Calibration:
    fields = dict(zip(fl.CAL, (0.0,) * 6, strict=True))
    for p, r, k in rows:
        for key, v in zip(fl.CAL, (k, k * p, k * p * p, k * r, k * p * r, k * r * r), strict=True):
            fields[key] += v
    return fl.calibration(fl.FloorCounts.of(fields))


def test_the_calibration_never_flatters_the_floor_where_it_extrapolates():
    # Rated reference answers where the posterior predicted 0.6 and 0.8: ratings 0.6 and 0.7,
    # a fitted slope of 1/2 on 1,000 ratings. Prompts sent elsewhere predicted at 0.9 (easier):
    # the reference is taken to be better there by the slope's upper bound (1/2 + 2 standard
    # errors), never by less; predicted at 0.5 (harder), worse by the fitted 1/2 or more.
    cal = _fit(((0.6, 0.6, 500), (0.8, 0.7, 500)))
    assert cal.b == pytest.approx(0.5, abs=0.02)
    upper = cal.b + fc.SLOPE_Z * math.sqrt(cal.var_b)
    assert 0.5 < upper < 0.6
    assert cal.total(1, 0.9)[0] == pytest.approx(0.65 + upper * (0.9 - 0.7), abs=0.005)
    assert cal.total(1, 0.5)[0] == pytest.approx(0.65 + 0.5 * (0.5 - 0.7), abs=0.01)
    # Twenty ratings do not show a flatter slope beyond their noise: the posterior's own
    # difference (slope 1) stands on the side that cannot flatter the floor.
    few = _fit(((0.6, 0.0, 4), (0.6, 1.0, 6), (0.8, 0.0, 3), (0.8, 1.0, 7)))
    assert few.b < 1.0
    assert few.total(1, 0.9)[0] == pytest.approx(few.a + 1.0 * (0.9 - few.p_bar), abs=1e-9)
    # A fitted slope above 1 is used as it is where the prompts are predicted easier.
    steep = _fit(((0.6, 0.4, 500), (0.8, 0.8, 500)))
    assert steep.b > 1.5
    assert steep.total(1, 0.9)[0] == pytest.approx(steep.a + steep.b * 0.2, abs=1e-9)


def _ref_answers(rows: list[tuple[float, float, float, int]]) -> dict[str, float]:
    """Calibration counters from rated reference answers (prediction p, rating r, best other
    model's prediction u, count)."""
    fields = dict.fromkeys(fl.CAL + fl.CAL_U, 0.0)
    for p, r, u, k in rows:
        inc = fl.rating_increments(fl.AUDIT, r, p, p, u)
        for key in fl.CAL + fl.CAL_U:
            fields[key] += k * inc[key]
    return fields


def test_prompts_sent_elsewhere_for_being_easy_count_easier_for_the_reference():
    # The reference's own prediction is flat (0.8); its ratings rise with u, the best other
    # model's prediction: 0.6 where u = 0.5, 1.0 where u = 0.9. Prompts sent elsewhere have
    # u = 0.9: the reference would have done ~1.0 there, not its mean 0.8.
    cal = fl.calibration(
        fl.FloorCounts.of(_ref_answers([(0.8, 0.6, 0.5, 200), (0.8, 1.0, 0.9, 200)]))
    )
    without, _ = cal.total(100, 80.0)
    with_u, var = cal.total(100, 80.0, 90.0)
    assert without == pytest.approx(80.0, abs=0.5)
    assert with_u == pytest.approx(100.0, abs=1.0) and var > 0
    # One-sided: where the ratings fall with u, the term is dropped rather than flatter the floor.
    flat = fl.calibration(
        fl.FloorCounts.of(_ref_answers([(0.8, 1.0, 0.5, 200), (0.8, 0.6, 0.9, 200)]))
    )
    assert flat.total(100, 80.0, 90.0)[0] == pytest.approx(flat.total(100, 80.0)[0])


def _alt_counts(weight: float, residual: float) -> fl.FloorCounts:
    """A stream with 200 rated reference answers and 300 prompts sent to ``cheap``, predicted
    at 0.85 there, 60 of them rated with mean residual ``residual`` (0/1 ratings around it)."""
    fields = _ref_answers([(0.9, 1.0, 0.85, 180), (0.9, 0.0, 0.85, 20)])
    fields[fl.DECIDED + fl.AUDIT] = 400
    fields[fl.RATED + fl.AUDIT] = 200
    fields[fl.SUM + fl.AUDIT] = fields[fl.SQUARES + fl.AUDIT] = 180
    cheap = fl.alt("cheap")
    fields[fl.DECIDED + cheap] = 300
    fields[fl.PREDICTED + cheap] = 300 * 0.85
    fields[fl.ALT_PRED] = 300 * 0.9
    fields[fl.ALT_BEST] = 300 * 0.85
    ones = round(60 * (0.85 + residual))
    for k in range(60):
        inc = fl.rating_increments(cheap, float(k < ones), 0.9, 0.85)
        for key, v in inc.items():
            fields[key] = fields.get(key, 0.0) + v
    offline = {fl.OFFLINE_WEIGHT + "cheap": weight} if weight else None
    return fl.FloorCounts.of(fields, offline)


def test_offline_evidence_narrows_the_floor_only_where_the_stream_confirms_it():
    cold = fl.slack(_alt_counts(0.0, 0.0), 0.95)
    warm = fl.slack(_alt_counts(200.0, 0.0), 0.95)
    assert cold is not None and warm is not None
    assert warm.sd < 0.7 * cold.sd  # confirmed: the stratum's mean leans on 200 more ratings
    assert warm.total == pytest.approx(cold.total, abs=0.05 * cold.n)
    # The stream's ratings of cheap run 0.25 below the posterior's: not confirmed, the offline
    # evidence is ignored and the stratum is estimated from its ratings as in a cold start.
    off = fl.slack(_alt_counts(200.0, -0.25), 0.95)
    cold_off = fl.slack(_alt_counts(0.0, -0.25), 0.95)
    assert off is not None and cold_off is not None
    assert off.total == pytest.approx(cold_off.total) and off.sd == pytest.approx(cold_off.sd)


def test_a_confirmed_model_below_its_predictions_counts_its_whole_shortfall():
    # cheap's rated answers run 0.1 below the posterior's predictions on the prompts the router
    # chose for it: within 2 standard errors of 0 on 60 ratings (confirmed), but the shortfall
    # is counted in full rather than shrunk by the 200 offline ratings (the router chose those
    # prompts because they looked good: a selection the offline ratings cannot vouch for).
    below = fl.slack(_alt_counts(200.0, -0.1), 0.95)
    cold = fl.slack(_alt_counts(0.0, -0.1), 0.95)
    above = fl.slack(_alt_counts(200.0, 0.05), 0.95)
    above_cold = fl.slack(_alt_counts(0.0, 0.05), 0.95)
    assert below is not None and cold is not None and above is not None and above_cold
    assert below.total == pytest.approx(cold.total, abs=0.01 * cold.n)
    est = fl._strata_estimates(_alt_counts(200.0, -0.1))
    assert est is not None
    assert est[fl.alt("cheap")].mean == pytest.approx(0.85 - 0.1, abs=0.01)  # not 0.85 − 0.02
    # Above its predictions the offline evidence still narrows the estimate.
    assert above.sd < 0.7 * above_cold.sd


def test_a_model_s_first_lucky_ratings_do_not_vouch_for_it_twice():
    # One model besides the reference, two ratings, both good: its prior is not pooled from
    # those same two ratings (it would read 0.88), only the neutral 1/2 (0.75).
    c = counts(0.8, audit=(300, 90, 0.8), alt_cheap=(40, 2, 1.0))
    est = fl._strata_estimates(c)
    assert est is not None
    assert est[fl.alt("cheap")].mean == pytest.approx((2 + 2 * 0.5) / 4)
    # A second model's ratings do inform the first's prior.
    c2 = counts(0.8, audit=(300, 90, 0.8), alt_cheap=(40, 2, 1.0), alt_other=(100, 30, 0.2))
    est2 = fl._strata_estimates(c2)
    assert est2 is not None and est2[fl.alt("cheap")].mean < est[fl.alt("cheap")].mean


def test_a_model_with_few_ratings_is_held_to_a_wider_estimate():
    # The winner's curse: the stream keeps the model whose few ratings look best; the variance
    # of its mean is widened by 1 + 2 ln K / (m + 1), K the models tried, fading with ratings.
    few = counts(0.8, audit=(300, 90, 0.8), alt_a=(20, 2, 1.0), alt_b=(20, 2, 0.5))
    many = counts(0.8, audit=(300, 90, 0.8), alt_a=(20, 200, 1.0), alt_b=(20, 2, 0.5))
    f_few = fl.selection_factor(few, fl.alt("a"))
    assert f_few == pytest.approx(1 + 2 * math.log(3) / 3)
    assert 1.0 < fl.selection_factor(many, fl.alt("a")) < 1.02
    alone = counts(0.8, audit=(300, 90, 0.8), alt_a=(20, 2, 1.0))
    assert fl.selection_factor(alone, fl.alt("a")) < f_few  # fewer models, less to select from
    # The gate lets fewer prompts go to a model with two good ratings than to one with sixty.
    lucky = counts(0.8, audit=(400, 120, 0.8), alt_cheap=(20, 2, 1.0))
    known = counts(0.8, audit=(400, 120, 0.8), alt_cheap=(20, 60, 1.0))
    want = [fl.alt("cheap")] * 32
    n_lucky = fl.gate(lucky, PARAMS, want, [False] * 32, [0.8] * 32).count(fl.alt("cheap"))
    n_known = fl.gate(known, PARAMS, want, [False] * 32, [0.8] * 32).count(fl.alt("cheap"))
    assert n_lucky < n_known


def test_models_known_only_by_their_prior_err_together():
    # Four models tried on three prompts each, none rated yet: each is valued at one shared
    # guess (the pooled prior). On MBPP's code prompts all of them were far below it and the
    # floor ended at 0.941 after a warm start from MMLU. Their prior parts add up in standard
    # deviations: a fifth unknown model is refused where independent errors let it in.
    alts = {f"alt_m{k}": (3.0, 0.0, 0.0) for k in range(4)}
    c = counts(0.7, audit=(300, 90, 0.7), **alts)
    assert fl.gate(c, PARAMS, [fl.alt("new")], [False], [0.7])[0] in (fl.AUDIT, fl.POLICY)
    est = fl._strata_estimates(c)
    assert est is not None
    one = est[fl.alt("m0")]
    assert one.prior_var == pytest.approx(one.var_of_mean)  # no ratings: all prior
    s = fl.slack(c, 0.95)
    assert s is not None and s.sd >= 4 * 3 * math.sqrt(one.prior_var)
    # Rated models' own sampling errors stay independent: with ratings the prior part fades.
    rated = counts(0.7, audit=(300, 90, 0.7), **{k: (3.0, 30.0, 0.6) for k in alts})
    est_r = fl._strata_estimates(rated)
    assert est_r is not None and est_r[fl.alt("m0")].prior_var < one.prior_var / 100


def test_the_prior_is_as_wide_as_the_rated_models_differ():
    # Until two models have three ratings, a model's prior spans the widest variance (1/4);
    # then the spread of their means, shrunk towards 1/4 by two pseudo-models.
    alike = counts(0.8, audit=(300, 90, 0.8), alt_a=(40, 12, 0.7), alt_b=(40, 12, 0.7))
    apart = counts(0.8, audit=(300, 90, 0.8), alt_a=(40, 12, 0.95), alt_b=(40, 12, 0.05))
    lone = counts(0.8, audit=(300, 90, 0.8), alt_a=(40, 12, 0.7), alt_b=(40, 2, 0.7))
    alts = [fl.alt("a"), fl.alt("b")]
    assert fl._between_models(lone, alts) == pytest.approx(fl.PRIOR_VARIANCE)
    assert fl._between_models(alike, alts) == pytest.approx(2 * 0.25 / 4)
    assert fl._between_models(apart, alts) == pytest.approx((2 * 0.45**2 + 0.5) / 4)
    new = {fl.alt("new"): 3.0}
    sd_alike, sd_lone = (fl.slack(c, 0.95, new, 2.4) for c in (alike, lone))
    assert sd_alike is not None and sd_lone is not None and sd_alike.sd < sd_lone.sd


def _stream(eng: RoutingEngine, q_cheap: float, chunks: int, seed: int) -> tuple[float, float]:
    """Route chunks of 32 prompts, rate every answer at once (the strong model right 90% of
    the time, the cheap one ``q_cheap``); returns (mean quality / strong's, share to cheap)."""
    rng = np.random.default_rng(seed + 10)
    got = ref = 0.0
    cheap = 0
    for k in range(chunks):
        ids = [f"{k}-{i}" for i in range(32)]
        texts = [f"question {k} {i} about topic {i % 5}" for i in range(32)]
        x, an = eng.featurize(texts)
        rows = eng.decide(ids, texts, [Constraints()] * 32, x, an)
        truth = {"strong": rng.random(32) < 0.9, "cheap": rng.random(32) < q_cheap}
        events, ratings = [], []
        for i, r in enumerate(rows):
            q = float(truth[str(r.model)][i])
            got += q
            ref += float(truth["strong"][i])
            cheap += r.model == "cheap"
            events.append(
                FeedbackEvent(f"e{r.query_id}", r.query_id, str(r.model), EXPLICIT, q, 1.0)
            )
            assert r.floor is not None
            ratings.append((r.floor, q))
        uid = update_id_for([e.id for e in events])
        eng.learn(events, {r.query_id: x[i] for i, r in enumerate(rows)}, uid)
        eng.rate_floors(ratings, uid)
    return got / ref, cheap / (32 * chunks)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_engine_holds_the_floor_and_saves_where_it_can(seed):
    # The cheap model is as good as the strong one: the floor lets most prompts go there.
    ratio, share = _stream(floor_engine(0.95, seed), 0.9, 40, seed)
    assert ratio >= 0.94 and share > 0.5
    # The cheap model is far worse: the floor keeps almost everything at the reference.
    ratio, share = _stream(floor_engine(0.95, seed), 0.3, 40, seed)
    assert ratio >= 0.94 and share < 0.1


def test_a_prompt_that_may_not_go_to_the_reference_is_not_counted_in_its_floor():
    eng = floor_engine(0.95)
    ids = [str(i) for i in range(32)]
    texts = [f"question {i}" for i in range(32)]
    only_cheap = Constraints(allowed_models=("cheap",))
    cons = [only_cheap if i % 2 else Constraints() for i in range(32)]
    rows = eng.decide(ids, texts, cons)
    for i, r in enumerate(rows):
        if i % 2:  # routed, but a floor relative to the reference says nothing of it
            assert (r.model, r.floor) == ("cheap", None)
        else:  # nothing known yet: the reference, counted
            assert r.model == "strong" and r.floor is not None
    counters = fl.FloorCounts.of(eng.floors.store.read("default:0.95"))
    assert counters.decided == 16
    # A chunk of such prompts alone counts nothing and moves nothing.
    eng.decide([f"x{i}" for i in range(32)], texts, [only_cheap] * 32)
    assert fl.FloorCounts.of(eng.floors.store.read("default:0.95")).decided == 16


def test_a_chunk_whose_choices_money_shaped_is_routed_under_the_floor_but_not_counted():
    eng = floor_engine(0.95)
    texts = [f"a question {i} " + "word " * (5 + 3 * i) for i in range(32)]

    def decided() -> float:
        return fl.FloorCounts.of(eng.floors.store.read("default:0.95")).decided

    def chunk(tag: str, **allowance: object) -> list:  # type: ignore[type-arg]
        ids = [f"{tag}{i}" for i in range(32)]
        return eng.decide(ids, texts, [Constraints()] * 32, **allowance)  # type: ignore[arg-type]

    # A batch's budget: what the chunk's choices leave buys upgrades, so money chose among
    # its prompts. Nothing is rated yet, so the floor's gate still wants the reference for
    # every prompt, and a budget that pays for it all gets it; but nothing is counted.
    rows = chunk("budget", allowance_usd=1e6)
    assert {r.model for r in rows} == {"strong"}
    assert all(r.floor is None for r in rows) and decided() == 0
    # A budget too small for the reference everywhere: the budget comes first, nothing counted.
    strong = sum(r.expected_cost_usd or 0.0 for r in rows)
    rows = chunk("tight", allowance_usd=strong / 4)
    assert {r.model for r in rows} == {"strong", "cheap"}
    assert all(r.floor is None for r in rows) and decided() == 0
    # A cap (an API key's daily budget) that the choices stay well within: counted as usual.
    rows = chunk("cap", allowance_usd=1e6, spend_allowance=False)
    assert all(r.floor is not None for r in rows) and decided() == 32
    # A cap that paces the chunk: not counted.
    rows = chunk("paced", allowance_usd=strong / 4, spend_allowance=False)
    assert all(r.floor is None for r in rows) and decided() == 32
    # No money involved: counted.
    chunk("free")
    assert decided() == 64


def test_a_floor_mark_keeps_the_predictions_and_reads_older_marks():
    mark = FloorMark("default:0.95", "alt:cheap", 0.9, 0.85, 0.87)
    assert FloorMark.decode(mark.encode("cheap")) == (mark, "cheap")
    bare = FloorMark("default:0.95", "ref:audit", 0.9)
    assert FloorMark.decode(bare.encode("strong")) == (bare, "strong")
    # A mark left by a router before the answering model's predictions were kept.
    assert FloorMark.decode("default:0.95|ref:policy|0.75|strong") == (
        FloorMark("default:0.95", "ref:policy", 0.75),
        "strong",
    )
