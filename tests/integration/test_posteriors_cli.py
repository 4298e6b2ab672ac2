"""`conduit posteriors` shows each model's quality as the router sees it: the same figure as
`conduit status` (one computation, producers.status.model_statuses)."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from conduit_workers.domain.catalog import load_catalog
from conduit_workers.domain.learning import learn
from conduit_workers.domain.rewards import EXPLICIT, FeedbackEvent
from conduit_workers.learning.posterior_store import RedisPosteriorStore
from conduit_workers.settings import Settings
from producers.status import model_statuses
from tests.conftest import ROOT, TEST_PREFIX

pytestmark = pytest.mark.integration


def test_posteriors_and_status_show_the_same_quality(redis_url: str, pg_url: str) -> None:
    settings = Settings()
    catalog = load_catalog(settings.catalog.path, os.environ)
    store = RedisPosteriorStore.from_url(redis_url, TEST_PREFIX)
    model = catalog.models[0].name
    contexts = {f"q{i}": np.ones(settings.context_dim) for i in range(5)}
    events = [FeedbackEvent(f"e{i}", f"q{i}", model, EXPLICIT, 0.2, 1.0) for i in range(5)]
    learn(store, events, contexts, settings.context_dim, "u1")
    env = dict(
        os.environ,
        CONDUIT_DATABASE__URL=pg_url,
        CONDUIT_REDIS__URL=redis_url,
        CONDUIT_REDIS__KEY_PREFIX=TEST_PREFIX,
        PYTHONPATH=os.environ.get("PYTHONPATH", str(ROOT)),
    )
    out = subprocess.run(
        [sys.executable, "-m", "producers.cli", "posteriors"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rows = {line.split()[0]: line.split() for line in out.splitlines()[1:]}
    status = {m.model: m for m in model_statuses(settings, catalog, store)}
    assert set(rows) == set(status)
    for name, m in status.items():
        assert float(rows[name][3]) == pytest.approx(m.quality, abs=5e-4)  # "quality"
    assert rows[model][5] == "0.200" and float(rows[model][2]) == 5.0  # mean r, evidence
