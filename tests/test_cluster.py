"""tomoclust.cluster: PCA reduction, GMM with a BIC choice of K, k-means, stability."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import adjusted_rand_score
from sklearn.mixture import GaussianMixture
from threadpoolctl import threadpool_limits
from tomoclust.cluster import (
    _max_mst_edge,
    bhattacharyya_distances,
    cluster_features,
    compact_labels,
    constant_columns,
    gmm_bic,
    merge_components,
    merge_groups,
    reduce_features,
    ridgeline_ratio,
)
from tomoclust.numerics.metrics import clustering_metrics


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


# ------------------------------------------------------------------ ridgeline merging
def _mixture_1d_ratio(d: float, w: float = 0.5) -> float:
    """Brute-force ridgeline ratio of w·N(0, 1) + (1 − w)·N(d, 1) on a fine 1D grid."""
    x = np.linspace(-4, d + 4, 200_001)
    f = w * np.exp(-x**2 / 2) + (1 - w) * np.exp(-((x - d) ** 2) / 2)
    peaks = np.flatnonzero((f[1:-1] >= f[:-2]) & (f[1:-1] >= f[2:])) + 1
    if len(peaks) < 2:
        return 1.0
    top = np.sort(peaks[np.argsort(f[peaks])[-2:]])
    return float(f[top[0]:top[1] + 1].min() / f[top].min())


@pytest.mark.parametrize(("d", "w"), [(1.5, 0.5), (2.5, 0.5), (3.0, 0.5), (4.0, 0.3), (8.0, 0.5)])
def test_ridgeline_ratio_matches_brute_force_in_1d(d, w):
    one = np.eye(1)
    r = ridgeline_ratio(w, np.zeros(1), one, 1 - w, np.array([d]), one, n_points=2001)
    assert r == pytest.approx(_mixture_1d_ratio(d, w), abs=2e-3)
    if d < 2:  # equal unit Gaussians closer than 2σ: one mode
        assert r == 1.0


def test_ridgeline_ratio_follows_the_ridge_not_the_chord():
    """Two elongated components side by side, offset along their long axis: the chord
    between the means crosses low density, the ridgeline does not; the ratio sees no valley
    where the full-grid density has none."""
    c = np.diag([25.0, 0.25])
    m1, m2 = np.array([0.0, 0.0]), np.array([6.0, 0.6])
    r = ridgeline_ratio(0.5, m1, c, 0.5, m2, c)
    g = np.stack(np.meshgrid(np.linspace(-15, 21, 721), np.linspace(-3, 4, 281)), -1)
    inv = np.linalg.inv(c)

    def dens(m):
        q = np.einsum("...i,ij,...j->...", g - m, inv, g - m)
        return np.exp(-q / 2)

    f = dens(m1) + dens(m2)
    # unimodal in 2D: only one grid point is a local maximum of its 3x3 neighbourhood
    inner = f[1:-1, 1:-1]
    neigh = np.stack([f[1 + a:f.shape[0] - 1 + a, 1 + b:f.shape[1] - 1 + b]
                      for a in (-1, 0, 1) for b in (-1, 0, 1) if (a, b) != (0, 0)])
    assert int((inner > neigh.max(axis=0)).sum()) == 1
    assert r == pytest.approx(1.0)


def test_merge_groups_is_single_linkage():
    r = np.eye(5)
    r[0, 1] = r[1, 0] = 0.5
    r[1, 2] = r[2, 1] = 0.2
    r[3, 4] = r[4, 3] = 0.05
    np.testing.assert_array_equal(merge_groups(r, 0.1), [0, 0, 0, 1, 2])
    np.testing.assert_array_equal(merge_groups(r, 0.3), [0, 0, 1, 2, 3])
    np.testing.assert_array_equal(merge_groups(r, 0.01), [0, 0, 0, 1, 1])


def _bananas_and_blob(rng, n: int = 400) -> tuple[np.ndarray, np.ndarray]:
    """Two thin curved arcs (non-Gaussian classes) and one round blob, far apart, in 3D."""
    t = rng.uniform(-1.3, 1.3, (2, n))
    arcs = [np.column_stack([6 * np.sin(t[i]), 6 * np.cos(t[i]), np.zeros(n)])
            + 0.15 * rng.standard_normal((n, 3)) + off
            for i, off in enumerate([np.zeros(3), np.array([0.0, -30.0, 0.0])])]
    blob = rng.standard_normal((n, 3)) + np.array([30.0, 0.0, 0.0])
    x = np.concatenate(arcs + [blob])
    truth = np.repeat([0, 1, 2], n)
    order = rng.permutation(len(x))
    return x[order], truth[order]


def test_merging_joins_components_of_curved_classes(rng):
    x, truth = _bananas_and_blob(rng)
    plain = cluster_features(x, "gmm", k_min=2, k_max=10, pca_components=3, seed=0,
                             stability_seeds=0)
    assert plain.k > 3  # BIC spends several components on each arc
    res = cluster_features(x, "gmm", k_min=2, k_max=10, pca_components=3, seed=0,
                           merge_ratio=0.1, stability_seeds=1)
    assert res.k == 3 and res.k_components == plain.k
    assert adjusted_rand_score(truth, res.labels) > 0.99
    assert adjusted_rand_score(truth, plain.labels) < 0.9
    assert sorted(np.unique(res.labels)) == [1, 2, 3]
    assert np.all((res.probability > 0) & (res.probability <= 1 + 1e-12))
    assert res.probability.mean() > 0.99  # the merged classes are far apart
    assert res.stability_ari > 0.95  # the merged partition does not depend on the seed
    # a fixed K is never merged
    fixed = cluster_features(x, "gmm", k=6, pca_components=3, merge_ratio=0.1)
    assert fixed.k == 6


def test_merging_keeps_separate_blobs(rng):
    """Gaussian classes 12σ apart: nothing to merge, same result as without merging."""
    x, truth = _blobs(rng, separation=12.0, dim=4)
    res = cluster_features(x, "gmm", k_min=2, k_max=7, pca_components=4, merge_ratio=0.1)
    assert res.k == res.k_components == 4
    assert adjusted_rand_score(truth, res.labels) > 0.95
    with pytest.raises(ValueError, match="merge_ratio"):
        cluster_features(x, "gmm", merge_ratio=1.5)


def _gmm(means, covs, weights=None) -> GaussianMixture:
    """A fitted-looking GaussianMixture with the given parameters (for the merge rules)."""
    k = len(means)
    gm = GaussianMixture(k, covariance_type="full")
    gm.weights_ = np.full(k, 1 / k) if weights is None else np.asarray(weights, float)
    gm.means_ = np.asarray(means, float)
    gm.covariances_ = np.asarray(covs, float)
    gm.precisions_cholesky_ = np.stack([np.linalg.cholesky(np.linalg.inv(c))
                                        for c in gm.covariances_])
    return gm


def test_bhattacharyya_distance_and_mst_edge():
    eye = np.eye(3)
    gm = _gmm([[0, 0, 0], [4, 0, 0], [0, 0, 10]], [eye, eye, eye])
    d = bhattacharyya_distances(gm)
    # equal covariances: d²/8 for Mahalanobis distance d
    np.testing.assert_allclose(d, [[0, 2, 12.5], [2, 0, 116 / 8], [12.5, 116 / 8, 0]])
    # equal means: only the covariance term, ½ ln(|Σ̄| / √(|Σ1||Σ2|)) for Σ2 = 4·I
    gm2 = _gmm([[0, 0, 0], [0, 0, 0]], [eye, 4 * eye])
    assert bhattacharyya_distances(gm2)[0, 1] == pytest.approx(0.5 * 3 * np.log(2.5 / 2))
    # the MST of d joins 0-1 (2) and 0-2 (12.5): its largest edge is 12.5
    assert _max_mst_edge(d) == pytest.approx(12.5)
    assert _max_mst_edge(np.zeros((1, 1))) == 0.0


def _pairs(sep_within: float, sep_between: float) -> GaussianMixture:
    """Three groups of two unit Gaussians: ``sep_within`` σ apart inside a group, the groups
    ``sep_between`` σ apart (in 2D)."""
    centres = []
    for g in range(3):
        c = sep_between * np.array([np.cos(2 * np.pi * g / 3), np.sin(2 * np.pi * g / 3)])
        centres += [c, c + [sep_within, 0.0]]
    return _gmm(centres, [np.eye(2)] * 6)


def test_merge_components_needs_touching_and_a_gap():
    # touching pairs (2σ: one mode) far from each other (30σ): merged into 3 classes
    group, info = merge_components(_pairs(2.0, 30.0), 0.1, 2.0)
    assert info["merged"] and info["touching_groups"] == 3 and info["gap"] > 10
    np.testing.assert_array_equal(group, [0, 0, 1, 1, 2, 2])
    # touching pairs (3.5σ) whose nearest other component is only ~6σ away: the groups are
    # not twice as far apart as their members, so nothing is merged
    group, info = merge_components(_pairs(3.5, 5.0), 0.1, 2.0)
    assert info["touching_groups"] == 3 and not info["merged"] and 1.5 < info["gap"] < 2.0
    np.testing.assert_array_equal(group, np.arange(6))
    # separated components (8σ inside the pairs: a deep valley) never merge, however far
    # apart the pairs are
    group, info = merge_components(_pairs(8.0, 60.0), 0.1, 2.0)
    assert not info["merged"] and info["touching_groups"] == 6
    np.testing.assert_array_equal(group, np.arange(6))
    # a merge below k_min is refused
    group, info = merge_components(_pairs(2.0, 30.0), 0.1, 2.0, k_min=4)
    assert not info["merged"]
    np.testing.assert_array_equal(group, np.arange(6))


def test_merging_keeps_touching_classes_at_low_snr(rng):
    """Five Gaussian classes of which two touch (3σ) and the rest are ~5σ away (like the
    protocol at SNR 0.05): the touching pair is not merged, as nothing is much farther."""
    centres = np.array([[0, 0, 0], [3, 0, 0], [1.5, 5, 0], [1.5, -5, 0], [1.5, 0, 5]])
    truth = np.repeat(np.arange(5), 400)
    x = centres[truth] + rng.standard_normal((len(truth), 3))
    plain = cluster_features(x, "gmm", k_min=2, k_max=8, pca_components=3, stability_seeds=0)
    res = cluster_features(x, "gmm", k_min=2, k_max=8, pca_components=3, stability_seeds=0,
                           merge_ratio=0.1)
    assert plain.k == 5 and res.k == 5
    np.testing.assert_array_equal(res.labels, plain.labels)
    gm, _ = gmm_bic(res.reduced, list(range(2, 9)))
    _, info = merge_components(gm, 0.1, 2.0, k_min=2)
    # the ratio test found a touching pair (4 groups of 5), and the gap guard kept it: merging
    # needs a gap of merge_gap = 2.0 (measured 1.695, a margin of 0.3)
    assert info["touching_groups"] == 4 and info["gap"] < 2.0
    with pytest.raises(ValueError, match="merge_gap"):
        cluster_features(x, "gmm", merge_ratio=0.1, merge_gap=0.5)


def test_constant_columns_counts_dead_units_and_a_collapse_gives_one_class(rng):
    x = rng.standard_normal((100, 6))
    assert constant_columns(x) == 0
    x[:, [1, 4]] = 0.0  # dead ReLU units
    x[:, 2] = 3.0  # a constant offset is no information either
    assert constant_columns(x) == 3
    x[:, 5] = 1e-9 * rng.standard_normal(100)  # rounding-level jitter counts as constant
    assert constant_columns(x) == 4
    dead = np.zeros((120, 8))
    assert constant_columns(dead) == 8
    # what the cluster rule warns about: a collapsed model leaves one class, whatever K asks
    with pytest.warns(ConvergenceWarning, match="distinct clusters"):  # k-means init of GMM
        res = cluster_features(dead, "gmm", k=3, pca_components=4, stability_seeds=0)
    assert res.k == 1 and set(res.labels) == {1}


CLUSTER_CFG = {"algorithm": "gmm", "k": None, "k_min": 2, "k_max": 4, "pca_components": 3,
               "n_init": 2, "seed": 0, "merge_ratio": 0.1, "merge_gap": 2.0,
               "k_selection": "bic"}


def test_cluster_method_summarises_and_reports_dead_columns(rng, caplog):
    from tomoclust.cluster import cluster_method

    centres = np.array([[0.0] * 4, [8.0] * 4, [-8.0, 8.0, -8.0, 8.0]])
    x = np.concatenate([rng.standard_normal((40, 4)) + c for c in centres])
    x = np.concatenate([x, np.zeros((120, 1))], axis=1)  # one dead unit
    with caplog.at_level("WARNING", logger="tomoclust.cluster"):
        res, summary = cluster_method(x, CLUSTER_CFG, "ae")
    assert "ae: 1 of 5 feature columns are the same for every particle" in caplog.text
    assert res.k == 3 and summary["k"] == 3 and summary["method"] == "ae"
    assert sorted(summary["class_sizes"]) == [40, 40, 40]
    assert summary["constant_feature_columns"] == 1 and summary["feature_columns"] == 5
    assert summary["collapse_warning"] is None
    assert summary["mean_probability"] == pytest.approx(float(res.probability.mean()))
    assert 2.0 < summary["effective_dimension"] <= 4.0


def test_cluster_method_warns_when_everything_is_constant(caplog):
    from tomoclust.cluster import cluster_method

    with caplog.at_level("WARNING", logger="tomoclust.cluster"), \
            pytest.warns(ConvergenceWarning, match="distinct clusters"):
        res, summary = cluster_method(np.zeros((60, 3)), {**CLUSTER_CFG, "k": 2}, "disca")
    assert "disca: all 3 feature columns are the same for every particle" in caplog.text
    assert summary["constant_feature_columns"] == 3 and summary["k"] == res.k == 1


def test_labelling_components_follow_the_particle_count():
    from tomoclust.cluster import labelling_components

    # two points per free parameter of k full-covariance Gaussians: k·(c + c(c+1)/2) ≤ n/2
    assert labelling_components(275, 5, 10) == 6
    assert labelling_components(1000, 5, 10) == 10
    assert labelling_components(10**6, 5, 10) == 10  # never above the setting
    assert labelling_components(10, 10, 10) == 2  # a floor of 2
    for n in (100, 300, 1000, 3000):
        c = labelling_components(n, 5, 16)
        assert 5 * (c + c * (c + 1) / 2) <= n / 2 or c == 2
        assert c == 16 or 5 * ((c + 1) + (c + 1) * (c + 2) / 2) > n / 2


def test_consensus_pools_representations_of_the_same_points(rng):
    """Five classes that only a second representation separates: the first alone joins two
    of them, both pooled keep five; representations of different lengths are refused."""
    from tomoclust.cluster import consensus_k

    labels = np.repeat(np.arange(5), 80)
    centres = 8.0 * rng.standard_normal((5, 4))
    full = centres[labels] + rng.standard_normal((400, 4))
    blind = full.copy()
    blind[labels == 4, :2] = full[labels == 3, :2].mean(0) + rng.standard_normal((80, 2))
    k_blind, _ = consensus_k(blind[:, :2], 2, 8, seed=0)
    assert k_blind == 4
    k, info = consensus_k([blind[:, :2], full], 2, 8, seed=0)
    assert k == 5
    assert info["fits"] == 2 * 7 * 3
    assert adjusted_rand_score(labels[info["pick"]], info["labels"]) > 0.95
    with pytest.raises(ValueError, match="different numbers"):
        consensus_k([full, full[:10]], 2, 4)


# ------------------------------------------------------------- consensus over two representations
def _two_representations(seed: int, k: int = 4, n: int = 150, d: int = 8):
    """``k`` classes of ``n`` points. In the first representation classes 0 and 1 are 5σ apart
    and the others 10σ from them: the consensus on it alone joins 0 and 1. In the second every
    class is 8σ from every other."""
    rng = np.random.default_rng(seed)
    lab = np.repeat(np.arange(k), n)
    ma = np.zeros((k, d))
    ma[1, 0] = 5.0
    for j in range(2, k):
        ma[j, j - 1] = 10.0
    mb = 8.0 * np.eye(k, d)
    return ma[lab] + rng.standard_normal((k * n, d)), mb[lab] + rng.standard_normal((k * n, d)), lab


def test_consensus_also_pools_a_second_representation():
    """Planted: the first representation alone gives K = 3 in most seeds (0 and 1 joined); the
    consensus pooled with the second finds the 4 classes in every seed, and the particles,
    labelled on the first representation only, are then ≥ 0.9 correct."""
    kw = dict(k_min=2, k_max=8, pca_components=4, stability_seeds=0,
              k_selection="consensus", consensus_components=[2, 4, 6])
    alone, pooled = [], []
    for seed in range(6):
        a, b, lab = _two_representations(seed)
        alone.append(cluster_features(a, seed=seed, **kw).k)
        res = cluster_features(a, seed=seed, consensus_also=b, **kw)
        pooled.append(res.k)
        assert clustering_metrics(lab, res.labels)["accuracy"] >= 0.9, seed
    assert sum(k == 3 for k in alone) >= 4, alone
    assert pooled == [4] * 6, pooled


def test_consensus_also_empty_or_mismatched():
    a, b, _ = _two_representations(0)
    kw = dict(k_min=2, k_max=6, pca_components=4, stability_seeds=0,
              k_selection="consensus", consensus_components=[2, 4])
    plain = cluster_features(a, **kw)
    empty = cluster_features(a, consensus_also=np.zeros((len(a), 0)), **kw)
    assert empty.k == plain.k and np.array_equal(empty.labels, plain.labels)
    with pytest.raises(ValueError, match="second representation holds 10 particles"):
        cluster_features(a, consensus_also=b[:10], **kw)
