"""Latency and fault profiles of the replayed models, and the server's configuration.

A profile file is a JSON object of model name -> profile fields; the key ``"*"`` is the default
for every model without its own entry, and a model's entry overrides only the fields it names::

    {"*": {"latency_ms": 50, "jitter_ms": 10},
     "gpt-4-1106-preview": {"latency_ms": 400, "per_output_token_ms": 20, "rate_429": 0.05}}

Fault rates are probabilities per request, drawn once per request in the order 429, 500, hang,
empty, 400; their sum may not exceed 1.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "DEFAULT_PROFILE_KEY",
    "FAULT_KINDS",
    "ModelProfile",
    "ReplayConfig",
    "load_profiles",
    "parse_profiles",
    "profiles_to_json",
]

DEFAULT_PROFILE_KEY = "*"

# Fault kinds in the order the per-request draw walks through them; names match the stats keys.
FAULT_KINDS = ("429", "500", "hang", "empty", "400")


@dataclass(frozen=True, slots=True)
class ModelProfile:
    """How one model behaves: latency in milliseconds, fault rates as probabilities per request.

    Latency of an answer = ``latency_ms + uniform(-jitter_ms, +jitter_ms)
    + per_output_token_ms * output_tokens``, never below zero. A 429 carries ``Retry-After:
    retry_after_s``; a hang sleeps ``hang_s`` seconds before answering normally.
    """

    latency_ms: float = 0
    jitter_ms: float = 0
    per_output_token_ms: float = 0
    rate_429: float = 0
    retry_after_s: float = 1
    rate_500: float = 0
    rate_hang: float = 0
    hang_s: float = 30
    rate_empty: float = 0
    rate_400: float = 0

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"{f.name} must be a number, got {value!r}")
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{f.name} must be a finite number >= 0, got {value!r}")
            if f.name.startswith("rate_") and value > 1:
                raise ValueError(f"{f.name} is a probability in [0, 1], got {value!r}")
        total = sum(self.fault_rates())
        if total > 1 + 1e-9:
            raise ValueError(
                f"fault rates (rate_429 + rate_500 + rate_hang + rate_empty + rate_400) sum to "
                f"{total:g}, more than 1; lower some of them"
            )

    def fault_rates(self) -> tuple[float, float, float, float, float]:
        """The fault probabilities in the order of :data:`FAULT_KINDS`."""
        return (self.rate_429, self.rate_500, self.rate_hang, self.rate_empty, self.rate_400)

    def to_json(self) -> dict[str, float]:
        """The profile as a JSON object of the profile-file shape."""
        return dataclasses.asdict(self)


_FIELD_NAMES = frozenset(f.name for f in dataclasses.fields(ModelProfile))


def _profile_from(raw: Any, base: ModelProfile, key: str, source: str) -> ModelProfile:
    if not isinstance(raw, Mapping):
        raise ValueError(f"{source}: profile {key!r} must be a JSON object, got {raw!r}")
    for name in raw:
        if name not in _FIELD_NAMES:
            raise ValueError(
                f"{source}: unknown key {name!r} in profile {key!r}; "
                f"known keys: {', '.join(sorted(_FIELD_NAMES))}"
            )
    try:
        return dataclasses.replace(base, **raw)
    except ValueError as exc:
        raise ValueError(f"{source}: profile {key!r}: {exc}") from None


def parse_profiles(
    raw: Any,
    source: str = "<profiles>",
    base: ModelProfile | None = None,
    overrides: Mapping[str, float] | None = None,
) -> dict[str, ModelProfile]:
    """Build profiles from a profile-file object; models inherit unnamed fields from ``"*"``.

    ``"*"`` starts from ``base`` (``ModelProfile()`` if omitted), takes the object's ``"*"``
    fields, then ``overrides`` (command-line flags beat the file). The result always holds
    ``"*"``. Raises ``ValueError`` naming ``source`` and the offending key.
    """
    if not isinstance(raw, Mapping):
        raise ValueError(f"{source}: expected a JSON object of model name -> profile")
    default = _profile_from(
        raw.get(DEFAULT_PROFILE_KEY, {}), base or ModelProfile(), DEFAULT_PROFILE_KEY, source
    )
    if overrides:
        default = _profile_from(overrides, default, DEFAULT_PROFILE_KEY, f"{source} + options")
    profiles = {DEFAULT_PROFILE_KEY: default}
    for key, value in raw.items():
        if not isinstance(key, str) or not key:
            raise ValueError(f"{source}: model names must be non-empty strings, got {key!r}")
        if key != DEFAULT_PROFILE_KEY:
            profiles[key] = _profile_from(value, default, key, source)
    return profiles


def load_profiles(
    path: str | Path,
    base: ModelProfile | None = None,
    overrides: Mapping[str, float] | None = None,
) -> dict[str, ModelProfile]:
    """Read a profile JSON file (see the module docstring) into profiles by model name.

    ``base`` and ``overrides`` act on ``"*"`` as in :func:`parse_profiles`.
    """
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    return parse_profiles(raw, source=str(path), base=base, overrides=overrides)


def profiles_to_json(profiles: Mapping[str, ModelProfile]) -> dict[str, dict[str, float]]:
    """Profiles in the profile-file shape (every field spelt out)."""
    return {key: profile.to_json() for key, profile in profiles.items()}


def _default_profiles() -> dict[str, ModelProfile]:
    return {DEFAULT_PROFILE_KEY: ModelProfile()}


@dataclass(frozen=True)
class ReplayConfig:
    """Everything the replay server needs to start.

    ``profiles`` maps model name -> profile, ``"*"`` being the default for the others (a plain
    ``ModelProfile()`` if absent). ``api_key``, when set, must come as ``Authorization: Bearer
    <key>`` on ``/v1/*``. ``seed`` fixes the sequence of fault draws and jitter. The served models
    are those of the data, the profile keys and ``extra_models``.
    """

    data_paths: Sequence[str | Path]
    profiles: Mapping[str, ModelProfile] = field(default_factory=_default_profiles)
    api_key: str | None = None
    seed: int = 0
    extra_models: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        # Normalised copies, so that a caller mutating its list or dict later changes nothing.
        object.__setattr__(self, "data_paths", tuple(Path(p) for p in self.data_paths))
        profiles = dict(self.profiles)
        profiles.setdefault(DEFAULT_PROFILE_KEY, ModelProfile())
        for key, profile in profiles.items():
            if not isinstance(profile, ModelProfile):
                raise TypeError(f"profiles[{key!r}] must be a ModelProfile, got {profile!r}")
        object.__setattr__(self, "profiles", profiles)
        object.__setattr__(self, "extra_models", tuple(self.extra_models))
