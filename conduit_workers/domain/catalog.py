"""The model catalog: which models exist, who serves them, what they cost.

A TOML file::

    reference = "gpt-4-1106-preview"     # "always the strongest model", for savings figures

    [[models]]
    name = "gpt-4-1106-preview"          # the name Conduit routes to and reports
    provider = "openai-compatible"       # openai | anthropic | google | groq | openai-compatible
    base_url = "${CONDUIT_REPLAY_URL:-http://127.0.0.1:8700/v1}"
    input_price_per_mtok_usd = 10.0
    output_price_per_mtok_usd = 30.0

``${VAR}`` and ``${VAR:-default}`` in string values are expanded from the environment given
to :func:`load_catalog`. API keys are never in the file: ``api_key_env`` names the variable.
"""

from __future__ import annotations

import logging
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import SplitResult, urlsplit

from conduit_workers.errors import ConfigError

PROVIDERS = ("openai", "anthropic", "google", "groq", "openai-compatible")
DEFAULT_KEY_ENV = {
    "openai": "OPENAI_API_KEY",
    "anthropic": "ANTHROPIC_API_KEY",
    "google": "GOOGLE_API_KEY",
    "groq": "GROQ_API_KEY",
    "openai-compatible": None,
}
log = logging.getLogger(__name__)
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


@dataclass(frozen=True)
class ModelSpec:
    name: str
    provider: str
    input_price_per_mtok_usd: float
    output_price_per_mtok_usd: float
    model_id: str | None = None  # the provider's name for it, when it differs from ``name``
    base_url: str | None = None
    api_key_env: str | None = None
    max_output_tokens: int | None = None
    expected_latency_ms: float | None = None  # a hint until latency has been observed
    quality_prior: float | None = None  # a hint until quality has been observed

    @property
    def provider_model(self) -> str:
        return self.model_id or self.name

    def cost_usd(self, input_tokens: int, output_tokens: int) -> float:
        """What a call with these token counts costs at the catalog's prices."""
        return (
            input_tokens * self.input_price_per_mtok_usd
            + output_tokens * self.output_price_per_mtok_usd
        ) / 1e6


@dataclass(frozen=True)
class Catalog:
    models: tuple[ModelSpec, ...]
    reference: str
    version: str = "1"

    def __post_init__(self) -> None:
        names = [m.name for m in self.models]
        if not names:
            raise ConfigError("the catalog lists no model; add a [[models]] table")
        if len(set(names)) != len(names):
            dupes = sorted({n for n in names if names.count(n) > 1})
            raise ConfigError(f"the catalog lists model(s) {dupes} more than once")
        if self.reference not in names:
            raise ConfigError(
                f"catalog reference {self.reference!r} is not one of its models {names}"
            )
        # Looked up on every call of every request: built once (the catalog is frozen).
        object.__setattr__(self, "_names", tuple(names))
        object.__setattr__(self, "_by_name", {m.name: m for m in self.models})

    @property
    def names(self) -> tuple[str, ...]:
        names: tuple[str, ...] = self.__dict__["_names"]
        return names

    def get(self, name: str) -> ModelSpec:
        spec: ModelSpec | None = self.__dict__["_by_name"].get(name)
        if spec is None:
            raise ConfigError(f"model {name!r} is not in the catalog ({', '.join(self.names)})")
        return spec

    def index(self, name: str) -> int:
        return self.names.index(name)


def _expand(value: Any, env: Mapping[str, str], where: str) -> Any:
    if not isinstance(value, str):
        return value

    def sub(m: re.Match[str]) -> str:
        name, default = m.group(1), m.group(2)
        if name in env and env[name] != "":
            return env[name]
        if default is not None:
            return default
        raise ConfigError(f"{where}: environment variable {name} is not set and has no default")

    return _VAR.sub(sub, value)


_FIELDS = {
    "name": str,
    "provider": str,
    "input_price_per_mtok_usd": float,
    "output_price_per_mtok_usd": float,
    "model_id": str,
    "base_url": str,
    "api_key_env": str,
    "max_output_tokens": int,
    "expected_latency_ms": float,
    "quality_prior": float,
}


def parse_catalog(
    data: Mapping[str, Any], env: Mapping[str, str], source: str = "catalog"
) -> Catalog:
    """Build a catalog from decoded TOML; raise :class:`ConfigError` naming the bad value."""
    raw_models = data.get("models")
    if not isinstance(raw_models, list):
        raise ConfigError(f"{source}: expected [[models]] tables")
    specs = []
    for i, raw in enumerate(raw_models):
        where = f"{source}: models[{i}]"
        if not isinstance(raw, dict):
            raise ConfigError(f"{where}: expected a table")
        unknown = set(raw) - set(_FIELDS)
        if unknown:
            raise ConfigError(
                f"{where}: unknown field(s) {sorted(unknown)}; known: {sorted(_FIELDS)}"
            )
        values: dict[str, Any] = {}
        for key, typ in _FIELDS.items():
            if raw.get(key) is None:
                continue
            v = _expand(raw[key], env, where)
            try:
                values[key] = typ(v)
            except (TypeError, ValueError):
                raise ConfigError(f"{where}: {key} must be {typ.__name__}, got {v!r}") from None
        for key in ("name", "provider"):
            if key not in values:
                raise ConfigError(f"{where}: missing {key}")
        if values["provider"] not in PROVIDERS:
            raise ConfigError(f"{where}: provider {values['provider']!r} is not one of {PROVIDERS}")
        _default_prices(values, where)
        if values["provider"] == "openai-compatible" and not values.get("base_url"):
            raise ConfigError(f"{where}: an openai-compatible model needs base_url")
        if values.get("base_url"):
            # Checked here, not at the first call: a URL without its scheme would otherwise
            # fail every call of that model as a permanent error, batch after batch.
            if http_url(values["base_url"]) is None:
                raise ConfigError(
                    f"{where}: base_url must be an http:// or https:// URL with a host, "
                    f"got {values['base_url']!r}"
                )
        for key in ("input_price_per_mtok_usd", "output_price_per_mtok_usd"):
            if values[key] < 0:
                raise ConfigError(f"{where}: {key} must be >= 0")
        values.setdefault("api_key_env", DEFAULT_KEY_ENV[values["provider"]])
        specs.append(ModelSpec(**values))
    if not specs:
        raise ConfigError(f"{source}: the catalog lists no model; add a [[models]] table")
    reference = data.get("reference")
    if reference is None:
        reference = max(
            specs, key=lambda m: m.output_price_per_mtok_usd + m.input_price_per_mtok_usd
        ).name
    return Catalog(
        models=tuple(specs), reference=str(reference), version=str(data.get("version", "1"))
    )


def http_url(url: str) -> SplitResult | None:
    """``url`` split, if it is an http:// or https:// URL with a host (the only ones a model
    can be called at); None otherwise."""
    u = urlsplit(url)
    return u if u.scheme in ("http", "https") and u.hostname else None


_PRICES = ("input_price_per_mtok_usd", "output_price_per_mtok_usd")


def _default_prices(values: dict[str, Any], where: str) -> None:
    """Fill a model's missing prices from genai-prices' list prices, saying so; a model it
    does not know either is a configuration error."""
    missing = [k for k in _PRICES if k not in values]
    if not missing:
        return
    from conduit_workers.domain.default_prices import default_prices

    model = values.get("model_id") or values["name"]
    found = default_prices(model, values["provider"])
    if found is None:
        raise ConfigError(
            f"{where}: missing {' and '.join(missing)}, and genai-prices has no price for "
            f"{model!r} at {values['provider']}; set them in the catalog"
        )
    for key in missing:
        values[key] = found[_PRICES.index(key)]
    log.warning(
        "%s: %s has no %s in the catalog; using genai-prices' list price "
        "($%g in, $%g out per million tokens)",
        where,
        values["name"],
        " or ".join(missing),
        values[_PRICES[0]],
        values[_PRICES[1]],
    )


def load_catalog(path: Path, env: Mapping[str, str]) -> Catalog:
    """Read a catalog TOML file."""
    try:
        data = tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"catalog file {path} does not exist (CONDUIT_CATALOG__PATH)") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"catalog file {path} is not valid TOML: {exc}") from None
    return parse_catalog(data, env, source=str(path))
