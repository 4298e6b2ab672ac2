"""Tools run by hand or by the install step, never on a worker's runtime path (they may import
torch): ``python -m conduit_workers.tools.static_distill DIR`` builds the static embedder."""
