"""Quickstart: one routing decision in-process (no Celery, no Redis, no database).

python examples/quickstart.py
"""

import asyncio

from conduit_workers.library import Query, Router


async def main() -> None:
    router = Router()  # the shipped catalog, posteriors in memory
    decision = await router.route(Query(text="What is 2+2?"))
    print(decision.selected_model, f"confidence {decision.confidence:.2f}")
    print("fallback order:", " > ".join(decision.ranked))
    print(f"expected cost ${decision.expected_cost_usd:.6f}")


if __name__ == "__main__":
    asyncio.run(main())
