"""benchmarks/gpu_check.sh without a GPU: a clear one-line refusal, before any setup; its
Python steps' bookkeeping (test counts, the summary's status)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_check.sh"
HELPER = REPO / "benchmarks" / "gpu_check.py"

no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible here")


def _run(env: dict[str, str], timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, env=env,
                          timeout=timeout, cwd=REPO)


def _results_state() -> dict[str, int]:
    res = REPO / "benchmarks" / "results"
    return {p.name: p.stat().st_mtime_ns for p in res.glob("gpu_*")}


@no_gpu
def test_refuses_without_nvidia_smi(tmp_path):
    before = _results_state()
    had_site = (REPO / ".gpu-site").exists()
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    assert not any((Path(d) / "nvidia-smi").exists() for d in env["PATH"].split(":"))
    proc = _run(env)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpu_check: no CUDA GPU visible")
    assert proc.stdout == ""
    assert _results_state() == before  # nothing written
    assert (REPO / ".gpu-site").exists() == had_site  # nothing installed for nothing


@no_gpu
def test_refuses_when_torch_sees_no_gpu(tmp_path):
    """nvidia-smi lists a GPU (faked here) but torch cannot use it (CPU build, or
    CUDA_VISIBLE_DEVICES hides it): refused after the interpreter check, nothing measured."""
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "nvidia-smi").write_text("#!/bin/sh\necho 'GPU 0: Fake GPU (UUID: GPU-0)'\n")
    (fake / "nvidia-smi").chmod(0o755)
    before = _results_state()
    env = {"PATH": f"{fake}:/usr/bin:/bin", "HOME": str(tmp_path),
           "TOMOCLUST_PYTHON": sys.executable, "CUDA_VISIBLE_DEVICES": ""}
    proc = _run(env)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"gpu_check: torch in {sys.executable} sees no CUDA GPU")
    assert _results_state() == before


def test_helper_refuses_cuda_without_gpu(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible here")
    proc = subprocess.run([sys.executable, str(HELPER), "--results", str(tmp_path),
                           "averaging"], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "torch sees no CUDA GPU" in proc.stderr
    assert not list(tmp_path.iterdir())


def _helper(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(HELPER), "--results", str(tmp_path), *args],
                          capture_output=True, text=True, timeout=120, env=env)


def test_test_counts_and_summary(tmp_path):
    junit = tmp_path / "junit.xml"
    junit.write_text(
        '<?xml version="1.0"?><testsuites><testsuite name="pytest" tests="4" failures="1" '
        'errors="0" skipped="1">'
        '<testcase classname="tests.test_a" name="test_x[cuda]"/>'
        '<testcase classname="tests.test_a" name="test_y[cuda]"/>'
        '<testcase classname="tests.test_b" name="test_z[cuda]"><failure message="boom"/>'
        '</testcase><testcase classname="tests.test_b" name="test_w[cuda]"><skipped/>'
        '</testcase></testsuite></testsuites>')
    proc = _helper(tmp_path, "tests", str(junit))
    assert proc.returncode == 0, proc.stderr
    out = json.loads((tmp_path / "gpu_tests.json").read_text())
    assert (out["passed"], out["failures"], out["skipped"]) == (2, 1, 1)
    assert out["failed"] == ["tests.test_b::test_z[cuda]"]

    status = tmp_path / "status.tsv"
    status.write_text("setup\tok\t3\t90\ntests\tfailed (exit 1)\t50\t100\n"
                      "training\tskipped (out of time)\t0\t70\n")
    proc = _helper(tmp_path, "summary", str(status))
    assert proc.returncode == 1  # not every step passed
    summary = json.loads((tmp_path / "gpu_check.json").read_text())
    assert [s["status"] for s in summary["steps"]] == ["ok", "failed (exit 1)",
                                                      "skipped (out of time)"]
    md = (tmp_path / "gpu_check.md").read_text()
    assert "skipped (out of time)" in md and "### CUDA test cases" in md  # parts included
    status.write_text("setup\tok\t3\t90\ntests\tok\t50\t100\n")
    assert _helper(tmp_path, "summary", str(status)).returncode == 0


def test_helper_steps_run_on_the_cpu(tmp_path):
    """The measuring code itself (imports, library calls) works; on the CPU only as a smoke
    test of the script, never as GPU figures."""
    proc = _helper(tmp_path, "--device", "cpu", "averaging", "--n", "4", "--iterations", "1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads((tmp_path / "gpu_averaging.json").read_text())
    assert [r["n"] for r in out["runs"]] == [4, 4]
    assert all(r["wall_s"] > 0 for r in out["runs"])
