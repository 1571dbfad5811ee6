"""Exact resume: training killed with SIGKILL at a random batch (anywhere in an epoch, not only
after a checkpoint), then killed again in the middle of writing a checkpoint (leaving a half
written ``.part`` file), then rerun, ends with exactly the model, features and loss curve of an
uninterrupted run, on the CPU, for DISCA, the autoencoder, few-shot and transfer.

Each run is its own process (tests/resume_driver.py, one torch thread), killed for real.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

DRIVER = Path(__file__).resolve().parent / "resume_driver.py"
METHODS = ["autoencoder", "disca", "fewshot", "transfer"]

pytestmark = pytest.mark.slow  # 16 processes, ~1 min per method on 2 busy cores


def _drive(method: str, out: Path, ckpt: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(DRIVER), method, str(out), str(ckpt), *extra],
                          capture_output=True, text=True, timeout=300, env=env)


def _result(out: Path) -> tuple[np.ndarray, dict, dict]:
    return (np.load(out / "features.npy"),
            torch.load(out / "model.pt", weights_only=True),
            json.loads((out / "history.json").read_text()))


@pytest.mark.parametrize("method", METHODS)
def test_killed_anywhere_resumes_exactly(tmp_path, method):
    rng = np.random.default_rng(METHODS.index(method) + 7)
    ref = _drive(method, tmp_path / "ref", tmp_path / "ref.pt")
    assert ref.returncode == 0, ref.stderr
    counts = json.loads(ref.stdout.strip().splitlines()[-1])

    ckpt = tmp_path / "ck" / f"{method}.pt"
    # 1. SIGKILL at a random training batch
    kill_at = int(rng.integers(counts["batches"] // 2, counts["batches"]))
    first = _drive(method, tmp_path / "out", ckpt, "--kill-at-batch", str(kill_at))
    assert first.returncode == -signal.SIGKILL, (kill_at, first.stdout, first.stderr)
    assert not (tmp_path / "out").exists()
    # 2. resumed, then SIGKILL half-way through writing its first checkpoint
    second = _drive(method, tmp_path / "out", ckpt, "--kill-in-save", "1")
    assert second.returncode == -signal.SIGKILL, second.stderr
    parts = list(ckpt.parent.glob(f".{ckpt.name}.*.part"))
    assert len(parts) == 1 and parts[0].stat().st_size > 0  # what a killed write leaves
    # 3. resumed to the end: the leftover is removed, the result is the uninterrupted one
    resumable = ckpt.exists()
    final = _drive(method, tmp_path / "out", ckpt)
    assert final.returncode == 0, final.stderr
    assert ("resuming" in final.stderr) == resumable, final.stderr
    assert not list(ckpt.parent.glob("*.part"))
    feats, state, hist = _result(tmp_path / "out")
    ref_feats, ref_state, ref_hist = _result(tmp_path / "ref")
    np.testing.assert_array_equal(feats, ref_feats)
    assert state.keys() == ref_state.keys()
    for k in state:
        assert torch.equal(state[k], ref_state[k]), k
    assert hist == ref_hist
