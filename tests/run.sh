#!/usr/bin/env bash
# Set up a virtual environment (idempotent) and run the whole test suite.
# Usage: bash tests/run.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -r requirements-dev.txt
.venv/bin/ruff check scripts tests benchmarks
PYTHONPATH=scripts .venv/bin/lint-imports --config .importlinter
.venv/bin/python -m pytest "$@"
