"""Flower's defaults from Conduit's settings, so ``celery -A conduit_workers flower`` needs no
flags: port, listen address and basic auth (``CONDUIT_FLOWER__BASIC_AUTH=user:password``).

Flower keeps its options in tornado's global ``options``, defined when the ``celery`` command
loads the flower plugin, before it loads this app; the values set here are defaults that
``FLOWER_*`` variables, a ``flowerconfig.py`` and command-line flags still override. In any
other process (workers, producers) Flower is not loaded and nothing happens.

Closed by default: Flower listens on 127.0.0.1, and without a login (``CONDUIT_FLOWER__BASIC_AUTH``,
``FLOWER_BASIC_AUTH``, ``FLOWER_AUTH``, ``--basic-auth``/``--auth`` or a ``flowerconfig.py``
that sets one) it refuses to start, since its dashboard pages answer anyone;
``CONDUIT_FLOWER__OPEN=true`` serves it without one on purpose.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from conduit_workers.settings import FlowerSettings


def apply_flower_defaults(settings: FlowerSettings) -> bool:
    """Set Flower's options if Flower is loaded in this process; True if it was."""
    if "flower.options" not in sys.modules:
        return False
    from tornado.options import options

    options.port = settings.port
    options.address = settings.address
    if settings.basic_auth is not None and settings.basic_auth.get_secret_value():
        options.basic_auth = [
            p.strip() for p in settings.basic_auth.get_secret_value().split(",") if p.strip()
        ]
    elif "flower" in sys.argv[1:]:
        # Every `celery` command loads the flower plugin's options; only `flower` serves pages.
        if settings.open:
            print(
                "Flower serves every page without a login (CONDUIT_FLOWER__OPEN=true)",
                file=sys.stderr,
                flush=True,
            )
        elif not login_given_elsewhere(os.environ, sys.argv):
            raise SystemExit(
                "Flower refuses to start without a login: set CONDUIT_FLOWER__BASIC_AUTH="
                "user:password, or CONDUIT_FLOWER__OPEN=true to serve it without one on purpose"
            )
    return True


def login_given_elsewhere(env: dict[str, str] | os._Environ[str], argv: list[str]) -> bool:
    """A login that Flower's own variables, flags or config file set."""
    if env.get("FLOWER_BASIC_AUTH") or env.get("FLOWER_AUTH"):
        return True
    if any(a.startswith(("--basic-auth", "--basic_auth", "--auth")) for a in argv):
        return True
    conf = Path("flowerconfig.py")
    return conf.is_file() and "auth" in conf.read_text(errors="replace")


__all__ = ["apply_flower_defaults"]
