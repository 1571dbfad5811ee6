"""tomoclust.cluster: PCA reduction, GMM with a BIC choice of K, k-means, stability."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score
from threadpoolctl import threadpool_limits
from tomoclust.cluster import cluster_features, compact_labels, gmm_bic, reduce_features


@pytest.fixture(autouse=True)
def _one_blas_thread():
    """Tiny matrices: a multi-threaded BLAS only spins (15x slower on a busy 2-core box)."""
    with threadpool_limits(1):
        yield


def _blobs(rng: np.random.Generator, separation: float, k: int = 4, n_per: int = 40,
           dim: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """``k`` unit-variance Gaussian blobs in ``dim`` dimensions, in a shuffled order.

    The centres are random directions scaled so the closest two are ``separation`` apart
    (every dimension carries some of the signal, as in real feature vectors).
    """
    centres = rng.standard_normal((k, dim))
    gaps = np.linalg.norm(centres[:, None] - centres[None], axis=-1)
    centres *= separation / gaps[np.triu_indices(k, 1)].min()
    truth = np.repeat(np.arange(k), n_per)
    x = centres[truth] + rng.standard_normal((len(truth), dim))
    order = rng.permutation(len(truth))
    return x[order], truth[order]


def test_reduce_features_shape_and_scale(rng):
    x = rng.standard_normal((50, 12)) * np.arange(1, 13) + 100
    z = reduce_features(x, 5)
    assert z.shape == (50, 5)
    np.testing.assert_allclose(z.mean(axis=0), 0.0, atol=1e-10)
    np.testing.assert_allclose(z.std(axis=0), 1.0, atol=1e-10)
    # no more components than dimensions or points - 1; constant columns are harmless
    assert reduce_features(x[:, :3], 8).shape == (50, 3)
    assert reduce_features(x[:4], 8).shape == (4, 3)
    const = np.column_stack([x[:, :4], np.full(50, 7.0)])
    assert np.all(np.isfinite(reduce_features(const, 5)))


# BIC charges every full-covariance component (p + p(p+1)/2 + 1) ln n: 45 ln 160 ≈ 228 in 8
# dimensions. Splitting two merged blobs of 40 points s σ apart gains about
# 2 (40 ln(1 + s²/4) − 40 ln 2) in -2 log L, which beats that only from s ≈ 16 on; in 4
# dimensions (15 ln 160 ≈ 76) from s ≈ 6. Hence 25 σ for 8 components and 12 σ for 4.
@pytest.mark.parametrize(("pca", "separation"), [(8, 25.0), (4, 12.0)])
def test_gmm_bic_recovers_four_planted_blobs(rng, pca, separation):
    x, truth = _blobs(rng, separation=separation)
    res = cluster_features(x, "gmm", k_min=2, k_max=7, pca_components=pca, seed=0)
    assert res.k == 4
    assert adjusted_rand_score(truth, res.labels) > 0.95
    assert sorted(np.unique(res.labels)) == [1, 2, 3, 4]  # 1-based, no gaps
    assert res.labels.shape == res.probability.shape == (len(x),)
    assert np.all((res.probability > 0) & (res.probability <= 1))
    assert res.probability.mean() > 0.95  # well separated: confident posteriors
    assert res.stability_ari > 0.95
    assert res.reduced.shape == (len(x), pca)
    # the BIC table: one cold fit per K, the chosen K has the lowest BIC
    assert res.bic["k"].tolist() == list(range(2, 8))
    assert not res.bic["warm_start"].any()
    assert int(res.bic.loc[res.bic["bic"].idxmin(), "k"]) == 4


def test_gmm_fixed_k(rng):
    x, truth = _blobs(rng, k=3, separation=12.0)
    res = cluster_features(x, "gmm", k=3, pca_components=4)
    assert res.k == 3 and res.bic["k"].tolist() == [3]
    assert adjusted_rand_score(truth, res.labels) > 0.95


def test_gmm_bic_prefers_one_cluster_for_one_blob(rng):
    z = rng.standard_normal((200, 3))
    _, bic = gmm_bic(z, [1, 2, 3, 4])
    assert int(bic.loc[bic["bic"].idxmin(), "k"]) == 1


def test_gmm_bic_warm_start_competes(rng):
    x, truth = _blobs(rng, k=3, dim=4, separation=12.0)
    z = reduce_features(x, 4)
    gm, bic = gmm_bic(z, [2, 4], warm_labels=truth)
    assert bic["warm_start"].tolist() == [False, False, True]
    assert bic["k"].tolist() == [2, 4, 3]
    # the warm-started 3-component model is the true one and wins
    assert gm.n_components == 3
    assert adjusted_rand_score(truth, gm.predict(z)) > 0.95
    with pytest.raises(ValueError, match="no K"):
        gmm_bic(z[:3], [5, 6])


def test_kmeans_needs_k_and_recovers_blobs(rng):
    x, truth = _blobs(rng, separation=12.0)
    with pytest.raises(ValueError, match="fixed k"):
        cluster_features(x, "kmeans")
    res = cluster_features(x, "kmeans", k=4, pca_components=8)
    assert res.k == 4
    assert adjusted_rand_score(truth, res.labels) > 0.95
    np.testing.assert_array_equal(res.probability, 1.0)
    assert res.bic.empty
    assert res.stability_ari > 0.95


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
def test_unknown_algorithm_and_too_few_points(rng):
    x, _ = _blobs(rng, separation=12.0)
    with pytest.raises(ValueError, match="unknown clustering algorithm"):
        cluster_features(x, "dbscan", k=3)
    with pytest.raises(ValueError, match="cannot cluster"):
        cluster_features(x[:1], "gmm")


def test_stability_is_low_for_structureless_data(rng):
    """A forced split of one Gaussian is arbitrary: other seeds disagree more than on blobs."""
    x = rng.standard_normal((120, 6))
    res = cluster_features(x, "gmm", k=5, pca_components=6, stability_seeds=3)
    assert res.stability_ari < 0.6


def test_compact_labels():
    np.testing.assert_array_equal(compact_labels(np.array([5, 5, 2, 9, 2])), [1, 1, 0, 2, 0])
    np.testing.assert_array_equal(compact_labels(np.array([0, 1, 2])), [0, 1, 2])
    np.testing.assert_array_equal(compact_labels(np.array([3, 3])), [0, 0])
