# syntax=docker/dockerfile:1
# crm-ingest: one image for every role (gateway, consume, migrate, topics, ...).
#   docker build -t crm-ingest .
#   docker run --rm -p 8080:8080 -e DATABASE_URL=... -e KAFKA_BOOTSTRAP_SERVERS=... crm-ingest
#   docker run --rm ... crm-ingest consume
# The builder stage turns the source into a wheel and installs it (runtime dependencies
# only, no test or embedded extras) into a virtualenv; the runtime stage copies that
# virtualenv and nothing else: no source tree, no build tools, no pip cache.

ARG PYTHON_VERSION=3.12

FROM python:${PYTHON_VERSION}-slim AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY ingest ./ingest
COPY handlers ./handlers
COPY sql ./sql
RUN python -m pip wheel --no-deps --wheel-dir /dist . \
 && python -m venv /opt/venv \
 && /opt/venv/bin/pip install /dist/crm_ingest-*.whl

FROM python:${PYTHON_VERSION}-slim AS runtime
LABEL org.opencontainers.image.title="crm-ingest" \
      org.opencontainers.image.description="Provider webhooks -> Kafka -> PostgreSQL for a multi-tenant CRM" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PATH=/opt/venv/bin:$PATH
RUN groupadd --system --gid 10001 crm \
 && useradd --system --uid 10001 --gid crm --home-dir /home/crm --create-home \
        --shell /usr/sbin/nologin crm
COPY --from=builder /opt/venv /opt/venv
WORKDIR /home/crm
USER 10001:10001

# 8080: the gateway (webhooks, /healthz, /readyz, /metrics); 9100: the consumer's /metrics.
EXPOSE 8080 9100
# The slim image has no curl: ask /healthz with the standard library. A role without an HTTP
# server (consume, migrate) turns this off in its compose service.
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('CRM_INGEST_HTTP_PORT', '8080') + '/healthz', timeout=4)"]

ENTRYPOINT ["crm-ingest"]
CMD ["gateway", "--host", "0.0.0.0"]
