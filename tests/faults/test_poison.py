"""Poison messages: a malformed payload and a message that keeps coming back end in the
dead-letter queue, which the CLI lists and re-drives; a pickle or non-JSON body is refused
without being executed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from conduit_workers import names
from conduit_workers.domain.items import parse_item
from tests.faults.harness import FaultSystem, check_exactly_once

pytestmark = [pytest.mark.faults, pytest.mark.timeout(300)]
N = 500
MAX_DELIVERIES = 5  # the default of CONDUIT_BROKER__MAX_DELIVERIES


def _cli(system: FaultSystem, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "producers.cli", *args],
        env=system.env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def _wait(cond, timeout_s: float = 60, what: str = "condition") -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, f"{what} not reached in {timeout_s} s"
        time.sleep(0.1)


class _Evil:
    """Unpickling this would create a file: proof that a pickle body was executed."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, (f"touch {self.marker}",))


def test_poison_messages_go_to_the_dead_letter_queue_and_can_be_redriven(
    system: FaultSystem, tmp_path: Path
) -> None:
    # A batch recorded but not yet sent: its route tasks are published by hand below.
    client = system.client
    items = [
        parse_item(
            {"id": f"poison-{i}", "prompt": f"[poison] question {i}: {i} + {i % 7}?"},
            line=i + 1,
            max_prompt_chars=1000,
            max_metadata_chars=1000,
        )
        for i in range(N)
    ]
    batch = uuid.uuid4().hex
    client.history.submit(batch, items, tag="poison", rejected=0, constraints={})
    ids = [it.key for it in items]
    chunks = [ids[i : i + 50] for i in range(0, N, 50)]

    # 1. A payload that is not a list of ids: refused by the task, dead-lettered at once.
    bad = client.app.send_task(names.ROUTE_BATCH, args=[[1, {"x": 2}]], queue=names.ROUTE)
    # 2. A message delivered more than MAX_DELIVERIES times (as if it killed its worker each
    #    time): the first deliveries run (idempotently), the next is dead-lettered unrun.
    looping = str(uuid.uuid4())
    for _ in range(MAX_DELIVERIES + 1):
        client.app.send_task(
            names.ROUTE_BATCH, args=[chunks[0]], queue=names.ROUTE, task_id=looping
        )
    for chunk in chunks[1:]:
        client.app.send_task(names.ROUTE_BATCH, args=[chunk], queue=names.ROUTE)
    # 3. Bodies that are not JSON: a pickle that would run a command, and raw bytes.
    marker = tmp_path / "pickle-was-executed"
    client.app.send_task(
        names.ROUTE_BATCH, args=[_Evil(marker)], queue=names.ROUTE, serializer="pickle"
    )
    with client.app.producer_or_acquire() as producer:
        producer.publish(
            b"\x00\x01 not json",
            routing_key="route",
            exchange="route",
            content_type="application/octet-stream",
            content_encoding="binary",
            headers={"task": names.ROUTE_BATCH, "id": str(uuid.uuid4())},
        )

    started = time.monotonic()
    done = system.wait_settled(batch)
    # The looping message ran MAX_DELIVERIES times at once, each sending the execute tasks of
    # its chunk: two executor processes may call the same prompts concurrently (one result is
    # stored, one bill): at most one duplicate call per prompt of that chunk.
    checked = check_exactly_once(system, batch, ids, max_duplicate_calls=len(chunks[0]))
    assert checked.statuses == {"ok": N}

    listed = _cli(system, "dlq", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    letters = {d["task_id"]: d for d in map(json.loads, listed.stdout.splitlines())}
    _wait(
        lambda: (
            len(letters) >= 2
            or letters.update(
                {
                    d["task_id"]: d
                    for d in map(
                        json.loads, _cli(system, "dlq", "list", "--json").stdout.splitlines()
                    )
                }
            )
            or False
        ),
        what="two dead letters",
    )
    assert set(letters) == {bad.id, looping}
    assert letters[bad.id]["reason"] == "failed" and "InputError" in letters[bad.id]["error"]
    assert letters[looping]["reason"] == "redelivered"
    assert letters[looping]["deliveries"] == MAX_DELIVERIES

    assert not marker.exists(), "a pickle body was deserialized"
    log = system.worker_logs()
    assert "untrusted content" in log or "Refusing to deserialize" in log
    for it in items:  # payloads are ids: no prompt text in the worker logs
        assert it.prompt not in log

    redriven = _cli(system, "dlq", "redrive", looping)
    assert redriven.returncode == 0 and "re-driven" in redriven.stdout, redriven.stderr
    _wait(lambda: "2 dead letters" not in _cli(system, "dlq", "list").stderr, what="redrive")
    remaining = _cli(system, "dlq", "list", "--json").stdout.splitlines()
    assert [json.loads(x)["task_id"] for x in remaining] == [bad.id]
    # The re-driven task ran (routing is idempotent: nothing answered twice).
    time.sleep(1.0)
    check_exactly_once(system, batch, ids, max_duplicate_calls=len(chunks[0]))
    for role in ("route", "execute", "feedback"):
        assert system.workers[role].alive()
    print(
        f"\nFAULT poison messages: 2 dead letters (malformed payload; {MAX_DELIVERIES} "
        f"deliveries), pickle and binary bodies refused; batch settled in "
        f"{done - started:.1f} s, {checked.llm_calls} LLM calls, "
        f"{checked.duplicate_calls} duplicates"
    )
