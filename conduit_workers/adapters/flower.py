"""Flower's defaults from Conduit's settings, so ``celery -A conduit_workers flower`` needs no
flags: port, listen address and basic auth (``CONDUIT_FLOWER__BASIC_AUTH=user:password``).

Flower keeps its options in tornado's global ``options``, defined when the ``celery`` command
loads the flower plugin, before it loads this app; the values set here are defaults that
``FLOWER_*`` variables, a ``flowerconfig.py`` and command-line flags still override. In any
other process (workers, producers) Flower is not loaded and nothing happens.
"""

from __future__ import annotations

import sys

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
    return True


__all__ = ["apply_flower_defaults"]
