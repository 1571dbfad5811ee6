"""tomoclust.features.autoencoder: a tiny training run, its outputs, and resuming from a
checkpoint."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import DEVICES, Interrupt, interrupt_after
from test_disca import planted_shapes
from tomoclust.features.autoencoder import AutoencoderSettings, describe, run_autoencoder
from tomoclust.features.train import Checkpoint, fingerprint


@pytest.fixture(scope="module")
def stack():
    return planted_shapes(n_per=12, d=16)[0]


def _params(**kw) -> AutoencoderSettings:
    return AutoencoderSettings(**{**dict(code_dim=6, channels=4, epochs=2, batch_size=8), **kw})


@pytest.mark.parametrize("device", DEVICES)
def test_tiny_autoencoder_run(stack, device, tmp_path):
    res = run_autoencoder(stack, _params(epochs=4), device, history_path=tmp_path / "h.tsv")
    assert res.features.shape == (len(stack), 6) and res.features.dtype == np.float32
    assert np.all(np.isfinite(res.features)) and np.all(res.features >= 0)  # ReLU code
    assert res.history["epoch"].tolist() == [0, 1, 2, 3]
    loss = res.history["loss"].to_numpy()
    assert np.all(np.isfinite(loss)) and np.all(loss > 0)
    # unit-variance particles: an untrained reconstruction costs about 1; training helps
    assert loss[-1] < loss[0]
    assert all(t.device.type == torch.device(device).type for t in res.state_dict.values())
    on_disk = pd.read_csv(tmp_path / "h.tsv", sep="\t")
    assert on_disk["epoch"].tolist() == [0, 1, 2, 3]
    # the features are the codes of the trained (eval-mode) model
    assert not np.allclose(res.features, res.features[:1])


def test_autoencoder_is_reproducible_and_rejects_odd_boxes(stack):
    a = run_autoencoder(stack, _params(), "cpu")
    b = run_autoencoder(stack, _params(), "cpu")
    np.testing.assert_array_equal(a.features, b.features)
    with pytest.raises(ValueError, match="divisible by 4"):
        run_autoencoder(np.zeros((4, 18, 18, 18), np.float32), _params(), "cpu")


@pytest.mark.parametrize("device", DEVICES)
def test_interrupted_autoencoder_resumes(stack, device, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="tomoclust")
    params = _params(epochs=4)
    ckpt = Checkpoint(tmp_path / "ae.pt", fingerprint(describe(params)))
    with pytest.raises(Interrupt):
        run_autoencoder(stack, params, device, checkpoint=ckpt, on_epoch=interrupt_after(1))
    assert int(ckpt.load()["epoch"]) == 1
    caplog.clear()
    seen = []
    res = run_autoencoder(stack, params, device, checkpoint=ckpt, on_epoch=seen.append)
    assert "resuming autoencoder from checkpoint after epoch 1" in caplog.text
    assert seen == [2, 3]
    assert res.history["epoch"].tolist() == [0, 1, 2, 3]
    assert res.features.shape == (len(stack), 6)
    if torch.device(device).type == "cpu":
        full = run_autoencoder(stack, params, device)
        np.testing.assert_allclose(res.history["loss"], full.history["loss"], rtol=1e-6)
        np.testing.assert_allclose(res.features, full.features, rtol=1e-5, atol=1e-6)

    # other settings: the checkpoint is not used
    caplog.clear()
    other = _params(epochs=1)
    seen = []
    res = run_autoencoder(stack, other, device,
                          checkpoint=Checkpoint(ckpt.path, fingerprint(describe(other))),
                          on_epoch=seen.append)
    assert "resuming" not in caplog.text and "belongs to another run" in caplog.text
    assert seen == [0]
    assert res.history["epoch"].tolist() == [0]


def test_resuming_a_finished_run_writes_its_history(stack, tmp_path):
    params = _params(epochs=2)
    ckpt = Checkpoint(tmp_path / "ae.pt", fingerprint(describe(params)))
    first = run_autoencoder(stack, params, "cpu", checkpoint=ckpt,
                            history_path=tmp_path / "h1.tsv")
    seen = []
    again = run_autoencoder(stack, params, "cpu", checkpoint=ckpt,
                            history_path=tmp_path / "h2.tsv", on_epoch=seen.append)
    assert seen == []
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "h2.tsv", sep="\t"),
                                  pd.read_csv(tmp_path / "h1.tsv", sep="\t"))
    np.testing.assert_array_equal(again.features, first.features)
