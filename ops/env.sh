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

# The router's default embedder is MiniLM distilled to static vectors and trained on WordNet's
# glosses to reproduce MiniLM's sentence embeddings: build it once here (~5 minutes on 2 cores,
# no download), so that no router builds it while it routes its first prompts. It is rebuilt
# only when its format changes or the corpus appeared since.
ensure_static_embedder() {
  local dir="${CONDUIT_ROUTER__STATIC_MODEL_DIR:-$HOME/.cache/conduit/minilm-static}"
  ensure_corpus
  HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false \
    "$PY" -m conduit_workers.tools.static_distill "$dir" >&2
}

# WordNet's glosses (Debian's wordnet-base), the corpus of the static embedder; installed with
# apt-get where this runs as root on Debian, otherwise a warning (the embedder works without).
ensure_corpus() {
  local corpus="${CONDUIT_ROUTER__STATIC_CORPUS_DIR:-/usr/share/wordnet}"
  [ -f "$corpus/data.noun" ] && return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    say "installing WordNet's glosses (Debian package wordnet-base), the static embedder's corpus"
    { DEBIAN_FRONTEND=noninteractive apt-get install -y -q wordnet-base >/dev/null 2>&1 \
      || { apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q wordnet-base >/dev/null 2>&1; }; } \
      || say "could not install wordnet-base: the static embedder is built without its corpus"
  else
    say "no WordNet glosses in $corpus (Debian: apt-get install wordnet-base): the static embedder is built without its corpus"
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
