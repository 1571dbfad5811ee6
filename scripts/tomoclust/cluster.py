"""Clustering of feature vectors: Gaussian mixtures with a BIC choice of K, or k-means.

Features are standardised (zero mean, unit variance per dimension), reduced by PCA, then
either fitted with full-covariance Gaussian mixtures for every K in a range — the K with the
lowest Bayesian information criterion wins — or partitioned by k-means with a fixed K. The
chosen K is checked for stability: the mixture is refitted with other seeds and the mean
adjusted Rand index between the labelings is reported (near 1 = the partition is real).

BIC chooses the number of Gaussian *components* that describes the feature density best, which
is not the number of *classes* when a class is not Gaussian: on very clean data (SNR 100) the
shell-spectrum features of a class form two or three touching lumps (with and without the
missing wedge), and BIC spends a component on each. When K is chosen automatically, such
components can be merged (after Hennig 2010, with a guard for low SNR):

1. *touching*: two components touch when their two-component mixture has no deep valley
   between them — along their ridgeline (Ray & Lindsay 2005: the curve that holds every mode of
   the mixture) the lowest density between the two highest peaks is at least ``merge_ratio``
   times the lower peak (1 = one mode). Touching components are linked (single linkage);
2. *two-level structure*: the merge is accepted only if the groups so formed are at least
   ``merge_gap`` times farther apart from one another (smallest distance between components of
   different groups) than the components joined inside a group (largest edge of the group's
   minimum spanning tree), and at least ``k_min`` groups remain. The distance is the square
   root of the Bhattacharyya distance (for equal covariances, the Mahalanobis distance / √8).
   At low SNR true classes touch too, but then nothing is much farther apart than they are,
   so nothing is merged.

A merged class's posterior is the sum of its components'.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy.special import logsumexp
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA
from sklearn.metrics import adjusted_rand_score
from sklearn.mixture import GaussianMixture
from threadpoolctl import threadpool_limits

log = logging.getLogger(__name__)


@dataclass
class ClusterResult:
    labels: np.ndarray  # (n,) 1-based class numbers
    probability: np.ndarray  # (n,) posterior of the assigned class (1.0 for k-means)
    k: int
    bic: pd.DataFrame = field(default_factory=pd.DataFrame)  # columns k, bic (GMM only)
    stability_ari: float = float("nan")
    reduced: np.ndarray | None = None  # the PCA-reduced, standardised features
    k_components: int | None = None  # mixture components before merging (GMM only)


def constant_columns(features: np.ndarray, rtol: float = 1e-6) -> int:
    """Number of feature columns that do not vary over the particles (spread at most ``rtol``
    times the largest absolute feature value): dead units of a network, say. They carry no
    information; when every column is constant, no clustering can separate anything."""
    x = np.asarray(features)
    if x.shape[0] == 0:
        return 0
    hi, lo = x.max(axis=0).astype(np.float64), x.min(axis=0).astype(np.float64)
    scale = max(float(np.maximum(np.abs(hi), np.abs(lo)).max(initial=0.0)),
                np.finfo(float).tiny)
    return int((hi - lo <= rtol * scale).sum())


def effective_dimension(features: np.ndarray, chunk: int = 65536) -> float:
    """How many directions the standardised features spread over: the participation ratio
    ``(Σλ)² / Σλ²`` of their correlation matrix's eigenvalues (constant columns left out). 1 for
    features on a line, ``m`` for ``m`` uncorrelated columns; 0 when all are constant.
    Accumulated over row chunks, so it needs no copy of the features."""
    x = np.asarray(features)
    n = x.shape[0]
    if n < 2 or x.ndim != 2:
        return 0.0
    mean = x.mean(axis=0, dtype=np.float64)
    gram = np.zeros((x.shape[1], x.shape[1]))
    for a in range(0, n, chunk):
        c = x[a:a + chunk].astype(np.float64) - mean
        gram += c.T @ c
    var = np.diag(gram) / n
    keep = var > 0
    if not keep.any():
        return 0.0
    sd = np.sqrt(var[keep])
    corr = gram[np.ix_(keep, keep)] / n / np.outer(sd, sd)
    lam = np.clip(np.linalg.eigvalsh(corr), 0.0, None)
    return float(lam.sum() ** 2 / (lam**2).sum())


def collapse_warning(features: np.ndarray, k: int, k_max: int | None, sizes: list[int],
                     min_dimension: float = 3.0) -> str | None:
    """A warning when the clustering found one or two classes although more were allowed and
    the features spread over at least ``min_dimension`` effective dimensions
    (:func:`effective_dimension`): the typical sign of a model or a clustering that collapsed,
    not of a sample with two kinds of particle. ``None`` when there is nothing to say."""
    if k > 2 or k_max is None or k_max <= k:
        return None
    dim = effective_dimension(features)
    if dim < min_dimension:
        return None
    largest = 100.0 * max(sizes) / max(sum(sizes), 1) if sizes else 100.0
    return (f"only {k} class{'es' if k != 1 else ''} found (up to {k_max} allowed; the largest "
            f"holds {largest:.0f}% of the particles) although the features spread over "
            f"{dim:.1f} effective dimensions: the clustering may have collapsed; check the BIC "
            "curve and the feature map, and try a fixed K or another method")


def reduce_features(features: np.ndarray, n_components: int, seed: int = 0,
                    chunk: int = 65536) -> np.ndarray:
    """Standardise ``(n, d)`` features and keep ``n_components`` principal components.

    Returns ``(n, k)`` float64 scores, each scaled to unit variance. For tall feature tables
    (``n ≥ 10·d``, ``d ≤ 1000``: every large particle set) the exact covariance
    eigendecomposition, the solver scikit-learn's PCA itself picks for such shapes, is done
    here on one float32 standardised copy with float64 sums over row chunks, so memory stays
    near twice the float32 features instead of several float64 copies. Other shapes go to
    scikit-learn's PCA in float64, as before.
    """
    x = np.asarray(features)
    n, d = x.shape
    k = int(min(n_components, d, max(n - 1, 1)))
    if d <= 1000 and n >= 10 * d:
        z = _pca_tall(x, k, chunk)
    else:
        x = np.asarray(x, dtype=np.float64)
        sd = x.std(axis=0)
        x = (x - x.mean(axis=0)) / np.where(sd > 0, sd, 1.0)
        z = PCA(n_components=k, random_state=seed).fit_transform(x)
    sd = z.std(axis=0)
    z /= np.where(sd > 0, sd, 1.0)
    return z


def _pca_tall(x: np.ndarray, k: int, chunk: int) -> np.ndarray:
    """Scores on the ``k`` leading principal axes of the standardised columns of a tall
    ``(n, d)`` array: covariance from float64 sums over row chunks, ``eigh``, signs as
    scikit-learn fixes them (the largest loading of each axis positive)."""
    n, d = x.shape
    mean = x.mean(axis=0, dtype=np.float64)
    sq = np.zeros(d)
    for a in range(0, n, chunk):
        c = x[a:a + chunk].astype(np.float64) - mean
        sq += (c * c).sum(axis=0)
    sd = np.sqrt(sq / n)
    sd[sd == 0] = 1.0
    xs = np.empty((n, d), dtype=np.float32)  # the one copy: standardised, float32
    for a in range(0, n, chunk):
        xs[a:a + chunk] = (x[a:a + chunk].astype(np.float64) - mean) / sd
    m = xs.mean(axis=0, dtype=np.float64)
    gram = np.zeros((d, d))
    for a in range(0, n, chunk):
        c = xs[a:a + chunk].astype(np.float64)
        gram += c.T @ c
    cov = (gram - n * np.outer(m, m)) / max(n - 1, 1)
    _, vecs = np.linalg.eigh(cov)
    axes = vecs[:, ::-1][:, :k].T  # (k, d), largest variance first
    signs = np.sign(axes[np.arange(k), np.abs(axes).argmax(axis=1)])
    axes *= np.where(signs == 0, 1.0, signs)[:, None]
    z = np.empty((n, k))
    for a in range(0, n, chunk):
        z[a:a + chunk] = (xs[a:a + chunk].astype(np.float64) - m) @ axes.T
    return z


def gmm_bic(z: np.ndarray, k_values: list[int], n_init: int = 3, seed: int = 0,
            reg_covar: float = 1e-5, warm_labels: np.ndarray | None = None
            ) -> tuple[GaussianMixture, pd.DataFrame]:
    """Fit a full-covariance GMM per K; return the lowest-BIC model and the BIC table.

    With ``warm_labels`` (0-based), a mixture with that many components is also fitted
    starting from those labels' means, and competes on BIC (DISCA's warm-started refit).
    """
    # mixtures of a few dimensions are far faster on one BLAS thread than on several
    with threadpool_limits(limits=1, user_api="blas"):
        return _gmm_bic(z, k_values, n_init, seed, reg_covar, warm_labels)


def _gmm_bic(z, k_values, n_init, seed, reg_covar, warm_labels):
    rows, best, best_bic = [], None, np.inf
    n = len(z)
    candidates = [(k, None) for k in k_values if 1 <= k < n]
    if warm_labels is not None:
        ks = np.unique(warm_labels)
        means = np.stack([z[warm_labels == k].mean(axis=0) for k in ks])
        candidates.append((len(ks), means))
    for k, means in candidates:
        gm = GaussianMixture(k, covariance_type="full", reg_covar=reg_covar,
                             n_init=1 if means is not None else n_init, means_init=means,
                             random_state=seed, max_iter=200)
        gm.fit(z)
        b = float(gm.bic(z))
        rows.append({"k": k, "bic": b, "warm_start": means is not None})
        if b < best_bic:
            best, best_bic = gm, b
    if best is None:
        raise ValueError(f"no K in {k_values} can be fitted to {n} points")
    return best, pd.DataFrame(rows)


def _gauss_logpdf(x: np.ndarray, mean: np.ndarray, cov: np.ndarray) -> np.ndarray:
    chol = np.linalg.cholesky(cov)
    sol = np.linalg.solve(chol, (x - mean).T)
    return (-0.5 * (sol**2).sum(axis=0) - np.log(np.diag(chol)).sum()
            - 0.5 * len(mean) * np.log(2 * np.pi))


def ridgeline_ratio(w1: float, m1: np.ndarray, c1: np.ndarray, w2: float, m2: np.ndarray,
                    c2: np.ndarray, n_points: int = 201) -> float:
    """Ridgeline ratio of a two-component Gaussian mixture (weights, means, covariances).

    The ridgeline ``x(a) = [(1−a)Σ1⁻¹ + aΣ2⁻¹]⁻¹ [(1−a)Σ1⁻¹μ1 + aΣ2⁻¹μ2]``, ``a ∈ [0, 1]``,
    holds every mode of the mixture (Ray & Lindsay 2005). Returns 1 when the mixture density
    along it has one peak, else its minimum between the two highest peaks divided by the lower
    of them (0 = the components are separated by empty space).
    """
    i1, i2 = np.linalg.inv(c1), np.linalg.inv(c2)
    a = np.linspace(0.0, 1.0, n_points)
    pts = np.stack([np.linalg.solve((1 - t) * i1 + t * i2, (1 - t) * i1 @ m1 + t * i2 @ m2)
                    for t in a])
    ld = logsumexp(np.stack([np.log(w1) + _gauss_logpdf(pts, m1, c1),
                             np.log(w2) + _gauss_logpdf(pts, m2, c2)]), axis=0)
    up = np.r_[True, ld[1:] >= ld[:-1]]
    down = np.r_[ld[:-1] >= ld[1:], True]
    peaks = np.flatnonzero(up & down)
    if len(peaks) < 2:
        return 1.0
    top = peaks[np.argsort(ld[peaks])[-2:]]
    lo, hi = top.min(), top.max()
    return float(np.exp(ld[lo:hi + 1].min() - min(ld[lo], ld[hi])))


def ridgeline_ratios(gm: GaussianMixture) -> np.ndarray:
    """Symmetric ``(K, K)`` matrix of pairwise ridgeline ratios of a full-covariance GMM."""
    k = gm.n_components
    r = np.eye(k)
    for i in range(k):
        for j in range(i + 1, k):
            r[i, j] = r[j, i] = ridgeline_ratio(
                gm.weights_[i], gm.means_[i], gm.covariances_[i],
                gm.weights_[j], gm.means_[j], gm.covariances_[j])
    return r


def merge_groups(ratios: np.ndarray, threshold: float) -> np.ndarray:
    """Class (0-based) of every component: connected components of ``ratio >= threshold``."""
    k = len(ratios)
    group = np.full(k, -1)
    n_groups = 0
    for start in range(k):
        if group[start] >= 0:
            continue
        group[start] = n_groups
        todo = [start]
        while todo:
            i = todo.pop()
            for j in np.flatnonzero((ratios[i] >= threshold) & (group < 0)):
                group[j] = n_groups
                todo.append(j)
        n_groups += 1
    return group


def bhattacharyya_distances(gm: GaussianMixture) -> np.ndarray:
    """Symmetric ``(K, K)`` Bhattacharyya distances between the components of a full GMM."""
    k = gm.n_components
    d = np.zeros((k, k))
    logdet = [np.linalg.slogdet(c)[1] for c in gm.covariances_]
    for i in range(k):
        for j in range(i + 1, k):
            cov = (gm.covariances_[i] + gm.covariances_[j]) / 2
            diff = gm.means_[i] - gm.means_[j]
            d[i, j] = d[j, i] = (0.125 * diff @ np.linalg.solve(cov, diff)
                                 + 0.5 * (np.linalg.slogdet(cov)[1]
                                          - 0.5 * (logdet[i] + logdet[j])))
    return d


def _max_mst_edge(dist: np.ndarray) -> float:
    """Largest edge of the minimum spanning tree of a small dense distance matrix (Prim)."""
    n = len(dist)
    if n < 2:
        return 0.0
    inside = np.zeros(n, dtype=bool)
    inside[0] = True
    best = dist[0].copy()
    worst = 0.0
    for _ in range(n - 1):
        j = int(np.argmin(np.where(inside, np.inf, best)))
        worst = max(worst, float(best[j]))
        inside[j] = True
        best = np.minimum(best, dist[j])
    return worst


def merge_components(gm: GaussianMixture, merge_ratio: float, merge_gap: float,
                     k_min: int = 1) -> tuple[np.ndarray, dict]:
    """Class (0-based) of every component, and the figures behind the decision.

    See the module docstring: touching components (ridgeline ratio ≥ ``merge_ratio``) are
    grouped; the grouping is kept only when the groups are ``merge_gap`` times farther apart
    than their members and at least ``k_min`` groups remain; otherwise every component is a
    class.
    """
    k = gm.n_components
    keep = np.arange(k)
    info = {"touching_groups": k, "gap": float("nan"), "merged": False}
    if k < 2:
        return keep, info
    group = merge_groups(ridgeline_ratios(gm), merge_ratio)
    n_groups = int(group.max()) + 1
    info["touching_groups"] = n_groups
    if n_groups == k or n_groups < max(k_min, 2):
        return keep, info
    dist = np.sqrt(np.maximum(bhattacharyya_distances(gm), 0.0))
    within = max(_max_mst_edge(dist[np.ix_(group == g, group == g)]) for g in range(n_groups))
    between = float(dist[group[:, None] != group[None, :]].min())
    info["gap"] = between / max(within, 1e-12)
    if info["gap"] < merge_gap:
        return keep, info
    info["merged"] = True
    return group, info


def merged_posterior(gm: GaussianMixture, z: np.ndarray, merge_ratio: float | None,
                     merge_gap: float = 2.0, k_min: int = 1) -> np.ndarray:
    """``(n, classes)`` posteriors: the components' summed within each merged class."""
    post = gm.predict_proba(z)
    if merge_ratio is None:
        return post
    group, _ = merge_components(gm, merge_ratio, merge_gap, k_min)
    out = np.zeros((len(z), group.max() + 1))
    np.add.at(out.T, group, post.T)
    return out


def compact_labels(labels: np.ndarray) -> np.ndarray:
    """Renumber labels to 0..K-1 in sorted order (labels of empty clusters disappear)."""
    _, inv = np.unique(labels, return_inverse=True)
    return inv


def cluster_features(features: np.ndarray, algorithm: str = "gmm", k: int | None = None,
                     k_min: int = 2, k_max: int = 10, pca_components: int = 8,
                     n_init: int = 3, seed: int = 0, stability_seeds: int = 2,
                     merge_ratio: float | None = None, merge_gap: float = 2.0,
                     k_selection: str = "bic",
                     consensus_components: Sequence[int] | None = None,
                     consensus_also: np.ndarray | None = None) -> ClusterResult:
    """Cluster ``(n, d)`` features (see module docstring).

    Parameters
    ----------
    algorithm
        ``"gmm"`` (BIC over ``k_min..k_max``, or only ``k`` when given) or ``"kmeans"``
        (needs ``k``).
    stability_seeds
        Extra seeds for the stability check (0 to skip).
    merge_ratio, merge_gap
        With an automatic K (GMM, no ``k``): merge touching components (ridgeline ratio ≥
        ``merge_ratio``) when the merged classes are ``merge_gap`` times farther apart than
        the components inside them (module docstring). ``merge_ratio=None``: every component
        is a class. A fixed ``k`` is never merged.
    k_selection
        How an automatic K is chosen: ``"bic"`` (lowest BIC, then the merge rule above) or
        ``"consensus"`` (:func:`consensus_k`: evidence accumulation over mixtures of every K
        on subsamples and seeds; the mixture with that K is then fitted to all points).
    consensus_components
        The numbers of principal components the consensus pools its mixtures over (the first
        ``c`` of the same PCA, for every ``c``); ``None`` or empty: ``pca_components`` only.
        The mixture that labels the particles uses ``pca_components``, or fewer when the
        particles cannot determine so many (:func:`labelling_components`).
    consensus_also
        A second ``(n, d2)`` representation of the same particles (the ``invariant`` features
        before noise whitening): with the consensus K, its own PCA gives the same numbers of
        components and those views join the consensus, whose co-association is then the
        average over the mixtures of both representations. A grouping that one of them holds
        only weakly (whitening equalises every direction by its noise, so at high SNR
        within-class variation weighs as much as the differences between classes) is
        steadied by the other. The mixture that labels the particles uses ``features`` only.
        ``None`` or 0 columns: not used.
    """
    if k_selection not in ("bic", "consensus"):
        raise ValueError(f"k_selection must be 'bic' or 'consensus', not {k_selection!r}")
    if merge_ratio is not None and not 0.0 <= merge_ratio <= 1.0:
        raise ValueError(f"merge_ratio must be in [0, 1] or None, got {merge_ratio}")
    if merge_gap < 1.0:
        raise ValueError(f"merge_gap must be at least 1, got {merge_gap}")
    consensus = algorithm == "gmm" and not k and k_selection == "consensus"
    view_dims = sorted({int(c) for c in consensus_components or (pca_components,)})
    dims = [*view_dims, pca_components] if consensus else [pca_components]
    if min(dims) < 1:
        raise ValueError(f"principal components must be at least 1, got {min(dims)}")
    # one PCA; its first c columns are the c-component reduction (each column scaled alone)
    also = None
    if consensus_also is not None and consensus_also.size:
        if len(consensus_also) != len(features):
            raise ValueError(f"the second representation holds {len(consensus_also)} "
                             f"particles, the features {len(features)}")
        also = consensus_also
    z_all = reduce_features(features, max(dims), seed)
    z = z_all[:, :pca_components]
    with threadpool_limits(limits=1, user_api="blas"):
        if consensus:
            views = [z_all[:, :c] for c in view_dims]
            if also is not None:
                a_all = reduce_features(also, max(view_dims), seed)
                views += [a_all[:, :c] for c in view_dims]
            k_cons, info = consensus_k(views, k_min, k_max, seed=seed)
            log.info("consensus over %d mixtures (%s principal components%s): K = %d "
                     "(dendrogram gap %.3f)", info["fits"],
                     "/".join(str(c) for c in view_dims),
                     "" if also is None else ", of both representations", k_cons, info["gap"])
            c = labelling_components(len(z), k_cons, pca_components)
            if c < z.shape[1]:
                log.info("the mixture with K = %d uses the first %d principal components: %d "
                         "particles determine no more (clustering.pca_components %d)", k_cons,
                         c, len(z), pca_components)
                z = np.ascontiguousarray(z[:, :c])
            # the mixture with that K: one K only, so it can afford CONSENSUS_STARTS random
            # starts (few starts can land in a split-one-merge-two optimum when particles are
            # few), plus one from the consensus groups' means; the lowest BIC wins
            warm = None
            if info["labels"] is not None:
                zp = z[info["pick"]]
                means = np.stack([zp[info["labels"] == g].mean(0) for g in range(k_cons)])
                warm = np.argmin((means**2).sum(1)[None] - 2 * z @ means.T, axis=1)
                if len(np.unique(warm)) != k_cons:
                    warm = None
            res = _cluster(z, algorithm, k_cons, k_min, k_max, n_init, seed, stability_seeds,
                           None, merge_gap, warm_labels=warm,
                           fit_n_init=max(n_init, CONSENSUS_STARTS))
            _, res.bic = gmm_bic(z, list(range(k_min, k_max + 1)), n_init=1, seed=seed)
            return res
        return _cluster(z, algorithm, k, k_min, k_max, n_init, seed, stability_seeds,
                        merge_ratio, merge_gap)


def labelling_components(n: int, k: int, n_components: int) -> int:
    """Principal components of the consensus-K mixture: ``n_components``, but no more than
    ``n`` points can determine for ``k`` full-covariance Gaussians with at least two points per
    free parameter (``k·(c + c(c+1)/2) ≤ n/2``; at least 2). A few hundred particles thus
    keep 6 dimensions, thousands get ``n_components``: the mixture fitted to a few hundred
    points in 10 dimensions lands in a different optimum from fit to fit."""
    c = max(int(n_components), 1)
    while c > 2 and k * (c + c * (c + 1) / 2) > n / 2:
        c -= 1
    return min(c, int(n_components))


def _cluster(z, algorithm, k, k_min, k_max, n_init, seed, stability_seeds, merge_ratio,
             merge_gap, warm_labels=None, fit_n_init=None) -> ClusterResult:
    n = len(z)
    if n < 2:
        raise ValueError(f"cannot cluster {n} particle(s)")
    if algorithm == "kmeans":
        if not k:
            raise ValueError("k-means needs a fixed k")
        k = min(k, n)
        km = KMeans(k, n_init=max(n_init, 1), random_state=seed).fit(z)
        labels = km.labels_
        others = [KMeans(k, n_init=max(n_init, 1), random_state=seed + 1 + s).fit(z).labels_
                  for s in range(stability_seeds)]
        prob = np.ones(n)
        bic = pd.DataFrame(columns=["k", "bic", "warm_start"])
        k_components = None
    elif algorithm == "gmm":
        ks = [k] if k else list(range(k_min, k_max + 1))
        merge = None if k else merge_ratio
        gm, bic = gmm_bic(z, ks, n_init=fit_n_init or n_init, seed=seed,
                          warm_labels=warm_labels)
        k_components = gm.n_components
        post = merged_posterior(gm, z, merge, merge_gap, k_min)
        labels = post.argmax(axis=1)
        prob = post.max(axis=1)
        others = []
        for s in range(stability_seeds):
            g2 = GaussianMixture(gm.n_components, covariance_type="full", reg_covar=1e-5,
                                 n_init=n_init, random_state=seed + 1 + s).fit(z)
            others.append(merged_posterior(g2, z, merge, merge_gap, k_min).argmax(axis=1))
    else:
        raise ValueError(f"unknown clustering algorithm {algorithm!r} (gmm or kmeans)")
    labels = compact_labels(labels)
    stab = float(np.mean([adjusted_rand_score(labels, o) for o in others])) if others else np.nan
    k_found = int(labels.max()) + 1
    if k_components is not None and k_components != k_found:
        log.info("%s: %d mixture components (lowest BIC) form %d classes", algorithm,
                 k_components, k_found)
    log.info("%s: K = %d (stability ARI %.3f)", algorithm, k_found, stab)
    return ClusterResult(labels + 1, prob, k_found, bic, stab, z, k_components)


#: random starts of the one mixture fitted with the consensus K
CONSENSUS_STARTS = 10


def consensus_k(z: np.ndarray | Sequence[np.ndarray], k_min: int = 2, k_max: int = 10,
                runs: int = 3, seed: int = 0, subsample: float = 0.8,
                max_points: int = 2000) -> tuple[int, dict]:
    """K by evidence accumulation (consensus over seeds, subsamples, K and representations).

    ``z`` is one ``(n, d)`` array or several representations of the same ``n`` points (the
    workflow passes the first 4, 6, 8, 10, 12 and 16 principal components of the features, and
    of the invariant features before noise whitening too: ``consensus_also`` of
    :func:`cluster_features`).
    For each, Gaussian mixtures with every K in ``k_min..k_max`` are fitted ``runs`` times, on
    random subsamples (``subsample`` of the points) with different seeds; for up to
    ``max_points`` points, the fraction of all fits in which two points share a component is
    their co-association. Average linkage of ``1 − co-association`` then gives a dendrogram;
    the number of classes is the one that survives the widest range of cut heights (the
    largest gap between consecutive merge heights: Fred & Jain 2005), within ``k_min..k_max``.

    A class that a mixture describes by several touching lumps is split in different places
    by different fits, so its points still co-occur often; true classes separated by empty
    space are never joined except at small K. Pooling representations matters when the data
    decide how many dimensions carry classes: with clean data, classes that differ only in
    the 7th–10th principal components are joined by every mixture in 6 dimensions but kept
    apart in 10 or more; with noisy data the extra dimensions are noise, and their fits,
    split at random, do not hold two classes apart consistently. Returns K and the figures
    behind it: the indices of the subsampled points (``pick``), their groups at that cut
    (``labels``, 0-based; None when tied merge heights leave no cut with exactly K groups).
    """
    from scipy.cluster.hierarchy import fcluster, linkage
    from scipy.spatial.distance import squareform

    views = [z] if isinstance(z, np.ndarray) else list(z)
    if not views:
        raise ValueError("consensus_k needs at least one representation of the points")
    n = len(views[0])
    if any(len(v) != n for v in views):
        raise ValueError(f"representations hold different numbers of points: "
                         f"{[len(v) for v in views]}")
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(n, size=min(n, max_points), replace=False))
    m = len(pick)
    co = np.zeros((m, m))
    n_fits = 0
    for v in views:
        for k in range(k_min, k_max + 1):
            for _ in range(runs):
                sub = rng.choice(n, size=max(int(subsample * n), k + 1), replace=False)
                gm = GaussianMixture(k, covariance_type="full", reg_covar=1e-5, n_init=1,
                                     random_state=int(rng.integers(2**31)), max_iter=200)
                gm.fit(v[sub])
                lab = gm.predict(v[pick])
                co += lab[:, None] == lab[None, :]
                n_fits += 1
    co /= n_fits
    dist = 1.0 - co
    np.fill_diagonal(dist, 0.0)
    tree = linkage(squareform(dist, checks=False), method="average")
    heights = tree[:, 2]  # m − 1 merges, increasing; after merge i there are m − 1 − i groups
    best_k, best_gap = k_min, -np.inf
    for k in range(max(k_min, 1), min(k_max, m) + 1):
        # k groups exist for cut heights in [heights[m-1-k], heights[m-k])
        lo = heights[m - 1 - k] if m - 1 - k >= 0 else 0.0
        hi = heights[m - k]
        if hi - lo > best_gap:
            best_k, best_gap = k, hi - lo
    groups = fcluster(tree, best_k, criterion="maxclust") - 1
    if len(np.unique(groups)) != best_k:  # tied merge heights: no partition with that K
        groups = None
    return best_k, {"gap": float(best_gap), "fits": n_fits, "n_points": m,
                    "pick": pick, "labels": groups}


def _warn_constant_columns(features: np.ndarray, method: str) -> int:
    """Log how many feature columns are constant (dead units); return that number."""
    n_const = constant_columns(features)
    if n_const == features.shape[1]:
        log.warning("%s: all %d feature columns are the same for every particle (the model "
                    "collapsed, e.g. dead units of a network trained on very noisy data); the "
                    "clustering cannot separate anything and puts every particle in one class",
                    method, n_const)
    elif n_const:
        log.warning("%s: %d of %d feature columns are the same for every particle (dead "
                    "units); the clustering uses the other %d", method, n_const,
                    features.shape[1], features.shape[1] - n_const)
    return n_const


def cluster_method(features: np.ndarray, cfg: Mapping[str, Any], method: str,
                   unwhitened: np.ndarray | None = None) -> tuple[ClusterResult, dict]:
    """Cluster one method's features with the ``clustering`` settings ``cfg``
    (:func:`cluster_features`); return the result and its summary (summary.json: K, class
    sizes, stability, dead feature columns, effective dimension and any collapse warning,
    which is also logged). ``unwhitened``: the features before noise whitening, pooled into
    the consensus K when ``cfg["consensus_unwhitened"]`` (``consensus_also``)."""
    n_const = _warn_constant_columns(features, method)
    pooled = unwhitened if cfg.get("consensus_unwhitened", True) else None
    res = cluster_features(features, cfg["algorithm"], k=cfg["k"], k_min=cfg["k_min"],
                           k_max=cfg["k_max"], pca_components=cfg["pca_components"],
                           n_init=cfg["n_init"], seed=cfg["seed"],
                           merge_ratio=cfg["merge_ratio"], merge_gap=cfg["merge_gap"],
                           k_selection=cfg["k_selection"],
                           consensus_components=cfg.get("consensus_components"),
                           consensus_also=pooled)
    sizes = np.bincount(res.labels)[1:].tolist()
    collapsed = collapse_warning(features, res.k, cfg["k"] or cfg["k_max"], sizes)
    if collapsed:
        log.warning("%s: %s", method, collapsed)
    summary = {"method": method, "algorithm": cfg["algorithm"], "k": res.k,
               "class_sizes": sizes, "mixture_components": res.k_components,
               "stability_ari": res.stability_ari,
               "mean_probability": float(res.probability.mean()),
               "constant_feature_columns": n_const, "feature_columns": int(features.shape[1]),
               "effective_dimension": effective_dimension(features),
               "consensus_unwhitened": pooled is not None and bool(pooled.size),
               "collapse_warning": collapsed}
    log.info("%s: K=%d, sizes %s, stability ARI %.3f", method, res.k, sizes, res.stability_ari)
    return res, summary
