# One image for every Conduit role; the command picks the role.
FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
WORKDIR /app
COPY pyproject.toml README.md celeryconfig.py ./
COPY conduit_workers ./conduit_workers
COPY producers ./producers
# WordNet's glosses: the corpus the router's static embedder is trained on (below).
RUN apt-get update && apt-get install -y --no-install-recommends wordnet-base \
 && rm -rf /var/lib/apt/lists/*
# The CPU build of torch (pinned in pyproject.toml); no CUDA wheels in the image.
RUN pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu torch==2.13.0 \
 && pip install --no-cache-dir .
RUN useradd --create-home conduit \
 && mkdir -p /var/lib/conduit/reports /var/lib/conduit/beat && chown -R conduit /var/lib/conduit
USER conduit
# The router's default embedder: MiniLM distilled to static vectors trained on the glosses, once,
# at build time (~5 minutes on 2 cores).
RUN python -m conduit_workers.adapters.static_distill /home/conduit/.cache/conduit/minilm-static
CMD ["celery", "-A", "conduit_workers", "worker", "-Q", "route,execute,feedback"]
