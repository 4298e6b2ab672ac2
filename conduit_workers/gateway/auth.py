"""API keys on the HTTP API: ``Authorization: Bearer <key>``, checked against the SHA-256 hashes
in the history database (``conduit keys create``). A verified key (or a refused one) is
remembered for ``key_cache_s`` per process, so a revoked key stops working within that time.
Neither the key nor its hash is ever logged or echoed."""

from __future__ import annotations

import asyncio
import hashlib
import time

from conduit_workers.gateway.errors import ApiError
from conduit_workers.history.history_gateway import ApiKey, GatewayHistory

_MAX_CACHED = 10_000
ANONYMOUS = ApiKey("anonymous", "", None, None, None)


class KeyChecker:
    def __init__(self, history: GatewayHistory, required: bool, cache_s: float) -> None:
        self.history = history
        self.required = required
        self.cache_s = cache_s
        self._cache: dict[str, tuple[float, ApiKey | None]] = {}

    async def check(self, authorization: str | None) -> ApiKey:
        """The caller's key, or :class:`ApiError` 401 in OpenAI's words."""
        if not self.required:
            return ANONYMOUS
        if not authorization:
            raise ApiError(
                401,
                "You didn't provide an API key. Send it in the Authorization header as "
                "'Bearer <key>' (the SDK's api_key); `conduit keys create --name NAME` makes one.",
            )
        scheme, _, secret = authorization.partition(" ")
        secret = secret.strip()
        if scheme.lower() != "bearer" or not secret:
            raise ApiError(
                401,
                "The Authorization header must be 'Bearer <key>'.",
                code="invalid_api_key",
            )
        digest = hashlib.sha256(secret.encode("utf-8", "replace")).hexdigest()
        now = time.monotonic()
        cached = self._cache.get(digest)
        if cached is not None and cached[0] > now:
            key = cached[1]
        else:
            key = await asyncio.to_thread(self.history.key_by_secret, secret)
            if len(self._cache) >= _MAX_CACHED:
                self._cache.clear()
            self._cache[digest] = (now + self.cache_s, key)
        if key is None:
            raise ApiError(
                401,
                "Incorrect API key provided (unknown or revoked). `conduit keys list` shows the "
                "live keys by name; a lost key cannot be shown again: create a new one.",
                code="invalid_api_key",
            )
        return key
