"""The Batch API's logic: an OpenAI batch input file read line by line into prompts (a bad line
is refused with its reason, the rest go on), batch objects in OpenAI's shape, and the output and
error files (one line per ``custom_id``) built from the history database.

A batch's prompts run on the Celery pipeline like a ``conduit submit`` batch (route → execute →
feedback, ids only); each keeps its OpenAI request (messages, temperature, …), which the
executor sends. A prompt's idempotency key is the batch id and its ``custom_id``: a batch never
shares answers with another one.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from conduit_workers.domain.chat import ChatRequest
from conduit_workers.domain.items import PromptItem, idempotency_key
from conduit_workers.gateway.errors import ApiError
from conduit_workers.gateway.schemas import ChatCompletionRequest
from conduit_workers.gateway.service import Gateway
from conduit_workers.history.history_gateway import ApiKey

ENDPOINT = "/v1/chat/completions"
MAX_LINES = 50_000


@dataclass
class ParsedFile:
    items: list[tuple[PromptItem, ChatRequest]] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)  # OpenAI's batch error objects


def _error(
    line: int, message: str, code: str = "invalid_request", cid: Any = None
) -> dict[str, Any]:
    return {"code": code, "message": message, "param": None, "line": line, "custom_id": cid}


def _validation(exc: ValidationError) -> str:
    parts = []
    for e in exc.errors()[:3]:
        where = ".".join(str(p) for p in e.get("loc", ()))
        what = "is not supported" if e.get("type") == "extra_forbidden" else e.get("msg", "")
        parts.append(f"body.{where}: {what}" if where else str(what))
    return "; ".join(parts)


def parse_batch_file(content: str, batch_id: str, gw: Gateway, key: ApiKey) -> ParsedFile:
    """Validate each line as a request to ``/v1/chat/completions``."""
    out = ParsedFile()
    seen: set[str] = set()
    limit = gw.settings.limits.max_prompt_chars
    for n, raw in enumerate(content.splitlines(), start=1):
        if not raw.strip():
            continue
        if n > MAX_LINES:
            out.errors.append(_error(n, f"a batch holds at most {MAX_LINES} lines"))
            break
        try:
            obj = json.loads(raw)
        except ValueError:
            out.errors.append(_error(n, "the line is not valid JSON"))
            continue
        cid = obj.get("custom_id") if isinstance(obj, dict) else None
        if not isinstance(cid, str) or not cid or len(cid) > 200:
            out.errors.append(_error(n, "'custom_id' must be a string of 1 to 200 characters"))
            continue
        if cid in seen:
            out.errors.append(
                _error(n, f"custom_id {cid!r} is used twice", "duplicate_custom_id", cid)
            )
            continue
        seen.add(cid)
        if obj.get("method", "POST") != "POST" or obj.get("url") != ENDPOINT:
            out.errors.append(_error(n, f"each line must be POST {ENDPOINT}", cid=cid))
            continue
        try:
            body = ChatCompletionRequest.model_validate(obj.get("body"))
        except ValidationError as exc:
            out.errors.append(_error(n, _validation(exc), cid=cid))
            continue
        if body.stream:
            out.errors.append(_error(n, "stream is not supported in a batch", cid=cid))
            continue
        try:
            cons = gw.constraints_for(body, key)
        except ApiError as exc:
            out.errors.append(_error(n, exc.message, exc.code or "invalid_request", cid))
            continue
        request = body.chat_request()
        text = request.prompt
        if not text.strip() or len(text) > limit:
            out.errors.append(_error(n, f"the messages must hold 1 to {limit} characters", cid=cid))
            continue
        item = PromptItem(
            prompt=text,
            key=idempotency_key(text, f"{batch_id}/{cid}", request.user),
            external_id=cid,
            user=request.user,
            metadata={"api": "batch", "model": body.model},
            constraints=cons,
            line=n,
        )
        out.items.append((item, request))
    return out


def status_of(row: dict[str, Any]) -> str:
    if row["total"] == 0:
        return "failed"
    if row["cancelled_at"] is not None:
        return "cancelled" if row["pending"] == 0 else "cancelling"
    return "completed" if row["pending"] == 0 else "in_progress"


def output_file_id(batch_id: str) -> str:
    return f"file-{batch_id}-output"


def error_file_id(batch_id: str) -> str:
    return f"file-{batch_id}-errors"


def batch_object(row: dict[str, Any]) -> dict[str, Any]:
    status = status_of(row)
    done = status in ("completed", "cancelled", "failed")
    created = int(row["created_at"].timestamp())
    finished = int(time.time()) if done else None
    refused = len(row["errors"])
    failed = row["failed"] + refused
    return {
        "id": row["id"],
        "object": "batch",
        "endpoint": row["endpoint"],
        "errors": {"object": "list", "data": row["errors"]} if row["errors"] else None,
        "input_file_id": row["input_file_id"],
        "completion_window": row["completion_window"],
        "status": status,
        "output_file_id": output_file_id(row["id"]) if done and row["completed"] else None,
        "error_file_id": error_file_id(row["id"]) if done and failed else None,
        "created_at": created,
        "in_progress_at": created,
        "expires_at": created + 24 * 3600,
        "finalizing_at": finished,
        "completed_at": finished if status == "completed" else None,
        "failed_at": finished if status == "failed" else None,
        "expired_at": None,
        "cancelling_at": int(row["cancelled_at"].timestamp()) if row["cancelled_at"] else None,
        "cancelled_at": finished if status == "cancelled" else None,
        "request_counts": {
            "total": row["total"] + refused,
            "completed": row["completed"],
            "failed": failed,
        },
        "metadata": row["metadata"],
    }


def output_lines(rows: list[dict[str, Any]], created: int) -> list[str]:
    """The output file: one line per answered ``custom_id``, in input order."""
    out = []
    for r in rows:
        if r["status"] != "ok":
            continue
        body = {
            "id": f"chatcmpl-{r['id']}",
            "object": "chat.completion",
            "created": created,
            "model": r["model"],
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": r["response"], "refusal": None},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": {
                "prompt_tokens": r["input_tokens"],
                "completion_tokens": r["output_tokens"],
                "total_tokens": r["input_tokens"] + r["output_tokens"],
            },
        }
        response = {"status_code": 200, "request_id": r["id"], "body": body}
        out.append(_line(r["id"], r["external_id"], response, None))
    return out


def error_lines(rows: list[dict[str, Any]], refused: list[dict[str, Any]]) -> list[str]:
    """The error file: one line per failed or refused ``custom_id``."""
    out = [
        _line(
            f"line-{e['line']}",
            e.get("custom_id"),
            None,
            {"code": e["code"], "message": e["message"]},
        )
        for e in refused
    ]
    for r in rows:
        if r["status"] in (None, "ok"):
            continue
        error = {
            "code": r["error_class"] or r["status"],
            "message": r["error_message"] or r["status"],
        }
        out.append(_line(r["id"], r["external_id"], None, error))
    return out


def _line(qid: str, cid: Any, response: Any, error: Any) -> str:
    obj = {"id": f"batch_req_{qid}", "custom_id": cid, "response": response, "error": error}
    return json.dumps(obj, ensure_ascii=False)
