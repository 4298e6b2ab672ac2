"""The Python API of Conduit's producers: submit prompts, wait for results, give feedback.

Tasks are sent by name (``conduit.router.route_batch`` …); no worker code is imported::

    client = ConduitClient()
    sub = client.submit([{"prompt": "What is 2+2?"}], tag="smoke")
    rows = client.wait(sub.batch_id)
"""

from __future__ import annotations

import json
import os
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from celery import Celery

import celeryconfig
from conduit_workers.domain.budget import validate_budget
from conduit_workers.domain.catalog import Catalog, load_catalog
from conduit_workers.domain.constraints import Constraints, parse_constraints
from conduit_workers.domain.items import PromptItem, ignored_fields, parse_item, parse_line
from conduit_workers.domain.rewards import (
    EXPLICIT,
    FeedbackEvent,
    explicit_event_id,
    validate_rating,
)
from conduit_workers.errors import InputError
from conduit_workers.history.history import SqlHistory
from conduit_workers.names import APPLY_EVENTS, FEEDBACK, ROUTE, ROUTE_BATCH
from conduit_workers.settings import Settings, environ, get_settings


@dataclass
class Submission:
    batch_id: str
    accepted: int  # distinct valid prompts in the batch
    new: int  # of which first seen now
    existing: int  # of which already submitted before (answered once only)
    enqueued: int  # prompts sent to the router (new ones and earlier ones still unanswered)
    errors: list[InputError] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # fields the lines carried and were ignored


@dataclass
class FeedbackOutcome:
    applied: int
    duplicates: int
    errors: list[InputError] = field(default_factory=list)


def _open_input(path: Path) -> Any:
    """The file's bytes, or standard input's for ``-`` (left open when done)."""
    if str(path) == "-":
        return os.fdopen(os.dup(sys.stdin.fileno()), "rb")
    try:
        return open(path, "rb")  # noqa: SIM115
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror}") from None


class ConduitClient:
    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or get_settings()
        self._history: SqlHistory | None = None
        self._app: Celery | None = None
        self._catalog: Catalog | None = None

    @property
    def history(self) -> SqlHistory:
        if self._history is None:
            db = self.settings.database
            self._history = SqlHistory(db.url, retry_for_s=db.retry_for_s, pool_size=db.pool_size)
            self._history.create_schema(auto_migrate=db.auto_migrate)
        return self._history

    @property
    def app(self) -> Celery:
        if self._app is None:
            self._app = Celery("conduit-producer", set_as_current=False)
            self._app.conf.update(celeryconfig.build(self.settings))
        return self._app

    @property
    def catalog(self) -> Catalog:
        if self._catalog is None:
            self._catalog = load_catalog(self.settings.catalog.path, environ())
        return self._catalog

    def close(self) -> None:
        if self._history is not None:
            self._history.dispose()
        if self._app is not None:
            self._app.close()

    # -- submitting -----------------------------------------------------------------------

    def parse(
        self, items: Iterable[dict[str, Any] | str]
    ) -> tuple[list[PromptItem], list[InputError]]:
        """Validate items (dicts, or bare prompt strings); errors are numbered from 1."""
        rules = self._validation_rules()
        ok, errors = [], []
        for n, obj in enumerate(items, start=1):
            try:
                if isinstance(obj, str):
                    obj = {"prompt": obj}
                ok.append(parse_item(obj, line=n, **rules))
            except InputError as exc:
                errors.append(exc)
        return ok, errors

    def _validation_rules(self) -> dict[str, Any]:
        limits = self.settings.limits
        return {
            "max_prompt_chars": limits.max_prompt_chars,
            "max_metadata_chars": limits.max_metadata_chars,
            "known_models": frozenset(self.catalog.names),
        }

    def parse_file(self, path: Path) -> tuple[list[PromptItem], list[InputError]]:
        """Validate a JSONL file (``-``: standard input) line by line; a bad line is reported,
        the rest go on."""
        rules = self._validation_rules()
        ok, errors = [], []
        fh = _open_input(path)
        with fh:
            try:
                # Bytes, decoded line by line: a line that is not UTF-8 is rejected alone; a
                # byte-order mark opening the file is skipped.
                for n, raw in enumerate(fh, start=1):
                    try:
                        text = raw.decode("utf-8-sig" if n == 1 else "utf-8")
                    except UnicodeDecodeError as exc:
                        errors.append(InputError(f"not UTF-8 text (byte {exc.start + 1})", n))
                        continue
                    if not text.strip():
                        continue
                    try:
                        ok.append(parse_line(text, line=n, **rules))
                    except InputError as exc:
                        errors.append(exc)
            except OSError as exc:  # e.g. a directory, or an I/O error half-way
                raise InputError(f"cannot read {path}: {exc.strerror}") from None
        return ok, errors

    def submit_items(
        self,
        items: Sequence[PromptItem],
        *,
        tag: str | None = None,
        constraints: Constraints | None = None,
        rejected: int = 0,
        batch_id: str | None = None,
        quality_floor: float | None = None,
        budget_usd: float | None = None,
    ) -> Submission:
        """Record validated prompts as one batch and send them to the routers.

        ``quality_floor``: keep this share of the catalog reference model's quality (the
        batch's ``constraints.quality_floor``; a prompt's own constraint wins).
        ``budget_usd``: the batch never spends more than this; a prompt that cannot be
        afforded ends with status ``over_budget``. ``batch_id``: the batch's id (a new uuid by
        default); one starting with ``apikey:`` (the API keys' daily ledgers) is refused.
        Invalid values raise :class:`InputError`.
        """
        batch_id = batch_id or uuid.uuid4().hex
        constraints = _with_floor(constraints, quality_floor)
        if budget_usd is not None:
            try:
                budget_usd = validate_budget(budget_usd)
            except ValueError as exc:
                raise InputError(f"budget_usd: {exc}") from None
        outcome = self.history.submit(
            batch_id,
            items,
            tag=tag,
            rejected=rejected,
            constraints=constraints.to_json(),
            budget_usd=budget_usd,
        )
        # Earlier submissions' prompts that are still unanswered go again: routing and
        # execution skip whatever was done, so nothing is answered twice.
        todo = outcome.new + self.history.unanswered(outcome.existing)
        self._ensure_broker_epoch()
        self._send(ROUTE_BATCH, ROUTE, todo, self.settings.router.chunk_size)
        return Submission(
            batch_id,
            len(outcome.new) + len(outcome.existing),
            len(outcome.new),
            len(outcome.existing),
            len(todo),
        )

    def submit(
        self,
        items: Iterable[dict[str, Any] | str],
        *,
        tag: str | None = None,
        constraints: Constraints | None = None,
        quality_floor: float | None = None,
        budget_usd: float | None = None,
    ) -> Submission:
        """Validate and submit a list of prompts (dicts like the JSONL lines, or strings);
        ``quality_floor`` and ``budget_usd`` as in :meth:`submit_items`."""
        ok, errors = self.parse(items)
        sub = self.submit_items(
            ok,
            tag=tag,
            constraints=constraints,
            rejected=len(errors),
            quality_floor=quality_floor,
            budget_usd=budget_usd,
        )
        sub.errors = errors
        sub.warnings = ignored_fields(ok)
        return sub

    def submit_file(
        self,
        path: Path,
        *,
        tag: str | None = None,
        constraints: Constraints | None = None,
        quality_floor: float | None = None,
        budget_usd: float | None = None,
    ) -> Submission:
        ok, errors = self.parse_file(path)
        sub = self.submit_items(
            ok,
            tag=tag,
            constraints=constraints,
            rejected=len(errors),
            quality_floor=quality_floor,
            budget_usd=budget_usd,
        )
        sub.errors = errors
        sub.warnings = ignored_fields(ok)
        return sub

    def _ensure_broker_epoch(self) -> None:
        """Mark a fresh Redis broker with its epoch before sending to it, so that workers
        starting later take queued work for live, not for lost (infra/broker_epoch.py)."""
        from conduit_workers.infra.broker_epoch import BrokerEpoch, is_redis_url

        url = self.settings.broker_url
        if self.settings.broker.epoch_check_s > 0 and is_redis_url(url):
            import redis

            client = redis.Redis.from_url(url, socket_timeout=self.settings.redis.socket_timeout_s)
            try:
                BrokerEpoch(client, self.settings.redis.key_prefix).ensure()
            except redis.RedisError:
                pass  # the send below reports the broker
            finally:
                client.close()

    def _send(self, task: str, queue: str, ids: Sequence[str], chunk: int) -> None:
        if not ids:
            return
        with self.app.producer_or_acquire() as producer:
            for i in range(0, len(ids), chunk):
                self.app.send_task(
                    task, args=[list(ids[i : i + chunk])], queue=queue, producer=producer
                )

    # -- waiting --------------------------------------------------------------------------

    def progress(self, batch_id: str) -> tuple[int, int]:
        return self.history.batch_progress(batch_id)

    def wait(
        self,
        batch_id: str,
        *,
        timeout_s: float | None = None,
        poll_s: float = 0.5,
        on_progress: Callable[[int, int], None] | None = None,
    ) -> list[dict[str, Any]]:
        """Block until every prompt of the batch has a result; return the results."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            total, done = self.progress(batch_id)
            if on_progress:
                on_progress(done, total)
            if done >= total:
                return self.results(batch_id)
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(
                    f"batch {batch_id}: {done} of {total} prompts answered after "
                    f"{timeout_s:.0f} s; are workers running on the queues?"
                )
            time.sleep(poll_s)

    def results(self, batch_id: str) -> list[dict[str, Any]]:
        return self.history.batch_results(batch_id)

    # -- feedback -------------------------------------------------------------------------

    def feedback(self, ratings: Iterable[tuple[str, float]]) -> FeedbackOutcome:
        """Explicit ratings in [0, 1] for answered prompts, by query id or input ``id``."""
        pairs = [(str(ref), rating) for ref, rating in ratings]
        answered = self.history.answered_by([ref for ref, _ in pairs])
        events, errors = [], []
        for n, (ref, rating) in enumerate(pairs, start=1):
            try:
                value = validate_rating(rating)
            except ValueError as exc:
                errors.append(InputError(str(exc), n))
                continue
            if ref not in answered:
                errors.append(InputError(f"no answered prompt with id {ref[:80]!r}", n))
                continue
            qid, model = answered[ref]
            events.append(FeedbackEvent(explicit_event_id(qid), qid, model, EXPLICIT, value, 1.0))
        fresh = self.history.add_feedback(events) if events else []
        self._send(APPLY_EVENTS, FEEDBACK, fresh, self.settings.feedback.chunk_size)
        return FeedbackOutcome(len(fresh), len(events) - len(fresh), errors)

    def feedback_file(self, path: Path) -> FeedbackOutcome:
        """Ratings from a JSONL file of ``{"id": …, "rating": 0..1}`` lines."""
        pairs, errors = [], []
        try:
            lines = Path(path).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(f"cannot read {path}: {exc}") from None
        for n, text in enumerate(lines, start=1):
            if not text.strip():
                continue
            try:
                obj = json.loads(text)
                pairs.append((str(obj["id"]), obj["rating"]))
            except (ValueError, KeyError, TypeError):
                errors.append(InputError('expected {"id": …, "rating": 0..1}', n))
        out = self.feedback(pairs)
        out.errors = errors + out.errors
        return out


def _with_floor(constraints: Constraints | None, quality_floor: float | None) -> Constraints:
    """The batch's constraints with ``quality_floor`` set (validated like a constraint)."""
    constraints = constraints or Constraints()
    if quality_floor is None:
        return constraints
    try:
        floor = parse_constraints({"quality_floor": quality_floor}).quality_floor
    except ValueError as exc:
        raise InputError(str(exc)) from None
    return replace(constraints, quality_floor=floor)
