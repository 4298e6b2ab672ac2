"""OpenAIHttpModel: Conduit's SDK-free pydantic-ai model for OpenAI-compatible chat completions.

Against a local aiohttp server (no real LLM): the request it sends, the response it reads, and
that every failure reaches the executor as the same retryable or permanent error as through the
SDK-backed model.
"""

from __future__ import annotations

import asyncio
import dataclasses
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from pydantic_ai import exceptions as pai_exc
from pydantic_ai.direct import model_request
from pydantic_ai.messages import ModelRequest
from pydantic_ai.models import ModelRequestParameters
from pydantic_ai.tools import ToolDefinition

from conduit_workers.domain.catalog import load_catalog
from conduit_workers.domain.chat import ChatMessage, ChatRequest
from conduit_workers.errors import PermanentProviderError, RetryableProviderError
from conduit_workers.execution.http1 import Http1Connections
from conduit_workers.execution.llm import LLMClient, classify
from conduit_workers.execution.openai_http import OpenAIHttpModel, SharedSession
from conduit_workers.settings import DEFAULT_CATALOG

PROMPT = "SECRET-PROMPT what is 2 + 2?"
OK = {
    "id": "chatcmpl-1",
    "model": "m",
    "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "4"}, "finish_reason": "stop"}
    ],
    "usage": {"prompt_tokens": 7, "completion_tokens": 1},
}
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _serve(handler: Handler, body: Callable[[str], Awaitable[Any]]) -> Any:
    """Run ``body(base_url)`` against a local server answering every POST with ``handler``."""

    async def main() -> Any:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", handler)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        try:
            return await body(f"http://127.0.0.1:{port}/v1")
        finally:
            await runner.cleanup()

    return asyncio.run(main())


def _answer(status: int, payload: Any, headers: dict[str, str] | None = None) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.json_response(payload, status=status, headers=headers)

    return handler


TRANSPORT = "http1"


@pytest.fixture(params=["http1", "direct"])
def transport(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each test using it runs over both transports of the direct model."""
    monkeypatch.setattr(sys.modules[__name__], "TRANSPORT", request.param)
    return str(request.param)


def _transport() -> Any:
    return Http1Connections() if TRANSPORT == "http1" else SharedSession()


async def _call(base_url: str, **kw: Any) -> Any:
    session = _transport()
    model = OpenAIHttpModel("m", session=session, base_url=base_url, api_key="k", **kw)
    try:
        return await model_request(
            model, [ModelRequest.user_text_prompt(PROMPT)], model_settings={"max_tokens": 5}
        )
    finally:
        await session.close()


def test_request_body_and_response_through_pydantic_ai(transport: str) -> None:
    seen: dict[str, Any] = {}

    async def handler(request: web.Request) -> web.StreamResponse:
        seen["body"] = await request.json()
        seen["auth"] = request.headers.get("Authorization")
        return web.json_response(OK)

    response = _serve(handler, _call)
    assert seen["body"] == {
        "model": "m",
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": 5,
    }
    assert seen["auth"] == "Bearer k"
    assert response.text == "4"
    assert (response.usage.input_tokens, response.usage.output_tokens) == (7, 1)
    assert response.provider_response_id == "chatcmpl-1"
    assert response.finish_reason == "stop"


@pytest.mark.parametrize(
    "status,headers,category,retryable,retry_after",
    [
        (429, {"Retry-After": "3"}, pai_exc.ModelRateLimitError, True, 3.0),
        (500, None, pai_exc.ModelServerError, True, None),
        (503, None, pai_exc.ModelUnavailableError, True, None),
        (400, None, pai_exc.ModelRequestRejectedError, False, None),
        (401, None, pai_exc.ModelAuthenticationError, False, None),
        (404, None, pai_exc.ModelNotFoundError, False, None),
    ],
)
def test_http_errors_are_pydantic_ai_categories_and_classify_as_before(
    transport: str,
    status: int,
    headers: dict[str, str] | None,
    category: type[Exception],
    retryable: bool,
    retry_after: float | None,
) -> None:
    body = {"error": {"message": f"echo: {PROMPT}", "type": "x"}}
    with pytest.raises(pai_exc.ModelHTTPError) as info:
        _serve(_answer(status, body, headers), _call)
    exc = info.value
    assert isinstance(exc, category)
    assert exc.status_code == status
    err = classify(exc, "m")
    assert isinstance(err, RetryableProviderError if retryable else PermanentProviderError)
    assert err.status_code == status
    assert err.retry_after_s == retry_after
    assert "SECRET" not in str(err)  # a provider body may echo the prompt: never in the message


def test_a_200_without_choices_is_retryable(transport: str) -> None:
    with pytest.raises(pai_exc.UnexpectedModelBehavior) as info:
        _serve(_answer(200, {"object": "error"}), _call)
    assert isinstance(classify(info.value, "m"), RetryableProviderError)


def test_timeout_and_refused_connection_are_retryable(transport: str) -> None:
    async def hang(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(5)
        return web.json_response(OK)

    with pytest.raises(pai_exc.ModelTimeoutError) as timeout:
        _serve(hang, lambda url: _call(url, timeout_s=0.2))
    err = classify(timeout.value, "m")
    assert isinstance(err, RetryableProviderError) and "timeout" in str(err)

    with pytest.raises(pai_exc.ModelConnectionError) as refused:
        asyncio.run(_call("http://127.0.0.1:9/v1"))
    assert isinstance(classify(refused.value, "m"), RetryableProviderError)


def test_tools_are_refused_with_the_way_out() -> None:
    async def body(url: str) -> Any:
        model = OpenAIHttpModel("m", session=SharedSession(), base_url=url)
        params = ModelRequestParameters(
            function_tools=[ToolDefinition(name="f", parameters_json_schema={"type": "object"})]
        )
        return await model.request([ModelRequest.user_text_prompt("x")], None, params)

    with pytest.raises(pai_exc.UserError, match="HTTP_CLIENT=aiohttp"):
        _serve(_answer(200, OK), body)


def test_llm_client_uses_it_by_default_with_one_session_for_all_models() -> None:
    env = {"CONDUIT_REPLAY_URL": "http://127.0.0.1:9/v1"}
    catalog = load_catalog(DEFAULT_CATALOG, env)
    a, b = list(catalog.names)[:2]
    client = LLMClient(catalog, env)
    ma, mb = client.model(a), client.model(b)
    assert isinstance(ma, OpenAIHttpModel) and isinstance(mb, OpenAIHttpModel)
    assert ma._session is mb._session

    async def body(url: str) -> Any:
        served = load_catalog(DEFAULT_CATALOG, {"CONDUIT_REPLAY_URL": url})
        llm = LLMClient(served, {})
        try:
            return await llm.complete(a, PROMPT)
        finally:
            await llm._http.close()

    done = _serve(_answer(200, OK), body)
    assert (done.text, done.input_tokens, done.output_tokens) == ("4", 7, 1)


def test_openai_itself_gets_max_completion_tokens() -> None:
    seen: dict[str, Any] = {}

    async def handler(request: web.Request) -> web.StreamResponse:
        seen["body"] = await request.json()
        return web.json_response(OK)

    _serve(handler, lambda url: _call(url, max_tokens_field="max_completion_tokens"))
    assert seen["body"]["max_completion_tokens"] == 5 and "max_tokens" not in seen["body"]
    catalog = load_catalog(DEFAULT_CATALOG, {})
    spec = catalog.models[0]
    from conduit_workers.execution.llm import build_model

    session = SharedSession()
    openai_spec = dataclasses.replace(spec, provider="openai", base_url=None, api_key_env="K")
    assert build_model(openai_spec, {"K": "k"}, 5, session)._max_tokens_field == (  # type: ignore[attr-defined]
        "max_completion_tokens"
    )
    assert build_model(spec, {}, 5, session)._max_tokens_field == "max_tokens"  # type: ignore[attr-defined]


def test_a_chat_request_reaches_the_model_whole() -> None:
    """Messages of every role and the OpenAI settings, as the HTTP API hands them over."""
    seen: dict[str, Any] = {}

    async def handler(request: web.Request) -> web.StreamResponse:
        seen["body"] = await request.json()
        return web.json_response(OK)

    chat = ChatRequest(
        messages=(
            ChatMessage("system", "Be brief."),
            ChatMessage("user", "Hi"),
            ChatMessage("assistant", "Hello"),
            ChatMessage("user", PROMPT),
        ),
        temperature=0.3,
        top_p=0.9,
        max_tokens=7,
        stop=("\n\n",),
        response_format={"type": "json_object"},
        user="u-1",
    )

    async def body(url: str) -> Any:
        catalog = load_catalog(DEFAULT_CATALOG, {"CONDUIT_REPLAY_URL": url})
        llm = LLMClient(catalog, {"CONDUIT_REPLAY_URL": url})
        try:
            return await llm.complete(catalog.names[0], "ignored", chat)
        finally:
            await llm.aclose()

    done = _serve(handler, body)
    assert done.text == "4"
    assert seen["body"] == {
        "model": load_catalog(DEFAULT_CATALOG, {}).models[0].provider_model,
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello"},
            {"role": "user", "content": PROMPT},
        ],
        "max_tokens": 7,
        "temperature": 0.3,
        "top_p": 0.9,
        "stop": ["\n\n"],
        "response_format": {"type": "json_object"},
        "user": "u-1",
    }
    assert ChatRequest.from_json(chat.to_json()) == chat


@pytest.mark.parametrize("http_client", ["http1", "direct", "aiohttp"])
def test_a_call_that_outlasts_its_timeout_ends_as_a_retryable_timeout(
    monkeypatch: pytest.MonkeyPatch, http_client: str
) -> None:
    """The client's own deadline, for a model that ignores its timeout setting."""
    import conduit_workers.execution.llm as llm_module

    async def hangs(*args: Any, **kwargs: Any) -> Any:
        await asyncio.sleep(3600)

    monkeypatch.setattr(llm_module, "model_request", hangs)  # the SDK-backed models' way
    monkeypatch.setattr(OpenAIHttpModel, "chat", hangs)  # the direct model's
    env = {"CONDUIT_REPLAY_URL": "http://127.0.0.1:9/v1"}
    catalog = load_catalog(DEFAULT_CATALOG, env)
    llm = LLMClient(catalog, env, timeout_s=0.0, http_client=http_client)

    async def call() -> None:
        try:
            await llm.complete(catalog.names[0], PROMPT)
        finally:
            await llm.aclose()

    with pytest.raises(RetryableProviderError, match="timeout"):
        asyncio.run(call())


@pytest.mark.parametrize("http_client", ["http1", "direct"])
def test_the_direct_calls_one_timer_ends_a_hung_call_and_its_connection(http_client: str) -> None:
    """LLMClient's timeout alone bounds a direct call (its transport sets no timer of its
    own): a call the server never answers ends as the retryable timeout, its connection is
    not reused, and the next call on the same client is answered."""
    calls = 0

    async def hang_once(request: web.Request) -> web.StreamResponse:
        nonlocal calls
        calls += 1
        if calls == 1:
            await asyncio.sleep(3)
        return web.json_response(OK)

    async def body(url: str) -> Any:
        env = {"CONDUIT_REPLAY_URL": url}
        catalog = load_catalog(DEFAULT_CATALOG, env)
        llm = LLMClient(catalog, env, timeout_s=0.3, http_client=http_client)
        name = catalog.names[0]
        assert isinstance(llm.model(name), OpenAIHttpModel)
        try:
            with pytest.raises(RetryableProviderError, match="timeout"):
                await llm.complete(name, PROMPT)
            return await llm.complete(name, PROMPT)
        finally:
            await llm.aclose()

    done = _serve(hang_once, body)
    assert (done.text, done.input_tokens, done.output_tokens, calls) == ("4", 7, 1, 2)


CHAT = ChatRequest(
    messages=(
        ChatMessage("system", "Be brief."),
        ChatMessage("developer", "No lists."),
        ChatMessage("user", "Hi"),
        ChatMessage("assistant", ""),
        ChatMessage("user", "Ünïcode " + PROMPT),
    ),
    temperature=0.0,
    top_p=0.5,
    max_tokens=9,
    stop=("x", "y"),
    response_format={"type": "json_schema", "json_schema": {"name": "n", "schema": {}}},
    user="u-2",
)


@pytest.mark.parametrize("request_", [CHAT, None])
def test_the_direct_call_sends_pydantic_ais_body(request_: ChatRequest | None) -> None:
    """LLMClient calls OpenAIHttpModel.chat, not pydantic-ai's model_request: same body."""
    from conduit_workers.execution.llm import chat_messages

    bodies: list[Any] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        bodies.append(await request.json())
        return web.json_response(OK)

    async def body(url: str) -> Any:
        catalog = load_catalog(DEFAULT_CATALOG, {"CONDUIT_REPLAY_URL": url})
        name = catalog.names[0]
        llm = LLMClient(catalog, {"CONDUIT_REPLAY_URL": url}, max_output_tokens=50)
        try:
            done = await llm.complete(name, PROMPT, request_)
            model = llm.model(name)
            settings = llm.settings_for(catalog.get(name), request_)
            messages = (
                chat_messages(request_)
                if request_ is not None
                else [ModelRequest.user_text_prompt(PROMPT)]
            )
            await model_request(model, messages, model_settings=settings)
            return done
        finally:
            await llm.aclose()

    done = _serve(handler, body)
    assert (done.text, done.input_tokens, done.output_tokens) == ("4", 7, 1)
    assert len(bodies) == 2 and bodies[0] == bodies[1]


@pytest.mark.parametrize(
    "status,payload,retryable,retry_after",
    [
        (429, {"error": {"message": PROMPT}}, True, 2.0),
        (500, {"error": {"message": PROMPT}}, True, None),
        (401, {"error": {"message": PROMPT}}, False, None),
        (200, {"object": "error"}, True, None),
        (200, {"choices": []}, True, None),
        (200, {"choices": [{"message": {"content": ""}}]}, True, None),  # empty answer
    ],
)
def test_the_direct_call_fails_as_pydantic_ais_request_does(
    status: int, payload: Any, retryable: bool, retry_after: float | None
) -> None:
    async def body(url: str) -> Any:
        catalog = load_catalog(DEFAULT_CATALOG, {"CONDUIT_REPLAY_URL": url})
        llm = LLMClient(catalog, {})
        try:
            return await llm.complete(catalog.names[0], PROMPT)
        finally:
            await llm.aclose()

    with pytest.raises((RetryableProviderError, PermanentProviderError)) as info:
        _serve(_answer(status, payload, {"Retry-After": "2"} if retry_after else None), body)
    assert isinstance(info.value, RetryableProviderError if retryable else PermanentProviderError)
    assert info.value.retry_after_s == retry_after
    assert "SECRET" not in str(info.value)
