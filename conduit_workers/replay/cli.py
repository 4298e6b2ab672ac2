"""``conduit replay-server``: run the replay server from the command line."""

from __future__ import annotations

import logging
from pathlib import Path

import click

from .data import load_index
from .profile import ReplayConfig, load_profiles, parse_profiles
from .server import run

__all__ = ["replay_server"]

_RATE = click.FloatRange(0, 1)
_NON_NEGATIVE = click.FloatRange(min=0)
# Shown in the ready line; the rest are counted, so that 25 model names do not flood the terminal.
_MODELS_SHOWN = 8


def _ready_line(host: str, port: int, n_prompts: int, models: list[str]) -> str:
    shown = ", ".join(models[:_MODELS_SHOWN])
    if len(models) > _MODELS_SHOWN:
        shown += f", … (+{len(models) - _MODELS_SHOWN} more)"
    return f"replay server on http://{host}:{port}/v1 ({n_prompts} prompts, models: {shown})"


@click.command("replay-server")
@click.option(
    "--data",
    "data_paths",
    multiple=True,
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="JSONL file of recorded prompts and answers (shared schema); repeatable.",
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option(
    "--port",
    default=8700,
    show_default=True,
    type=click.IntRange(0, 65535),
    help="0 picks a free port.",
)
@click.option("--latency-ms", type=_NON_NEGATIVE, help="Default latency per call, ms.")
@click.option("--jitter-ms", type=_NON_NEGATIVE, help="Default uniform jitter (+/-), ms.")
@click.option(
    "--profile",
    "profile_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help='Profile JSON: {"*": {...}, "<model>": {...}}; the flags here override its "*".',
)
@click.option("--api-key", default=None, help="Require 'Authorization: Bearer KEY' on /v1/*.")
@click.option(
    "--seed", default=0, show_default=True, type=int, help="Seed of the fault and jitter draws."
)
@click.option(
    "--model", "extra_models", multiple=True, help="Extra model name to serve; repeatable."
)
@click.option("--rate-429", type=_RATE, help="Default share of calls answered 429.")
@click.option("--rate-500", type=_RATE, help="Default share of calls answered 500.")
@click.option("--rate-hang", type=_RATE, help="Default share of calls that hang before answering.")
@click.option("--rate-empty", type=_RATE, help="Default share of calls answered with empty text.")
@click.option(
    "--log-level",
    default="WARNING",
    show_default=True,
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
    help="DEBUG logs every call (model, prompt hash, status, latency; never the text).",
)
def replay_server(
    data_paths: tuple[Path, ...],
    host: str,
    port: int,
    latency_ms: float | None,
    jitter_ms: float | None,
    profile_path: Path | None,
    api_key: str | None,
    seed: int,
    extra_models: tuple[str, ...],
    rate_429: float | None,
    rate_500: float | None,
    rate_hang: float | None,
    rate_empty: float | None,
    log_level: str,
) -> None:
    """Serve an OpenAI-compatible API that replays recorded LLM answers.

    Known prompts get their recorded response and token counts, unknown ones generated text.
    Runs until SIGINT or SIGTERM.
    """
    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    flags = {
        "latency_ms": latency_ms,
        "jitter_ms": jitter_ms,
        "rate_429": rate_429,
        "rate_500": rate_500,
        "rate_hang": rate_hang,
        "rate_empty": rate_empty,
    }
    overrides = {name: value for name, value in flags.items() if value is not None}
    try:
        if profile_path is not None:
            profiles = load_profiles(profile_path, overrides=overrides)
        else:
            profiles = parse_profiles({}, source="command line", overrides=overrides)
        index = load_index(data_paths)
    except (OSError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    config = ReplayConfig(
        data_paths=data_paths,
        profiles=profiles,
        api_key=api_key,
        seed=seed,
        extra_models=extra_models,
    )

    def ready(bound_host: str, bound_port: int, models: list[str]) -> None:
        click.echo(_ready_line(bound_host, bound_port, index.n_prompts, models), err=True)

    run(config, host, port, index=index, on_ready=ready)
