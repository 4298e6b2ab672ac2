"""``Idempotency-Key`` on ``POST /v1/chat/completions``: a client's retry of a call is answered
with the first call's answer, not paid for again.

A chat completion sent twice is two calls, as at OpenAI: a client asking again wants a new
answer (and a user re-asking is a learning signal, see ``learning/reask.py``). What must not cost
twice is a *retry* of one call: the OpenAI SDK re-sends a request after a timeout, a dropped
connection, a 429 or a 5xx (``max_retries``, 2 by default), and the first attempt may have been
answered, and billed, without the client hearing of it. A client that sends an
``Idempotency-Key`` header (the SDK's ``extra_headers``; it sends the same headers on its
retries) gets, for every request of the same API key with that key within
``CONDUIT_GATEWAY__IDEMPOTENCY_TTL_S``:

- the first request's answer, replayed (200, the same body and ``x-conduit-query-id``, header
  ``idempotent-replayed: true``), with no model call, budget hold or history row;
- 409 while the first is still being answered (the SDK retries a 409 by itself);
- 422 when the body differs from the first one's (the key is for one request);
- a new call when the first one failed (its error was not kept: nothing was answered).

The entry (Redis key ``P:idem:<hash of the API key's name and the idempotency key>``,
``infra/keys.py``) is claimed atomically (``SET NX``) for the longest the call can take, then
holds the answer (never the prompt). A server killed mid-call leaves the claim to expire, and
a retry after that calls again; so does a retry after Redis lost the entry: the call may have
been billed, the only cases of a second call. Streamed calls do not take the header (a replay
would need the stream kept).

**The SDK's own retries, without the header** (:class:`SdkRetries`). The OpenAI SDK sends no
``Idempotency-Key`` of its own, but it numbers its attempts: ``x-stainless-retry-count`` is 0 on
a request and 1, 2, … on its retries (the Anthropic SDK does the same). A first attempt (0)
marks its call pending under the API key's name and the hash of the request's bytes (the
retries send the same bytes) while the call runs, and leaves the answer there for
``CONDUIT_GATEWAY__SDK_RETRY_WINDOW_S`` (60 s). A retry (≥ 1) of a body whose call is still
running waits for its answer (the client dropped the connection or timed out while Conduit was
still calling: the call is paid for once, and the retry gets it); of a body answered within the
window, gets that answer (``idempotent-replayed: true``); otherwise it calls (also when the
server making the call was killed: its pending mark, renewed while the call runs, lapses within
15 s). A request without the header, or numbered 0, is always a new call: asking twice is asking
twice. The one cost of the rule: a retry of a request whose body is byte for byte that of
another request answered within the window, the retried one having never reached Conduit, gets
that other answer. ``batches.create`` is kept the same way (``gateway/batch_routes.py``).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import redis.asyncio

from conduit_workers.gateway.errors import ApiError
from conduit_workers.infra.keys import RedisKeys

log = logging.getLogger(__name__)

HEADER = "idempotency-key"
# The attempt number the OpenAI and Anthropic SDKs send with every request (0, then 1, 2, … on
# their retries).
RETRY_HEADER = "x-stainless-retry-count"
PENDING = b"pending"
REPLAYED = "idempotent-replayed"
MAX_KEY_CHARS = 255


@dataclass(frozen=True)
class Replay:
    """The first call's answer: its JSON body and query id."""

    body: bytes
    query_id: str


class Idempotency:
    def __init__(self, client: redis.asyncio.Redis, prefix: str, ttl_s: float) -> None:
        self.client = client
        self.keys = RedisKeys(prefix)
        self.ttl_ms = max(1, int(ttl_s * 1000))

    @staticmethod
    def slot(key_name: str, idempotency_key: str) -> str:
        """The entry's name: the same for every retry of a call by the same API key."""
        if not 0 < len(idempotency_key) <= MAX_KEY_CHARS:
            raise ApiError(
                422,
                f"the Idempotency-Key header takes 1 to {MAX_KEY_CHARS} characters",
                param="Idempotency-Key",
            )
        basis = json.dumps(["idempotency", key_name, idempotency_key])
        return hashlib.sha256(basis.encode()).hexdigest()[:32]

    async def claim(self, slot: str, digest: str, call_ttl_s: float) -> Replay | None:
        """None: this request makes the call (and must :meth:`done` or :meth:`release`);
        a :class:`Replay` of the first call's answer; :class:`ApiError` 409 or 422."""
        key = self.keys.idempotency(slot)
        pending = json.dumps({"digest": digest})
        for _ in range(3):
            if await self.client.set(key, pending, nx=True, px=max(1000, int(call_ttl_s * 1000))):
                return None
            raw = await self.client.get(key)
            if raw is None:
                continue  # expired meanwhile: claim it again
            entry = json.loads(raw)
            if entry.get("digest") != digest:
                raise ApiError(
                    422,
                    "this Idempotency-Key was used with another request body; a key names "
                    "one request (and its retries): use a new key for a new request",
                    code="idempotency_key_reused",
                    param="Idempotency-Key",
                )
            answer = entry.get("answer")
            if answer is None:
                raise ApiError(
                    409,
                    "a request with this Idempotency-Key is still being answered; retry in a "
                    "moment to get its answer",
                    code="idempotency_key_in_use",
                    type_="conflict_error",
                    param="Idempotency-Key",
                )
            return Replay(answer.encode(), entry["query_id"])
        raise ApiError(
            409,
            "this Idempotency-Key could not be claimed; retry",
            code="idempotency_key_in_use",
            type_="conflict_error",
        )

    async def done(self, slot: str, digest: str, query_id: str, body: bytes) -> None:
        """Keep the call's answer for its retries, ``ttl_s`` from now."""
        entry = json.dumps({"digest": digest, "query_id": query_id, "answer": body.decode()})
        await self.client.set(self.keys.idempotency(slot), entry, px=self.ttl_ms)

    async def release(self, slot: str) -> None:
        """The call failed (nothing answered): a retry may call again."""
        await self.client.delete(self.keys.idempotency(slot))


class SdkRetries:
    """The calls of SDK clients that sent no ``Idempotency-Key``, kept for the SDK's retries
    (module docstring). Every Redis error here is logged and passed over: the bookkeeping never
    fails a call (a retry then calls again, as without it).

    Nothing is awaited on a call's path: a call's pending mark and its answer are queued in the
    server process and written every :data:`FLUSH_S` in one pipeline with every other call's
    (awaited one by one, two writes a call cost ~0.19 ms of the server's CPU, a quarter of
    a request's). A retry comes a backoff after its attempt failed (the SDK waits ≥ 0.375 s),
    by then written; one that reaches the same process sooner reads the queue. A call answered
    before the next flush writes its answer only. A pending mark lives :data:`PENDING_TTL_S` and
    is renewed every :data:`RENEW_S` while its call runs (one script per flush for all of them),
    so a server killed mid-call holds its retries back for seconds, not for the call's longest
    duration."""

    POLL_S = (0.02, 0.25)  # a waiting retry reads the entry this often, first to last
    FLUSH_S = 0.05
    PENDING_TTL_S = 15.0
    RENEW_S = 5.0
    # Renew the marks that are still pending (an answer written meanwhile keeps its own TTL).
    _RENEW = """
    for _, key in ipairs(KEYS) do
      if redis.call('GET', key) == ARGV[1] then redis.call('PEXPIRE', key, ARGV[2]) end
    end
    return 0
    """

    def __init__(self, client: redis.asyncio.Redis, prefix: str, window_s: float) -> None:
        self.client = client
        self.keys = RedisKeys(prefix)
        self.window_ms = max(1, int(window_s * 1000))
        self._queued: dict[str, bytes] = {}  # key -> value to write (a mark or an answer)
        self._deletes: set[str] = set()
        self._pending: set[str] = set()  # the marks of this process's calls still running
        self._writer: asyncio.Task[None] | None = None
        self._renewed = time.monotonic()

    @staticmethod
    def slot(key_name: str, raw_body: bytes) -> str:
        h = hashlib.sha256(b"sdk-retry\0" + key_name.encode() + b"\0" + raw_body)
        return h.hexdigest()[:32]

    @staticmethod
    def is_retry(attempt: str) -> bool:
        return attempt.strip() not in ("", "0")

    async def previous(self, slot: str, attempt: str, max_wait_s: float) -> Replay | None:
        """What a request gets instead of a call: for a retry, its first attempt's answer
        (waited for while that call runs); None for a first attempt, or when there is none."""
        return await self.wait(slot, max_wait_s) if self.is_retry(attempt) else None

    @contextmanager
    def keeping(self, slot: str) -> Iterator[Callable[[str, bytes], None]]:
        """The slot pending while the work inside runs; the work gives its answer (query id,
        body) to the function this yields. Left without one (it raised), the slot is released:
        nothing was answered, a retry calls again."""
        self.claim(slot)
        answered = False

        def keep(query_id: str, body: bytes) -> None:
            nonlocal answered
            answered = True
            self.done(slot, query_id, body)

        try:
            yield keep
        finally:
            if not answered:
                self.release(slot)

    def claim(self, slot: str) -> None:
        """Mark the call pending (written unless another request of the same bytes holds the
        entry)."""
        key = self.keys.idempotency(slot)
        self._deletes.discard(key)
        self._queued[key] = PENDING
        self._pending.add(key)
        self._kick()

    def done(self, slot: str, query_id: str, body: bytes) -> None:
        key = self.keys.idempotency(slot)
        self._pending.discard(key)
        self._queued[key] = json.dumps({"query_id": query_id, "answer": body.decode()}).encode()
        self._kick()

    def release(self, slot: str) -> None:
        """The call failed or was abandoned: nothing answered, a retry calls again."""
        key = self.keys.idempotency(slot)
        self._pending.discard(key)
        if self._queued.get(key) == PENDING:
            del self._queued[key]  # never written: nothing to take back
            return
        self._deletes.add(key)
        self._kick()

    def _kick(self) -> None:
        if self._writer is None or self._writer.done():
            self._writer = asyncio.get_running_loop().create_task(self._write())

    async def _write(self) -> None:
        while self._queued or self._deletes or self._pending:
            await asyncio.sleep(self.FLUSH_S)
            await self.flush()

    async def flush(self) -> None:
        """Write what is queued, and renew the pending marks when due, in one pipeline."""
        queued, self._queued = self._queued, {}
        deletes, self._deletes = self._deletes, set()
        renew = [k for k in self._pending if k not in queued]
        due = renew and time.monotonic() - self._renewed >= self.RENEW_S
        if not (queued or deletes or due):
            return
        pipe = self.client.pipeline(transaction=False)
        for key, value in queued.items():
            if value == PENDING:
                pipe.set(key, value, nx=True, px=int(self.PENDING_TTL_S * 1000))
            else:
                pipe.set(key, value, px=self.window_ms)
        if deletes:
            pipe.delete(*deletes)
        if due:
            self._renewed = time.monotonic()
            pipe.eval(self._RENEW, len(renew), *renew, PENDING, int(self.PENDING_TTL_S * 1000))
        try:
            await pipe.execute()
        except (redis.RedisError, OSError) as exc:
            log.warning("SDK retry entries not written (%s): retries of %d calls call again",
                        exc, len(queued))  # fmt: skip

    async def aclose(self) -> None:
        """Write what is queued (the answers of the last calls) and stop."""
        if self._writer is not None:
            self._writer.cancel()
        self._pending.clear()
        await self.flush()

    async def wait(self, slot: str, max_wait_s: float) -> Replay | None:
        """The answer a retry gets: the call's, once it is in (waiting while it runs, at most
        ``max_wait_s``); None when there is none to wait for (the retry calls)."""
        key = self.keys.idempotency(slot)
        deadline = time.monotonic() + max_wait_s
        pause = self.POLL_S[0]
        while True:
            raw: bytes | str | None = self._queued.get(key)
            if raw is None and key not in self._pending:
                try:
                    raw = await self.client.get(key)
                except (redis.RedisError, OSError) as exc:
                    log.warning("SDK retry entry unreadable (%s): the retry calls", exc)
                    return None
                if raw is None:
                    return None
            if raw is not None and raw not in (PENDING, PENDING.decode()):
                entry = json.loads(raw)
                return Replay(entry["answer"].encode(), entry["query_id"])
            if time.monotonic() >= deadline:
                return None
            await asyncio.sleep(pause)
            pause = min(self.POLL_S[1], pause * 2)
