"""docker-compose.yml for operators: every provider's key is passed, the catalog is a mounted
file, every long-running service has a healthcheck, and the Dockerfile installs the
dependencies (torch, the static embedder) before it copies the source, so that a code change
rebuilds neither."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from conduit_workers.domain.catalog import DEFAULT_KEY_ENV

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, Any] = COMPOSE["services"]
CONDUIT = {n: s for n, s in SERVICES.items() if s.get("image") == "conduit:latest"}
CATALOG = "/etc/conduit/catalog.toml"


def test_every_provider_key_reaches_every_conduit_service() -> None:
    keys = {v for v in DEFAULT_KEY_ENV.values() if v}
    assert keys == {"OPENAI_API_KEY", "ANTHROPIC_API_KEY", "GOOGLE_API_KEY", "GROQ_API_KEY"}
    for name, svc in CONDUIT.items():
        assert keys <= set(svc["environment"]), name


def test_the_catalog_is_a_mounted_file() -> None:
    for name, svc in CONDUIT.items():
        assert svc["environment"]["CONDUIT_CATALOG__PATH"] == CATALOG, name
        mounts = [v for v in svc.get("volumes", []) if v.endswith(f":{CATALOG}:ro")]
        assert len(mounts) == 1, name


def test_every_long_running_service_has_a_healthcheck() -> None:
    for name, svc in SERVICES.items():
        if name == "migrate":  # a one-shot: the others wait for it to complete
            continue
        assert svc.get("healthcheck", {}).get("test"), name


def test_dockerfile_installs_dependencies_before_the_source() -> None:
    lines = [ln.strip() for ln in (ROOT / "Dockerfile").read_text().splitlines()]

    def first(pred: Any) -> int:
        return next(i for i, ln in enumerate(lines) if pred(ln))

    deps = first(lambda ln: "tomllib" in ln and "dependencies" in ln)
    torch = first(lambda ln: "torch==" in ln)
    embedder = first(lambda ln: "static_distill /" in ln)
    source = first(lambda ln: ln.startswith("COPY conduit_workers ./conduit_workers"))
    producers = first(lambda ln: ln.startswith("COPY producers"))
    assert torch < source and deps < source and embedder < source and embedder < producers
    assert any("pip install" in ln and "--no-deps" in ln for ln in lines[source:])
