FROM python:3.11-slim

# Default settings and the NSE holiday calendar are package data: nothing is read from WORKDIR.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    LIVECHAIN_HTTP__HOST=0.0.0.0 \
    LIVECHAIN_METRICS__HOST=0.0.0.0

WORKDIR /app
COPY pyproject.toml README.md ./
COPY feeds ./feeds
COPY service ./service
RUN pip install --no-cache-dir . \
    && useradd --system --uid 10001 --home-dir /app livechain

USER livechain
EXPOSE 8080 9108
ENTRYPOINT ["livechain", "run"]
