"""The quality bench's figures: quality retained and cost saved of a run against
always-strongest (``figures``), cost saved at a quality floor over a sweep (``cs_at``), and how
fast a run reacts to a mid-stream change (``scenario_report``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from bench.baselines import Run
from bench.datasets import Dataset
from bench.streaming import Scenario, Stream


@dataclass
class Figures:
    quality_retained: float
    cost_saved: float
    quality: float
    cost_usd: float
    shares: list[float]


def figures(run: Run, ds: Dataset, stream: Stream, scen: Scenario) -> Figures:
    pos = np.arange(stream.n)
    rows = stream.order
    q = scen.quality[pos, run.choice]
    c = ds.cost[rows, run.choice]
    s = ds.strongest
    known = ds.mask[rows, s]  # a sparse file's prompts without the reference: left out
    q_ref = scen.quality[known, s].sum()
    c_ref = ds.cost[rows[known], s].sum()
    shares = np.bincount(run.choice, minlength=len(ds.models)) / stream.n
    return Figures(
        float(q[known].sum() / max(q_ref, 1e-12)),
        float(1 - c[known].sum() / max(c_ref, 1e-12)),
        float(q.mean()),
        float(c.sum()),
        shares.tolist(),
    )


def cs_at(points: Sequence[Figures], min_qr: float) -> float | None:
    ok = [f.cost_saved for f in points if f.quality_retained >= min_qr - 1e-12]
    return max(ok) if ok else None


def _window_share(choice: np.ndarray, model: int, end: int, window: int) -> float:
    lo = max(0, end - window)
    return float((choice[lo:end] == model).mean()) if end > lo else 0.0


def scenario_report(
    run: Run, scen: Scenario, ds: Dataset, stream: Stream, window: int
) -> dict[str, object]:
    """Drift: prompts after the swap until the dropped model's share (trailing window) falls
    below half its share before. Cold start: prompts until the new model's share reaches half
    of the share it holds over the last quarter of the stream."""
    if scen.drift is not None:
        a = scen.drift[0]
        before = _window_share(run.choice, a, scen.at, window)
        until = None
        for t in range(scen.at + 1, stream.n + 1):
            if _window_share(
                run.choice[scen.at :], a, t - scen.at, window
            ) < before / 2 and t - scen.at >= min(window, 32):
                until = t - scen.at
                break
        after = float((run.choice[scen.at :] == a).mean())
        return {
            "model": ds.models[a],
            "share_before": before,
            "share_after": after,
            "prompts_until_share_halved": until,
        }
    if scen.cold is not None:
        c = scen.cold
        last = float((run.choice[stream.n - stream.n // 4 :] == c).mean())
        until = None
        for t in range(scen.at + 1, stream.n + 1):
            if (
                last > 0
                and _window_share(run.choice[scen.at :], c, t - scen.at, window) >= last / 2
                and t - scen.at >= min(window, 32)
            ):
                until = t - scen.at
                break
        return {
            "model": ds.models[c],
            "first_chosen_after": int(np.argmax(run.choice[scen.at :] == c))
            if (run.choice[scen.at :] == c).any()
            else None,
            "share_second_half": float((run.choice[scen.at :] == c).mean()),
            "share_last_quarter": last,
            "prompts_until_half_of_last_quarter_share": until,
        }
    return {}
