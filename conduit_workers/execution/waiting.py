"""How an executor's call waits: the retry backoff, the model's rate-limit gate, and the
prompt's call slot (given back while the prompt only waits for its budget)."""

from __future__ import annotations

import asyncio
import random
import time

from conduit_workers.domain.health import Admit, ModelHealth


def backoff_s(attempt: int, base_s: float, max_s: float, retry_after_s: float | None) -> float:
    """Delay before retry number ``attempt`` (1-based): the provider's Retry-After when given,
    else exponential with full jitter, so that many prompts do not retry in step."""
    if retry_after_s is not None and retry_after_s > 0:
        return float(min(retry_after_s, max_s))
    return random.uniform(0, min(max_s, base_s * 2 ** (attempt - 1)))


async def admit(health: ModelHealth | None, model: str, force: bool, budget_s: float) -> bool:
    """Wait at the model's rate-limit gate; False to fall back instead (cooling down, or rate
    limited for longer than ``budget_s``). ``force``: the last candidate is called regardless."""
    if health is None:
        return True
    waited = 0.0
    while True:
        admit, wait_s = health.acquire(model, time.monotonic())
        if admit is Admit.GO:
            return True
        if admit is Admit.SKIP:
            return force
        if not force and waited + wait_s > budget_s:
            return False
        await asyncio.sleep(wait_s)
        waited += wait_s


class CallSlot:
    """One prompt's call slot (of the process's ``executor.concurrency``), given back while the
    prompt only waits for its budget (:meth:`pause`): up to ``budget.hold_wait_s`` (150 s) for
    holds of calls in flight, or of calls whose worker died, to settle or expire. Kept, such
    waits filled every slot and stalled the other batches' prompts of the process."""

    def __init__(self, slots: asyncio.Semaphore) -> None:
        self.slots = slots
        self.held = False

    async def __aenter__(self) -> CallSlot:
        await self.slots.acquire()
        self.held = True
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.held:
            self.held = False
            self.slots.release()

    async def pause(self, seconds: float) -> None:
        """Sleep without the slot, then take one again (a cancellation on the way leaves
        none held)."""
        self.held = False
        self.slots.release()
        await asyncio.sleep(seconds)
        await self.slots.acquire()
        self.held = True
