"""bench.slices: the stand-ins for unseen sets are what bench/README.md says they are, and the
same on every run (the results there are reproducible from them)."""

from __future__ import annotations

import json
from pathlib import Path

from bench import slices
from conduit_workers.routing.warm_start import read_records


def _strongest(recs: list[dict]) -> str:  # type: ignore[type-arg]
    totals: dict[str, list[float]] = {}
    for r in recs:
        for m, v in r["models"].items():
            totals.setdefault(m, []).append(v["quality"])
    return max(totals, key=lambda m: sum(totals[m]) / len(totals[m]))


def test_the_slices(shared_data: Path, tmp_path: Path) -> None:
    made = dict(slices.slices(shared_data))
    sizes = {name: len(recs) for name, recs in made.items()}
    assert sizes == {
        "routerbench_arc-challenge": 1019,
        "routerbench_winogrande": 887,
        "routerbench_mbpp": 299,
        "frugalgpt_first1000": 1000,
        "frugalgpt_rest": 1160,
        "mmlu_3000": 3000,
        "routerbench_no_gpt4": 2205,
        "routerbench_open": 2205,
        "routerbench_three": 2205,
        "frugalgpt_no_gpt4": 2160,
    }
    models = {name: {m for r in recs for m in r["models"]} for name, recs in made.items()}
    assert "gpt-4-1106-preview" not in models["routerbench_no_gpt4"]
    assert len(models["routerbench_no_gpt4"]) == 10
    assert not {"gpt-4-1106-preview", "claude-v1", "claude-v2"} & models["routerbench_open"]
    assert models["routerbench_three"] == {
        "gpt-4-1106-preview",
        "gpt-3.5-turbo-1106",
        "mistralai/mixtral-8x7b-chat",
    }
    assert not {"openai/gpt-4", "openai/text-davinci-002"} & models["frugalgpt_no_gpt4"]
    # Another model is the strongest, hence the reference bench.quality measures against.
    assert _strongest(made["routerbench_no_gpt4"]) == "zero-one-ai/Yi-34B-Chat"
    assert _strongest(made["frugalgpt_no_gpt4"]) == "openai/gpt-3.5-turbo"
    assert {r["source"] for r in made["routerbench_mbpp"]} == {"routerbench/mbpp"}
    # The same sample on every run, and files `conduit learn` reads.
    again = dict(slices.slices(shared_data))
    assert [r["id"] for r in again["mmlu_3000"]] == [r["id"] for r in made["mmlu_3000"]]
    slices.main(["--data", str(shared_data), "--out", str(tmp_path)])
    path = tmp_path / "routerbench_three.jsonl"
    assert len(list(read_records(path))) == 2205
    first = json.loads(path.read_text().split("\n")[0])
    assert set(first["models"]) <= models["routerbench_three"]
