# Shared by the per-role scripts (ops/worker, ops/beat, ops/flower, ops/metrics, ops/migrate).
# Source it. Settings come from CONDUIT_* variables (conduit_workers/settings.py), e.g. put them
# in an env file and `set -a; . /etc/conduit.env; set +a` before calling a script.
# CONDUIT_OPS_DRY_RUN=1 prints the command instead of running it (tests use it).

source "$(dirname "${BASH_SOURCE[0]}")/env.sh"

run() {
  if [ -n "${CONDUIT_OPS_DRY_RUN:-}" ]; then
    printf '%s\n' "$*"
    exit 0
  fi
  ensure_venv
  cd "$ROOT"
  export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
  exec "$VENV/bin/$1" "${@:2}"
}
