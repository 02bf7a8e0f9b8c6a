# Slim image of the gateway. The routing file is mounted at /etc/gateway/gateway.yaml:
#   docker run -v $PWD/config:/etc/gateway:ro -e GATEWAY_ADMIN_TOKEN=... -p 8080:8080 edge-gateway
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY gateway ./gateway
COPY origin ./origin
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
RUN useradd --system --uid 10001 --no-create-home gateway
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
USER gateway
EXPOSE 8080 8081
# The admin listener serves /healthz without a token; the config must listen on 0.0.0.0 in a container.
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8081/healthz', timeout=2).status != 200)"]
ENTRYPOINT ["python", "-m", "gateway"]
CMD ["--config", "/etc/gateway/gateway.yaml"]
