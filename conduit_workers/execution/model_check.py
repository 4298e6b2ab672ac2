"""Which catalog models this process can call: key present, provider SDK importable.

Checked when a worker or the CLI starts; a model that cannot be called leaves routing (with a
warning) and the executor re-routes a prompt decided for it (elsewhere, or before a catalog
change) to the next model of its ranking that can be called.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Mapping

from conduit_workers.domain.catalog import Catalog, ModelSpec
from conduit_workers.errors import ConfigError

log = logging.getLogger(__name__)

# The module each provider's pydantic-ai model needs, and the package that ships it.
SDKS = {
    "anthropic": ("anthropic", "anthropic"),
    "google": ("google.genai", "google-genai"),
    "groq": ("groq", "groq"),
    "openai": ("openai", "openai"),
}


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a missing parent package of a dotted name
        return False


def why_uncallable(spec: ModelSpec, env: Mapping[str, str]) -> str | None:
    """Why this process cannot call the model (None when it can)."""
    if spec.provider != "openai-compatible" and spec.api_key_env and not env.get(spec.api_key_env):
        return f"{spec.api_key_env} is not set"
    sdk = SDKS.get(spec.provider)
    if sdk is not None and not _importable(sdk[0]):
        return f"the {spec.provider} SDK is not installed (pip install {sdk[1]})"
    return None


def uncallable_models(catalog: Catalog, env: Mapping[str, str]) -> dict[str, str]:
    """Model name -> why it cannot be called here, for every such model of the catalog."""
    out = {}
    for spec in catalog.models:
        reason = why_uncallable(spec, env)
        if reason is not None:
            out[spec.name] = reason
    return out


def warn_uncallable(uncallable: Mapping[str, str], role: str) -> None:
    for name, reason in sorted(uncallable.items()):
        log.warning(
            "%s: model %s cannot be called (%s); it is left out of routing until fixed",
            role,
            name,
            reason,
        )


def routable_catalog(catalog: Catalog, uncallable: Mapping[str, str]) -> Catalog:
    """The catalog without the models that cannot be called; the reference stays when it can be
    called, else the dearest callable model takes its place (for cost weights only)."""
    keep = tuple(m for m in catalog.models if m.name not in uncallable)
    if not keep:
        reasons = "; ".join(f"{n}: {r}" for n, r in sorted(uncallable.items()))
        raise ConfigError(
            f"no model of the catalog can be called ({reasons}): set the API keys or install "
            "the SDKs named, or point CONDUIT_CATALOG__PATH at a catalog with models you can call"
        )
    if len(keep) == len(catalog.models):
        return catalog
    names = {m.name for m in keep}
    reference = catalog.reference
    if reference not in names:
        reference = max(
            keep, key=lambda m: m.input_price_per_mtok_usd + m.output_price_per_mtok_usd
        ).name
    return Catalog(keep, reference, catalog.version)
