"""`conduit serve` driven by the real OpenAI Python SDK: chat (routed and by model name), JSON
output, models, feedback, and the SDK's own exceptions on 401/403/404/422/429. Real uvicorn,
replay server, Redis and PostgreSQL."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from datetime import UTC
from pathlib import Path
from typing import Any

import httpx2
import openai
import pytest
import redis
import sqlalchemy as sa
from sqlalchemy import select

from conduit_workers.domain.catalog import load_catalog
from conduit_workers.gateway import service
from conduit_workers.history import history_schema as t
from conduit_workers.infra.keys import RedisKeys
from conduit_workers.reports.reporting import compute_daily_report
from conduit_workers.routing.quality_floor import stream_key
from tests.conftest import TEST_PREFIX
from tests.gateway_harness import Api, queued_tasks, running_api
from tests.replay_harness import PROMPT_1, RESPONSE_1

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def api(
    redis_client: redis.Redis, pg_engine: sa.Engine, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Api]:
    with running_api(redis_client, pg_engine, tmp_path_factory.mktemp("gateway")) as running:
        yield running


def test_routed_chat_answers_in_openai_shape_and_is_recorded_once(api: Api) -> None:
    raw = api.client().chat.completions.with_raw_response.create(
        model="conduit",
        messages=[
            {"role": "system", "content": "Answer with one letter."},
            {"role": "user", "content": PROMPT_1},
        ],
        temperature=0.2,
        max_tokens=50,
        user="alice",
    )
    qid = raw.headers["x-conduit-query-id"]
    answer = raw.parse()
    assert answer.object == "chat.completion"
    assert answer.model in ("strong", "cheap")
    assert answer.choices[0].message.role == "assistant"
    assert answer.choices[0].message.content
    assert answer.usage is not None and answer.usage.prompt_tokens > 0
    assert answer.usage.total_tokens == answer.usage.prompt_tokens + answer.usage.completion_tokens

    (query,) = api.rows(t.queries, qid)
    assert query.user_name == "alice" and PROMPT_1 in query.prompt
    (decision,) = api.rows(t.decisions, qid)
    (result,) = api.rows(t.results, qid)
    assert decision.model == result.model == answer.model
    assert result.status == "ok" and result.response == answer.choices[0].message.content
    assert result.input_tokens == answer.usage.prompt_tokens
    assert result.cost_usd > 0
    (event,) = api.rows(t.feedback, qid)
    assert event.kind == "implicit" and event.model == answer.model
    (link,) = api.rows(t.batch_items, qid)
    assert link.batch_id.startswith("api-main-")
    # The implicit feedback went to the feedback queue by task name, ids only.
    deadline = time.monotonic() + 10
    while not any(event.id in args for _, args in queued_tasks(api.redis, "feedback")):
        assert time.monotonic() < deadline, "implicit feedback never reached the feedback queue"
        time.sleep(0.05)
    assert {name for name, _ in queued_tasks(api.redis, "feedback")} == {
        "conduit.feedback.apply_events"
    }


def test_catalog_model_bypasses_routing_and_passes_the_settings(api: Api) -> None:
    answer = api.client().chat.completions.create(
        model="strong", messages=[{"role": "user", "content": PROMPT_1}]
    )
    assert answer.model == "strong"
    assert answer.choices[0].message.content == RESPONSE_1  # the replay's recorded answer
    capped = api.client().chat.completions.create(
        model="strong",
        messages=[{"role": "user", "content": "Tell me a long story about routers."}],
        max_completion_tokens=3,
    )
    assert capped.usage is not None and capped.usage.completion_tokens == 3
    assert capped.choices[0].finish_reason == "length"


def test_json_object_and_json_schema_outputs(api: Api) -> None:
    client = api.client()
    obj = client.chat.completions.create(
        model="cheap",
        messages=[{"role": "user", "content": "Reply in JSON."}],
        response_format={"type": "json_object"},
    )
    assert isinstance(json.loads(obj.choices[0].message.content or ""), dict)
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}, "population": {"type": "integer"}},
        "required": ["city", "population"],
        "additionalProperties": False,
    }
    shaped = client.chat.completions.create(
        model="conduit",
        messages=[{"role": "user", "content": "Which city, how many people?"}],
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "city", "schema": schema, "strict": True},
        },
    )
    data = json.loads(shaped.choices[0].message.content or "")
    assert set(data) == {"city", "population"} and isinstance(data["population"], int)


def test_models_lists_the_catalog_and_conduit_per_key(api: Api) -> None:
    assert {m.id for m in api.client().models.list()} == {"conduit", "strong", "cheap"}
    assert {m.id for m in api.client("cheap-only").models.list()} == {"conduit", "cheap"}
    assert api.client().models.retrieve("strong").id == "strong"
    with pytest.raises(openai.NotFoundError):
        api.client("cheap-only").models.retrieve("strong")


def test_feedback_by_query_id_is_stored_once_and_queued(api: Api) -> None:
    client = api.client()
    raw = client.chat.completions.with_raw_response.create(
        model="conduit", messages=[{"role": "user", "content": "Rate me."}]
    )
    qid = raw.headers["x-conduit-query-id"]
    body = {"query_id": qid, "rating": 0.75}
    first = client.post("/feedback", body=body, cast_to=httpx2.Response).json()
    again = client.post("/feedback", body=body, cast_to=httpx2.Response).json()
    assert first["status"] == "accepted" and again["status"] == "duplicate"
    assert first["model"] == raw.parse().model
    explicit = [r for r in api.rows(t.feedback, qid) if r.kind == "explicit"]
    assert [(r.reward, r.id) for r in explicit] == [(0.75, f"explicit:{qid}")]
    assert any(f"explicit:{qid}" in args for _, args in queued_tasks(api.redis, "feedback"))
    with pytest.raises(openai.NotFoundError, match="no answered prompt"):
        client.post("/feedback", body={"query_id": "nope", "rating": 1}, cast_to=httpx2.Response)
    with pytest.raises(openai.UnprocessableEntityError, match="rating"):
        client.post("/feedback", body={"query_id": qid, "rating": 1.5}, cast_to=httpx2.Response)


def test_the_sdk_raises_its_own_exceptions(api: Api) -> None:
    messages: Any = [{"role": "user", "content": "hello"}]
    with pytest.raises(openai.AuthenticationError, match="didn't provide an API key"):
        api.client().models.list(extra_headers={"Authorization": openai.omit})
    with pytest.raises(openai.AuthenticationError, match="Incorrect API key") as wrong:
        api.client("cdt-not-a-key").chat.completions.create(model="conduit", messages=messages)
    assert "cdt-not-a-key" not in str(wrong.value)
    with pytest.raises(openai.NotFoundError, match="not in Conduit's catalog"):
        api.client().chat.completions.create(model="gpt-9", messages=messages)
    with pytest.raises(openai.PermissionDeniedError, match="may not use model 'strong'"):
        api.client("cheap-only").chat.completions.create(model="strong", messages=messages)
    with pytest.raises(openai.UnprocessableEntityError, match="temperature"):
        api.client().chat.completions.create(model="conduit", messages=messages, temperature=7)
    with pytest.raises(openai.UnprocessableEntityError, match="tools: is not supported"):
        api.client().chat.completions.create(
            model="conduit",
            messages=messages,
            tools=[{"type": "function", "function": {"name": "f", "parameters": {}}}],
        )
    with pytest.raises(openai.UnprocessableEntityError, match="max_cost_usd"):
        api.client().chat.completions.create(
            model="conduit", messages=messages, extra_body={"constraints": {"max_cost_usd": -1}}
        )
    with pytest.raises(openai.RateLimitError, match="over its daily budget of \\$0.00"):
        api.client("broke").chat.completions.create(model="conduit", messages=messages)


def test_a_revoked_key_is_refused(api: Api) -> None:
    _, key = api.history.create_key("short-lived")
    api.keys["short-lived"] = key
    assert api.client("short-lived").models.list().data
    assert api.history.revoke_key("short-lived") == 0  # revoked, no batch running
    with pytest.raises(openai.AuthenticationError):
        api.client("short-lived").models.list()


def test_routing_constraints_come_through_extra_body(api: Api) -> None:
    for _ in range(3):
        answer = api.client().chat.completions.create(
            model="conduit",
            messages=[{"role": "user", "content": "Any model but the strong one."}],
            extra_body={"constraints": {"allowed_models": ["cheap"]}},
        )
        assert answer.model == "cheap"
    raw = api.client().chat.completions.with_raw_response.create(
        model="conduit",
        messages=[{"role": "user", "content": "Keep nine tenths of the reference's quality."}],
        extra_body={"quality_floor": 0.9, "constraints": {"max_cost_usd": 1.0}},
    )
    (query,) = api.rows(t.queries, raw.headers["x-conduit-query-id"])
    assert query.constraints == {"quality_floor": 0.9, "max_cost_usd": 1.0}


def test_a_routed_call_is_counted_in_its_floor_stream_and_its_row_keeps_its_mark(
    api: Api,
) -> None:
    """The count is written behind the answer (gateway/routing_state.py)."""
    stream = RedisKeys(TEST_PREFIX).floor(stream_key(None, 0.85))
    assert not api.redis.hlen(stream)
    raw = api.client().chat.completions.with_raw_response.create(
        model="conduit",
        messages=[{"role": "user", "content": "Keep most of the reference's quality."}],
        extra_body={"quality_floor": 0.85},
    )
    (decision,) = api.rows(t.decisions, raw.headers["x-conduit-query-id"])
    assert decision.floor_mark
    deadline = time.monotonic() + 10
    while not api.redis.hlen(stream) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert api.redis.hlen(stream) > 0


def test_nul_characters_get_422_not_500(api: Api) -> None:
    """PostgreSQL refuses NUL in text: a feedback id or a path id holding one was a 500, a prompt
    holding one failed the history write of its whole batch of calls behind the answer."""
    client = api.client()
    with pytest.raises(openai.UnprocessableEntityError, match="query_id"):
        client.post("/feedback", body={"query_id": "q\x00", "rating": 1}, cast_to=httpx2.Response)
    with pytest.raises(openai.UnprocessableEntityError, match="NUL"):
        client.chat.completions.create(
            model="cheap", messages=[{"role": "user", "content": "two\x00words"}]
        )
    with pytest.raises(openai.UnprocessableEntityError, match="batch_id"):
        client.batches.retrieve("batch_x\x00")


def test_keys_are_stored_hashed(api: Api, tmp_path: Path) -> None:
    with api.history.engine.connect() as conn:
        stored = conn.execute(select(t.api_keys.c.key_hash, t.api_keys.c.key_hint)).all()
    secret = api.keys["main"]
    assert all(secret not in (h, hint) for h, hint in stored)
    assert any(len(h) == 64 and hint == secret[:8] for h, hint in stored)


def test_streaming_sends_openai_chunks_and_records_the_whole_answer(api: Api) -> None:
    client = api.client()
    prompt = [{"role": "user", "content": "Stream me a few sentences."}]
    whole = client.chat.completions.create(model="cheap", messages=prompt)  # type: ignore[arg-type]
    stream = client.chat.completions.create(
        model="cheap",
        messages=prompt,  # type: ignore[arg-type]
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 1
    assert text == whole.choices[0].message.content  # the replay server answers alike
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens  # type: ignore[union-attr]
    assert {c.model for c in chunks} == {"cheap"}
    qid = chunks[0].id.removeprefix("chatcmpl-")
    (result,) = api.rows(t.results, qid)
    assert result.status == "ok" and result.response == text
    assert result.output_tokens == chunks[-1].usage.completion_tokens
    (event,) = api.rows(t.feedback, qid)
    assert event.kind == "implicit" and not event.error


def test_a_streamed_call_over_budget_is_refused_before_it_starts(api: Api) -> None:
    with pytest.raises(openai.RateLimitError, match="daily budget"):
        api.client("broke").chat.completions.create(
            model="conduit", messages=[{"role": "user", "content": "hi"}], stream=True
        )


def test_the_nightly_report_shows_each_keys_spend(api: Api) -> None:
    raw = api.client().chat.completions.with_raw_response.create(
        model="strong", messages=[{"role": "user", "content": "Bill me."}]
    )
    (result,) = api.rows(t.results, raw.headers["x-conduit-query-id"])
    day = result.created_at.astimezone(UTC).date()
    with api.history.engine.connect() as conn:
        spent = conn.execute(
            select(sa.func.sum(t.results.c.cost_usd))
            .select_from(
                t.results.join(t.batch_items, t.batch_items.c.query_id == t.results.c.query_id)
            )
            .where(t.batch_items.c.batch_id == f"api-main-{day.isoformat()}")
        ).scalar_one()
    report = compute_daily_report(day, api.history, load_catalog(api.catalog, {}))
    tags = {g.key: g for g in report.tags}
    assert tags["api:main"].spend_usd == pytest.approx(spent) and spent >= result.cost_usd > 0


def test_no_prompt_and_no_key_in_the_logs(api: Api, caplog: pytest.LogCaptureFixture) -> None:
    secret_prompt = "SECRET-PROMPT-7d1e what is my salary?"
    with caplog.at_level(logging.DEBUG, logger="uvicorn"), caplog.at_level(logging.INFO):
        api.client().chat.completions.create(
            model="conduit", messages=[{"role": "user", "content": secret_prompt}]
        )
        with pytest.raises(openai.AuthenticationError):
            api.client("cdt-SECRET-KEY-0001").models.list()
        with pytest.raises(openai.UnprocessableEntityError):
            api.client().chat.completions.create(
                model="conduit",
                messages=[{"role": "user", "content": secret_prompt}],
                temperature=9,
            )
        time.sleep(0.2)  # the history writer's batch goes by too
    text = caplog.text + "".join(str(r.args) for r in caplog.records)
    assert "SECRET-PROMPT" not in text and "SECRET-KEY" not in text
    assert api.keys["main"] not in text


def test_a_key_ledger_lost_with_redis_starts_again_from_the_recorded_spend(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(service, "RECORDED_SPEND_CACHE_S", 0.0)
    # Two calls fit the budget, a third does not: each costs ~$0.00045 and may cost $0.00122.
    _, api.keys["lost"] = api.history.create_key("lost", budget_usd_per_day=0.0019)
    ask: Any = {
        "model": "strong",
        "messages": [{"role": "user", "content": "Count to ten, slowly, one number on each line."}],
        "max_tokens": 10,
    }
    for _ in range(2):
        raw = api.client("lost").chat.completions.with_raw_response.create(**ask)
        assert api.rows(t.results, raw.headers["x-conduit-query-id"])
    with pytest.raises(openai.RateLimitError, match="daily budget"):
        api.client("lost").chat.completions.create(**ask)
    stale = list(api.redis.scan_iter("conduit-test:batch-budget:apikey:lost:*"))
    assert stale
    api.redis.delete(*stale)  # Redis lost the key's ledger
    with pytest.raises(openai.RateLimitError, match="daily budget"):
        api.client("lost").chat.completions.create(**ask)
