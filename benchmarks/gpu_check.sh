#!/usr/bin/env bash
# GPU check: everything that needs a CUDA GPU, in one bounded command (≤ 8 min wall in all).
#
#   bash benchmarks/gpu_check.sh
#
# Steps, each under its own `timeout` (seconds in brackets); a step that would not fit in
# what is left of the 8 minutes is skipped and reported as such:
#   setup      [90]  the Python environment (below)
#   tests      [100] the CUDA cases of the device-parametrised tests (pytest -m 'not slow' -k cuda)
#   workflow   [150] tests/data/tiny_methods.yaml end to end with device: cuda; every info.json
#                    must record a cuda device
#   inference  [60]  features/s of every method, fp32 and bf16 autocast, with bf16's accuracy
#                    neutrality measured
#   averaging  [40]  average_class seconds per 100 particles
#   training   [70]  a short published-preset DISCA and few-shot training
# Results: benchmarks/results/gpu_{tests,workflow,inference,averaging,training}.{json,md} and
# the summary gpu_check.{json,md}. Exit status 0 only when every step passed; 2 (with one line
# saying why) when no GPU is visible.
#
# Python environment, first that applies:
#   TOMOCLUST_PYTHON=/path/to/python   an interpreter that already has requirements-dev.txt
#                                      installed with a CUDA build of torch (e.g. a project venv
#                                      made on a GPU node);
#   TOMOCLUST_VENV=/path/to/venv       the same, given as a virtual environment's folder;
#   otherwise ${PYTHON:-python3}, which must import a CUDA torch (a GPU image's Python): the
#   packages of requirements-dev.txt it cannot import are installed, pinned, into .gpu-site/
#   (put first on PYTHONPATH; torch is never replaced), from PyPI or, on a machine without
#   internet, from a folder of wheels TOMOCLUST_WHEELS (default .whl/ when it exists), made on
#   a connected machine for the GPU machine's Python and platform, e.g.
#     pip download --no-deps --only-binary=:all: --python-version 3.12 \
#       --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 -d .whl \
#       snakemake==9.27.1 mrcfile==1.5.4 starfile==0.5.13 gemmi==0.7.5 ...
#   (every package the GPU machine lacks, with the dependencies it lacks).
set -uo pipefail
cd "$(dirname "$0")/.."
BUDGET=${GPU_CHECK_BUDGET_S:-480}
RESULTS=benchmarks/results
STATUS=$(mktemp)
trap 'rm -f "$STATUS"' EXIT
START=$SECONDS

refuse() { echo "gpu_check: $*" >&2; exit 2; }

# 1. a GPU at all? (cheap, before any setup)
if ! command -v nvidia-smi >/dev/null 2>&1; then
    refuse "no CUDA GPU visible (nvidia-smi not found); run this on a machine with an NVIDIA GPU"
fi
if ! timeout 30 nvidia-smi -L 2>/dev/null | grep -q '^GPU '; then
    refuse "no CUDA GPU visible (nvidia-smi lists none); run this on a machine with an NVIDIA GPU"
fi

# 2. the Python environment
step_start=$SECONDS
if [ -n "${TOMOCLUST_PYTHON:-}" ]; then
    PY=$TOMOCLUST_PYTHON
elif [ -n "${TOMOCLUST_VENV:-}" ]; then
    PY=$TOMOCLUST_VENV/bin/python
else
    PY=${PYTHON:-python3}
    export PYTHONPATH="$PWD/.gpu-site${PYTHONPATH:+:$PYTHONPATH}"
    # the pinned requirements this interpreter cannot import (torch and ruff left out)
    missing=$(timeout 60 "$PY" - <<'PYEOF' || true
import importlib.util, re
names = {"snakemake-executor-plugin-slurm": "snakemake_executor_plugin_slurm",
         "scikit-image": "skimage", "scikit-learn": "sklearn", "pyyaml": "yaml"}
for f in ("requirements.txt", "requirements-dev.txt"):
    for line in open(f):
        m = re.match(r"^([A-Za-z0-9_.-]+)==", line.strip())
        if not m or m.group(1) in ("torch", "ruff"):
            continue
        mod = names.get(m.group(1), m.group(1).replace("-", "_"))
        if importlib.util.find_spec(mod) is None:
            print(line.strip())
PYEOF
)
    if [ -n "$missing" ]; then
        WHEELS=${TOMOCLUST_WHEELS:-}
        if [ -z "$WHEELS" ] && [ -d .whl ]; then WHEELS=.whl; fi
        PIP_SRC=()
        if [ -n "$WHEELS" ]; then PIP_SRC=(--no-index --find-links "$WHEELS"); fi
        echo "gpu_check: installing into .gpu-site: $(echo $missing)"
        # shellcheck disable=SC2086
        if ! timeout 90 "$PY" -m pip install -q --disable-pip-version-check --target .gpu-site \
                "${PIP_SRC[@]}" $missing; then
            echo "gpu_check: warning: could not install $(echo $missing) (no internet? set" \
                 "TOMOCLUST_WHEELS or TOMOCLUST_PYTHON); steps that need them will fail" >&2
        fi
    fi
fi
[ -x "$PY" ] || command -v "$PY" >/dev/null || refuse "no Python interpreter at $PY"
if ! timeout 120 "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'
then
    refuse "torch in $PY sees no CUDA GPU (CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES-unset}; a CPU-only torch build?)"
fi
printf 'setup\tok\t%s\t90\n' "$((SECONDS - step_start))" >> "$STATUS"
echo "gpu_check: using $PY ($("$PY" -c 'import torch; print(torch.__version__, torch.cuda.get_device_name(0))'))"
export PYTHONUNBUFFERED=1

# run NAME LIMIT_S COMMAND...: one step under its own timeout, recorded in $STATUS
run() {
    local name=$1 limit=$2
    shift 2
    local left=$((BUDGET - (SECONDS - START)))
    if [ "$left" -lt "$limit" ]; then
        echo "gpu_check: skipping $name: ${left} s left of ${BUDGET} s, it may take ${limit} s" >&2
        printf '%s\tskipped (out of time)\t0\t%s\n' "$name" "$limit" >> "$STATUS"
        return
    fi
    echo "gpu_check: $name (at most ${limit} s)"
    local t0=$SECONDS rc=0
    timeout --kill-after=10 "$limit" "$@" || rc=$?
    local state=ok
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then state="timed out"
    elif [ "$rc" -ne 0 ]; then state="failed (exit $rc)"; fi
    echo "gpu_check: $name: $state in $((SECONDS - t0)) s"
    printf '%s\t%s\t%s\t%s\n' "$name" "$state" "$((SECONDS - t0))" "$limit" >> "$STATUS"
}

JUNIT=$(mktemp --suffix=.xml)
export PY JUNIT
run tests 100 bash -c '"$PY" -m pytest -q -p no:cacheprovider -m "not slow" -k cuda \
    --junitxml "$JUNIT" tests/; rc=$?; "$PY" benchmarks/gpu_check.py tests "$JUNIT" >/dev/null \
    || exit 1; exit $rc'
run workflow 150 "$PY" benchmarks/gpu_check.py workflow
run inference 60 "$PY" benchmarks/gpu_check.py inference
run averaging 40 "$PY" benchmarks/gpu_check.py averaging
run training 70 "$PY" benchmarks/gpu_check.py training
rm -f "$JUNIT"

"$PY" benchmarks/gpu_check.py summary "$STATUS" > /dev/null
rc=$?
echo "gpu_check: $((SECONDS - START)) s in all; summary in $RESULTS/gpu_check.md"
column -t -s $'\t' "$STATUS" 2>/dev/null || cat "$STATUS"
exit $rc
