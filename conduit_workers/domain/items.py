"""Input items: one prompt line, validated, with its idempotency key."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any

from conduit_workers.domain.constraints import Constraints, parse_constraints
from conduit_workers.domain.text import nested_text_problem, text_problem
from conduit_workers.errors import InputError

KNOWN_FIELDS = frozenset({"id", "prompt", "user", "metadata", "constraints"})


@dataclass(frozen=True)
class PromptItem:
    """A validated prompt. ``key`` is its idempotency key: the same item submitted twice has
    the same key and is answered once."""

    prompt: str
    key: str
    external_id: str | None = None
    user: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    constraints: Constraints = field(default_factory=Constraints)
    line: int | None = None


def idempotency_key(prompt: str, external_id: str | None, user: str | None) -> str:
    """Stable key of an item: its id when given, else its text, plus the user.

    An explicit id is the caller's promise that two items with that id are the same request.
    """
    basis = json.dumps(
        ["id", external_id, user] if external_id is not None else ["text", prompt, user],
        ensure_ascii=False,
    )
    return hashlib.sha256(basis.encode()).hexdigest()[:32]


def _has_nan(value: Any) -> bool:
    if isinstance(value, float):
        return math.isnan(value) or math.isinf(value)
    if isinstance(value, dict):
        return any(_has_nan(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_nan(v) for v in value)
    return False


def parse_item(
    obj: Any,
    *,
    line: int | None = None,
    max_prompt_chars: int,
    max_metadata_chars: int = 4_000,
    known_models: frozenset[str] | None = None,
) -> PromptItem:
    """Validate one decoded input object; raise :class:`InputError` naming the reason.

    Fields other than the known ones are ignored, so a data file with extra columns
    (``source``, ``models`` …) can be submitted as it is.
    """
    if not isinstance(obj, dict):
        raise InputError(f"expected a JSON object, got {type(obj).__name__}", line)
    prompt = obj.get("prompt")
    if prompt is None:
        raise InputError("missing field 'prompt'", line)
    if not isinstance(prompt, str):
        raise InputError(f"'prompt' must be a string, got {type(prompt).__name__}", line)
    if not prompt.strip():
        raise InputError("'prompt' is empty", line)
    if problem := text_problem(prompt):
        raise InputError(f"'prompt' {problem}", line)
    if len(prompt) > max_prompt_chars:
        raise InputError(
            f"'prompt' has {len(prompt)} characters, over the limit of {max_prompt_chars} "
            "(CONDUIT_LIMITS__MAX_PROMPT_CHARS)",
            line,
        )
    external_id = obj.get("id")
    if external_id is not None:
        if isinstance(external_id, bool) or not isinstance(external_id, (str, int)):
            raise InputError(
                f"'id' must be a string or integer, got {type(external_id).__name__}", line
            )
        external_id = str(external_id)
        if not external_id or len(external_id) > 200:
            raise InputError("'id' must have 1 to 200 characters", line)
        if problem := text_problem(external_id):
            raise InputError(f"'id' {problem}", line)
    user = obj.get("user")
    if user is not None and not isinstance(user, str):
        raise InputError(f"'user' must be a string, got {type(user).__name__}", line)
    if user is not None and (problem := text_problem(user)):
        raise InputError(f"'user' {problem}", line)
    metadata = obj.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise InputError(f"'metadata' must be an object, got {type(metadata).__name__}", line)
    if _has_nan(metadata):
        raise InputError("'metadata' holds NaN or Infinity", line)
    for name, value in (("metadata", metadata), ("constraints", obj.get("constraints"))):
        if problem := nested_text_problem(value):
            raise InputError(f"'{name}' {problem}", line)
    if len(json.dumps(metadata)) > max_metadata_chars:
        raise InputError(f"'metadata' is over {max_metadata_chars} characters of JSON", line)
    try:
        constraints = parse_constraints(obj.get("constraints"), known_models)
    except ValueError as exc:
        raise InputError(f"'constraints': {exc}", line) from None
    return PromptItem(
        prompt=prompt,
        key=idempotency_key(prompt, external_id, user),
        external_id=external_id,
        user=user,
        metadata=metadata,
        constraints=constraints,
        line=line,
    )


def parse_line(
    text: str,
    *,
    line: int,
    max_prompt_chars: int,
    max_metadata_chars: int = 4_000,
    known_models: frozenset[str] | None = None,
) -> PromptItem:
    """Decode and validate one JSONL line (1-based ``line`` for messages)."""
    try:
        obj = json.loads(text, parse_constant=_reject_constant)
    except ValueError as exc:
        raise InputError(f"invalid JSON ({_short(exc)})", line) from None
    return parse_item(
        obj,
        line=line,
        max_prompt_chars=max_prompt_chars,
        max_metadata_chars=max_metadata_chars,
        known_models=known_models,
    )


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _short(exc: ValueError) -> str:
    # json's messages hold positions, never the document; still keep them short.
    return str(exc).split("\n", 1)[0][:120]
