"""Default prices for a catalog model that gives none: the ``genai-prices`` package's data.

``genai-prices`` (installed with pydantic-ai) ships a snapshot of the providers' list prices;
Conduit reads it offline (no update from the network). Imported only when a model lacks a
price, so a catalog that prices every model never loads it.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)

# Conduit's provider → genai-prices' provider id (None: let genai-prices match the model name).
_PROVIDER_IDS: dict[str, str | None] = {
    "openai": "openai",
    "anthropic": "anthropic",
    "google": "google",
    "groq": "groq",
    "openai-compatible": None,
}
_MTOK = 1_000_000


def default_prices(model: str, provider: str) -> tuple[float, float] | None:
    """(input, output) USD per million tokens of ``model`` at ``provider`` from genai-prices,
    or None when it does not know the model (or is not installed)."""
    try:
        from genai_prices import Usage, calc_price
    except ImportError:  # pragma: no cover - installed with pydantic-ai
        return None
    try:
        price = calc_price(
            Usage(input_tokens=_MTOK, output_tokens=_MTOK),
            model_ref=model,
            provider_id=_PROVIDER_IDS.get(provider),
        )
    except LookupError:
        return None
    return float(price.input_price), float(price.output_price)


__all__ = ["default_prices"]
