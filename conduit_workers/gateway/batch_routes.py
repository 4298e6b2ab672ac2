"""The Batch API's routes: files (``purpose: batch``) and batches, as OpenAI's; each key sees
its own files and batches only (another's answer 404)."""

from __future__ import annotations

import asyncio
import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Form, Path, Query, Request, UploadFile
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from conduit_workers.gateway import batches as b
from conduit_workers.gateway.deps import Key, state
from conduit_workers.gateway.errors import ApiError
from conduit_workers.gateway.idempotency import REPLAYED, RETRY_HEADER, SdkRetries
from conduit_workers.gateway.producer import ROUTE
from conduit_workers.gateway.responses import json_response
from conduit_workers.gateway.schemas import NO_NUL, Plain

router = APIRouter(prefix="/v1")
# An id in a path, looked up in the history database (which refuses NUL characters): 422.
PathId = Annotated[str, Path(pattern=NO_NUL)]
MAX_FILE_BYTES = 200 * 1024 * 1024


class BatchCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    input_file_id: Plain = Field(min_length=1, max_length=64)
    endpoint: str
    completion_window: str = "24h"
    metadata: dict[Plain, Plain] | None = None


def _file_object(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "object": "file",
        "bytes": row["bytes"],
        "created_at": int(row["created_at"].timestamp()),
        "filename": row["filename"],
        "purpose": row["purpose"],
        "status": "processed",
        "status_details": None,
    }


def _no_batch(batch_id: str) -> ApiError:
    return ApiError(404, f"No batch {batch_id[:80]!r} for this API key.", code="not_found")


@router.post("/files")
async def upload_file(
    request: Request, key: Key, file: UploadFile, purpose: Annotated[str, Form()]
) -> Response:
    """Upload a JSONL file for a batch (``purpose``: ``batch``)."""
    if purpose != "batch":
        raise ApiError(
            422, f"purpose {purpose[:40]!r} is not supported; use 'batch'", param="purpose"
        )
    raw = await file.read(MAX_FILE_BYTES + 1)
    if len(raw) > MAX_FILE_BYTES:
        raise ApiError(422, f"the file is over {MAX_FILE_BYTES // 2**20} MiB", param="file")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ApiError(
            422, f"the file is not UTF-8 text (byte {exc.start + 1})", param="file"
        ) from None
    if "\x00" in text:
        raise ApiError(422, "the file holds a NUL character; send JSONL text", param="file")
    st = state(request)
    row = await asyncio.to_thread(
        st.history.add_file,
        key.name,
        purpose,
        (file.filename or "").replace("\x00", "") or "batch.jsonl",
        text,
    )
    return json_response(_file_object(row))


async def _owned_batch(request: Request, key_name: str, batch_id: str) -> dict[str, Any]:
    row = await asyncio.to_thread(state(request).history.api_batch, batch_id, key_name)
    if row is None:
        raise _no_batch(batch_id)
    return row


@router.get("/files/{file_id}")
async def get_file(file_id: PathId, request: Request, key: Key) -> Response:
    row = await asyncio.to_thread(state(request).history.get_file, file_id)
    if row is None or row["key_name"] != key.name:
        raise ApiError(404, f"No file {file_id[:80]!r} for this API key.", code="not_found")
    return json_response(_file_object(row))


@router.get("/files/{file_id}/content")
async def file_content(file_id: PathId, request: Request, key: Key) -> Response:
    """An uploaded file, or a batch's output or error file (built when asked)."""
    st = state(request)
    for suffix in ("-output", "-errors"):
        if file_id.startswith("file-batch_") and file_id.endswith(suffix):
            batch_id = file_id.removeprefix("file-").removesuffix(suffix)
            row = await _owned_batch(request, key.name, batch_id)
            rows = await asyncio.to_thread(st.history.batch_results, batch_id)
            created = int(row["created_at"].timestamp())
            lines = (
                b.output_lines(rows, created)
                if suffix == "-output"
                else b.error_lines(rows, row["errors"])
            )
            body = "".join(line + "\n" for line in lines)
            return Response(body, media_type="application/jsonl")
    found = await asyncio.to_thread(st.history.get_file, file_id)
    if found is None or found["key_name"] != key.name:
        raise ApiError(404, f"No file {file_id[:80]!r} for this API key.", code="not_found")
    return Response(found["content"], media_type="application/jsonl")


BATCH_CREATE_TTL_S = 600.0  # the longest a retry waits for its batch's creation


@router.post("/batches")
async def create_batch(body: BatchCreate, request: Request, key: Key) -> Response:
    """Run every line of an uploaded file through Conduit's pipeline (route → execute →
    feedback); a line that is not a valid chat completion request is refused alone.

    The SDK's retry of this request (``x-stainless-retry-count`` ≥ 1: the first attempt's
    answer lost, or its connection dropped while the file was parsed) gets the batch the first
    attempt created, not a second run of the whole file (``SdkRetries``,
    gateway/idempotency.py); a request numbered 0 always creates a batch."""
    if body.endpoint != b.ENDPOINT:
        raise ApiError(422, f"endpoint {body.endpoint[:60]!r} is not supported; use {b.ENDPOINT}",
                       param="endpoint")  # fmt: skip
    st = state(request)
    attempt = request.headers.get(RETRY_HEADER)
    sdk = st.sdk_retries
    if attempt is None or sdk is None:
        batch_id = await _create_batch(body, request, key)
        return json_response(b.batch_object(await _owned_batch(request, key.name, batch_id)))
    slot = SdkRetries.slot(key.name, b"batch\0" + body.model_dump_json().encode())
    replay = await sdk.previous(slot, attempt, BATCH_CREATE_TTL_S)
    if replay is not None:
        row = await _owned_batch(request, key.name, replay.query_id)
        return json_response(b.batch_object(row), headers={REPLAYED: "true"})
    with sdk.keeping(slot) as keep:
        batch_id = await _create_batch(body, request, key)
        keep(batch_id, b"")
    return json_response(b.batch_object(await _owned_batch(request, key.name, batch_id)))


async def _create_batch(body: BatchCreate, request: Request, key: Key) -> str:
    st = state(request)
    found = await asyncio.to_thread(st.history.get_file, body.input_file_id)
    if found is None or found["key_name"] != key.name:
        raise ApiError(404, f"No file {body.input_file_id[:80]!r} for this API key.",
                       code="not_found", param="input_file_id")  # fmt: skip
    batch_id = f"batch_{uuid.uuid4().hex}"
    parsed = await asyncio.to_thread(
        b.parse_batch_file, found["content"], batch_id, st.gateway, key
    )
    row = {
        "id": batch_id,
        "key_name": key.name,
        "input_file_id": body.input_file_id,
        "endpoint": body.endpoint,
        "completion_window": body.completion_window,
        "metadata": body.metadata,
        "errors": parsed.errors,
    }
    new = await asyncio.to_thread(st.history.submit_api_batch, row, f"api:{key.name}", parsed.items)
    chunk = st.gateway.settings.router.chunk_size
    await asyncio.to_thread(st.tasks.send, ROUTE, new, chunk)
    return batch_id


@router.get("/batches/{batch_id}")
async def get_batch(batch_id: PathId, request: Request, key: Key) -> Response:
    return json_response(b.batch_object(await _owned_batch(request, key.name, batch_id)))


@router.get("/batches")
async def list_batches(
    request: Request,
    key: Key,
    limit: int = 20,
    after: Annotated[str | None, Query(pattern=NO_NUL)] = None,
) -> Response:
    if not 1 <= limit <= 100:
        raise ApiError(422, "limit must be in [1, 100]", param="limit")
    rows = await asyncio.to_thread(state(request).history.api_batches, key.name, limit + 1, after)
    data = [b.batch_object(r) for r in rows[:limit]]
    return json_response({
        "object": "list", "data": data, "has_more": len(rows) > limit,
        "first_id": data[0]["id"] if data else None, "last_id": data[-1]["id"] if data else None,
    })  # fmt: skip


@router.post("/batches/{batch_id}/cancel")
async def cancel_batch(batch_id: PathId, request: Request, key: Key) -> Response:
    """Stop what has not started: every request of the batch without an answer ends
    ``cancelled`` (calls already in flight finish)."""
    await _owned_batch(request, key.name, batch_id)
    await asyncio.to_thread(state(request).history.cancel_api_batch, batch_id)
    return json_response(b.batch_object(await _owned_batch(request, key.name, batch_id)))
