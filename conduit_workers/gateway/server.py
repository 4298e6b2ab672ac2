"""Run the HTTP API under uvicorn: ``conduit serve`` (one or more worker processes on one
port; each routes in-process over the shared Redis posteriors and budget ledger)."""

from __future__ import annotations

from conduit_workers.settings import Settings


def serve(settings: Settings, *, access_log: bool = False) -> None:
    import uvicorn

    gw = settings.gateway
    uvicorn.run(
        "conduit_workers.gateway.app:create_app",
        factory=True,
        host=gw.host,
        port=gw.port,
        workers=gw.workers if gw.workers > 1 else None,
        log_level=settings.log_level.lower(),
        # One line per request (method, path, status): off by default, it costs more than a
        # routed call's own work. Headers and bodies (keys, prompts) are never logged.
        access_log=access_log,
        proxy_headers=False,
        timeout_graceful_shutdown=10,
    )
