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
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import redis.asyncio

from conduit_workers.gateway.errors import ApiError
from conduit_workers.infra.keys import RedisKeys

HEADER = "idempotency-key"
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
