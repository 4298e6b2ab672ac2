# One image for every Conduit role; the command picks the role.
# Layers from the least to the most often changed: system packages, the Python dependencies
# (torch and the rest of pyproject.toml's), the static embedder (built from the few modules it
# needs), then the code. A code change rebuilds the last layers only, never torch or the vectors.
FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
WORKDIR /app
# WordNet's glosses: the corpus the router's static embedder is trained on (below).
RUN apt-get update && apt-get install -y --no-install-recommends wordnet-base \
 && rm -rf /var/lib/apt/lists/*
# The CPU build of torch (pinned in pyproject.toml; no CUDA wheels), then the other
# dependencies, read from pyproject.toml alone: the source is not in the image yet.
COPY pyproject.toml ./
RUN pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu torch==2.13.0
RUN python -c "import subprocess, sys, tomllib; deps = tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']; subprocess.check_call([sys.executable, '-m', 'pip', 'install', '--no-cache-dir', *deps])"
RUN useradd --create-home conduit \
 && mkdir -p /var/lib/conduit/reports /var/lib/conduit/beat /etc/conduit \
 && chown -R conduit /var/lib/conduit
# The router's default embedder: MiniLM distilled to static vectors trained on the glosses, once,
# at build time (~5 minutes on 2 cores), from the modules the distillation imports only.
COPY conduit_workers/__init__.py conduit_workers/errors.py conduit_workers/settings.py ./conduit_workers/
COPY conduit_workers/domain ./conduit_workers/domain
COPY conduit_workers/routing/__init__.py conduit_workers/routing/embedder.py conduit_workers/routing/static_embedder.py ./conduit_workers/routing/
COPY conduit_workers/tools ./conduit_workers/tools
USER conduit
RUN python -m conduit_workers.tools.static_distill /home/conduit/.cache/conduit/minilm-static
USER root
# The code, last.
COPY README.md celeryconfig.py ./
COPY conduit_workers ./conduit_workers
COPY producers ./producers
RUN pip install --no-cache-dir --no-deps . && cp conduit_workers/data/catalog.toml /etc/conduit/catalog.toml
USER conduit
CMD ["celery", "-A", "conduit_workers", "worker", "-Q", "route,execute,feedback"]
