"""Every Redis key Conduit builds, in one place.

``P`` is ``settings.redis.key_prefix`` (``conduit`` by default). The broker's own keys (queue
lists named after the queues, ``_kombu…``, ``unacked…``) are Celery's and kombu's, not listed.

===========================================  ======  ==========================================
key                                          type    content, expiry
===========================================  ======  ==========================================
``P:posterior:<model>``                      hash    ``stats``: little-endian float64s, the
                                                     upper triangle of Σ w x xᵀ (row by row),
                                                     Σ w r x, then the counters ``n r rr calls
                                                     errors latency_ms in_tokens out_tokens
                                                     cost_usd``; ``dim``; ``version`` (+1 per
                                                     applied update). No expiry
                                                     (``posterior_store.py``)
``P:applied:<update id>``                    string  marks an applied update; expires after
                                                     ``redis.applied_ttl_s``
``P:floor:<stream>``                         hash    quality-floor counters of
                                                     :mod:`conduit_workers.domain.floor`:
                                                     ``d:<stratum>`` prompts decided, ``n:``/
                                                     ``s:``/``ss:<stratum>`` ratings, their sum
                                                     and sum of squares; ``e:``/``rn:``/
                                                     ``r:``/``rr:<stratum>`` the answering
                                                     model's predictions and residuals;
                                                     ``c:*`` the reference's calibration;
                                                     ``log_lambda`` the dual variable. The
                                                     stream ``offline`` holds ``w:<model>``,
                                                     the weight of each model's warm-start
                                                     ratings. No expiry (``floor_store.py``)
``P:floor-applied:<update id>``              string  marks an applied floor update; expires
                                                     after ``redis.applied_ttl_s``
``P:features:<signature>:<prompt hash>``     string  ``domain|complexity|chars|`` then the
                                                     context as little-endian float64s; expires
                                                     after ``router.feature_cache_ttl_s``
                                                     (``feature_cache.py``)
``P:features:stats``                         hash    feature cache counters ``hits misses
                                                     skipped``. No expiry
``P:recent:<user>``                          zset    the user's recent query ids (the newest
                                                     ``retry.window_prompts``) scored by
                                                     submission time (s), for re-ask detection;
                                                     expires ``retry.window_s`` after the
                                                     user's last prompt (``recent_prompts.py``)
``P:recentvec:<user>``                       hash    query id → float32 text vector; same
                                                     expiry as ``P:recent:<user>``
``P:dead``                                   hash    dead letters: task id → JSON ``{task, args,
                                                     queue, reason, error, deliveries, retries,
                                                     at}``. No expiry (``dead_letters.py``)
``P:deliveries:<task id>:<retries>``         string  deliveries of one message; expires after
                                                     ``dead_letters.DELIVERY_TTL_S`` (7 days)
``P:cooldown:<model>``                       string  the executor (host:pid) that cooled the
                                                     model down; expires when the cooldown ends
                                                     (``cooldowns.py``)
``P:batch-budget:<B>``                       hash    a budget's ``limit spent reserved calls
                                                     expired`` (nano-USD); ``B`` a batch id or
                                                     ``apikey:<name>:<day>`` (``batch_ledger.py``)
``P:batch-budget:<B>:res``                   hash    reservation id → amount held
``P:batch-budget:<B>:exp``                   zset    reservation id → when it expires (ms)
``P:batch-budget:<B>:settled``               set     reservation ids settled
``P:batch-budget:<B>:charged``               hash    expired reservation id → amount charged
                                                     as spent
``P:batch-budget:<B>:leases``                hash    a server process's lease id → what the
                                                     costs settled through it added to
                                                     ``spent`` so far, ``<id>:calls`` → its
                                                     calls (``gateway/budget_lease.py``); the
                                                     six ``batch-budget`` keys expire
                                                     ``budget.ledger_ttl_s`` after the last
                                                     reservation, settle or lease script
``P:metrics:llm``                            hash    LLM request counters ``kind|model[|label]``
                                                     → number (attempts, failures, retries,
                                                     fallbacks, latency buckets). No expiry
                                                     (``call_metrics.py``)
``P:epoch``                                  string  the broker's epoch, a random id written by
                                                     the first worker or producer that looks
                                                     (on the broker's Redis). No expiry
                                                     (``broker_epoch.py``)
``P:epoch:<id>:recovered``                   string  claimed by the one worker that recovers
                                                     from that epoch's start; expires after 7
                                                     days
``P:exec:<query id>``                        string  the execute task (Celery task id) that owns the
                                                     prompt's call; deleted when the task ends,
                                                     expires after ``executor.claim_ttl_s``
                                                     (``execution/claims.py``)
``P:stash:<query id>``                       string  JSON of a prompt's result and its implicit
                                                     events, called but not stored (history
                                                     database unreachable, or kept every
                                                     ``executor.stash_every_s`` while the
                                                     chunk's other calls run); deleted once stored,
                                                     expires after ``executor.stash_ttl_s``
                                                     (``execution/answer_stash.py``)
``P:idem:<hash>``                            string  an HTTP call's ``Idempotency-Key``: JSON
                                                     ``{digest}`` of its body while it is
                                                     answered (expires after the call's longest
                                                     duration), then ``{digest, query_id,
                                                     answer}``
                                                     (expires after
                                                     ``gateway.idempotency_ttl_s``;
                                                     ``gateway/idempotency.py``)
``P:beat:lock``                              string  the id of the beat that owns the lock;
                                                     expires after ``beat.lock_ttl_s`` unless
                                                     renewed (``beat_lock.py``)
===========================================  ======  ==========================================

No key holds prompt text: prompt hashes, ids and vectors only (``P:idem`` and ``P:stash`` hold
answers).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RedisKeys:
    """The key builders under one prefix."""

    prefix: str = "conduit"

    def posterior(self, model: str) -> str:
        return f"{self.prefix}:posterior:{model}"

    def applied(self, update_id: str) -> str:
        return f"{self.prefix}:applied:{update_id}"

    def exec_claim(self, query_id: str) -> str:
        return f"{self.prefix}:exec:{query_id}"

    def answer_stash(self, query_id: str) -> str:
        return f"{self.prefix}:stash:{query_id}"

    def idempotency(self, slot: str) -> str:
        return f"{self.prefix}:idem:{slot}"

    def floor(self, stream: str) -> str:
        return f"{self.prefix}:floor:{stream}"

    def floor_applied(self, update_id: str) -> str:
        return f"{self.prefix}:floor-applied:{update_id}"

    def features(self, signature: str, prompt_hash: str) -> str:
        return f"{self.prefix}:features:{signature}:{prompt_hash}"

    @property
    def features_stats(self) -> str:
        return f"{self.prefix}:features:stats"

    def recent(self, user: str) -> str:
        return f"{self.prefix}:recent:{user}"

    def recent_vectors(self, user: str) -> str:
        return f"{self.prefix}:recentvec:{user}"

    @property
    def dead(self) -> str:
        return f"{self.prefix}:dead"

    def deliveries(self, task_id: str, retries: int) -> str:
        return f"{self.prefix}:deliveries:{task_id}:{retries}"

    def cooldown(self, model: str) -> str:
        return f"{self.prefix}:cooldown:{model}"

    @property
    def cooldown_pattern(self) -> str:
        """SCAN pattern of every cooldown key."""
        return self.cooldown("*")

    def cooldown_model(self, key: str) -> str:
        """The model named by a cooldown key."""
        return key[len(self.cooldown("")) :]

    def batch_budget(self, batch_id: str) -> list[str]:
        """The ledger hash, reservations, expiries and settled ids of one budget."""
        base = f"{self.prefix}:batch-budget:{batch_id}"
        return [base, f"{base}:res", f"{base}:exp", f"{base}:settled", f"{base}:charged"]

    def batch_budget_leases(self, batch_id: str) -> str:
        """The cumulative costs each server process's lease has settled in the budget."""
        return f"{self.prefix}:batch-budget:{batch_id}:leases"

    @property
    def llm_metrics(self) -> str:
        return f"{self.prefix}:metrics:llm"

    @property
    def epoch(self) -> str:
        return f"{self.prefix}:epoch"

    def epoch_recovered(self, epoch: str) -> str:
        return f"{self.epoch}:{epoch}:recovered"

    @property
    def beat_lock(self) -> str:
        return f"{self.prefix}:beat:lock"

    @property
    def everything(self) -> str:
        """SCAN pattern of every key under the prefix."""
        return f"{self.prefix}:*"
