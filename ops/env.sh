# Shared by the ops/ scripts: a project virtualenv that installs itself, and local services.
# Source it; it defines functions only.

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${CONDUIT_VENV:-$ROOT/.venv}"
PY="$VENV/bin/python"

say() { printf '%s\n' "$*" >&2; }

# Create the virtualenv if missing and (re)install the project when pyproject.toml changed.
ensure_venv() {
  local python="${PYTHON:-}"
  if [ -z "$python" ]; then
    for c in python3.11 python3.12 python3.13 python3; do
      if command -v "$c" >/dev/null 2>&1 && "$c" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
        python="$c"; break
      fi
    done
  fi
  [ -n "$python" ] || { say "Conduit needs Python 3.11 or newer (python3.11 not found)"; exit 1; }
  if [ ! -x "$PY" ]; then
    say "creating the virtualenv $VENV"
    "$python" -m venv "$VENV"
  fi
  local stamp="$VENV/.conduit-installed" want
  want="$(sha256sum "$ROOT/pyproject.toml" | cut -d' ' -f1)"
  if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    say "installing Conduit and its dependencies into $VENV (torch is the CPU build, pinned) ..."
    "$PY" -m pip install --quiet --upgrade pip
    "$PY" -m pip install --quiet -e "$ROOT[dev]"
    echo "$want" > "$stamp"
  fi
  ensure_static_embedder
}

# The router's default embedder is MiniLM distilled to static vectors: distil it once here (about
# a minute, no download), so that no router distils it while it routes its first prompts.
ensure_static_embedder() {
  local dir="${CONDUIT_ROUTER__STATIC_MODEL_DIR:-$HOME/.cache/conduit/minilm-static}"
  if [ ! -f "$dir/vectors.npy" ]; then
    say "distilling the static embedder from the shipped MiniLM weights into $dir (once) ..."
    HF_HUB_OFFLINE=1 "$PY" -m conduit_workers.adapters.static_embedder "$dir"
  fi
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Start Redis, PostgreSQL and RabbitMQ on their usual local ports when they are installed and down.
ensure_services() {
  if ! port_open 6379 && command -v redis-server >/dev/null 2>&1; then
    say "starting redis-server on 127.0.0.1:6379"
    mkdir -p /var/lib/redis /var/log/redis 2>/dev/null || true
    redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
      --dir /var/lib/redis --logfile /var/log/redis/ci.log || say "could not start redis-server"
  fi
  if ! port_open 5432 && command -v pg_ctlcluster >/dev/null 2>&1; then
    say "starting PostgreSQL"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start \
      || say "could not start PostgreSQL"
  fi
  if ! port_open 5672 && command -v rabbitmq-server >/dev/null 2>&1; then
    say "starting RabbitMQ"
    rabbitmq-server -detached || say "could not start RabbitMQ"
  fi
  local i
  for i in $(seq 1 60); do
    port_open 6379 && port_open 5432 && break
    sleep 1
  done
}
