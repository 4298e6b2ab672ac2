"""Re-ask detection: a user who re-asks a near-identical prompt soon after was not satisfied.

Prompts are compared by the cosine of hashed word uni- and bigram vectors: near-identical
wordings score near 1 whatever the topic, and the vector costs microseconds, so detection adds
nothing to routing time. The earlier answer then gets an implicit reward of 0.
"""

from __future__ import annotations

import hashlib
import re
from collections import deque
from dataclasses import dataclass

import numpy as np

from conduit_workers.domain.bandit import Array

VECTOR_DIM = 512
_WORD = re.compile(r"\w+")


def text_vector(text: str, dim: int = VECTOR_DIM) -> Array:
    """Unit vector of signed, hashed word unigrams and bigrams of a prompt (case and
    punctuation ignored)."""
    v = np.zeros(dim)
    words = _WORD.findall(text.lower())
    for tok in words + [a + " " + b for a, b in zip(words, words[1:], strict=False)]:
        h = int.from_bytes(hashlib.blake2b(tok.encode(), digest_size=8).digest(), "little")
        v[h % dim] += 1.0 if (h >> 63) & 1 else -1.0
    n = float(np.linalg.norm(v))
    return v / n if n > 0 else v


@dataclass(frozen=True)
class ReAsk:
    query_id: str  # the new prompt
    earlier_query_id: str  # the prompt whose answer did not satisfy
    similarity: float


def find_reasks(
    new: list[tuple[str, Array]],
    recent: list[tuple[str, Array]],
    threshold: float,
    limit: int = 64,
) -> list[ReAsk]:
    """For each new prompt, the most similar recent prompt of the same user at or above
    ``threshold`` (never itself). ``new`` prompts of one chunk count as recent for the later
    ones, so a user re-asking within one batch is caught too. Each prompt is compared with the
    ``limit`` most recent prompts only: O(limit) per prompt, whatever the user's batch."""
    out: list[ReAsk] = []
    pool = deque(recent[-limit:], maxlen=max(1, limit))
    for qid, vec in new:
        best: tuple[float, str] | None = None
        for other_id, other_vec in pool:
            if other_id == qid:
                continue
            sim = float(vec @ other_vec)
            if sim >= threshold and (best is None or sim > best[0]):
                best = (sim, other_id)
        if best is not None:
            out.append(ReAsk(qid, best[1], round(best[0], 4)))
        pool.append((qid, vec))
    return out
