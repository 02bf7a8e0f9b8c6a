#!/usr/bin/env bash
# Set up, then run the demo loader origin (:9000) and the gateway (:8080, admin :8081) on
# config/gateway.yaml with the in-memory cache. Ctrl-C stops both.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export GATEWAY_ADMIN_TOKEN=${GATEWAY_ADMIN_TOKEN:-dev-admin-token}
# The origin soft-busts a project on the gateway when it is published (admin API on :8081).
.venv/bin/python -m origin --host 127.0.0.1 --port 9000 \
    --gateway-admin http://127.0.0.1:8081 --gateway-token "$GATEWAY_ADMIN_TOKEN" &
ORIGIN=$!
trap 'kill $ORIGIN 2>/dev/null || true' EXIT INT TERM
# The gateway starts only once this origin answers: if it could not start (port 9000 taken),
# the gateway would proxy to whatever holds the port.
for _ in $(seq 100); do
    if ! kill -0 "$ORIGIN" 2>/dev/null; then
        echo "demo: the origin did not start (is port 9000 in use?)" >&2
        exit 1
    fi
    if .venv/bin/python -c 'import urllib.request; urllib.request.urlopen("http://127.0.0.1:9000/__stats", timeout=1)' 2>/dev/null; then
        break
    fi
    sleep 0.1
done
echo "origin on http://127.0.0.1:9000, gateway on http://127.0.0.1:8080"
echo "try: curl -si 'http://127.0.0.1:8080/api/v1/loader/code/published?projectId=p1&platform=react' | head -20"
# --demo: this is the demo, so the published token above is accepted; any other start of the
# gateway refuses to open its admin listener with it.
.venv/bin/python -m gateway --config config/gateway.yaml --demo
