"""``python -m conduit_workers.replay``: run the replay server (same options as the CLI)."""

from .cli import replay_server

if __name__ == "__main__":
    replay_server(prog_name="python -m conduit_workers.replay")
