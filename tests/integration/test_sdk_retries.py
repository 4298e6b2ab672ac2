"""``SdkRetries`` against real Redis: what a server process writes for its calls' retries, and
when (gateway/idempotency.py). The gateway-level behaviour, with the openai SDK as the client,
is in test_gateway_idempotency.py."""

from __future__ import annotations

import asyncio
import json

import pytest
import redis
import redis.asyncio

from conduit_workers.gateway.idempotency import PENDING, SdkRetries
from conduit_workers.infra.keys import RedisKeys
from tests.conftest import REDIS_URL, TEST_PREFIX

pytestmark = pytest.mark.integration


def _key(slot: str) -> str:
    return RedisKeys(TEST_PREFIX).idempotency(slot)


def test_marks_and_answers_are_written_by_the_flush(redis_client: redis.Redis) -> None:
    async def main() -> None:
        client = redis.asyncio.Redis.from_url(REDIS_URL)
        sdk = SdkRetries(client, TEST_PREFIX, window_s=60)
        try:
            a, b, c = (SdkRetries.slot("team", body) for body in (b"a", b"b", b"c"))
            sdk.claim(a)
            sdk.claim(b)
            sdk.release(b)  # failed before any flush: nothing to write or take back
            sdk.claim(c)
            sdk.done(c, "q-c", b'{"id": "c"}')  # answered before any flush: the answer only
            assert redis_client.get(_key(a)) is None  # queued, not yet written
            await sdk.flush()
            assert redis_client.get(_key(a)) == PENDING
            assert 0 < redis_client.pttl(_key(a)) <= SdkRetries.PENDING_TTL_S * 1000
            assert redis_client.get(_key(b)) is None
            assert json.loads(redis_client.get(_key(c)) or b"") == {
                "query_id": "q-c",
                "answer": '{"id": "c"}',
            }
            assert 55_000 < redis_client.pttl(_key(c)) <= 60_000
            # The call of a ends: its answer replaces the mark at the next flush.
            sdk.done(a, "q-a", b"{}")
            replay = await sdk.wait(a, 1.0)  # a retry in this process reads the queue
            assert replay is not None and replay.query_id == "q-a"
            await sdk.flush()
            assert json.loads(redis_client.get(_key(a)) or b"")["query_id"] == "q-a"
            # Another process's retry reads Redis; a call that failed after its mark was
            # written takes it back.
            other = SdkRetries(client, TEST_PREFIX, window_s=60)
            replay = await other.wait(a, 1.0)
            assert replay is not None and replay.body == b"{}"
            sdk.claim(b)
            await sdk.flush()
            sdk.release(b)
            await sdk.flush()
            assert redis_client.get(_key(b)) is None
            assert await other.wait(b, 1.0) is None  # nothing to wait for: the retry calls
        finally:
            await sdk.aclose()
            await client.aclose()

    asyncio.run(main())


def test_a_mark_never_overwrites_an_answer(redis_client: redis.Redis) -> None:
    """Two requests of the same bytes: the first one's answer stays for the retries while the
    second one runs (written ``NX``), and a retry waiting on a mark gets the answer once in."""

    async def main() -> None:
        client = redis.asyncio.Redis.from_url(REDIS_URL)
        first = SdkRetries(client, TEST_PREFIX, window_s=60)
        second = SdkRetries(client, TEST_PREFIX, window_s=60)
        third = SdkRetries(client, TEST_PREFIX, window_s=60)
        slot = SdkRetries.slot("team", b"same bytes")
        try:
            first.done(slot, "q-1", b"one")
            await first.flush()
            second.claim(slot)
            await second.flush()
            assert json.loads(redis_client.get(_key(slot)) or b"")["query_id"] == "q-1"
            # A retry waiting on a mark written by a third process gets the answer once in.
            other = SdkRetries.slot("team", b"other bytes")
            third.claim(other)
            await third.flush()
            waiting = asyncio.ensure_future(first.wait(other, 5.0))
            await asyncio.sleep(0.1)
            assert not waiting.done()
            third.done(other, "q-3", b"three")
            await third.flush()
            replay = await asyncio.wait_for(waiting, 2.0)
            assert replay is not None and replay.query_id == "q-3"
        finally:
            for s in (first, second, third):
                await s.aclose()
            await client.aclose()

    asyncio.run(main())
