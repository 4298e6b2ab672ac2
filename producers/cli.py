"""The ``conduit`` command."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from conduit_workers.domain.constraints import parse_constraints
from conduit_workers.domain.items import ignored_fields
from conduit_workers.errors import ConduitError, InputError
from producers.api import ConduitClient
from producers.cli_errors import FriendlyGroup, check_broker
from producers.cli_errors import version as conduit_version
from producers.wait_cli import wait_reporting


def _client() -> ConduitClient:
    return ConduitClient()


def _progress_bar(total: int, label: str) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc=label, unit="prompt", file=sys.stderr, dynamic_ncols=True)


def _report_errors(errors: list[InputError], limit: int = 20, rejects: Path | None = None) -> None:
    """The first ``limit`` rejected lines on screen; all of them in ``rejects`` (JSONL)."""
    if rejects is not None:
        with open(rejects, "w", encoding="utf-8") as fh:
            for err in errors:
                fh.write(json.dumps({"line": err.line, "reason": err.reason}) + "\n")
    for err in errors[:limit]:
        click.echo(f"  rejected {err}", err=True)
    if len(errors) > limit:
        where = f"all in {rejects}" if rejects else "--rejects FILE writes them all"
        click.echo(f"  … and {len(errors) - limit} more rejected lines ({where})", err=True)
    elif rejects is not None and errors:
        click.echo(f"  rejected lines written to {rejects}", err=True)


@click.group(cls=FriendlyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(conduit_version(), "--version", prog_name="conduit")
def cli() -> None:
    """Conduit: route every prompt to the LLM with the best quality for its cost."""


@cli.command()
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--tag", help="A label for the batch (reports group spend by it).")
@click.option("--strict", is_flag=True, help="Submit nothing and fail if any line is rejected.")
@click.option(
    "--rejects",
    type=click.Path(path_type=Path),
    help='Write every rejected line here as JSONL ({"line": n, "reason": …}).',
)
@click.option("--wait/--no-wait", default=False, help="Wait for every answer, with a progress bar.")
@click.option("--out", type=click.Path(path_type=Path), help="With --wait: write results as JSONL.")
@click.option(
    "--constraints",
    "constraints_json",
    help='Batch constraints as JSON, e.g. \'{"lambda_cost": 0.5, "max_cost_usd": 0.01}\'.',
)
@click.option(
    "--quality-floor",
    type=float,
    default=None,
    help="Keep this share (0-1) of the catalog reference model's quality, e.g. 0.95.",
)
@click.option(
    "--budget-usd",
    type=float,
    default=None,
    help=(
        "Spend at most this many USD on the batch, for the most quality it buys; prompts it "
        "cannot pay for end over_budget."
    ),
)
@click.option(
    "--timeout",
    "timeout_s",
    type=float,
    default=None,
    help="Give up waiting after this many seconds.",
)
def submit(
    file: Path,
    tag: str | None,
    strict: bool,
    rejects: Path | None,
    wait: bool,
    out: Path | None,
    constraints_json: str | None,
    quality_floor: float | None,
    budget_usd: float | None,
    timeout_s: float | None,
) -> None:
    """Submit FILE.jsonl (`-`: standard input): one {"id"?, "prompt", "user"?, "metadata"?,
    "constraints"?} per line, or OpenAI's "messages" with "temperature", "max_tokens",
    "response_format" …, or OpenAI Batch API lines as they are; a bad line is rejected alone,
    with its number and reason, an unknown field gets a warning."""
    client = _client()
    try:
        constraints = None
        if constraints_json:
            try:
                constraints = parse_constraints(
                    json.loads(constraints_json), frozenset(client.catalog.names)
                )
            except ValueError as exc:
                raise click.UsageError(f"--constraints: {exc}") from None
        check_broker(client.app, client.settings.broker_url)
        items, errors = client.parse_file(file)
        _report_errors(errors, rejects=rejects)
        for warning in ignored_fields(items):
            click.echo(f"  warning: {warning}", err=True)
        if strict and errors:
            raise click.ClickException(
                f"{len(errors)} lines rejected (--strict): nothing submitted; fix them, or "
                "drop --strict to submit the other lines"
            )
        sub = client.submit_items(
            items,
            tag=tag,
            constraints=constraints,
            rejected=len(errors),
            quality_floor=quality_floor,
            budget_usd=budget_usd,
        )
        sub.errors = errors
        click.echo(
            f"batch {sub.batch_id}: {sub.accepted} prompts accepted ({sub.new} new, "
            f"{sub.existing} submitted before), {len(sub.errors)} rejected, "
            f"{sub.enqueued} sent to the routers",
            err=True,
        )
        if wait:
            bar = _progress_bar(sub.accepted, "answered")

            def show(done: int, total: int) -> None:
                bar.update(done - bar.n)

            waited = wait_reporting(client, sub.batch_id, timeout_s, show)
            bar.close()
            rows = waited.rows
            _print_summary(rows)
            if out:
                with open(out, "w", encoding="utf-8") as fh:
                    for row in rows:
                        fh.write(json.dumps(row, default=str, ensure_ascii=False) + "\n")
                click.echo(f"results written to {out}", err=True)
            if waited.stopped:
                raise click.ClickException(
                    f"batch {sub.batch_id}: {len(rows)} of {waited.total} prompts answered, "
                    f"{waited.stopped}" + (f" (the answered ones are in {out})" if out else "")
                )
        else:
            click.echo(sub.batch_id)
    except InputError as exc:
        raise click.ClickException(str(exc)) from None
    except TimeoutError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        client.close()


def _print_summary(rows: list[dict[str, Any]]) -> None:
    by_model: dict[str, dict[str, float]] = {}
    for r in rows:
        key = r["model"] if r["status"] == "ok" else f"({r['status']})"
        s = by_model.setdefault(key, {"prompts": 0, "in": 0, "out": 0, "cost": 0.0})
        s["prompts"] += 1
        s["in"] += r["input_tokens"] or 0
        s["out"] += r["output_tokens"] or 0
        s["cost"] += r["cost_usd"] or 0.0
    click.echo(f"{'model':45} {'prompts':>8} {'in tok':>9} {'out tok':>8} {'cost USD':>10}")
    for name, s in sorted(by_model.items()):
        click.echo(
            f"{name:45} {s['prompts']:>8.0f} {s['in']:>9.0f} {s['out']:>8.0f} {s['cost']:>10.5f}"
        )


@cli.command()
@click.argument("batch_id")
@click.option("--out", type=click.Path(path_type=Path), help="Write results as JSONL here.")
def results(batch_id: str, out: Path | None) -> None:
    """Show (or write) the results of a batch."""
    client = _client()
    try:
        rows = client.results(batch_id)
        if not rows:
            raise click.ClickException(f"no batch {batch_id!r}")
        if out:
            with open(out, "w", encoding="utf-8") as fh:
                for row in rows:
                    fh.write(json.dumps(row, default=str, ensure_ascii=False) + "\n")
        total, done = client.progress(batch_id)
        click.echo(f"batch {batch_id}: {done} of {total} answered")
        _print_summary([r for r in rows if r["status"] is not None])
    finally:
        client.close()


@cli.command()
@click.argument("query_id", required=False)
@click.option(
    "--rating", type=float, help="Quality of the answer, from 0 (useless) to 1 (perfect)."
)
@click.option(
    "--file",
    "file",
    type=click.Path(path_type=Path),
    help='JSONL of {"id": …, "rating": 0..1} lines.',
)
def feedback(query_id: str | None, rating: float | None, file: Path | None) -> None:
    """Rate an answer: `conduit feedback QUERY_ID --rating 0.8`, or `--file ratings.jsonl`."""
    if (query_id is None) == (file is None):
        raise click.UsageError("give either QUERY_ID with --rating, or --file")
    client = _client()
    try:
        if file is not None:
            outcome = client.feedback_file(file)
        else:
            if rating is None:
                raise click.UsageError("--rating is required with QUERY_ID")
            outcome = client.feedback([(query_id or "", rating)])
        _report_errors(outcome.errors)
        click.echo(
            f"{outcome.applied} ratings sent, {outcome.duplicates} already given, "
            f"{len(outcome.errors)} rejected"
        )
        if outcome.errors and not outcome.applied:
            sys.exit(1)
    except InputError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        client.close()


@cli.command()
@click.option("--reset", is_flag=True, help="Forget all learned evidence (asks no question).")
@click.option(
    "--rebuild",
    is_flag=True,
    help="Rebuild the posteriors and the quality floors' counters from the history database "
    "(after Redis lost them); stop the feedback workers first.",
)
def posteriors(reset: bool, rebuild: bool) -> None:
    """Show what the router has learned per model."""
    from conduit_workers.learning.posterior_store import RedisPosteriorStore

    client = _client()
    s = client.settings
    store = RedisPosteriorStore.from_url(s.redis.url, s.redis.key_prefix, s.redis.applied_ttl_s)
    names = list(client.catalog.names)
    if reset:
        store.reset(names)
        click.echo(f"posteriors of {len(names)} models reset")
        return
    if rebuild:
        from conduit_workers.learning.recovery import rebuild_posteriors

        out = rebuild_posteriors(client.history, store, names, s.context_dim, s.router.decay)
        click.echo(
            f"posteriors of {len(names)} models rebuilt from {out.events} applied "
            f"feedback events and {out.warm_updates} warm-start updates ({out.updates} "
            "updates)",
            err=True,
        )
        from conduit_workers.learning.recovery import rebuild_floors
        from conduit_workers.routing.floor_store import RedisFloorStore

        floors = RedisFloorStore(store.client, s.redis.key_prefix, s.redis.applied_ttl_s)
        for stream, n in sorted(rebuild_floors(client.history, floors).items()):
            click.echo(
                f"quality floor {stream}: rebuilt from {n} decisions and their ratings "
                "(λ starts again from its initial value)",
                err=True,
            )
    # The router's own view of each model's quality, computed as `conduit status` computes it.
    from producers.status import model_statuses

    read = store.read(names, s.context_dim)
    click.echo(
        f"{'model':45} {'version':>7} {'evidence':>8} {'quality':>7} {'± sd':>6} {'mean r':>7} "
        f"{'calls':>6} {'errors':>6} {'ms/call':>8} {'USD spent':>10}"
    )
    for m in model_statuses(s, client.catalog, store):
        c = read[m.model][1].counters
        ms = c["latency_ms"] / c["calls"] if c["calls"] else 0.0
        mean_r = "-" if m.mean_reward is None else f"{m.mean_reward:.3f}"
        click.echo(
            f"{m.model:45} {m.version:>7} {m.evidence:>8.1f} {m.quality:>7.3f} "
            f"{m.quality_sd:>6.3f} {mean_r:>7} {c['calls']:>6.0f} {c['errors']:>6.0f} "
            f"{ms:>8.1f} {c['cost_usd']:>10.5f}"
        )


@cli.command()
@click.argument(
    "file", required=False, type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
@click.option(
    "--from-history",
    is_flag=True,
    help="Replay the rated answers of Conduit's history database instead of a file.",
)
@click.option(
    "--since",
    type=click.DateTime(["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S"]),
    help="With --from-history: only answers given from this UTC date (YYYY-MM-DD) on.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON object.")
def learn(file: Path | None, from_history: bool, since: datetime | None, as_json: bool) -> None:
    """Warm-start the router from labelled data: a JSONL file in the shared schema (per prompt,
    the quality, tokens and cost of any subset of the models), or with --from-history the rated
    answers of the history database (for posteriors that have not seen them: a new Redis, a
    reset). Loading the same records twice counts once."""
    from conduit_workers.routing.warm_start import Record, learn_into, parse_record, read_records

    if (file is None) == (not from_history):
        raise click.UsageError("give either FILE or --from-history")
    if since is not None and not from_history:
        raise click.UsageError("--since goes with --from-history")
    client = _client()
    records: list[Record]
    if from_history:
        from conduit_workers.history.history_ratings import rated_records

        start = since.replace(tzinfo=UTC) if since is not None else None
        records = [
            parse_record(r, f"query {r['id']}") for r in rated_records(client.history, start)
        ]
        if not records:
            raise click.ClickException(
                "no rated answers in the history database"
                + (f" since {start:%Y-%m-%d %H:%M} UTC" if start else "")
                + "; rate answers with `conduit feedback` first"
            )
    else:
        assert file is not None
        try:
            records = list(read_records(file))
        except ValueError as exc:
            raise click.ClickException(f"{exc}; fix the line or leave it out") from None
    bar = _progress_bar(len(records), "learn")
    try:
        summary = learn_into(
            client.settings,
            client.catalog,
            records,
            lambda done: bar.update(done - bar.n),
            log=client.history,
        )
    except ConduitError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        bar.close()
    if as_json:
        click.echo(json.dumps(summary.to_json()))
        return
    click.echo(
        f"{summary.records} records: "
        + ", ".join(
            f"{m} {n} ratings (weight {summary.weights[m]:.3g})" for m, n in summary.ratings.items()
        )
        + f"; {summary.updates_applied} updates applied, "
        f"{summary.updates_already_applied} already loaded"
    )
    if summary.unknown_models:
        click.echo(f"skipped models not in the catalog: {summary.unknown_models}", err=True)


@cli.command()
@click.option("--prompts", type=int, default=400, help="How many prompts of the shipped sample.")
@click.option(
    "--waves", type=int, default=4, help="Submit in this many waves, rating each before the next."
)
@click.option(
    "--latency-ms", type=float, default=30.0, help="Latency of the replay server per call."
)
@click.option("--keep-db", is_flag=True, help="Keep the demo's history database of an earlier run.")
def demo(prompts: int, waves: int, latency_ms: float, keep_db: bool) -> None:
    """Run a batch of real MMLU prompts through the whole system and print what it saved."""
    from producers.demo import run_demo

    try:
        run_demo(prompts=prompts, waves=waves, latency_ms=latency_ms, keep_db=keep_db)
    except ConduitError as exc:
        raise click.ClickException(str(exc)) from None


def _add_replay_server() -> None:
    from conduit_workers.replay.cli import replay_server
    from producers.dlq_cli import dlq

    cli.add_command(replay_server)
    from producers.ops_cli import COMMANDS

    for command in COMMANDS:
        cli.add_command(command)
    cli.add_command(dlq)
    from producers.serve_cli import COMMANDS as SERVE_COMMANDS

    for command in SERVE_COMMANDS:
        cli.add_command(command)


_add_replay_server()


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
