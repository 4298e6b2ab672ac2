"""Rated results of the history database as labelled records, for a warm start.

One record per prompt that an explicit rating was given for, in the shared data sets' schema
(``../shared/data``), with the model that answered it::

    {"id": "<query id>", "prompt": "…", "models": {"<model>": {"quality": 0.8,
     "input_tokens": 12, "output_tokens": 40, "cost_usd": 0.0004}}}

``conduit learn --from-history`` feeds them to the warm start. They are for posteriors that
have not seen those ratings (a new deployment, a reset, another Redis): the feedback workers
applied them live already.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

from sqlalchemy import Select, and_, select
from sqlalchemy.engine import Connection

from conduit_workers.domain.rewards import EXPLICIT
from conduit_workers.history import history_schema as t
from conduit_workers.history.history_base import SqlBase

PAGE = 2_000  # records read per query: a long history is streamed, not loaded at once


def _fetch(stmt: Select[Any]) -> Callable[[Connection], list[Any]]:
    return lambda conn: list(conn.execute(stmt).all())


def rated_records(history: SqlBase, since: datetime | None = None) -> Iterator[dict[str, Any]]:
    """Every answered prompt with an explicit rating of its answer, oldest answer first;
    ``since``: only answers given at or after it."""
    f, r, q = t.feedback, t.results, t.queries
    cond = [r.c.status == "ok"]
    if since is not None:
        cond.append(r.c.created_at >= since)
    base = (
        select(
            r.c.created_at,
            q.c.id,
            q.c.prompt,
            r.c.model,
            f.c.reward,
            r.c.input_tokens,
            r.c.output_tokens,
            r.c.cost_usd,
        )
        .select_from(
            r.join(q, q.c.id == r.c.query_id).join(
                f,
                and_(f.c.query_id == r.c.query_id, f.c.model == r.c.model, f.c.kind == EXPLICIT),
            )
        )
        .order_by(r.c.created_at, q.c.id)
        .limit(PAGE)
    )
    after: tuple[Any, str] | None = None
    while True:
        stmt = base.where(*cond)
        if after is not None:  # keyset paging: rows written meanwhile are neither lost nor doubled
            stmt = stmt.where(
                (r.c.created_at > after[0]) | and_(r.c.created_at == after[0], q.c.id > after[1])
            )
        rows = history._tx(_fetch(stmt))
        for _ts, qid, prompt, model, rating, tin, tout, cost in rows:
            yield {
                "id": qid,
                "prompt": prompt,
                "models": {
                    model: {
                        "quality": float(rating),
                        "input_tokens": int(tin),
                        "output_tokens": int(tout),
                        "cost_usd": float(cost),
                    }
                },
            }
        if len(rows) < PAGE:
            return
        after = (rows[-1][0], rows[-1][1])
