"""The cyclic garbage collector in worker processes: fewer collections, and what a process
holds after its first task frozen out of every later one.

A worker process holds 120,000-230,000 long-lived objects that the collector tracks (the
modules of Celery, SQLAlchemy, pydantic-ai, the runtime the first task builds), and every full
collection walks them all. The executor allocates enough per prompt (the HTTP call, its asyncio
task, its rows) to make one every ~500 prompts. Measured in its process (bench.throughput, 5,000
prompts at 50 ms over 512 slots; bench/README.md, issue 13): 9-10 full collections took 1.1-1.4
s of its 6.1-6.8 s of CPU, the collector 1.6-2.0 s in all; with the first task's survivors
frozen, 10-11 took 0.55-0.78 s (1.0-1.3 s in all); with a young generation of 10,000
allocations too (a full collection every 100 young ones, so ~14x fewer), 3 took 0.22-0.27 s
(0.7-0.9 s in all). Routers and feedback workers (prefork children) made no full collection in
such a run: for them the freeze's one collection (~0.1 s, once) is the cost.

``tune()`` (each worker process at start): the young generation is collected after
``GEN0_THRESHOLD`` allocations instead of CPython's 700.

``freeze_after_first_task()`` (after each process's first task): one full collection, then
``gc.freeze()``: the survivors go to the permanent generation, which collections never walk.
They are still freed when nothing refers to them; only reference cycles among them (if another
task of a threads pool was running at that moment, some of its objects) are never collected:
a one-time, bounded cost.
"""

from __future__ import annotations

import gc
import os

GEN0_THRESHOLD = 10_000  # net new container objects between young collections

_frozen_pid: int | None = None


def tune() -> None:
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GEN0_THRESHOLD, gen1, gen2)


def freeze_after_first_task() -> bool:
    """Freeze what the process holds after its first task; once per process (True then)."""
    global _frozen_pid
    if _frozen_pid == os.getpid():
        return False
    _frozen_pid = os.getpid()
    gc.collect()
    gc.freeze()
    return True
