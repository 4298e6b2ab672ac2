"""Celery configuration, translated from Conduit's settings (nothing is read here).

``build(settings)`` returns the dict that ``conduit_workers.celery_app`` loads. Why each value:

- JSON only: a pickle body on the broker is refused, never executed.
- Late acks, prefetch 1, reject on worker loss: a task whose worker dies is delivered again
  (at least once); every task is idempotent by key, so its effects still happen once. Prefetch
  is per pool slot: the executor's threads pool (``ops/worker executor``, ``-c 4``) reserves 4
  tasks, which run at once over the process's shared LLM call slots, so the next chunk's calls
  start as soon as a slot frees instead of after the slowest call of the previous chunk.
- No result backend: results live in the history database, keyed by prompt.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from celery.schedules import crontab
from kombu.entity import Exchange, Queue

from conduit_workers import names
from conduit_workers.settings import Settings


def build(settings: Settings) -> dict[str, Any]:
    broker_url = settings.broker_url
    conf: dict[str, Any] = {
        "broker_url": broker_url,
        "result_backend": None,
        "task_ignore_result": True,
        "task_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        "event_serializer": "json",
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "task_acks_on_failure_or_timeout": True,
        # A task killed by the hard time limit goes back to the queue like one whose worker
        # died (the delivery count sends it to the dead-letter queue if it keeps timing out).
        "task_acks_on_timeout": False,
        "worker_prefetch_multiplier": 1,
        "task_queues": [Queue(q, Exchange(q, type="direct"), routing_key=q) for q in names.QUEUES],
        "task_default_queue": names.ROUTE,
        "task_routes": {
            name: {"queue": q, "routing_key": q} for name, q in names.TASK_QUEUES.items()
        },
        "task_track_started": False,
        "task_send_sent_event": True,
        "worker_send_task_events": True,
        "worker_hijack_root_logger": False,
        "broker_connection_retry_on_startup": True,
        "broker_connection_max_retries": None,
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        # A task that sends the next stage's task while the broker restarts waits for it (up to
        # about a minute) instead of failing after Celery's default 3 quick retries.
        "task_publish_retry_policy": {
            "max_retries": 40,
            "interval_start": 0.2,
            "interval_step": 0.5,
            "interval_max": 2.0,
        },
        "timezone": "UTC",
        "enable_utc": True,
    }
    if settings.reports.schedule:
        conf["beat_schedule"] = {
            names.DAILY_COST_ENTRY: {
                "task": names.DAILY_COST,
                "schedule": crontab(
                    minute=settings.reports.minute_utc, hour=settings.reports.hour_utc
                ),
                "options": {"queue": names.REPORTS, "routing_key": names.REPORTS},
            },
        }
    # Work whose task was lost with the broker is sent again (see feedback.sweep_after_s).
    conf.setdefault("beat_schedule", {})[names.SWEEP_ENTRY] = {
        "task": names.SWEEP,
        "schedule": timedelta(seconds=settings.feedback.sweep_interval_s),
        "options": {
            "queue": names.FEEDBACK,
            "routing_key": names.FEEDBACK,
            "expires": settings.feedback.sweep_interval_s,
        },
    }
    if broker_url.startswith(("redis://", "rediss://", "unix://")):
        conf["broker_transport_options"] = {
            "visibility_timeout": settings.broker.visibility_timeout_s,
            # Scan for abandoned tasks every restore_interval_s (kombu's throttle of 10 would
            # make it 10x that): recovery from a dead worker ≈ visibility timeout + interval.
            "unacked_restore_interval": settings.broker.restore_interval_s,
            "unacked_restore_throttle": 1,
        }
    if settings.broker.task_time_limit_s is not None:
        conf["task_time_limit"] = settings.broker.task_time_limit_s
    return conf
