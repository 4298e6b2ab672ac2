"""Implicit feedback: report what each call did (error, latency, tokens) without any rating.

Latency and tokens feed each model's expected latency and cost, which the utility weighs
(here latency, with ``lambda_latency``); an error counts as a quality-0 observation of the
model that failed. Here one model answers in 6 s, the other in 0.3 s.

    python examples/implicit_feedback.py
"""

import asyncio

from conduit_workers.library import Query, Router

SLOW = "gpt-4-1106-preview"
LATENCY_MS = {SLOW: 6000.0, "mistralai/Mixtral-8x7B-Instruct-v0.1": 300.0}


async def main() -> None:
    router = Router(seed=0)
    picks = []
    for i in range(100):
        q = Query(
            text=f"Question {i}: what is {i} + {i}?",
            constraints={"lambda_cost": 0.0, "lambda_latency": 0.5},
        )
        d = await router.route(q)
        await router.record_call(
            d,
            error=False,
            latency_ms=LATENCY_MS[d.selected_model],
            input_tokens=20,
            output_tokens=5,
        )
        picks.append(d.selected_model)
    first, last = picks[:20].count(SLOW), picks[-20:].count(SLOW)
    print(f"{SLOW} (6 s per call) chosen {first}/20 times at first, {last}/20 at the end")
    assert last < first


if __name__ == "__main__":
    asyncio.run(main())
