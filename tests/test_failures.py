"""Loud failures: NaN/Inf in a loss or in features is an error naming the method and the
epoch; GPU out of memory (simulated) shrinks the batch, logs it, and gives the same model; a
clustering that collapses to one or two classes while the features spread wider is flagged."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from test_disca import planted_shapes
from tomoclust import TomoclustError
from tomoclust.cluster import (
    cluster_features,
    collapse_warning,
    constant_columns,
    effective_dimension,
    reduce_features,
)
from tomoclust.features.autoencoder import AutoencoderSettings, run_autoencoder
from tomoclust.features.disca import DiscaSettings, run_disca
from tomoclust.features.fewshot import FewShotSettings, train_protonet
from tomoclust.features.networks import AutoEncoder3D
from tomoclust.features.transfer import train_transfer
from tomoclust.features.transfer_settings import TransferSettings


@pytest.fixture(scope="module")
def shapes():
    return planted_shapes(n_per=12, d=16)


def _poisoned(stack: np.ndarray, value: float = np.nan) -> np.ndarray:
    bad = stack.copy()
    bad[3, 8, 8, 8] = value
    return bad


def test_autoencoder_nan_names_method_and_epoch(shapes):
    with pytest.raises(TomoclustError, match=r"^autoencoder: NaN or Inf in the training loss at "
                                             r"epoch 0"):
        run_autoencoder(_poisoned(shapes[0]), AutoencoderSettings(code_dim=4, channels=2,
                                                                epochs=2, batch_size=8), "cpu")


def test_autoencoder_diverging_names_the_epoch(shapes):
    """A learning rate that blows the weights up: the error names the epoch where it happened."""
    params = AutoencoderSettings(code_dim=4, channels=2, epochs=6, batch_size=8, lr=1e12)
    with pytest.raises(TomoclustError, match=r"^autoencoder: NaN or Inf in the training loss at "
                                             r"epoch \d+ .*lower learning rate"):
        run_autoencoder(shapes[0], params, "cpu")


def test_disca_nan_names_method_and_iteration(shapes):
    params = DiscaSettings(preset="tiny", iterations=2, k_max=3, batch_size=16, pca_components=3,
                         head_warmup_steps=5, init="random", seed=0)
    with pytest.raises(TomoclustError, match=r"^DISCA: NaN or Inf in the network features at "
                                             r"iteration 0"):
        run_disca(_poisoned(shapes[0], np.inf), params, "cpu")
    with pytest.raises(TomoclustError, match=r"^DISCA: NaN or Inf in the invariant features"):
        run_disca(_poisoned(shapes[0]), DiscaSettings(**{**params.__dict__, "init": "invariant"}),
                  "cpu")


def test_transfer_nan_names_method_and_epoch(shapes):
    stack, truth = shapes
    params = TransferSettings(width=4, stages=2, hidden=8, epochs=2, batch_size=8, seed=0)
    with pytest.raises(TomoclustError, match=r"^transfer: NaN or Inf in the training loss at "
                                             r"epoch 0"):
        train_transfer(_poisoned(stack), truth, ["ball", "rod"], params, "cpu")


def test_fewshot_nan_names_method_and_epoch(shapes):
    stack, truth = shapes
    bad = stack.copy()
    bad[:] = np.nan
    params = FewShotSettings(width=2, blocks=2, shot=2, query=2, epochs=2, episodes_per_epoch=2)
    with pytest.raises(TomoclustError, match=r"^few-shot protonet3d: NaN or Inf in the training "
                                             r"loss at epoch 0"):
        train_protonet(bad, truth, params, "cpu")


def test_autoencoder_out_of_memory_halves_the_batch(shapes, monkeypatch, caplog):
    """The simulated GPU holds 4 boxes at a time: training goes on in micro-batches of 4
    (logged), and since gradients add up over them the model is that of the full batches."""
    stack = shapes[0]
    params = AutoencoderSettings(code_dim=4, channels=2, epochs=2, batch_size=16)
    reference = run_autoencoder(stack, params, "cpu")
    real_forward = AutoEncoder3D.forward
    sizes: list[int] = []

    def small_gpu(self, x):
        sizes.append(len(x))
        if self.training and len(x) > 4:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB")
        return real_forward(self, x)

    monkeypatch.setattr(AutoEncoder3D, "forward", small_gpu)
    with caplog.at_level(logging.WARNING, logger="tomoclust"):
        res = run_autoencoder(stack, params, "cpu")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        "autoencoder training: out of memory on cpu with a batch of 16; retrying with 8",
        "autoencoder training: out of memory on cpu with a batch of 8; retrying with 4"]
    assert max(sizes[3:]) == 4  # after the two failures, never more than fits
    np.testing.assert_allclose(res.features, reference.features, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(res.history["loss"], reference.history["loss"], rtol=1e-5)


def test_out_of_memory_at_the_floor_stops_training(shapes, monkeypatch):
    def no_memory(self, x):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB")

    monkeypatch.setattr(AutoEncoder3D, "forward", no_memory)
    with pytest.raises(TomoclustError, match=r"autoencoder training: out of memory on cpu even "
                                             r"with a batch of 2 \(the floor\)"):
        run_autoencoder(shapes[0], AutoencoderSettings(code_dim=4, channels=2, epochs=1,
                                                     batch_size=16), "cpu")


# ---------------------------------------------------------------- collapsed clustering
def test_effective_dimension_counts_spread_directions(rng):
    iso = rng.standard_normal((4000, 6))
    assert effective_dimension(iso) == pytest.approx(6.0, rel=0.05)
    line = np.outer(rng.standard_normal(500), rng.standard_normal(5))
    assert effective_dimension(line) == pytest.approx(1.0, abs=1e-6)
    # constant (dead) columns are left out, the scale of a column does not matter
    padded = np.hstack([iso[:, :3] * [1.0, 100.0, 0.01], np.ones((4000, 2))])
    assert effective_dimension(padded) == pytest.approx(3.0, rel=0.05)
    assert effective_dimension(np.ones((10, 4))) == 0.0
    # chunked accumulation equals one pass
    assert effective_dimension(iso, chunk=333) == pytest.approx(effective_dimension(iso),
                                                                rel=1e-9)


def test_collapse_warning_only_when_structure_is_left_unused(rng):
    spread = rng.standard_normal((600, 8)).astype(np.float32)
    msg = collapse_warning(spread, 2, 10, [550, 50])
    assert msg is not None and "only 2 classes found (up to 10 allowed" in msg
    assert "92%" in msg and "8.0 effective dimensions" in msg
    assert "1 class found" in collapse_warning(spread, 1, 10, [600])
    assert collapse_warning(spread, 3, 10, [200, 200, 200]) is None  # not collapsed
    assert collapse_warning(spread, 2, 2, [300, 300]) is None  # K = 2 was all there was
    assert collapse_warning(spread, 2, None, [300, 300]) is None
    line = np.outer(rng.standard_normal(600), np.ones(8)).astype(np.float32)
    assert collapse_warning(line, 2, 10, [300, 300]) is None  # the features hold no more


# ------------------------------------------------------- clustering in one float32 copy
def _reduce_reference(features: np.ndarray, k: int) -> np.ndarray:
    """The float64 scikit-learn path (what the tall path replaces)."""
    from sklearn.decomposition import PCA

    x = features.astype(np.float64)
    sd = x.std(axis=0)
    x = (x - x.mean(axis=0)) / np.where(sd > 0, sd, 1.0)
    z = PCA(n_components=k, random_state=0).fit_transform(x)
    return z / z.std(axis=0)


def test_tall_pca_matches_scikit_learn_and_clusters_alike(rng):
    centres = rng.standard_normal((4, 40)) * 1.5
    truth = rng.integers(0, 4, 6000)
    feats = (centres[truth] + rng.standard_normal((6000, 40))
             * rng.uniform(0.5, 3.0, 40)).astype(np.float32)
    feats[:, 5] = 2.0  # a dead unit
    z = reduce_features(feats, 8, chunk=1000)
    ref = _reduce_reference(feats, 8)
    assert z.shape == (6000, 8) and z.dtype == np.float64
    np.testing.assert_allclose(z, ref, atol=2e-4)  # same axes, same signs
    a = cluster_features(feats, "gmm", k_min=2, k_max=6, pca_components=8, seed=0)
    assert a.k == 4
    # the clustering of the reference scores
    from tomoclust.cluster import _cluster
    b = _cluster(ref, "gmm", None, 2, 6, 3, 0, 2, None, 2.0)
    np.testing.assert_array_equal(a.labels, b.labels)
    # small tables (n < 10·d) still go through scikit-learn, unchanged
    np.testing.assert_array_equal(reduce_features(feats[:300], 8), _reduce_reference(
        feats[:300], 8))


def test_constant_columns_needs_no_float64_copy():
    x = np.ones((5, 4), dtype=np.float32)
    x[:, 1] = np.arange(5)
    x[2, 3] = 1.0 + 1e-3
    assert constant_columns(x) == 2
    assert constant_columns(np.zeros((0, 3), np.float32)) == 0
