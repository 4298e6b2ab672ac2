"""Input items: one prompt line, validated, with its idempotency key."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any

from conduit_workers.domain.chat import CHAT_FIELDS, ChatRequest, parse_chat
from conduit_workers.domain.constraints import Constraints, parse_constraints
from conduit_workers.domain.text import nested_text_problem, text_problem
from conduit_workers.errors import InputError

KNOWN_FIELDS = frozenset({"id", "prompt", "user", "metadata", "constraints"}) | CHAT_FIELDS
ROUTED_MODEL = "conduit"  # a line's "model" that leaves the choice to Conduit


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
    # The OpenAI request (messages, settings) when the line carried one; None: the prompt alone.
    request: ChatRequest | None = None
    ignored: tuple[str, ...] = ()  # the line's fields Conduit does not know (a warning each)


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

    A line carries ``prompt`` or OpenAI's ``messages`` with their settings (``temperature``,
    ``max_tokens`` …, kept as the item's ``request``), or is an OpenAI Batch API line as it is.
    Fields other than the known ones are ignored and listed in ``ignored`` (for a warning), so
    a data file with extra columns (``source``, ``models`` …) can be submitted as it is.
    """
    if not isinstance(obj, dict):
        raise InputError(f"expected a JSON object, got {type(obj).__name__}", line)
    obj = _flatten_openai_batch_line(obj, line)
    request: ChatRequest | None = None
    if obj.keys() & (CHAT_FIELDS - {"model"}):
        try:
            request = parse_chat(
                obj, obj.get("prompt") if isinstance(obj.get("prompt"), str) else None
            )
        except ValueError as exc:
            raise InputError(str(exc), line) from None
        if obj.get("prompt") is None:
            obj = {**obj, "prompt": request.prompt}
    prompt = obj.get("prompt")
    if prompt is None:
        raise InputError("missing field 'prompt' (or 'messages')", line)
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
    cons_obj = obj.get("constraints")
    model = obj.get("model")
    if model is not None and model != ROUTED_MODEL:
        if not isinstance(model, str) or (known_models is not None and model not in known_models):
            raise InputError(
                f"'model' {str(model)[:80]!r} is not in the catalog; use {ROUTED_MODEL!r} or one "
                f"of {sorted(known_models or [])}",
                line,
            )
        cons_obj = {**(cons_obj if isinstance(cons_obj, dict) else {}), "allowed_models": [model]}
    try:
        constraints = parse_constraints(cons_obj, known_models)
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
        request=request,
        ignored=tuple(sorted(k for k in obj if k not in KNOWN_FIELDS)),
    )


def ignored_fields(items: list[PromptItem]) -> list[str]:
    """One warning per field that lines carried and Conduit ignored: which, how many lines,
    the first of them."""
    seen: dict[str, list[int | None]] = {}
    for it in items:
        for name in it.ignored:
            seen.setdefault(name, []).append(it.line)
    return [
        f"field {name!r} ignored on {len(lines)} line(s) (first: line {lines[0]}); "
        f"known fields: {', '.join(sorted(KNOWN_FIELDS))}"
        for name, lines in sorted(seen.items())
    ]


def _flatten_openai_batch_line(obj: dict[str, Any], line: int | None) -> dict[str, Any]:
    """An OpenAI Batch API line (``custom_id``, ``method``, ``url``, ``body``) as a Conduit
    line: ``id`` from ``custom_id``, the body's fields beside it."""
    if "custom_id" not in obj or "body" not in obj:
        return obj
    body = obj["body"]
    if not isinstance(body, dict):
        raise InputError("'body' must be an object", line)
    url = obj.get("url", "/v1/chat/completions")
    if url != "/v1/chat/completions":
        raise InputError(f"'url' {str(url)[:60]!r}: only /v1/chat/completions lines run", line)
    rest = {k: v for k, v in obj.items() if k not in ("custom_id", "method", "url", "body")}
    return {**body, **rest, "id": obj["custom_id"]}


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
