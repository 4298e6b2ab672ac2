"""Fixtures of the integration tests that run the replay server."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from conduit_workers.replay import ReplayConfig
from tests.replay_harness import RunningServer, start_replay, write_replay_data


@pytest.fixture
def data_file(tmp_path: Path) -> Path:
    return write_replay_data(tmp_path / "data.jsonl")


@pytest.fixture
def start_server(data_file: Path) -> Iterator[Callable[..., RunningServer]]:
    """Start servers over the test data; keyword arguments go to ReplayConfig."""
    servers: list[RunningServer] = []

    def start(**kwargs: Any) -> RunningServer:
        kwargs.setdefault("data_paths", [data_file])
        server = start_replay(ReplayConfig(**kwargs))
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()
