"""A batch job against a running Conduit (workers on the queues, Redis, the history database):
submit prompts, wait for every answer, rate some of them.

    ops/worker all &                       # or the docker-compose deployment
    python examples/batch_job.py [N]
"""

import json
import sys
from collections import Counter
from pathlib import Path

import conduit_workers
from producers.api import ConduitClient

SAMPLE = Path(conduit_workers.__file__).parent / "data" / "mmlu_sample.jsonl"


def main(n: int = 20) -> None:
    rows = [json.loads(line) for line in SAMPLE.read_text().splitlines()[:n]]
    client = ConduitClient()  # settings from CONDUIT_* variables
    try:
        sub = client.submit([{"id": r["id"], "prompt": r["prompt"]} for r in rows], tag="example")
        print(f"batch {sub.batch_id}: {sub.accepted} accepted, {sub.new} new")
        results = client.wait(sub.batch_id, timeout_s=300)
        print("answers per model:", dict(Counter(r["model"] for r in results)))
        print(f"cost ${sum(r['cost_usd'] or 0 for r in results):.6f}")
        labels = {r["id"]: r["models"] for r in rows}
        ratings = [
            (r["external_id"], labels[r["external_id"]][r["model"]]["quality"])
            for r in results
            if r["status"] == "ok"
        ]
        out = client.feedback(ratings)
        print(f"{out.applied} ratings sent ({out.duplicates} given before)")
        assert all(r["status"] == "ok" for r in results)
    finally:
        client.close()


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 20)
