"""Clustering of feature vectors: Gaussian mixtures with a BIC choice of K, or k-means.

Features are standardised (zero mean, unit variance per dimension), reduced by PCA, then
either fitted with full-covariance Gaussian mixtures for every K in a range — the K with the
lowest Bayesian information criterion wins — or partitioned by k-means with a fixed K. The
chosen K is checked for stability: the mixture is refitted with other seeds and the mean
adjusted Rand index between the labelings is reported (near 1 = the partition is real).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
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


def reduce_features(features: np.ndarray, n_components: int, seed: int = 0) -> np.ndarray:
    """Standardise ``(n, d)`` features and keep ``n_components`` principal components."""
    x = np.asarray(features, dtype=np.float64)
    sd = x.std(axis=0)
    x = (x - x.mean(axis=0)) / np.where(sd > 0, sd, 1.0)
    k = int(min(n_components, x.shape[1], max(x.shape[0] - 1, 1)))
    z = PCA(n_components=k, random_state=seed).fit_transform(x)
    return z / np.where(z.std(axis=0) > 0, z.std(axis=0), 1.0)


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


def compact_labels(labels: np.ndarray) -> np.ndarray:
    """Renumber labels to 0..K-1 in sorted order (labels of empty clusters disappear)."""
    _, inv = np.unique(labels, return_inverse=True)
    return inv


def cluster_features(features: np.ndarray, algorithm: str = "gmm", k: int | None = None,
                     k_min: int = 2, k_max: int = 10, pca_components: int = 8,
                     n_init: int = 3, seed: int = 0, stability_seeds: int = 2) -> ClusterResult:
    """Cluster ``(n, d)`` features (see module docstring).

    Parameters
    ----------
    algorithm
        ``"gmm"`` (BIC over ``k_min..k_max``, or only ``k`` when given) or ``"kmeans"``
        (needs ``k``).
    stability_seeds
        Extra seeds for the stability check (0 to skip).
    """
    z = reduce_features(features, pca_components, seed)
    with threadpool_limits(limits=1, user_api="blas"):
        return _cluster(z, algorithm, k, k_min, k_max, n_init, seed, stability_seeds)


def _cluster(z, algorithm, k, k_min, k_max, n_init, seed, stability_seeds) -> ClusterResult:
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
    elif algorithm == "gmm":
        ks = [k] if k else list(range(k_min, k_max + 1))
        gm, bic = gmm_bic(z, ks, n_init=n_init, seed=seed)
        post = gm.predict_proba(z)
        labels = post.argmax(axis=1)
        prob = post.max(axis=1)
        others = []
        for s in range(stability_seeds):
            g2 = GaussianMixture(gm.n_components, covariance_type="full", reg_covar=1e-5,
                                 n_init=n_init, random_state=seed + 1 + s).fit(z)
            others.append(g2.predict(z))
    else:
        raise ValueError(f"unknown clustering algorithm {algorithm!r} (gmm or kmeans)")
    labels = compact_labels(labels)
    stab = float(np.mean([adjusted_rand_score(labels, o) for o in others])) if others else np.nan
    k_found = int(labels.max()) + 1
    log.info("%s: K = %d (stability ARI %.3f)", algorithm, k_found, stab)
    return ClusterResult(labels + 1, prob, k_found, bic, stab, z)
