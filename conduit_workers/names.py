"""Task and queue names, in one place: what workers register, producers send and Celery routes.

Tasks carry explicit names ``conduit.<role>.<verb>`` so that a renamed module never orphans
messages in flight; queues are named after roles. Importing this module imports nothing else
(producers use it without Celery's worker side).

=================================  ==========  ===============================================
task                               queue       payload
=================================  ==========  ===============================================
``conduit.router.route_batch``     route       prompt ids
``conduit.executor.execute_batch`` execute     prompt ids
``conduit.feedback.apply_events``  feedback    feedback event ids
``conduit.feedback.sweep``         feedback    none (sent by beat)
``conduit.reports.daily_cost``     reports     an ISO date or none; ``force`` (sent by beat)
=================================  ==========  ===============================================
"""

from __future__ import annotations

from typing import Final

# Queues, named after roles.
ROUTE: Final = "route"
EXECUTE: Final = "execute"
FEEDBACK: Final = "feedback"
REPORTS: Final = "reports"
QUEUES: Final = (ROUTE, EXECUTE, FEEDBACK, REPORTS)

# Tasks.
ROUTE_BATCH: Final = "conduit.router.route_batch"
EXECUTE_BATCH: Final = "conduit.executor.execute_batch"
APPLY_EVENTS: Final = "conduit.feedback.apply_events"
SWEEP: Final = "conduit.feedback.sweep"
DAILY_COST: Final = "conduit.reports.daily_cost"

# The queue of each task.
TASK_QUEUES: Final[dict[str, str]] = {
    ROUTE_BATCH: ROUTE,
    EXECUTE_BATCH: EXECUTE,
    APPLY_EVENTS: FEEDBACK,
    SWEEP: FEEDBACK,
    DAILY_COST: REPORTS,
}

# Tasks whose one argument is a list of ids (prompt or feedback event ids).
ID_TASKS: Final = frozenset({ROUTE_BATCH, EXECUTE_BATCH, APPLY_EVENTS})

# The task module of each queue (what a worker consuming the queue imports).
ROLE_MODULES: Final[dict[str, str]] = {
    ROUTE: "conduit_workers.routing.router",
    EXECUTE: "conduit_workers.execution.executor",
    FEEDBACK: "conduit_workers.learning.feedback",
    REPORTS: "conduit_workers.reports.nightly",
}

# What `celery -A conduit_workers beat` sends (run exactly one beat; see docs/deploy.md).
DAILY_COST_ENTRY: Final = "conduit-daily-cost-report"
SWEEP_ENTRY: Final = "conduit-sweep"
