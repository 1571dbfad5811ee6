"""Classification metrics against ground truth: accuracy after Hungarian matching, ARI, NMI,
V-measure, homogeneity, completeness and the confusion matrix."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.optimize import linear_sum_assignment
from sklearn import metrics as skm


def confusion(truth: np.ndarray, pred: np.ndarray) -> pd.DataFrame:
    """Counts with true classes as rows and predicted clusters as columns."""
    t = pd.Categorical(truth, categories=np.unique(truth))
    p = pd.Categorical(pred, categories=np.unique(pred))
    return pd.crosstab(pd.Series(t, name="truth"), pd.Series(p, name="cluster"), dropna=False)


def hungarian_accuracy(truth: np.ndarray, pred: np.ndarray) -> float:
    """Fraction correct under the best one-to-one mapping of clusters to classes.

    Clusters left without a class (more clusters than classes) count as wrong.
    """
    cm = confusion(truth, pred).to_numpy()
    r, c = linear_sum_assignment(-cm)
    return float(cm[r, c].sum() / max(cm.sum(), 1))


def clustering_metrics(truth: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    truth = np.asarray(truth)
    pred = np.asarray(pred)
    h, c, v = skm.homogeneity_completeness_v_measure(truth, pred)
    return {
        "n": len(truth),
        "n_classes": len(np.unique(truth)),
        "n_clusters": len(np.unique(pred)),
        "accuracy": hungarian_accuracy(truth, pred),
        "ari": float(skm.adjusted_rand_score(truth, pred)),
        "nmi": float(skm.normalized_mutual_info_score(truth, pred)),
        "v_measure": float(v),
        "homogeneity": float(h),
        "completeness": float(c),
    }
