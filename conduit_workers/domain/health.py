"""Per-model health: a rate-limit gate (429 + Retry-After) and a circuit breaker (cooldown).

Pure state over an injected clock (``now`` in seconds), used by the executor once per worker
process, shared by every call in flight in that process:

- **Rate-limit gate.** A 429 with Retry-After closes the model's gate until that time; every
  call to the model waits (none is sent). When the time has passed, a single probe call goes
  first: its success reopens the gate for all, another 429 closes it again. So a rate-limited
  model sees about one request per Retry-After per process, not one per waiting prompt.
- **Circuit breaker.** Over the last ``window`` calls, a failure share > ``failure_rate`` (with at
  least ``min_calls`` calls) opens the breaker for ``cooldown_s``: callers skip the model and
  fall back. Afterwards one probe call is admitted (half-open); success closes the breaker, a
  failure opens it for another ``cooldown_s``.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass, field

# How long a caller waits before asking again while another call probes the model.
PROBE_POLL_S = 0.05


class Admit(enum.Enum):
    GO = "go"  # call now
    WAIT = "wait"  # rate limited: wait the returned seconds, then ask again
    SKIP = "skip"  # cooling down: fall back to another model


@dataclass
class _State:
    outcomes: deque[bool]
    open_until: float | None = None  # breaker open (cooling down) until then
    breaker_probe: bool = False  # a half-open probe call is in flight
    limited_until: float | None = None  # 429: no call before then
    limit_probe: bool = False  # the first call after a 429 pause is in flight
    cooldowns: int = 0  # times the breaker opened (for logs and tests)


@dataclass
class ModelHealth:
    window: int = 20
    min_calls: int = 8
    failure_rate: float = 0.5
    cooldown_s: float = 30.0
    _states: dict[str, _State] = field(default_factory=dict)

    def _state(self, model: str) -> _State:
        st = self._states.get(model)
        if st is None:
            st = self._states[model] = _State(deque(maxlen=self.window))
        return st

    def acquire(self, model: str, now: float) -> tuple[Admit, float]:
        """May a call to ``model`` start now? ``(GO, 0)``, ``(WAIT, seconds)`` or ``(SKIP, 0)``.

        A ``GO`` may make the caller the probe; it must then report with :meth:`record`.
        """
        st = self._state(model)
        if st.open_until is not None:
            if now < st.open_until or st.breaker_probe:
                return Admit.SKIP, 0.0
            st.breaker_probe = True
            return Admit.GO, 0.0
        if st.limited_until is not None:
            if now < st.limited_until:
                return Admit.WAIT, st.limited_until - now
            if st.limit_probe:
                return Admit.WAIT, PROBE_POLL_S
            st.limit_probe = True
        return Admit.GO, 0.0

    def cooling(self, model: str, now: float) -> bool:
        """True while the breaker is open and no probe is due."""
        st = self._state(model)
        return st.open_until is not None and (now < st.open_until or st.breaker_probe)

    def cooling_for(self, model: str, now: float) -> float:
        """Seconds of cooldown left for ``model`` (0 when its breaker is closed)."""
        st = self._states.get(model)
        if st is None or st.open_until is None:
            return 0.0
        return max(0.0, st.open_until - now)

    def record(
        self,
        model: str,
        now: float,
        *,
        ok: bool,
        rate_limited: bool = False,
        retry_after_s: float | None = None,
        default_pause_s: float = 1.0,
    ) -> None:
        """Report the outcome of a call that :meth:`acquire` admitted."""
        st = self._state(model)
        if rate_limited:
            pause = retry_after_s if retry_after_s and retry_after_s > 0 else default_pause_s
            until = now + pause
            st.limited_until = max(st.limited_until or until, until)
            st.limit_probe = False
            if st.breaker_probe:  # a 429 says nothing about health: let the next probe try
                st.breaker_probe = False
            return
        if st.limited_until is not None and (st.limit_probe or now >= st.limited_until):
            st.limited_until = None
            st.limit_probe = False
        if st.breaker_probe:
            st.breaker_probe = False
            if ok:
                st.open_until = None
                st.outcomes.clear()
            else:
                st.open_until = now + self.cooldown_s
                st.cooldowns += 1
            return
        st.outcomes.append(ok)
        failures = st.outcomes.count(False)
        if (
            st.open_until is None
            and len(st.outcomes) >= self.min_calls
            and failures > self.failure_rate * len(st.outcomes)
        ):
            st.open_until = now + self.cooldown_s
            st.cooldowns += 1
            st.outcomes.clear()

    def release(self, model: str) -> None:
        """An admitted call ended without an outcome (cancelled, or not a provider error):
        free the probe slot it may hold, change nothing else."""
        st = self._state(model)
        st.breaker_probe = False
        st.limit_probe = False

    def cooldowns(self, model: str) -> int:
        return self._state(model).cooldowns
