# syntax=docker/dockerfile:1
# medusa-crypt-proxy: an encrypting S3 proxy for Cassandra Medusa.
#
#   docker build -t medusa-crypt-proxy .
#   docker run --read-only -v mcp-cache:/var/lib/medusa-crypt-proxy \
#     -v /etc/medusa-crypt-proxy:/etc/medusa-crypt-proxy:ro \
#     -e MCP_LISTEN__HOST=0.0.0.0 -p 127.0.0.1:8333:8333 medusa-crypt-proxy
#
# (The proxy listens on 127.0.0.1 by default, which inside a container is the container's own
# loopback: MCP_LISTEN__HOST=0.0.0.0 lets the published port reach it, and -p 127.0.0.1:...
# keeps it on the host's loopback. A Kubernetes sidecar shares the pod's loopback with Medusa
# and keeps the default.)
#
# Everything the process writes goes to /var/lib/medusa-crypt-proxy (the metadata cache), so the
# image runs with a read-only root filesystem. Config, keys and client secrets are mounted at
# /etc/medusa-crypt-proxy (see docs/OPERATIONS.md and deploy/).

ARG PYTHON_IMAGE=python:3.11-slim

# ---- builder: a virtual environment with the project and its dependencies (all wheels) ----
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python -m venv /opt/medusa-crypt-proxy
COPY pyproject.toml constraints.txt README* LICENSE ./
COPY proxy ./proxy
# constraints.txt pins every dependency: the same sources give the same image.
RUN /opt/medusa-crypt-proxy/bin/pip install --no-cache-dir -c constraints.txt . \
    && /opt/medusa-crypt-proxy/bin/medusa-crypt-proxy --version

# ---- runtime: slim Python, the venv, a non-root user ----
FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="medusa-crypt-proxy" \
      org.opencontainers.image.description="Encrypting S3 proxy for Cassandra Medusa backups" \
      org.opencontainers.image.licenses="Apache-2.0"

RUN groupadd --system --gid 10001 medusa-crypt-proxy \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin medusa-crypt-proxy \
    && install -d -o 10001 -g 10001 -m 0750 /var/lib/medusa-crypt-proxy \
    && install -d -m 0755 /etc/medusa-crypt-proxy

COPY --from=builder /opt/medusa-crypt-proxy /opt/medusa-crypt-proxy

# HEALTHCHECK_URL: where the container health check looks (use https:// when tls is
# configured; the check does not verify the certificate). glibc malloc is tuned by the daemon
# itself (docs/OPERATIONS.md, "Performance notes").
ENV PATH=/opt/medusa-crypt-proxy/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HEALTHCHECK_URL=http://127.0.0.1:8333/healthz

USER 10001:10001
WORKDIR /var/lib/medusa-crypt-proxy
VOLUME ["/var/lib/medusa-crypt-proxy"]
EXPOSE 8333

# No curl in slim images: Python's urllib. Non-2xx and connection errors raise, exit 1.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, ssl, urllib.request as u; u.urlopen(os.environ['HEALTHCHECK_URL'], timeout=4, context=ssl._create_unverified_context())"]

ENTRYPOINT ["medusa-crypt-proxy"]
CMD ["serve", "--config", "/etc/medusa-crypt-proxy/config.yaml"]
