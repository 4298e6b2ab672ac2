"""Routing with constraints: per query, the same keys as a JSONL line's "constraints".

python examples/constraints.py
"""

import asyncio

from conduit_workers.library import Query, Router

STRONG = "gpt-4-1106-preview"
CHEAP = "mistralai/Mixtral-8x7B-Instruct-v0.1"


async def main() -> None:
    router = Router(seed=0)
    text = "Prove that the square root of 2 is irrational."
    only_cheap = await router.route(Query(text=text, constraints={"allowed_models": [CHEAP]}))
    print("allowed_models=[cheap]     ->", only_cheap.selected_model)
    assert only_cheap.selected_model == CHEAP

    # Cost does not matter here: with no evidence yet, either model may win the draw.
    quality_first = await router.route(Query(text=text, constraints={"lambda_cost": 0.0}))
    print(
        "lambda_cost=0              ->",
        quality_first.selected_model,
        f"(confidence {quality_first.confidence:.2f})",
    )

    # A budget below any model's expected cost: no model, and the reason why.
    broke = await router.route(Query(text=text, constraints={"max_cost_usd": 1e-9}))
    print("max_cost_usd=1e-9          ->", broke.selected_model, "|", broke.reason)
    assert broke.selected_model is None and "max_cost_usd" in (broke.reason or "")


if __name__ == "__main__":
    asyncio.run(main())
