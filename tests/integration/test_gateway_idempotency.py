"""``Idempotency-Key`` on chat completions, with the real openai SDK against `conduit serve` over
the replay server: a retried call is answered once and paid once; the same body without the
header is a new call; the key names one body; a failed call leaves the key free. And the SDK's
own retries, sent without the header: a retry of a call still running waits for its answer, a
retry of an answered call gets it; a new request of the same body is a new call."""

from __future__ import annotations

import asyncio
import io
import json
import re
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
import redis
import sqlalchemy as sa

from conduit_workers.gateway.idempotency import SdkRetries
from conduit_workers.history import history_schema as t
from conduit_workers.replay import ModelProfile
from tests.gateway_harness import Api, running_api

pytestmark = pytest.mark.integration
ASK: Any = {"model": "strong", "messages": [{"role": "user", "content": "Name a colour."}]}


@pytest.fixture
def api(redis_client: redis.Redis, pg_engine: sa.Engine, tmp_path: Path) -> Iterator[Api]:
    with running_api(redis_client, pg_engine, tmp_path) as running:
        yield running


def _replay_calls(api: Api) -> int:
    """The calls the replay server (the provider) answered so far."""
    base = re.search(r'base_url = "(.*)/v1"', api.catalog.read_text())
    assert base is not None
    with urllib.request.urlopen(base.group(1) + "/_replay/stats", timeout=5) as r:
        return int(json.load(r)["calls"])


def test_a_retried_call_is_answered_once(api: Api) -> None:
    client = api.client()
    first = client.chat.completions.with_raw_response.create(
        **ASK, extra_headers={"Idempotency-Key": "job-7/line-1"}
    )
    calls = _replay_calls(api)
    again = client.chat.completions.with_raw_response.create(
        **ASK, extra_headers={"Idempotency-Key": "job-7/line-1"}
    )
    assert _replay_calls(api) == calls  # no second call to the provider
    assert again.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first.headers
    qid = first.headers["x-conduit-query-id"]
    assert again.headers["x-conduit-query-id"] == qid
    a, b = first.parse(), again.parse()
    assert (b.id, b.model, b.choices[0].message.content) == (
        a.id,
        a.model,
        a.choices[0].message.content,
    )
    assert len(api.rows(t.results, qid)) == 1

    # The same body without the header, or with another key: a new call each.
    client.chat.completions.create(**ASK)
    client.chat.completions.create(**ASK, extra_headers={"Idempotency-Key": "job-7/line-2"})
    assert _replay_calls(api) == calls + 2
    # Another API key's request with the same idempotency key is its own call.
    api.client("cheap-only").chat.completions.create(
        **{**ASK, "model": "cheap"}, extra_headers={"Idempotency-Key": "job-7/line-1"}
    )
    assert _replay_calls(api) == calls + 3


def test_a_key_names_one_body(api: Api) -> None:
    client = api.client()
    client.chat.completions.create(**ASK, extra_headers={"Idempotency-Key": "k1"})
    other = {**ASK, "messages": [{"role": "user", "content": "Name a fruit."}]}
    with pytest.raises(openai.UnprocessableEntityError, match="another request body"):
        client.chat.completions.create(**other, extra_headers={"Idempotency-Key": "k1"})
    with pytest.raises(openai.UnprocessableEntityError, match="stream"):
        client.chat.completions.create(**ASK, stream=True, extra_headers={"Idempotency-Key": "k2"})


def test_concurrent_retries_make_one_call(api: Api) -> None:
    """Eight copies of one request at once (max_retries=0): one call; the others get its
    answer or 409 while it runs, never a call of their own."""
    calls = _replay_calls(api)

    async def main() -> list[Any]:
        client = openai.AsyncOpenAI(base_url=api.url, api_key=api.keys["main"], max_retries=0)
        try:

            async def one() -> Any:
                try:
                    return await client.chat.completions.with_raw_response.create(
                        **ASK, extra_headers={"Idempotency-Key": "burst"}
                    )
                except openai.ConflictError as exc:
                    return exc

            return await asyncio.gather(*(one() for _ in range(8)))
        finally:
            await client.close()

    outcomes = asyncio.run(main())
    answered = [o for o in outcomes if not isinstance(o, openai.ConflictError)]
    assert answered and all(
        isinstance(o, openai.ConflictError) or o.http_response.status_code == 200 for o in outcomes
    )
    assert len({o.headers["x-conduit-query-id"] for o in answered}) == 1
    assert _replay_calls(api) == calls + 1
    # The SDK retries a 409 by itself: with retries, every copy gets the one answer.
    retrying = api.client(max_retries=5)
    again = retrying.chat.completions.with_raw_response.create(
        **ASK, extra_headers={"Idempotency-Key": "burst"}
    )
    assert again.headers["x-conduit-query-id"] == answered[0].headers["x-conduit-query-id"]
    assert _replay_calls(api) == calls + 1


def test_a_refused_call_leaves_the_key_free(api: Api) -> None:
    """A call refused (here: over budget, 429) answered nothing: the key may be used again."""
    broke = api.client("broke")
    for _ in range(2):
        with pytest.raises(openai.RateLimitError, match="daily budget"):
            broke.chat.completions.create(**ASK, extra_headers={"Idempotency-Key": "k"})
    assert not api.redis.keys("*:idem:*")


def test_the_openapi_document_declares_the_header(api: Api) -> None:
    url = api.url.removesuffix("/v1") + "/openapi.json"
    with urllib.request.urlopen(url, timeout=5) as r:
        spec = json.load(r)
    params = spec["paths"]["/v1/chat/completions"]["post"].get("parameters", [])
    header = [p for p in params if p["in"] == "header" and p["name"].lower() == "idempotency-key"]
    assert header and header[0]["schema"]["maxLength"] == 255 and not header[0]["required"]


def test_the_sdks_retry_of_a_call_still_running_gets_its_answer(
    redis_client: redis.Redis, pg_engine: sa.Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The client gives up on a call Conduit is still making (its timeout, or a connection a
    proxy dropped) and the SDK retries it: the provider is called once, and the retry waits
    for that call's answer instead of paying for a second one. The call outlasts its pending
    mark's TTL (shortened here), which is renewed while it runs."""
    monkeypatch.setattr(SdkRetries, "PENDING_TTL_S", 0.5)
    monkeypatch.setattr(SdkRetries, "RENEW_S", 0.15)
    slow = {"strong": ModelProfile(latency_ms=1500)}
    with running_api(redis_client, pg_engine, tmp_path, profiles=slow) as api:
        calls = _replay_calls(api)
        client = api.client(max_retries=1)
        reply = client.with_options(timeout=1.0).chat.completions.with_raw_response.create(**ASK)
        assert reply.headers["idempotent-replayed"] == "true"  # the second attempt's answer
        assert reply.parse().model == "strong"
        assert _replay_calls(api) == calls + 1
        assert len(api.rows(t.results, reply.headers["x-conduit-query-id"])) == 1
        # A first attempt given up on, its retry sent by hand: past its mark's first TTL the
        # call still runs, and its mark, renewed, still says so to every server process.
        other: Any = {**ASK, "messages": [{"role": "user", "content": "Name a tree."}]}
        with pytest.raises(openai.APITimeoutError):
            api.client().with_options(timeout=1.0).chat.completions.create(**other)
        assert [api.redis.get(k) for k in api.redis.keys("*:idem:*")].count(b"pending") == 1
        retry = api.client().chat.completions.with_raw_response.create(
            **other, extra_headers={"x-stainless-retry-count": "1"}
        )
        assert retry.headers["idempotent-replayed"] == "true"
        assert _replay_calls(api) == calls + 2


def test_a_streamed_call_slower_than_the_clients_timeout_is_called_once(
    redis_client: redis.Redis, pg_engine: sa.Engine, tmp_path: Path
) -> None:
    """The SDK retries a request whose response has not started within its timeout. A streamed
    call's response starts at once, and comments keep it alive while the model has not yet
    answered its first piece: the client gets the answer, the provider is called once. A
    model that fails before its first piece ends the stream with an error event, which the
    SDK raises, and is not called again by a retry either."""
    profiles = {
        "strong": ModelProfile(latency_ms=3000),  # its first piece comes after 1.5 s
        "cheap": ModelProfile(rate_500=1.0),
    }
    with running_api(redis_client, pg_engine, tmp_path, profiles=profiles) as api:
        calls = _replay_calls(api)
        client = api.client(max_retries=2).with_options(timeout=1.0)
        chunks = list(client.chat.completions.create(**ASK, stream=True))
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text and {c.model for c in chunks} == {"strong"}
        assert _replay_calls(api) == calls + 1
        qid = chunks[0].id.removeprefix("chatcmpl-")
        (result,) = api.rows(t.results, qid)
        assert result.status == "ok" and result.response == text

        # Every model the key may use fails ("cheap-only"): the SDK raises the error event,
        # and with retries allowed it makes no more calls than without.
        def failed_calls(max_retries: int) -> int:
            before = _replay_calls(api)
            failing = api.client("cheap-only", max_retries=max_retries)
            with pytest.raises(openai.APIError, match="the model call failed"):
                list(failing.chat.completions.create(**{**ASK, "model": "cheap"}, stream=True))
            return _replay_calls(api) - before

        once = failed_calls(0)
        assert once >= 1 and failed_calls(2) == once

        # A client that goes away before the first piece: its call is recorded as such.
        gone = {**ASK, "messages": [{"role": "user", "content": "Name a tree."}]}
        with api.client().chat.completions.with_streaming_response.create(
            **gone, stream=True
        ) as raw:
            qid = raw.headers["x-conduit-query-id"]  # the response started before the model
        (result,) = api.rows(t.results, qid)
        assert (result.status, result.error_class) == ("error", "client_gone")


def test_the_sdks_retry_of_an_answered_call_gets_its_answer(api: Api) -> None:
    """An answer lost on its way back (the connection dropped as it was sent): the SDK's
    retry, numbered 1 in ``x-stainless-retry-count``, gets it with no second call. A request
    numbered 0 is a new call, even of the same bytes; another key's retry is its own call."""
    client = api.client()
    first = client.chat.completions.with_raw_response.create(**ASK)
    assert "idempotent-replayed" not in first.headers
    calls = _replay_calls(api)
    retry = client.chat.completions.with_raw_response.create(
        **ASK, extra_headers={"x-stainless-retry-count": "1"}
    )
    assert retry.headers["idempotent-replayed"] == "true"
    assert retry.headers["x-conduit-query-id"] == first.headers["x-conduit-query-id"]
    assert retry.parse().choices[0].message.content == first.parse().choices[0].message.content
    assert _replay_calls(api) == calls
    again = client.chat.completions.with_raw_response.create(**ASK)
    assert again.headers["x-conduit-query-id"] != first.headers["x-conduit-query-id"]
    assert _replay_calls(api) == calls + 1
    other = {**ASK, "model": "cheap"}
    api.client("cheap-only").chat.completions.create(
        **other, extra_headers={"x-stainless-retry-count": "2"}
    )
    assert _replay_calls(api) == calls + 2
    # A refused call (over budget, 429) leaves nothing behind: its retries are refused afresh.
    with pytest.raises(openai.RateLimitError, match="daily budget"):
        api.client("broke", max_retries=1).chat.completions.create(**ASK)
    slots = [k for k in api.redis.keys("*:idem:*") if api.redis.get(k) == b"pending"]
    assert not slots


def test_the_sdks_retry_of_a_batch_creation_gets_the_same_batch(api: Api) -> None:
    """A retried ``batches.create`` (its answer lost) would run the whole file again: the retry
    gets the batch the first attempt created. A request numbered 0 creates a batch, as at
    OpenAI."""
    client = api.client()
    lines = "".join(
        json.dumps({"custom_id": f"l{i}", "method": "POST", "url": "/v1/chat/completions",
                    "body": ASK}) + "\n"
        for i in range(3)
    )  # fmt: skip
    upload = client.files.create(file=("b.jsonl", io.BytesIO(lines.encode())), purpose="batch")
    args: Any = {
        "input_file_id": upload.id,
        "endpoint": "/v1/chat/completions",
        "completion_window": "24h",
    }
    first = client.batches.create(**args)
    retry = client.batches.with_raw_response.create(
        **args, extra_headers={"x-stainless-retry-count": "1"}
    )
    assert retry.headers["idempotent-replayed"] == "true"
    assert retry.parse().id == first.id
    assert [b.id for b in client.batches.list().data] == [first.id]
    second = client.batches.create(**args)
    assert second.id != first.id
    assert len(client.batches.list().data) == 2
