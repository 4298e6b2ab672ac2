"""Conduit's exceptions, one tree.

::

    ConduitError
     ├── ConfigError              settings or catalog file wrong; says which value and how to fix it
     ├── InputError               one input line or feedback item rejected (line number, reason)
     ├── UnroutableError          no model satisfies the prompt's constraints
     ├── StoreUnavailable         Redis or the history database cannot be reached
     └── ProviderError            an LLM call failed (model_name, status_code)
          ├── RetryableProviderError   429, 5xx, timeout, connection: retry with backoff
          └── PermanentProviderError   400, 401, 403, 404, content filter: no retry

Every exception is picklable (plain constructor arguments) and its message never holds prompt
text or API keys.
"""

from __future__ import annotations


class ConduitError(Exception):
    """Base of every error Conduit raises on purpose."""


class ConfigError(ConduitError):
    pass


class InputError(ConduitError):
    def __init__(self, reason: str, line: int | None = None) -> None:
        self.reason = reason
        self.line = line
        where = f"line {line}: " if line is not None else ""
        super().__init__(f"{where}{reason}")

    def __reduce__(self) -> tuple[type[InputError], tuple[str, int | None]]:
        return (type(self), (self.reason, self.line))


class UnroutableError(ConduitError):
    pass


class StoreUnavailable(ConduitError):
    pass


class ProviderError(ConduitError):
    def __init__(
        self,
        message: str,
        model_name: str,
        status_code: int | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        self.message = message
        self.model_name = model_name
        self.status_code = status_code
        self.retry_after_s = retry_after_s
        code = f" (HTTP {status_code})" if status_code is not None else ""
        super().__init__(f"{model_name}{code}: {message}")

    def __reduce__(
        self,
    ) -> tuple[type[ProviderError], tuple[str, str, int | None, float | None]]:
        return (type(self), (self.message, self.model_name, self.status_code, self.retry_after_s))

    @property
    def error_class(self) -> str:
        """A short, stable name stored with the result: ``http_429``, ``timeout``, …"""
        if self.status_code is not None:
            return f"http_{self.status_code}"
        return self.message.split(":", 1)[0].strip().lower().replace(" ", "_")[:40] or "error"


class RetryableProviderError(ProviderError):
    pass


class PermanentProviderError(ProviderError):
    pass
