"""The context of a prompt: a reduced embedding plus cheap features, and a query analysis.

The context is ``[1, P·e, cheap…]``: a constant (the model's overall quality), the sentence
embedding ``e`` (unit norm) projected by a fixed random matrix ``P`` to a few dimensions with
``E‖P·e‖² ≈ 1`` (a larger scale would make Thompson Sampling explore almost at random), and a
few cheap features of the text.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from conduit_workers.domain.bandit import Array

# The patterns say what the domains are; analyse() runs them by cheaper means, with the same
# answers (tests/unit/test_features.py holds it to them).
_CODE = re.compile(
    r"```|\bdef \w+\(|\bclass \w+[:(]|\bimport \w+|#include|\bfunction\b|=>|\breturn\b|[{};]\s*$",
    re.MULTILINE,
)
# Two patterns, not one case-insensitive alternation: the digit pattern needs no case folding
# and the words share one \b. Same answers on the 18,407 shared prompts, 0.14 → 0.09 ms each.
_MATH_NUM = re.compile(r"\d\s*[-+*/^=<>]\s*\d")
_MATH_WORD = re.compile(
    r"\\frac|\\sqrt|\b(?:solve|calculate|equation|integral|probability|derivative|matrix|sum of)\b",
    re.IGNORECASE,
)
_WRITING = re.compile(r"\b(write|essay|poem|story|email|letter|rewrite|summari[sz]e|draft)\b", re.I)
_REASONING = re.compile(
    r"\b(why|explain|reason|which of the following|true or false|infer|conclude|argument)\b", re.I
)

# The code pattern as its branches, each run only on a text holding a literal that every match
# of the branch holds (None: the literal is the whole branch): ~50x cheaper than the pattern's
# scan of a text of ~1,000 characters, and most prompts hold none.
_CODE_BRANCHES: tuple[tuple[tuple[str, ...], re.Pattern[str] | None], ...] = (
    (("```", "#include", "=>"), None),
    (("def ",), re.compile(r"\bdef \w+\(")),
    (("class ",), re.compile(r"\bclass \w+[:(]")),
    (("import ",), re.compile(r"\bimport \w+")),
    (("function",), re.compile(r"\bfunction\b")),
    (("return",), re.compile(r"\breturn\b")),
    (("{", "}", ";"), re.compile(r"[{};]\s*$", re.MULTILINE)),
)
# The case-insensitive patterns' words, looked for in an ASCII text's lowercase between word
# boundaries (the two literals of \frac and \sqrt anywhere).
_MATH_ANYWHERE = ("\\frac", "\\sqrt")
_MATH_WORDS = (
    *("solve", "calculate", "equation", "integral", "probability", "derivative", "matrix"),
    "sum of",
)
_WRITING_WORDS = (
    *("write", "essay", "poem", "story", "email", "letter", "rewrite", "summarise"),
    *("summarize", "draft"),
)
_REASONING_WORDS = (
    *("why", "explain", "reason", "which of the following", "true or false", "infer"),
    *("conclude", "argument"),
)
# What \w matches in an ASCII text.
_WORD_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")

DOMAINS = ("code", "math", "reasoning", "writing", "other")
N_CHEAP = 3


@dataclass(frozen=True)
class Analysis:
    """What the router recorded about a prompt, for reports and grouping."""

    domain: str
    complexity: float  # 0 (short, plain) .. 1 (long, code or maths)
    chars: int


def _is_code(text: str) -> bool:
    """``_CODE.search(text)``, one branch at a time behind its literals."""
    for literals, pattern in _CODE_BRANCHES:
        for s in literals:
            if s in text:
                if pattern is None or pattern.search(text):
                    return True
                break
    return False


def _has_word(folded: str, words: tuple[str, ...]) -> bool:
    """Whether one of ``words`` occurs in ``folded`` (an ASCII text's lowercase) between word
    boundaries, as ``\b(?:word|…)\b`` with ``re.I`` finds them in the text."""
    end = len(folded)
    chars = _WORD_CHARS
    for w in words:
        i = folded.find(w)
        while i >= 0:
            j = i + len(w)
            if (i == 0 or folded[i - 1] not in chars) and (j == end or folded[j] not in chars):
                return True
            i = folded.find(w, i + 1)
    return False


def analyse(text: str) -> Analysis:
    # On an ASCII text the case-insensitive patterns' words are looked for in its lowercase by
    # substring search (~50x cheaper than the regex engine's scan), exact for ASCII only (re.I
    # lets "ı" match "i", "K" "k"): other texts go to the patterns. Same answers as the
    # patterns alone (a test).
    folded = text.lower() if text.isascii() else None
    code = _is_code(text)
    if _MATH_NUM.search(text):
        math_ = True
    elif folded is not None:
        math_ = any(s in folded for s in _MATH_ANYWHERE) or _has_word(folded, _MATH_WORDS)
    else:
        math_ = bool(_MATH_WORD.search(text))
    if code:
        domain = "code"
    elif math_:
        domain = "math"
    elif _has_word(folded, _WRITING_WORDS) if folded is not None else _WRITING.search(text):
        domain = "writing"
    elif _has_word(folded, _REASONING_WORDS) if folded is not None else _REASONING.search(text):
        domain = "reasoning"
    else:
        domain = "other"
    length = min(1.0, math.log1p(len(text)) / math.log1p(8_000))
    complexity = min(1.0, 0.6 * length + 0.2 * code + 0.2 * math_)
    return Analysis(domain=domain, complexity=round(complexity, 4), chars=len(text))


class SharedPrefixes:
    """Long openings shared by several prompts (few-shot examples, templates), to strip.

    A chunk of prompts is sorted; the common prefix of each pair of neighbours, when it is at
    least ``min_chars`` long, is cut back to a line (or word) boundary and remembered, so a prompt
    that arrives alone in a later chunk loses the same opening. What remains after stripping
    must keep at least ``min_rest_chars``: exact duplicates are embedded whole.
    """

    def __init__(self, min_chars: int = 200, min_rest_chars: int = 24, capacity: int = 64) -> None:
        self.min_chars = min_chars
        self.min_rest_chars = min_rest_chars
        self.capacity = capacity
        self._known: dict[str, int] = {}  # prefix -> last use (a counter), for LRU eviction
        self._clock = 0

    def _cut(self, prefix: str) -> str:
        for sep in ("\n", " "):
            k = prefix.rfind(sep)
            if k >= self.min_chars // 2:
                return prefix[: k + 1]
        return prefix

    def learn(self, texts: Sequence[str]) -> None:
        ordered = sorted(set(texts))
        for a, b in zip(ordered, ordered[1:], strict=False):
            n = _common_prefix_len(a, b)
            if n < self.min_chars:
                continue
            prefix = self._cut(a[:n])
            if len(prefix) >= self.min_chars // 2 and prefix not in self._known:
                self._known[prefix] = self._clock
        if len(self._known) > self.capacity:
            oldest = sorted(self._known.items(), key=lambda kv: kv[1])
            for p, _ in oldest[: len(self._known) - self.capacity]:
                del self._known[p]

    def strip(self, text: str) -> str:
        best = ""
        for p in self._known:
            rest = len(text) - len(p)
            if len(p) > len(best) and rest >= self.min_rest_chars and text.startswith(p):
                best = p
        if not best:
            return text
        self._clock += 1
        self._known[best] = self._clock
        return text[len(best) :]

    def __call__(self, texts: Sequence[str]) -> list[str]:
        self.learn(texts)
        return [self.strip(t) for t in texts]


def _common_prefix_len(a: str, b: str) -> int:
    n = min(len(a), len(b))
    lo, hi = 0, n  # binary search on slices: C-speed comparisons on long prompts
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


def embedding_text(text: str, tail_chars: int) -> str:
    """The part of a prompt the encoder reads: its end.

    Templated and few-shot prompts share long openings, and the encoder reads only its first
    256 word pieces, so the start of such prompts all embed alike; their ends differ.
    """
    return text if len(text) <= tail_chars else text[-tail_chars:]


class ContextBuilder:
    """Turns embeddings and texts into context vectors of a fixed dimension."""

    def __init__(self, embedding_dim: int, projection_dim: int, seed: int = 20240601) -> None:
        self.embedding_dim = embedding_dim
        self.projection_dim = projection_dim
        rng = np.random.default_rng(seed)
        # Fixed by the seed, so every router process computes the same contexts.
        self.projection = rng.standard_normal((embedding_dim, projection_dim)) / math.sqrt(
            projection_dim
        )

    @property
    def dim(self) -> int:
        return 1 + self.projection_dim + N_CHEAP

    def build(self, embeddings: Array, texts: list[str]) -> tuple[Array, list[Analysis]]:
        n = len(texts)
        x = np.empty((n, self.dim))
        x[:, 0] = 1.0
        if self.projection_dim:
            norms = np.linalg.norm(embeddings, axis=1, keepdims=True)
            unit = embeddings / np.maximum(norms, 1e-12)
            x[:, 1 : 1 + self.projection_dim] = unit @ self.projection
        analyses = [analyse(t) for t in texts]
        base = 1 + self.projection_dim
        for i, a in enumerate(analyses):
            # Cheap features, scaled to a few tenths so they weigh like one embedding coordinate.
            x[i, base] = 0.3 * (math.log1p(a.chars) - 5.0) / 2.0
            x[i, base + 1] = 0.3 if a.domain == "code" else 0.0
            x[i, base + 2] = 0.3 if a.domain == "math" else 0.0
        return x, analyses
