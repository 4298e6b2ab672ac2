"""RedisBatchLedger: each budgeted batch's limit, spend and reservations, shared by executors.

Keys (``P`` = ``settings.redis.key_prefix``, ``B`` = the batch id), amounts in nano-USD:

- ``P:batch-budget:B``          hash: ``limit``, ``spent``, ``reserved``, ``calls``, ``expired``
- ``P:batch-budget:B:res``      hash: reservation id → amount held
- ``P:batch-budget:B:exp``      sorted set: reservation id → when it expires (ms, Redis clock)
- ``P:batch-budget:B:settled``  set: reservation ids settled (a settle repeated counts once)
- ``P:batch-budget:B:charged``  hash: expired reservation id → amount charged as spent
- ``P:batch-budget:B:leases``   hash: a server process's lease id → the costs it has moved to
  ``spent`` so far, ``<id>:calls`` → its calls (only :data:`LEASE_LUA` reads and writes it)

Every key expires ``ledger_ttl_s`` after the batch's last reservation, settle or lease script.

A call reserves its worst-case cost before it starts: one script checks ``limit − spent −
reserved ≥ amount`` and holds the amount, atomically, so processes racing for the last
dollars never overshoot together. The settle releases the hold and adds the real cost.

A reservation whose worker died is resolved by the next script that runs on the batch after
its expiry: by default **charged** as spent at its worst case (the call may have reached the
provider and been billed, and nothing else will ever record it; so the batch stays within its
budget on the provider's bill too), or, with ``charge_expired=False``, released. A settle that
comes after all (a slow call, not a dead one) replaces the charge with the real cost.

The HTTP API's server processes hold a key's daily budget through one **lease** each
(:data:`LEASE_LUA`, ``gateway/budget_lease.py``): a reservation whose amount its process sets
under the same check, so that most calls are held without a round trip. The scripts are in
:mod:`conduit_workers.execution.ledger_scripts`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis
import redis.asyncio
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError

from conduit_workers.domain.budget import BudgetState, from_nano, to_nano
from conduit_workers.domain.records import Hold
from conduit_workers.errors import StoreUnavailable
from conduit_workers.execution.ledger_scripts import LEASE_LUA, RESERVE_LUA, SETTLE_LUA, STATE_LUA
from conduit_workers.infra.keys import RedisKeys


class RedisBatchLedger:
    """:class:`~conduit_workers.domain.ports.BudgetLedger` in Redis; every method is one atomic
    script (one round trip)."""

    def __init__(
        self, client: redis.Redis, prefix: str, ledger_ttl_s: int, charge_expired: bool = True
    ) -> None:
        self.client = client
        self.prefix = prefix
        self.ledger_ttl_s = ledger_ttl_s
        self._charge = "1" if charge_expired else "0"
        self._reserve = client.register_script(RESERVE_LUA)
        self._settle = client.register_script(SETTLE_LUA)
        self._state = client.register_script(STATE_LUA)

    def keys(self, batch_id: str) -> list[str]:
        return RedisKeys(self.prefix).batch_budget(batch_id)

    def reserve(
        self,
        batch_id: str,
        limit_usd: float,
        reservation_id: str,
        amount_usd: float,
        ttl_s: float,
        recorded_spend_usd: float = 0.0,
    ) -> Hold:
        """Hold ``amount_usd`` of the batch's budget for one call, if it fits.

        ``limit_usd`` sets the batch's limit the first time (the history database holds it),
        and ``recorded_spend_usd`` its spend then: a ledger lost with Redis, or expired, starts
        again from what the history database recorded. Holding an id already held changes
        nothing and answers held again.
        """
        try:
            ok, limit, spent, reserved = self._reserve(
                keys=self.keys(batch_id),
                args=[
                    to_nano(limit_usd),
                    reservation_id,
                    to_nano(amount_usd),
                    max(1, int(ttl_s * 1000)),
                    self.ledger_ttl_s,
                    to_nano(max(0.0, recorded_spend_usd)),
                    self._charge,
                ],
            )
        except redis.RedisError as exc:
            raise StoreUnavailable(f"budget ledger unreachable: {exc}") from None
        state = BudgetState(from_nano(int(limit)), from_nano(int(spent)), from_nano(int(reserved)))
        return Hold(bool(ok), state)

    def settle(self, batch_id: str, reservation_id: str, cost_usd: float) -> bool:
        """Release the reservation and add the call's real cost (0 for a failed call).

        Idempotent by reservation id: True the first time, False after. A reservation that
        expired meanwhile is settled all the same (its cost is real; a charge for it at its
        worst case is taken back)."""
        try:
            done = self._settle(
                keys=self.keys(batch_id),
                args=[
                    reservation_id,
                    to_nano(max(0.0, cost_usd)),
                    self.ledger_ttl_s,
                    self._charge,
                ],
            )
        except redis.RedisError as exc:
            raise StoreUnavailable(f"budget ledger unreachable: {exc}") from None
        return bool(done)

    def states(self, batch_ids: Sequence[str]) -> dict[str, BudgetState]:
        """The ledgers of these batches (expired reservations resolved first); a batch with
        no ledger in Redis (no call reserved yet, or expired) is left out."""
        if not batch_ids:
            return {}
        try:
            pipe = self.client.pipeline(transaction=False)
            for b in batch_ids:
                self._state(keys=self.keys(b), args=[self._charge], client=pipe)
            rows = pipe.execute()
        except redis.RedisError as exc:
            raise StoreUnavailable(f"budget ledger unreachable: {exc}") from None
        out = {}
        for b, (limit, spent, reserved, calls, expired) in zip(batch_ids, rows, strict=True):
            if limit is None:
                continue
            out[b] = BudgetState(
                from_nano(int(limit)),
                from_nano(int(spent or 0)),
                from_nano(int(reserved or 0)),
                int(calls or 0),
                int(expired or 0),
            )
        return out


@dataclass(frozen=True)
class LeaseAnswer:
    """What :data:`LEASE_LUA` did: the lease's hold now (nano-USD), the ledger after it, whether
    the hold had been lost (0 no, 1 gone, 2 expired and charged), and which waiting calls it
    holds."""

    hold: int
    state: BudgetState
    lost: int
    granted: list[bool]


# A script's call waiting for the next pipeline: the script, how many keys, keys then args,
# and the future its caller awaits.
_Call = tuple[AsyncScript, int, list[Any], "asyncio.Future[Any]"]


class AsyncRedisBatchLedger:
    """The reserve and settle of :class:`RedisBatchLedger` (the same scripts, keys and
    answers) on an asyncio Redis client, for the HTTP API: no worker thread per call.

    The scripts of the calls that arrive while a round trip is out go together in the next
    one (a pipeline, not a transaction: each script stays atomic on its own), so hundreds of
    requests in flight cost a few round trips rather than one connection checkout each. Under
    light load a pipeline holds one script and waits for nothing."""

    def __init__(
        self,
        client: redis.asyncio.Redis,
        prefix: str,
        ledger_ttl_s: int,
        charge_expired: bool = True,
        max_batch: int = 256,
    ) -> None:
        self.client = client
        self.prefix = prefix
        self.ledger_ttl_s = ledger_ttl_s
        self.max_batch = max_batch
        self._charge = "1" if charge_expired else "0"
        self._reserve = client.register_script(RESERVE_LUA)
        self._settle = client.register_script(SETTLE_LUA)
        self._lease = client.register_script(LEASE_LUA)
        self._pending: list[_Call] = []
        self._draining = False

    @classmethod
    def from_url(
        cls,
        url: str,
        prefix: str,
        ledger_ttl_s: int,
        charge_expired: bool = True,
        socket_timeout_s: float = 5.0,
        max_connections: int = 64,
    ) -> AsyncRedisBatchLedger:
        # A bounded pool where a request waits its turn for a connection rather than fail (as
        # it waited for a worker thread before); each command still times out after the
        # socket timeout.
        pool = redis.asyncio.BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=max(30.0, socket_timeout_s),
            socket_timeout=socket_timeout_s,
            socket_connect_timeout=socket_timeout_s,
        )
        return cls(redis.asyncio.Redis(connection_pool=pool), prefix, ledger_ttl_s, charge_expired)

    def keys(self, batch_id: str) -> list[str]:
        return RedisKeys(self.prefix).batch_budget(batch_id)

    def _enqueue(
        self, script: AsyncScript, keys: list[str], args: list[Any]
    ) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._pending.append((script, len(keys), [*keys, *args], future))
        if not self._draining:
            self._draining = True
            loop.create_task(self._drain())
        return future

    async def _run(self, script: AsyncScript, keys: list[str], args: list[Any]) -> Any:
        return await self._enqueue(script, keys, args)

    async def _drain(self) -> None:
        try:
            while self._pending:
                batch = self._pending[: self.max_batch]
                del self._pending[: self.max_batch]
                try:
                    out = await self._pipeline(batch)
                except Exception as exc:  # noqa: BLE001 - each waiting call gets it
                    out = [exc] * len(batch)
                for (_, _, _, future), result in zip(batch, out, strict=True):
                    if future.done():
                        continue
                    if isinstance(result, BaseException):
                        future.set_exception(result)
                    else:
                        future.set_result(result)
        finally:
            self._draining = False

    async def _pipeline(self, batch: list[_Call]) -> list[Any]:
        # EVALSHA straight away (a pipeline's own script handling asks SCRIPT EXISTS on every
        # execute); a script the server does not hold yet is loaded, and only its calls sent
        # again: a call answered NOSCRIPT did not run.
        out: list[Any] = [None] * len(batch)
        todo = list(range(len(batch)))
        for attempt in range(2):
            pipe = self.client.pipeline(transaction=False)
            for i in todo:
                script, n_keys, keys_args, _ = batch[i]
                pipe.evalsha(script.sha, n_keys, *keys_args)
            results = await pipe.execute(raise_on_error=False)
            missing = set()
            for i, result in zip(todo, results, strict=True):
                out[i] = result
                if isinstance(result, NoScriptError) and attempt == 0:
                    missing.add(batch[i][0])
            if not missing:
                break
            for script in missing:
                await self.client.script_load(script.script)
            todo = [i for i in todo if isinstance(out[i], NoScriptError)]
        return out

    async def reserve(
        self,
        batch_id: str,
        limit_usd: float,
        reservation_id: str,
        amount_usd: float,
        ttl_s: float,
        recorded_spend_usd: float = 0.0,
    ) -> Hold:
        """As :meth:`RedisBatchLedger.reserve`."""
        try:
            ok, limit, spent, reserved = await self._run(
                self._reserve,
                self.keys(batch_id),
                [
                    to_nano(limit_usd),
                    reservation_id,
                    to_nano(amount_usd),
                    max(1, int(ttl_s * 1000)),
                    self.ledger_ttl_s,
                    to_nano(max(0.0, recorded_spend_usd)),
                    self._charge,
                ],
            )
        except redis.RedisError as exc:
            raise StoreUnavailable(f"budget ledger unreachable: {exc}") from None
        state = BudgetState(from_nano(int(limit)), from_nano(int(spent)), from_nano(int(reserved)))
        return Hold(bool(ok), state)

    async def settle(self, batch_id: str, reservation_id: str, cost_usd: float) -> bool:
        """As :meth:`RedisBatchLedger.settle`."""
        try:
            done = await self._run(
                self._settle,
                self.keys(batch_id),
                [reservation_id, to_nano(max(0.0, cost_usd)), self.ledger_ttl_s, self._charge],
            )
        except redis.RedisError as exc:
            raise StoreUnavailable(f"budget ledger unreachable: {exc}") from None
        return bool(done)

    def settle_soon(
        self, batch_id: str, reservation_id: str, cost_usd: float
    ) -> asyncio.Future[Any]:
        """:meth:`settle` without waiting for it (and without a task per call): the script goes
        with the next pipeline; the future ends with its answer, or the Redis error (raw)."""
        return self._enqueue(
            self._settle,
            self.keys(batch_id),
            [reservation_id, to_nano(max(0.0, cost_usd)), self.ledger_ttl_s, self._charge],
        )

    async def lease(
        self,
        batch_id: str,
        limit_usd: float,
        lease_id: str,
        *,
        held: int,
        floor: int,
        keep: int,
        share: float,
        least: int,
        settled: tuple[int, int],
        calls: tuple[int, int],
        ttl_s: float,
        recorded_spend_usd: float,
        waiting: Sequence[int] = (),
    ) -> LeaseAnswer:
        """Run :data:`LEASE_LUA` on one lease (amounts in nano-USD): ``held`` the hold the
        process counts on, ``floor`` what it must hold at least (unchecked), ``keep`` the
        headroom it asks for, ``share`` the most of what is left the headroom may take,
        ``settled`` and ``calls`` (so far, acknowledged), ``waiting`` the worst cases of calls
        to hold, each if it fits."""
        try:
            out = await self._run(
                self._lease,
                [*self.keys(batch_id), RedisKeys(self.prefix).batch_budget_leases(batch_id)],
                [
                    to_nano(limit_usd),
                    lease_id,
                    held,
                    floor,
                    keep,
                    repr(share),
                    least,
                    settled[0],
                    settled[1],
                    calls[0],
                    calls[1],
                    max(1, int(ttl_s * 1000)),
                    self.ledger_ttl_s,
                    to_nano(max(0.0, recorded_spend_usd)),
                    self._charge,
                    *waiting,
                ],
            )
        except redis.RedisError as exc:
            raise StoreUnavailable(f"budget ledger unreachable: {exc}") from None
        hold, limit, spent, reserved, lost = out[:5]
        state = BudgetState(from_nano(int(limit)), from_nano(int(spent)), from_nano(int(reserved)))
        return LeaseAnswer(int(hold), state, int(lost), [bool(g) for g in out[5:]])

    async def aclose(self) -> None:
        await self.client.aclose()
        await self.client.connection_pool.disconnect()
