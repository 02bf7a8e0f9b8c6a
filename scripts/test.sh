#!/usr/bin/env bash
# Set up, then lint, type-check and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
echo "== ruff"
.venv/bin/ruff check gateway origin tests bench
echo "== mypy"
.venv/bin/mypy gateway origin
echo "== pytest"
.venv/bin/python -m pytest -q -p no:cacheprovider "$@"
