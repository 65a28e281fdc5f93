# syntax=docker/dockerfile:1
# livechain: build a virtual environment in one stage, copy it into a clean runtime stage.
# The base is pinned to an exact Python and Debian release (pin its digest too in production:
# `docker buildx imagetools inspect python:3.11.11-slim-bookworm`). Untested here: no Docker
# engine runs on our CI machines; tests/test_deploy.py checks what can be checked without one.
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY feeds ./feeds
COPY service ./service
# Bytecode is compiled now: on a read-only root filesystem Python cannot write it later.
RUN python -m venv /opt/livechain \
    && /opt/livechain/bin/pip install . \
    && /opt/livechain/bin/python -m compileall -q /opt/livechain

FROM ${PYTHON_IMAGE}
# Settings defaults and the NSE holiday calendar are package data: nothing is read from the
# working directory. The scrip-master cache and the history's Parquet days are the places written
# to: mount volumes there.
ENV PATH=/opt/livechain/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    LIVECHAIN_HTTP__HOST=0.0.0.0 \
    LIVECHAIN_METRICS__HOST=0.0.0.0 \
    LIVECHAIN_INSTRUMENTS__CACHE_DIR=/var/cache/livechain \
    LIVECHAIN_HISTORY__PATH=/var/lib/livechain/history
COPY --from=build /opt/livechain /opt/livechain
RUN useradd --system --uid 10001 --user-group --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin livechain \
    && install -d -o 10001 -g 10001 -m 0750 /var/cache/livechain /var/lib/livechain/history
USER 10001:10001
WORKDIR /var/cache/livechain
VOLUME ["/var/cache/livechain", "/var/lib/livechain/history"]
# 8080: the HTTP API (bound once the readiness gate opens); 9108: metrics, /healthz and /readyz
# (bound at start, so the health check works during warm-up).
EXPOSE 8080 9108
HEALTHCHECK --interval=10s --timeout=3s --start-period=90s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('LIVECHAIN_METRICS__PORT', '9108') + '/readyz', timeout=2)"]
ENTRYPOINT ["livechain"]
CMD ["run"]
