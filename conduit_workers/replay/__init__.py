"""Conduit's offline LLM: an OpenAI-compatible server replaying recorded answers.

It serves ``/v1/chat/completions`` and ``/v1/models`` from the shared datasets' prompts, token
counts and responses, with a latency profile and fault rates per model, so that executors,
end-to-end tests and benchmarks call it through pydantic-ai exactly as they would a provider.
Start it with ``conduit replay-server --data FILE.jsonl`` or ``python -m conduit_workers.replay``.
"""

from .profile import ModelProfile, ReplayConfig
from .server import build_app

__all__ = ["ModelProfile", "ReplayConfig", "build_app"]
