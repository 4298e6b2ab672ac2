"""Recorded LLM answers, indexed for replay.

The shared datasets (``../shared/data/*/*.jsonl``) hold one prompt per line::

    {"id", "prompt", "source",
     "models": {"<model>": {"quality", "input_tokens", "output_tokens", "cost_usd", "response"?}},
     "meta"?}

The replay server needs only the token counts and the response of each (prompt, model), looked up
by the prompt text. The index is keyed by the SHA-256 digest of the prompt (32 bytes, cheaper to
hold than 14,000 prompt strings, and the same digest identifies a prompt in the server's stats).
"""

from __future__ import annotations

import hashlib
import json
import random
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "Recorded",
    "ReplayIndex",
    "answer_letter",
    "load_index",
    "prompt_digest",
    "synthetic_text",
    "words_for_tokens",
]


@dataclass(frozen=True, slots=True)
class Recorded:
    """One model's recorded answer to one prompt.

    ``response`` is ``None`` where the dataset kept only the correctness label (routellm_mmlu).
    """

    input_tokens: int
    output_tokens: int
    response: str | None


def prompt_digest(prompt: str) -> bytes:
    """SHA-256 digest of the prompt's UTF-8 text: the key of the index."""
    return hashlib.sha256(prompt.encode("utf-8")).digest()


@dataclass(frozen=True, slots=True)
class ReplayIndex:
    """Recorded answers by prompt digest, then by model name."""

    by_prompt: Mapping[bytes, Mapping[str, Recorded]]
    models: frozenset[str]
    n_prompts: int

    def lookup(self, prompt: str, model: str) -> tuple[bytes, Recorded | None]:
        """Return the prompt's digest and the model's recorded answer, if any.

        A prompt that differs from a recorded one only by surrounding whitespace still matches:
        producers often strip lines, and some recorded prompts (648 in routellm_mmlu) end in a
        newline or space.
        """
        digest = prompt_digest(prompt)
        answers = self.by_prompt.get(digest)
        if answers is None:
            stripped = prompt.strip()
            if stripped != prompt:
                answers = self.by_prompt.get(prompt_digest(stripped))
        if answers is None:
            return digest, None
        return digest, answers.get(model)


def _int_field(value: Any, what: str, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{where}: {what} must be a non-negative integer, got {value!r}")
    return value


def _parse_line(line: str, where: str) -> tuple[str, dict[str, Recorded]]:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(record, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(record).__name__}")
    prompt = record.get("prompt")
    models = record.get("models")
    if not isinstance(prompt, str):
        raise ValueError(f"{where}: 'prompt' must be a string")
    if not isinstance(models, dict):
        raise ValueError(f"{where}: 'models' must be an object of model name -> record")
    answers: dict[str, Recorded] = {}
    for name, rec in models.items():
        if not isinstance(rec, dict):
            raise ValueError(f"{where}: models[{name!r}] must be an object")
        response = rec.get("response")
        if response is not None and not isinstance(response, str):
            raise ValueError(f"{where}: models[{name!r}].response must be a string")
        answers[sys.intern(name)] = Recorded(
            input_tokens=_int_field(
                rec.get("input_tokens"), f"models[{name!r}].input_tokens", where
            ),
            output_tokens=_int_field(
                rec.get("output_tokens"), f"models[{name!r}].output_tokens", where
            ),
            response=response,
        )
    return prompt, answers


def load_index(paths: Iterable[str | Path]) -> ReplayIndex:
    """Load JSONL files of the shared schema into a :class:`ReplayIndex`.

    Later files add models to prompts already seen; for a (prompt, model) pair recorded twice
    (MMLU repeats 105 questions) the first record wins, so the result does not depend on how
    duplicates are ordered within a file. Raises ``FileNotFoundError`` for a missing file and
    ``ValueError`` naming the file and line for a malformed one.
    """
    by_prompt: dict[bytes, dict[str, Recorded]] = {}
    stripped_keys: dict[bytes, dict[str, Recorded]] = {}
    models: set[str] = set()
    for path in paths:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"replay data file not found: {path}")
        with path.open(encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                prompt, answers = _parse_line(line, f"{path}:{lineno}")
                models.update(answers)
                slot = by_prompt.setdefault(prompt_digest(prompt), {})
                for name, rec in answers.items():
                    slot.setdefault(name, rec)
                stripped = prompt.strip()
                if stripped != prompt:
                    stripped_keys.setdefault(prompt_digest(stripped), slot)
    n_prompts = len(by_prompt)
    # A stripped alias never shadows a prompt recorded in exactly that stripped form.
    for digest, slot in stripped_keys.items():
        by_prompt.setdefault(digest, slot)
    return ReplayIndex(by_prompt=by_prompt, models=frozenset(models), n_prompts=n_prompts)


# --- Text for answers the data does not hold ------------------------------------------------------

# Common English words, enough for text that reads as prose at a glance and tokenises like it.
_WORDS_TEXT = """
the of and to in is that for it as with was on be by this are or from at which an not have
but can more one all their has its also other been these than when into only some would
model answer result value case example question system data process first two most time
because such each number between both however while well where may should could used use
therefore given following based approach method point first second important general
specific condition function term form part order level rate change effect cause reason
evidence analysis problem solution step rule option choice correct likely simple clear known
common different same small large high low early late new old long short true false consider
note see follow apply compare assume suggest explain describe show find give take make keep
hold remain become seem appear require include provide support lead mean
"""
_WORDS = tuple(_WORDS_TEXT.split())


def synthetic_text(seed: bytes, n_words: int) -> str:
    """Deterministic English-looking prose of ``n_words`` words, seeded by ``seed`` bytes."""
    rng = random.Random(int.from_bytes(seed[:8], "big"))
    words = rng.choices(_WORDS, k=max(1, n_words))
    sentences: list[str] = []
    i = 0
    while i < len(words):
        length = rng.randint(6, 16)
        if len(words) - (i + length) < 4:
            length = len(words) - i  # fold a short tail into this sentence, not a fragment
        sentence = " ".join(words[i : i + length])
        sentences.append(sentence[0].upper() + sentence[1:] + ".")
        i += length
    return " ".join(sentences)


def answer_letter(digest: bytes) -> str:
    """A multiple-choice letter A-D chosen by the prompt digest (one-token MMLU answers)."""
    return "ABCD"[digest[0] % 4]


def words_for_tokens(tokens: int) -> int:
    """How many words make roughly ``tokens`` cl100k tokens of English (~1.3 tokens a word)."""
    return max(1, round(tokens / 1.3))
