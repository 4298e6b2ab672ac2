"""Explicit feedback: rate each answer, and the router learns which model is worth its price.

Real MMLU prompts with the measured correctness of two real models (the shipped sample); each
routed prompt is rated with the correctness of the model the router chose.

    python examples/explicit_feedback.py
"""

import asyncio
import json
from pathlib import Path

import conduit_workers
from conduit_workers.library import Router

SAMPLE = Path(conduit_workers.__file__).parent / "data" / "mmlu_sample.jsonl"


async def main() -> None:
    rows = [json.loads(line) for line in SAMPLE.read_text().splitlines()[:300]]
    router = Router(seed=0)
    quality = cost = 0.0
    for start in range(0, len(rows), 50):
        chunk = rows[start : start + 50]
        decisions = await router.route_many([r["prompt"] for r in chunk])
        for r, d in zip(chunk, decisions, strict=True):
            measured = r["models"][d.selected_model]
            await router.feedback(d, rating=measured["quality"])
            quality += measured["quality"]
            cost += measured["cost_usd"]
        picks = [d.selected_model.split("/")[-1] for d in decisions]
        print(
            f"prompts {start + 1:>3}-{start + len(chunk)}: "
            + ", ".join(f"{m} {picks.count(m)}" for m in sorted(set(picks)))
        )
    strong = sum(r["models"]["gpt-4-1106-preview"]["quality"] for r in rows)
    strong_cost = sum(r["models"]["gpt-4-1106-preview"]["cost_usd"] for r in rows)
    print(f"quality {quality / strong:.1%} of always-GPT-4 at {cost / strong_cost:.1%} of its cost")
    assert cost < strong_cost


if __name__ == "__main__":
    asyncio.run(main())
