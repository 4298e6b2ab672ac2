"""Stand-ins for data sets the project has not seen, cut from the shared files.

    python -m bench.slices [--data ../shared/data] [--out bench/out/slices]

Writes JSONL files in the shared schema that bench.quality takes as ``--data`` (or
``--warm-start``): each routerbench task alone (ARC, WinoGrande, MBPP), frugalgpt's first
1,000 prompts and the rest, 3,000 MMLU prompts drawn at random, and the same prompts with
*other models*, the strongest taken out so that another becomes the reference:

* ``routerbench_no_gpt4``: routerbench without GPT-4 (reference Yi-34B, itself cheap);
* ``routerbench_open``: also without Claude v1 and v2 (open models, GPT-3.5, Claude Instant);
* ``routerbench_three``: GPT-4, GPT-3.5 and Mixtral only;
* ``frugalgpt_no_gpt4``: frugalgpt without GPT-4 and text-davinci-002 (reference GPT-3.5).

Results on them: bench/README.md, "Sets the project has not seen".
"""

from __future__ import annotations

import argparse
import json
import random
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data"
FILES = {
    "routerbench": "routerbench_subset/routerbench_subset_train.jsonl",
    "frugalgpt": "frugalgpt_overruling/frugalgpt_overruling.jsonl",
    "mmlu": "routellm_mmlu/routellm_mmlu.jsonl",
}

Rec = dict[str, Any]


def _read(path: Path) -> list[Rec]:
    # split("\n"), not splitlines(): prompts hold U+2028, which splitlines() breaks at.
    return [json.loads(line) for line in path.read_text().split("\n") if line.strip()]


def _without(models: set[str]) -> Callable[[Rec], Rec]:
    def drop(r: Rec) -> Rec:
        return {**r, "models": {m: v for m, v in r["models"].items() if m not in models}}

    return drop


def _only(models: set[str]) -> Callable[[Rec], Rec]:
    def keep(r: Rec) -> Rec:
        return {**r, "models": {m: v for m, v in r["models"].items() if m in models}}

    return keep


def slices(data: Path) -> Iterable[tuple[str, list[Rec]]]:
    rb = _read(data / FILES["routerbench"])
    fg = _read(data / FILES["frugalgpt"])
    mmlu = _read(data / FILES["mmlu"])
    for task in ("arc-challenge", "winogrande", "mbpp"):
        yield f"routerbench_{task}", [r for r in rb if r["source"] == f"routerbench/{task}"]
    yield "frugalgpt_first1000", fg[:1000]
    yield "frugalgpt_rest", fg[1000:]
    yield "mmlu_3000", random.Random(1).sample(mmlu, 3000)
    yield "routerbench_no_gpt4", list(map(_without({"gpt-4-1106-preview"}), rb))
    yield (
        "routerbench_open",
        list(map(_without({"gpt-4-1106-preview", "claude-v1", "claude-v2"}), rb)),
    )
    three = {"gpt-4-1106-preview", "gpt-3.5-turbo-1106", "mistralai/mixtral-8x7b-chat"}
    yield "routerbench_three", list(map(_only(three), rb))
    yield (
        "frugalgpt_no_gpt4",
        list(map(_without({"openai/gpt-4", "openai/text-davinci-002"}), fg)),
    )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=DATA, help="the shared data folder")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "slices")
    a = ap.parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    for name, recs in slices(a.data):
        path = a.out / f"{name}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in recs))
        models = sorted({m for r in recs for m in r["models"]})
        print(f"{path}: {len(recs)} prompts, {len(models)} models")


if __name__ == "__main__":
    main()
