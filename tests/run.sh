#!/usr/bin/env bash
# Set up a virtual environment (idempotent) and run the whole test suite.
# Usage: bash tests/run.sh [pytest args]
#
# Besides .venv (requirements-dev.txt), each per-step requirements file envs/requirements-*.txt
# is installed into its own fresh venv, .venvs/<step>-<hash of the file>/ (kept between runs:
# a changed file makes a new one), and tests/test_envs.py imports there every module that
# step's rule scripts use (TOMOCLUST_STEP_VENVS points it at them).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -r requirements-dev.txt

t0=$SECONDS
mkdir -p .venvs/steps
for req in envs/requirements-*.txt; do
    step=$(basename "$req" .txt)
    step=${step#requirements-}
    hash=$(sha256sum "$req" | cut -c1-12)
    dir=.venvs/$step-$hash
    if [ ! -x "$dir/bin/python" ] || [ ! -f "$dir/.complete" ]; then
        rm -rf "$dir"
        "$PY" -m venv "$dir"
        "$dir/bin/python" -m pip install -q --disable-pip-version-check -r "$req"
        touch "$dir/.complete"
    fi
    ln -sfn "../$step-$hash" ".venvs/steps/$step"
done
echo "per-step venvs ready in $((SECONDS - t0)) s (.venvs/)"
export TOMOCLUST_STEP_VENVS=$PWD/.venvs/steps

.venv/bin/ruff check scripts tests benchmarks
PYTHONPATH=scripts .venv/bin/lint-imports --config .importlinter
# two workers (pytest-xdist), each taking whole test files, so a file's shared workflow run
# (a module fixture) is made once; TOMOCLUST_TEST_WORKERS=0 runs in this process
.venv/bin/python -m pytest -n "${TOMOCLUST_TEST_WORKERS:-2}" --dist loadfile "$@"
