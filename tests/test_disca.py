"""tomoclust.features.disca: label matching, the Mahalanobis Davies–Bouldin index, DISCA on a
planted
set of two shapes, configuration, and resuming a killed run from its checkpoint (in the
library and as a SIGKILLed process)."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import DEVICES, REPO, Interrupt, interrupt_after
from scipy import ndimage
from threadpoolctl import threadpool_limits
from tomoclust.features.disca import (
    DiscaSettings,
    davies_bouldin_mahalanobis,
    describe,
    match_labels,
    params_from_config,
    run_disca,
)
from tomoclust.features.train import Checkpoint, fingerprint
from tomoclust.numerics.metrics import hungarian_accuracy
from tomoclust.numerics.rotations import random_rotations, rotate_volume


@pytest.fixture(autouse=True)
def _one_blas_thread():
    """Tiny GMM fits: a multi-threaded BLAS only spins (15x slower on a busy 2-core box)."""
    with threadpool_limits(1):
        yield


def planted_shapes(n_per: int = 24, d: int = 16, noise: float = 0.3, seed: int = 0
                   ) -> tuple[np.ndarray, np.ndarray]:
    """A ball (class 0) and a rod (class 1), each in ``n_per`` random proper orientations, with
    white noise, normalised per particle like extracted subtomograms; shuffled."""
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.indices((d, d, d)) - d // 2
    ball = (zz**2 + yy**2 + xx**2 <= 4.5**2).astype(np.float32)
    rod = ((xx**2 + yy**2 <= 1.6**2) & (np.abs(zz) <= 6)).astype(np.float32)
    vols, truth = [], []
    for cls, shape in enumerate([ball, rod]):
        shape = ndimage.gaussian_filter(shape, 0.8)
        for m in random_rotations(n_per, rng):
            v = rotate_volume(shape, m) + noise * rng.standard_normal((d, d, d))
            vols.append((v - v.mean()) / v.std())
            truth.append(cls)
    order = rng.permutation(len(vols))
    return np.stack(vols).astype(np.float32)[order], np.asarray(truth)[order]


@pytest.fixture(scope="module")
def shapes():
    return planted_shapes()


def _params(**kw) -> DiscaSettings:
    # 48 particles: 3 principal components keep the full-covariance GMM well determined
    base = dict(preset="tiny", iterations=3, k_max=4, batch_size=16, pca_components=3,
                head_warmup_steps=20, seed=0)
    return DiscaSettings(**{**base, **kw})


# ------------------------------------------------------------------------------- helpers
def test_match_labels_recovers_a_permutation(rng):
    old = rng.integers(0, 5, size=300)
    perm = np.array([3, 0, 4, 1, 2])
    np.testing.assert_array_equal(match_labels(perm[old], old), old)
    # with 10% of the labels changed the matching still follows the majority
    noisy = perm[old].copy()
    flip = rng.random(len(old)) < 0.1
    noisy[flip] = rng.integers(0, 5, size=flip.sum())
    matched = match_labels(noisy, old)
    assert np.mean(matched == old) > 0.85
    # the matching is a relabeling: the partition is unchanged
    assert len(set(zip(matched, noisy))) == len(np.unique(noisy))
    # a cluster split off (a third of class 4) keeps its own, unused label
    new = perm[old]
    split = np.flatnonzero(old == 4)[: (old == 4).sum() // 3]
    new[split] = 5
    out = match_labels(new, old)
    keep = np.setdiff1d(np.arange(len(old)), split)
    np.testing.assert_array_equal(out[keep], old[keep])
    np.testing.assert_array_equal(out[split], 5)


def test_davies_bouldin_lower_for_separated_clusters(rng):
    z = np.concatenate([rng.standard_normal((60, 3)), rng.standard_normal((60, 3)) + [9, 0, 0]])
    truth = np.repeat([0, 1], 60)
    separated = davies_bouldin_mahalanobis(z, truth)
    mixed = davies_bouldin_mahalanobis(z, rng.permutation(truth))
    assert separated < 0.5 < 1.5 < mixed
    assert davies_bouldin_mahalanobis(z, np.zeros(len(z), int)) == np.inf
    # a singleton cluster does not break it
    lab = truth.copy()
    lab[0] = 2
    assert np.isfinite(davies_bouldin_mahalanobis(z, lab))


def test_params_from_config():
    p = params_from_config({"preset": "tiny", "iterations": 2, "k_max": 4}, -50.0, 65.0)
    assert (p.preset, p.iterations, p.k_max, p.tilt_min, p.tilt_max) == ("tiny", 2, 4, -50, 65)
    assert p.network().feature_dim == 16
    assert params_from_config({"preset": "tiny", "feature_dim": 8}).network().feature_dim == 8
    with pytest.raises(ValueError, match=r"unknown DISCA settings.*'k_maxx'"):
        params_from_config({"preset": "tiny", "k_maxx": 4})
    d = describe(p)
    assert d["network"]["blocks"] == 3 and d["tilt_min"] == -50.0


def test_run_disca_rejects_bad_settings(shapes):
    stack, _ = shapes
    with pytest.raises(ValueError, match="unknown augmentation"):
        run_disca(stack, _params(augment="mirror"), "cpu")
    with pytest.raises(ValueError, match="more particles than k_min"):
        run_disca(stack[:2], _params(), "cpu")
    with pytest.raises(ValueError, match="unknown DISCA init"):
        run_disca(stack, _params(init="kmeans"), "cpu")


# -------------------------------------------------------------------- planted separation
def _check_result(res, n: int, device: str) -> None:
    assert res.features.shape == (n, 16) and res.features.dtype == np.float32
    assert np.all(np.isfinite(res.features))
    assert res.labels.shape == (n,) and res.labels.min() == 1
    k = int(res.labels.max())
    assert sorted(np.unique(res.labels)) == list(range(1, k + 1))  # 1-based, no gaps
    assert np.all((res.probability > 0) & (res.probability <= 1 + 1e-12))
    hist = res.history
    assert {"iteration", "k", "bic", "davies_bouldin", "changed_fraction", "sizes",
            "features", "loss", "seconds"} <= set(hist.columns)
    assert hist["iteration"].tolist() == list(range(len(hist)))
    assert 0 <= res.best_iteration < len(hist)
    best = hist.set_index("iteration").loc[res.best_iteration]
    assert best["features"] == "network" and int(best["k"]) == k
    assert best["davies_bouldin"] == hist.loc[hist["features"] == "network",
                                              "davies_bouldin"].min()
    assert [int(s) for s in best["sizes"].split(",")] == np.bincount(res.labels)[1:].tolist()
    assert not res.bic.empty and {"k", "bic"} <= set(res.bic.columns)
    assert all(t.device.type == torch.device(device).type for t in res.state_dict.values())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("augment", ["wedge_symmetric", "uniform_masked"])
def test_disca_separates_a_ball_from_a_rod(shapes, augment, device, tmp_path):
    stack, truth = shapes
    res = run_disca(stack, _params(augment=augment), device,
                    history_path=tmp_path / "history.tsv")
    _check_result(res, len(stack), device)
    assert res.history["features"].iloc[0] == "invariant"
    assert res.best_iteration >= 1  # the invariant clustering is never the result
    assert hungarian_accuracy(truth, res.labels) >= 0.9, res.history.to_string()
    on_disk = pd.read_csv(tmp_path / "history.tsv", sep="\t")
    assert on_disk["iteration"].tolist() == res.history["iteration"].tolist()


def test_disca_random_init_runs(shapes):
    stack, _ = shapes
    res = run_disca(stack, _params(init="random", iterations=2, augment="none"), "cpu")
    _check_result(res, len(stack), "cpu")
    assert set(res.history["features"]) == {"network"}
    assert res.best_iteration in (0, 1)


# ------------------------------------------------------------------------------- resume
@pytest.fixture
def info_logs(caplog):
    caplog.set_level(logging.INFO, logger="tomoclust")
    return caplog


@pytest.mark.parametrize("device", DEVICES)
def test_interrupted_run_resumes_from_its_checkpoint(shapes, device, tmp_path, info_logs):
    stack, _ = shapes
    params = _params(iterations=4, convergence=1.0)  # never stops early
    n_passes = params.iterations + 1  # + the invariant initial clustering
    ckpt = Checkpoint(tmp_path / "disca.pt", fingerprint(describe(params)))
    with pytest.raises(Interrupt):
        run_disca(stack, params, device, checkpoint=ckpt, on_iteration=interrupt_after(1))
    assert ckpt.path.is_file()
    assert int(ckpt.load()["iteration"]) == 1
    assert "resuming" not in info_logs.text
    info_logs.clear()

    seen = []
    res = run_disca(stack, params, device, checkpoint=ckpt, on_iteration=seen.append)
    assert "resuming DISCA from checkpoint after iteration 1" in info_logs.text
    assert seen == list(range(2, n_passes))  # nothing done twice
    assert res.history["iteration"].tolist() == list(range(n_passes))
    _check_result(res, len(stack), device)

    if torch.device(device).type == "cpu":
        # the resumed run is the run that was interrupted: same as an uninterrupted one
        full = run_disca(stack, params, device)
        cols = ["iteration", "k", "bic", "davies_bouldin", "changed_fraction", "sizes", "loss"]
        pd.testing.assert_frame_equal(res.history[cols], full.history[cols])
        assert res.best_iteration == full.best_iteration
        np.testing.assert_array_equal(res.labels, full.labels)
        np.testing.assert_allclose(res.features, full.features, rtol=1e-5, atol=1e-6)


def test_resuming_a_finished_run_returns_it(shapes, tmp_path, info_logs):
    """Killed after the last checkpoint but before the outputs were written: the rerun has
    nothing left to train, and still returns the result and writes the history."""
    stack, _ = shapes
    params = _params(iterations=2, convergence=1.0)
    ckpt = Checkpoint(tmp_path / "disca.pt", fingerprint(describe(params)))
    first = run_disca(stack, params, "cpu", checkpoint=ckpt, history_path=tmp_path / "h1.tsv")
    info_logs.clear()
    seen = []
    again = run_disca(stack, params, "cpu", checkpoint=ckpt, history_path=tmp_path / "h2.tsv",
                      on_iteration=seen.append)
    assert "resuming DISCA from checkpoint after iteration 2" in info_logs.text
    assert seen == []
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "h2.tsv", sep="\t"),
                                  pd.read_csv(tmp_path / "h1.tsv", sep="\t"))
    assert again.best_iteration == first.best_iteration
    np.testing.assert_array_equal(again.labels, first.labels)
    np.testing.assert_array_equal(again.features, first.features)
    np.testing.assert_array_equal(again.probability, first.probability)
    pd.testing.assert_frame_equal(again.bic, first.bic)
    for key, value in first.state_dict.items():
        torch.testing.assert_close(again.state_dict[key], value)


def test_changed_settings_start_from_scratch(shapes, tmp_path, info_logs):
    stack, _ = shapes
    params = _params(iterations=3, convergence=1.0)
    path = tmp_path / "disca.pt"
    with pytest.raises(Interrupt):
        run_disca(stack, params, "cpu", checkpoint=Checkpoint(path, fingerprint(describe(params))),
                  on_iteration=interrupt_after(1))
    info_logs.clear()
    changed = _params(iterations=2, convergence=1.0)
    seen = []
    res = run_disca(stack, changed, "cpu",
                    checkpoint=Checkpoint(path, fingerprint(describe(changed))),
                    on_iteration=seen.append)
    assert "belongs to another run" in info_logs.text
    assert "resuming" not in info_logs.text
    assert seen == [0, 1, 2]
    assert res.history["iteration"].tolist() == [0, 1, 2]


# A stand-alone training job: python job.py METHOD STACK CHECKPOINT OUTDIR PAUSE_AFTER.
# It announces every finished iteration/epoch by a marker file and, from PAUSE_AFTER on,
# sleeps there (so the test can kill it at a known point); PAUSE_AFTER < 0 never sleeps.
_JOB = '''
import sys, time
from pathlib import Path
import numpy as np
from tomoclust.rule import setup_logging
from tomoclust.features.train import Checkpoint, fingerprint

method, stack_path, ckpt_path, out, pause_after = sys.argv[1:6]
out, pause_after = Path(out), int(pause_after)
out.mkdir(parents=True, exist_ok=True)
setup_logging(out / "job.log")
stack = np.load(stack_path, mmap_mode="r")

def hook(i):
    (out / f"done_{i}").touch()
    if 0 <= pause_after <= i:
        time.sleep(600)

if method == "disca":
    from tomoclust.features.disca import DiscaSettings, describe, run_disca
    params = DiscaSettings(preset="tiny", iterations=5, k_max=3, batch_size=16, pca_components=3,
                         head_warmup_steps=10, convergence=1.0, augment="wedge_symmetric")
    ckpt = Checkpoint(ckpt_path, fingerprint(describe(params), stack_path))
    res = run_disca(stack, params, "cpu", checkpoint=ckpt, history_path=out / "history.tsv",
                    on_iteration=hook)
else:
    from tomoclust.features.autoencoder import AutoencoderSettings, describe, run_autoencoder
    params = AutoencoderSettings(code_dim=4, channels=2, epochs=5, batch_size=16)
    ckpt = Checkpoint(ckpt_path, fingerprint(describe(params), stack_path))
    res = run_autoencoder(stack, params, "cpu", checkpoint=ckpt,
                          history_path=out / "history.tsv", on_epoch=hook)
np.save(out / "features.npy", res.features)
'''


def _start_job(tmp_path: Path, method: str, stack: Path, out: Path, pause_after: int
               ) -> subprocess.Popen:
    script = tmp_path / "job.py"
    script.write_text(_JOB)
    env = {**os.environ, "PYTHONPATH": str(REPO / "scripts"), "OMP_NUM_THREADS": "1"}
    with open(tmp_path / f"{out.name}.out", "w") as console:  # the child keeps its own copy
        return subprocess.Popen(
            [sys.executable, str(script), method, str(stack), str(tmp_path / f"{method}.pt"),
             str(out), str(pause_after)],
            env=env, stdout=console, stderr=subprocess.STDOUT)


@pytest.mark.parametrize(("method", "n_steps", "resume_line"), [
    ("disca", 6, "resuming DISCA from checkpoint after iteration 1"),
    ("autoencoder", 5, "resuming autoencoder from checkpoint after epoch 1"),
])
def test_killed_job_resumes_from_its_checkpoint(shapes, tmp_path, method, n_steps, resume_line):
    """A training process killed with SIGKILL (no chance to clean up) is rerun: it resumes
    after the last checkpointed iteration and finishes with the complete history."""
    stack = tmp_path / "stack.npy"
    np.save(stack, shapes[0])
    first = tmp_path / "first"
    proc = _start_job(tmp_path, method, stack, first, pause_after=1)
    try:
        deadline = time.monotonic() + 240
        while not (first / "done_1").exists():
            if proc.poll() is not None:
                console = (tmp_path / "first.out").read_text()
                pytest.fail(f"job ended early ({proc.returncode}):\n{console}")
            if time.monotonic() > deadline:
                pytest.fail("job did not finish two iterations in 240 s")
            time.sleep(0.1)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert (tmp_path / f"{method}.pt").is_file()
    assert not (first / "features.npy").exists()

    second = tmp_path / "second"
    proc = _start_job(tmp_path, method, stack, second, pause_after=-1)
    proc.wait(timeout=300)
    assert proc.returncode == 0, (tmp_path / "second.out").read_text()
    log = (second / "job.log").read_text()
    assert resume_line in log, log
    # only the iterations after the checkpoint ran again; the history is complete
    assert sorted(p.name for p in second.glob("done_*")) == [
        f"done_{i}" for i in range(2, n_steps)]
    hist = pd.read_csv(second / "history.tsv", sep="\t")
    key = "iteration" if method == "disca" else "epoch"
    assert hist[key].tolist() == list(range(n_steps))
    feats = np.load(second / "features.npy")
    assert feats.shape[0] == len(shapes[0]) and np.all(np.isfinite(feats))
