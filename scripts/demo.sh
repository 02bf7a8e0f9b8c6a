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
echo "origin on http://127.0.0.1:9000, gateway on http://127.0.0.1:8080"
echo "try: curl -si 'http://127.0.0.1:8080/api/v1/loader/code/published?projectId=p1&platform=react' | head -20"
.venv/bin/python -m gateway --config config/gateway.yaml
