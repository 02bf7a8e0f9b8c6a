# The edge gateway, alone, as a slim non-root image (README.md: "Running in a container").
#
#   docker build -t edge-gateway .
#   docker run -e ORIGIN_URL=http://origin:9000 -e GATEWAY_ADMIN_TOKEN="$(openssl rand -hex 32)" \
#       -p 8080:8080 -p 127.0.0.1:8081:8081 edge-gateway
#
# It serves /etc/gateway/gateway.yaml, config/docker.yaml unless a directory is mounted there.
ARG PYTHON=3.11

# ---- build: the gateway and its runtime dependencies, in a virtualenv copied whole below
FROM python:${PYTHON}-slim-bookworm AS build
# The virtualenv first on PATH: `pip` below is its own (and hadolint's pip rules see it).
ENV PATH=/opt/gateway/bin:$PATH \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/gateway
WORKDIR /src
# pyproject.toml's `dependencies` only: not the `dev` extra (tests, linters) nor the `origin`
# one (what the demo origin needs), and without origin/ itself (.dockerignore), so that its
# console script, made from pyproject.toml all the same, is removed. Nor are pip and setuptools
# of any use once the virtualenv is built.
COPY pyproject.toml README.md ./
COPY gateway ./gateway
RUN pip install --no-cache-dir . \
    && rm /opt/gateway/bin/edge-origin \
    && pip uninstall --yes --quiet pip setuptools

# ---- run
FROM python:${PYTHON}-slim-bookworm
# Logs reach `docker logs` as they are written; no .pyc files written by the non-root user.
ENV PATH=/opt/gateway/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
# A numeric user (10001), so that Kubernetes' runAsNonRoot can verify it without a passwd file.
RUN groupadd --system --gid 10001 gateway \
    && useradd --system --uid 10001 --gid gateway --no-create-home --shell /usr/sbin/nologin gateway
COPY --from=build /opt/gateway /opt/gateway
COPY config/docker.yaml /etc/gateway/gateway.yaml
USER 10001:10001
# The public listener and the admin one (config/docker.yaml).
EXPOSE 8080 8081
# SIGTERM (`docker stop`): the listeners close at once and the requests in flight get up to
# DRAIN_TIMEOUT (gateway/supervisor.py), within the 10 s `docker stop` waits by default.
STOPSIGNAL SIGTERM
# GET /healthz on the admin listener (no token), at the address GATEWAY_ADMIN_LISTEN gives
# config/docker.yaml, asked on loopback: gateway/healthcheck.py.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-m", "gateway.healthcheck"]
# Exec form: the gateway is PID 1 and receives the SIGTERM itself. `docker run IMAGE purge ...`
# (or bust, stats, reload) runs the admin client instead, as `edge-gateway` does.
ENTRYPOINT ["edge-gateway"]
CMD ["--config", "/etc/gateway/gateway.yaml"]
