"""Worker processes' garbage collector (infra/gc_tuning.py): the young generation's threshold,
and the first task's survivors frozen once per process."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from conduit_workers.infra import gc_tuning


@pytest.fixture
def gc_state() -> Iterator[None]:
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)
    gc_tuning._frozen_pid = None


def test_tune_raises_the_young_generations_threshold_only(gc_state: None) -> None:
    gc.set_threshold(700, 11, 12)
    gc_tuning.tune()
    assert gc.get_threshold() == (gc_tuning.GEN0_THRESHOLD, 11, 12)


def test_the_first_tasks_survivors_are_frozen_once_per_process(gc_state: None) -> None:
    gc.unfreeze()
    assert gc.get_freeze_count() == 0
    assert gc_tuning.freeze_after_first_task() is True
    frozen = gc.get_freeze_count()
    assert frozen > 1000  # the modules' functions, types and dicts at least
    kept = [[i] for i in range(5000)]  # a later task's objects stay collectable
    assert gc_tuning.freeze_after_first_task() is False
    assert gc.get_freeze_count() == frozen
    assert len(kept) == 5000


def test_the_worker_signals_call_them() -> None:
    from celery.signals import task_postrun, worker_init, worker_process_init

    from conduit_workers import celery_app

    def receivers(signal: object) -> list[object]:
        return [r[1] for r in signal.receivers]  # type: ignore[attr-defined]

    assert celery_app._tune_gc in receivers(worker_init)
    assert celery_app._tune_gc in receivers(worker_process_init)
    assert celery_app._freeze_gc in receivers(task_postrun)
