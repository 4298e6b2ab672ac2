"""Per-process budget leases: most of an API key's budget holds taken without a Redis round trip.

Each server process holds one reservation per key and day in the batch ledger
(``execution/batch_ledger.py``), its **lease**, whose amount it sets with one atomic script
(:data:`~conduit_workers.execution.ledger_scripts.LEASE_LUA`) checked as any other hold is:
``limit − spent − what the others hold``. Locally the process counts what the lease must cover,
``used`` = the worst cases of its calls in flight + the costs of calls settled since its last
script. A call whose worst case fits (``used + worst ≤ hold``) is granted at once, with no Redis
call; one that does not waits for the lease to grow (the calls waiting at that moment share one
script, and each is held only if it fits, in arrival order), by the waiting calls' worst cases
and a headroom of at most ``cap_usd`` and at most ``LEASE_SHARE`` of what the key has left. Near a
key's last dollars (that share less than one call's worst case) the headroom is nothing and the
lease grows by the calls' worst cases exactly: the ledger's check is that of a per-call hold, so
many processes racing for the last dollars never overshoot together. While the key's budget is
short (a call refused, or the headroom cut by the share), each settle also sends its cost and
gives back what the call did not use at once, as a per-call settle would, rather than at the
next flush.

Every ``FLUSH_INTERVAL_S`` while a lease is held, a script moves the settled costs to ``spent``
and shrinks the hold to the calls in flight plus a headroom (none when the lease granted nothing
since the last flush: idle headroom goes back to the other processes within one interval, and
an idle lease is released), and renews its expiry (``ttl_s``, the longest call). At shutdown
(:meth:`BudgetLeases.aclose`) the leases are flushed and released.

A process killed without its shutdown leaves its lease to expire after ``ttl_s``, charged as
spent at the amount held (the ledger's rule for every expired hold): its calls in flight at their
worst cases, its settled-but-unflushed costs, and the headroom no call used (at most
``cap_usd`` plus less than one call's worst case, and none near the last dollars): never
under-billed; over-charged by that headroom beside what per-call holds are over-charged by
(the calls in flight at their worst cases rather than their real costs). With
``budget.charge_expired_holds`` off an expired lease is released instead, its unflushed costs
(at most one flush interval's) with it.

A lease hold that the ledger lost (Redis restarted without its data: the ledger starts again
from the history's recorded spend) is noticed by the next script, which holds the calls in
flight again (unchecked: they are running), grants new calls only through the check and logs a
warning.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from conduit_workers.domain.budget import BudgetState, from_nano, to_nano
from conduit_workers.domain.records import Hold
from conduit_workers.execution.batch_ledger import AsyncRedisBatchLedger

log = logging.getLogger(__name__)

FLUSH_INTERVAL_S = 0.25  # settled costs reach the ledger, idle headroom goes back, this often
# A lease's headroom takes at most this share of what the key has left (eight processes at
# most about a quarter of it), and none when that is less than one call's worst case.
LEASE_SHARE = 1 / 32


@dataclass(eq=False)
class Lease:
    """One process's lease on one ledger (an API key's day). Amounts in nano-USD."""

    scope: str
    id: str
    limit_usd: float
    # The hold local grants count on: the ledger's after a script; while a script is out, the
    # floor it sent (what the ledger will hold whatever the script decides).
    held: int = 0
    base: int = 0  # the settled costs counted as moved to spent (acknowledged, or being sent)
    acked: int = 0  # the settled costs the ledger acknowledged
    outstanding: int = 0  # worst cases of the calls granted and not settled
    settled: int = 0  # costs of the calls settled so far (cumulative)
    calls: int = 0  # calls settled at a cost > 0 so far (cumulative)
    calls_acked: int = 0
    active: bool = False  # granted a call since the last flush
    unit: int = 0  # the worst case of the latest call: headroom smaller than it is not taken
    # The key's budget is short (a call refused, or the headroom cut by the share): settled
    # costs and unused headroom go back to the ledger after every settle, not every flush.
    scarce: bool = False
    flush_again: bool = False  # a settle while a script was out asked for another flush
    state: BudgetState = field(default_factory=lambda: BudgetState(0.0))
    waiters: list[tuple[int, asyncio.Future[Hold]]] = field(default_factory=list)
    runner: asyncio.Task[None] | None = None  # the script (and the grows that follow) running

    def fits(self, worst: int) -> bool:
        return self.outstanding + self.settled - self.base + worst <= self.held

    def idle(self) -> bool:
        return (
            self.held == 0
            and self.outstanding == 0
            and self.settled == self.acked
            and self.calls == self.calls_acked
            and not self.waiters
            and self.runner is None
        )


class BudgetLeases:
    """The leases of one server process (one event loop), one per ledger scope in use."""

    def __init__(
        self,
        ledger: AsyncRedisBatchLedger,
        cap_usd: float,
        ttl_s: float,
        recorded_spend: Callable[[str], Awaitable[float]],
        flush_interval_s: float = FLUSH_INTERVAL_S,
        share: float = LEASE_SHARE,
    ) -> None:
        self.ledger = ledger
        self.cap = to_nano(cap_usd)
        self.ttl_s = ttl_s
        self.recorded_spend = recorded_spend
        self.flush_interval_s = flush_interval_s
        self.share = share
        self.process_id = uuid.uuid4().hex
        self._serial = itertools.count(1)
        self._leases: dict[str, Lease] = {}
        self._flusher: asyncio.Task[None] | None = None
        self._closing = asyncio.Event()

    def lease(self, scope: str) -> Lease | None:
        return self._leases.get(scope)

    async def reserve(self, scope: str, limit_usd: float, worst_usd: float) -> tuple[Hold, Lease]:
        """Hold ``worst_usd`` on the ledger ``scope`` (its limit ``limit_usd``) for one call:
        from the lease when it fits, else through one script shared with the calls waiting
        meanwhile. :class:`~conduit_workers.errors.StoreUnavailable` when the ledger is
        unreachable and the lease does not cover the call."""
        lease = self._leases.get(scope)
        if lease is None:
            # A new id per lease: the ledger counts each lease's settled costs by its id.
            lease = Lease(scope, f"lease:{self.process_id}:{next(self._serial)}", limit_usd)
            self._leases[scope] = lease
            if self._flusher is None or self._flusher.done():
                self._flusher = asyncio.get_running_loop().create_task(self._flush_loop())
        lease.limit_usd = limit_usd
        worst = to_nano(worst_usd)
        lease.unit = worst
        if not lease.waiters and lease.fits(worst):
            lease.outstanding += worst
            lease.active = True
            return Hold(True, lease.state), lease
        future: asyncio.Future[Hold] = asyncio.get_running_loop().create_future()
        lease.waiters.append((worst, future))
        if lease.runner is None:
            self._start(lease, flush=False)
        return await future, lease

    def settle(self, lease: Lease, worst_usd: float, cost_usd: float) -> None:
        """The call granted for ``worst_usd`` cost ``cost_usd``: counted locally, sent to the
        ledger with the next script (within ``flush_interval_s``)."""
        lease.outstanding -= to_nano(worst_usd)
        cost = to_nano(max(0.0, cost_usd))
        lease.settled += cost
        if cost > 0:
            lease.calls += 1
        if lease.scarce:  # what the call did not use goes back at once, as a per-call settle
            if lease.runner is None:
                self._start(lease, flush=True)
            else:
                lease.flush_again = True

    def _start(self, lease: Lease, flush: bool) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(self._run(lease, flush))
        lease.runner = task
        return task

    async def _run(self, lease: Lease, flush: bool) -> None:
        """Scripts on one lease, one at a time: a flush or a grow, then a grow for the calls
        that came meanwhile and do not fit, until none waits."""
        try:
            while flush or lease.waiters:
                waiting, lease.waiters = lease.waiters, []
                try:
                    await self._script(lease, waiting, flush)
                except Exception as exc:  # noqa: BLE001 - each waiting call gets it
                    for _, future in waiting:
                        if not future.done():
                            future.set_exception(exc)
                    if not waiting:
                        log.warning(
                            "a budget lease was not flushed (%s); retried in %.2f s",
                            type(exc).__name__,
                            self.flush_interval_s,
                        )
                flush, lease.flush_again = lease.flush_again, False
                # The calls that came while the script was out, in order, while they fit.
                while lease.waiters and lease.fits(lease.waiters[0][0]):
                    worst, future = lease.waiters.pop(0)
                    if not future.done():
                        lease.outstanding += worst
                        lease.active = True
                        future.set_result(Hold(True, lease.state))
        finally:
            lease.runner = None

    async def _script(
        self, lease: Lease, waiting: list[tuple[int, asyncio.Future[Hold]]], flush: bool
    ) -> None:
        recorded = await self.recorded_spend(lease.scope)
        settled, calls, active = lease.settled, lease.calls, lease.active
        if flush:
            # Down to the calls in flight, and a headroom only if the lease was used lately.
            floor = lease.outstanding
            keep = self.cap if lease.active else 0
            lease.active = False
        else:
            # Everything the lease holds but the costs that move to spent, and more.
            floor = max(lease.outstanding, lease.held - (settled - lease.base))
            keep = self.cap
        before, prev_base = lease.held, lease.base
        # While the script is out, local grants count on what it holds whatever it decides.
        lease.held, lease.base = floor, settled
        try:
            answer = await self.ledger.lease(
                lease.scope,
                lease.limit_usd,
                lease.id,
                held=before,
                floor=floor,
                keep=keep,
                share=self.share,
                least=max([lease.unit, *(w for w, _ in waiting)]),
                settled=(settled, lease.acked),
                calls=(calls, lease.calls_acked),
                ttl_s=self.ttl_s,
                recorded_spend_usd=recorded,
                waiting=[w for w, _ in waiting],
            )
        except BaseException:
            # Sent or not, the ledger holds at least the floor beside what it had not moved to
            # spent; the costs are sent again (cumulative: counted once).
            lease.held, lease.base = floor + settled - prev_base, prev_base
            lease.active = lease.active or active
            raise
        lease.held = answer.hold
        granted = sum(w for (w, _), ok in zip(waiting, answer.granted, strict=True) if ok)
        headroom = answer.hold - floor - granted
        left = to_nano(answer.state.remaining_usd) + headroom
        lease.scarce = not all(answer.granted) or left * self.share < self.cap
        lease.acked = settled
        lease.calls_acked = calls
        lease.state = answer.state
        if answer.lost:
            st = answer.state
            log.warning(
                "a budget lease was %s (Redis lost the ledger, or the process stalled past "
                "the lease's TTL): the calls it has in flight ($%.4f at worst) are held "
                "again, unchecked since they run already; the key's ledger now has $%.4f "
                "spent or held of its $%.2f",
                "gone" if answer.lost == 1 else "expired and charged",
                from_nano(floor),
                st.spent_usd + st.reserved_usd,
                st.limit_usd,
            )
        for (worst, future), granted in zip(waiting, answer.granted, strict=True):
            if future.done():  # its request went away: the hold is given back next flush
                continue
            if granted:
                lease.outstanding += worst
                lease.active = True
            future.set_result(Hold(granted, answer.state))

    async def flush(self) -> None:
        """One flush of every lease not running a script; idle leases are dropped."""
        runs = []
        for scope, lease in list(self._leases.items()):
            if lease.idle():
                del self._leases[scope]
            elif lease.runner is None:
                runs.append(self._start(lease, flush=True))
        if runs:
            await asyncio.gather(*runs, return_exceptions=True)

    async def _flush_loop(self) -> None:
        while self._leases and not self._closing.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), self.flush_interval_s)
            await self.flush()

    async def aclose(self) -> None:
        """Flush and release every lease (at shutdown, once the calls are settled)."""
        self._closing.set()
        if self._flusher is not None:
            await asyncio.gather(self._flusher, return_exceptions=True)
        for lease in list(self._leases.values()):
            if lease.runner is not None:
                await asyncio.gather(lease.runner, return_exceptions=True)
            lease.active = False
            if not lease.idle():
                await asyncio.gather(self._start(lease, flush=True), return_exceptions=True)
