"""bench.executor_slots' window: calls in flight while prompts wait, on hand-made samples."""

from __future__ import annotations

import pytest

from bench.executor_slots import held_while_waiting


def _samples(
    in_flight: list[int], started: list[int], every_s: float = 0.1
) -> list[tuple[float, int, int]]:
    return [(k * every_s, s, n) for k, (s, n) in enumerate(zip(started, in_flight, strict=True))]


def test_the_start_up_latency_and_the_drain_are_left_out() -> None:
    # 0.0-0.3 s: the pool starts (2 of 8 slots); 0.3-1.0 s: 8 held; the last prompt's call
    # starts at 1.0 s, then the slots empty.
    in_flight = [0, 2, 2, 8, 8, 8, 8, 8, 8, 8, 8, 5, 2, 0]
    started = [0, 2, 4, 20, 30, 40, 50, 60, 70, 80, 100, 100, 100, 100]
    mean, window_s = held_while_waiting(_samples(in_flight, started), 100, latency_s=0.2)
    assert window_s == pytest.approx(0.7)  # 0.1 s (first call) + 0.2 s .. 1.0 s
    assert mean == pytest.approx(8.0)


def test_a_turnover_gap_inside_the_window_counts() -> None:
    in_flight = [0, 8, 8, 8, 4, 8, 8, 8, 8, 0]
    started = [0, 8, 16, 24, 28, 36, 44, 52, 60, 60]
    mean, window_s = held_while_waiting(_samples(in_flight, started), 60, latency_s=0.1)
    assert window_s == pytest.approx(0.6)  # 0.2 .. 0.8 s
    assert mean == pytest.approx((8 * 5 + 4) / 6)
