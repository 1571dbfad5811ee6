"""Evaluation against ground truth: picking precision / recall / F1, and the cryo-ET
particle-picking challenge's F-beta.

Picks are matched one-to-one to true particles of the same tomogram within a distance
tolerance by a minimum-total-distance assignment (Hungarian algorithm on the candidate pairs),
so a true particle is never counted twice.

The challenge metric (CZ Imaging Institute's 2024-25 cryo-ET object identification challenge)
is F-beta with beta = 4 (recall weighs 16 times as much as precision), a pick counting only
within half the particle radius of a true particle; per class and as a weighted mean over
classes. Picks have no class of their own here, so the per-class challenge score needs a
classification: :func:`challenge_scores` takes each particle's predicted class (a method's
clusters mapped to true classes by the Hungarian matching).
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
from scipy.optimize import linear_sum_assignment
from scipy.spatial import cKDTree

from . import TomoclustError
from .formats.star import voxels_from_centered_angst
from .numerics.metrics import clustering_metrics, confusion, hungarian_mapping

log = logging.getLogger(__name__)


def match_points(picks: np.ndarray, truth: np.ndarray, tolerance: float
                 ) -> tuple[np.ndarray, np.ndarray]:
    """One-to-one matching of ``picks`` to ``truth`` (both ``(n, 3)``) within ``tolerance``.

    Returns index arrays ``(i_pick, i_truth)`` of matched pairs, minimising total distance.
    """
    picks = np.asarray(picks, dtype=np.float64).reshape(-1, 3)
    truth = np.asarray(truth, dtype=np.float64).reshape(-1, 3)
    if len(picks) == 0 or len(truth) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    pairs = cKDTree(picks).sparse_distance_matrix(cKDTree(truth), tolerance, output_type="ndarray")
    if len(pairs) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    ip = np.unique(pairs["i"])
    it = np.unique(pairs["j"])
    big = 1e6 * (tolerance + 1)
    cost = np.full((len(ip), len(it)), big)
    cost[np.searchsorted(ip, pairs["i"]), np.searchsorted(it, pairs["j"])] = pairs["v"]
    r, c = linear_sum_assignment(cost)
    ok = cost[r, c] < big
    return ip[r[ok]], it[c[ok]]


CHALLENGE_BETA = 4.0


def _prf(tp: int, n_pred: int, n_true: int) -> tuple[float, float, float]:
    precision = tp / n_pred if n_pred else float("nan")
    recall = tp / n_true if n_true else float("nan")
    f1 = 2 * tp / (n_pred + n_true) if (n_pred + n_true) else float("nan")
    return precision, recall, f1


def fbeta(tp: int, n_pred: int, n_true: int, beta: float = CHALLENGE_BETA) -> float:
    """F-beta from counts: ``(1 + β²) TP / ((1 + β²) TP + β² FN + FP)``; NaN when there is
    neither a prediction nor a true particle. β = 4 is the challenge's (recall-heavy)."""
    fn, fp = n_true - tp, n_pred - tp
    if min(tp, fn, fp) < 0:
        raise ValueError(f"inconsistent counts: tp={tp}, n_pred={n_pred}, n_true={n_true}")
    b2 = beta * beta
    den = (1 + b2) * tp + b2 * fn + fp
    return (1 + b2) * tp / den if den else float("nan")


def within_edge(table: pd.DataFrame, shapes: dict[str, tuple[int, ...]],
                voxel_sizes: dict[str, float], edge_angst: dict[str, float]) -> np.ndarray:
    """Mask of rows whose centre is at least ``edge_angst[tomo]`` inside every face.

    Positions come from ``rlnCenteredCoordinate*Angst``; ``shapes`` (``z, y, x`` voxels) and
    ``voxel_sizes`` are those of the tomograms picks were made in. The pick step drops peaks
    closer than half a box to a face, so true particles there are left out of the evaluation
    (and counted in its log) rather than counted as misses.
    """
    cols = [f"rlnCenteredCoordinate{a}Angst" for a in "XYZ"]
    keep = np.zeros(len(table), dtype=bool)
    names = table["rlnTomoName"].to_numpy()
    for tomo, shape in shapes.items():
        sel = names == tomo
        vs = voxel_sizes[tomo]
        vox = voxels_from_centered_angst(table.loc[sel, cols].to_numpy(), shape, vs)
        edge = int(np.ceil(edge_angst[tomo] / vs - 1e-9))
        keep[sel] = np.all((vox >= edge) & (vox < np.asarray(shape[::-1]) - edge), axis=1)
    return keep


METRIC_COLUMNS = ["scope", "name", "n_true", "n_picked", "tp", "precision", "recall", "f1",
                  "tp_half_radius", "precision_half_radius", "recall_half_radius",
                  "fbeta4_half_radius"]


def evaluate_picking(picks: pd.DataFrame, truth: pd.DataFrame, tolerance_angst: float,
                     challenge_tolerance_angst: float | None = None
                     ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Precision, recall and F1 of picks against truth, per tomogram, per class and overall,
    and the same counts at the challenge's tolerance with its F-beta (β = 4).

    Both tables use RELION-5 columns: ``rlnTomoName`` and ``rlnCenteredCoordinate*Angst``
    (so picks and truth may come from different voxel sizes); truth carries
    ``rlnClassNumber`` (and optionally ``tclTemplateName``). ``challenge_tolerance_angst``
    is half the particle radius (the challenge's rule); ``None`` leaves those columns NaN.

    Returns
    -------
    (metrics, annotated)
        ``metrics``: :data:`METRIC_COLUMNS`; rows ``scope`` ``all``, ``tomogram`` and
        ``class``. A pick has no class until it is classified, so class rows have
        ``n_true``, ``tp`` (true particles of the class picked) and ``recall`` (and their
        half-radius twins); ``n_picked``, precision, F1 and F-beta are empty there (per-class
        F-beta is a classification score: :func:`challenge_scores`). ``annotated``: the picks
        with ``tclTruthClass`` (0 when unmatched) and ``tclTruthDistanceAngst``.
    """
    cols = [f"rlnCenteredCoordinate{a}Angst" for a in "XYZ"]
    picks = picks.reset_index(drop=True).copy()
    picks["tclTruthClass"] = 0
    picks["tclTruthDistanceAngst"] = np.nan
    truth = truth.reset_index(drop=True)
    truth_hit = np.zeros(len(truth), dtype=bool)
    half = challenge_tolerance_angst
    truth_half = np.zeros(len(truth), dtype=bool)
    rows = []
    nan = float("nan")

    def challenge(tp_h: int, n_pred: int, n_true: int) -> tuple:
        if half is None:
            return nan, nan, nan, nan
        p, r, _ = _prf(tp_h, n_pred, n_true)
        return tp_h, p, r, fbeta(tp_h, n_pred, n_true)

    half_by_tomo = {}
    if half is not None:
        for tomo, _pi, ti, a, b in _match_by_tomogram(picks, truth, half):
            truth_half[ti[b]] = True
            half_by_tomo[tomo] = len(a)
    for tomo, pi, ti, a, b in _match_by_tomogram(picks, truth, tolerance_angst):
        truth_hit[ti[b]] = True
        picks.loc[pi[a], "tclTruthClass"] = truth.loc[ti[b], "rlnClassNumber"].to_numpy()
        d = np.linalg.norm(picks.loc[pi[a], cols].to_numpy() - truth.loc[ti[b], cols].to_numpy(),
                           axis=1)
        picks.loc[pi[a], "tclTruthDistanceAngst"] = d
        rows.append(("tomogram", tomo, len(ti), len(pi), len(a), *_prf(len(a), len(pi), len(ti)),
                     *challenge(half_by_tomo.get(tomo, 0), len(pi), len(ti))))
    tp = int(truth_hit.sum())
    rows.insert(0, ("all", "all", len(truth), len(picks), tp, *_prf(tp, len(picks), len(truth)),
                    *challenge(int(truth_half.sum()), len(picks), len(truth))))
    label = truth.get("tclTemplateName", truth["rlnClassNumber"].astype(str))
    for cls in sorted(truth["rlnClassNumber"].unique()):
        sel = truth["rlnClassNumber"].to_numpy() == cls
        n_true, hit, hit_h = int(sel.sum()), int(truth_hit[sel].sum()), int(truth_half[sel].sum())
        rows.append(("class", f"{int(cls)}:{label[sel].iloc[0]}", n_true, nan, hit, nan,
                     hit / n_true, nan,
                     *((hit_h, nan, hit_h / n_true, nan) if half is not None else (nan,) * 4)))
    metrics = pd.DataFrame(rows, columns=METRIC_COLUMNS)
    for c in ("n_true", "n_picked", "tp", "tp_half_radius"):
        metrics[c] = metrics[c].astype("Int64")
    return metrics, picks


def challenge_scores(particles: pd.DataFrame, predicted: np.ndarray, truth: pd.DataFrame,
                     tolerance_angst: float, names: dict[int, str] | None = None,
                     weights: dict[int, float] | None = None,
                     beta: float = CHALLENGE_BETA) -> pd.DataFrame:
    """The challenge's per-class F-beta and its weighted mean, for classified particles.

    ``particles`` (``rlnTomoName``, ``rlnCenteredCoordinate*Angst``) are every pick, each
    with ``predicted`` true-class number (0 = assigned to no class). Per class c, the picks
    predicted c are matched one-to-one to the true particles of class c within
    ``tolerance_angst`` (half the particle radius); TP, FP = predicted − TP, FN = true − TP.
    ``weights`` per class (default 1 each) give the ``weighted`` row: Σ w·Fβ / Σ w, as the
    challenge weighs its particle kinds.

    Returns rows ``class`` (number or ``weighted``), ``name``, ``n_true``, ``n_predicted``,
    ``tp``, ``precision``, ``recall``, ``fbeta`` and ``weight``.
    """
    predicted = np.asarray(predicted)
    if len(predicted) != len(particles):
        raise ValueError(f"{len(predicted)} predictions for {len(particles)} particles")
    particles = particles.reset_index(drop=True)
    truth = truth.reset_index(drop=True)
    rows = []
    for cls in sorted(int(c) for c in truth["rlnClassNumber"].unique()):
        pred_c = particles[predicted == cls]
        true_c = truth[truth["rlnClassNumber"].to_numpy() == cls]
        tp = sum(len(a) for *_, a, _b in _match_by_tomogram(pred_c, true_c, tolerance_angst))
        p, r, _ = _prf(tp, len(pred_c), len(true_c))
        w = 1.0 if weights is None else float(weights.get(cls, 1.0))
        rows.append((str(cls), (names or {}).get(cls, str(cls)), len(true_c), len(pred_c), tp,
                     p, r, fbeta(tp, len(pred_c), len(true_c), beta), w))
    out = pd.DataFrame(rows, columns=["class", "name", "n_true", "n_predicted", "tp",
                                      "precision", "recall", "fbeta", "weight"])
    ok = out["fbeta"].notna() & (out["weight"] > 0)
    wsum = float(out.loc[ok, "weight"].sum())
    weighted = float((out.loc[ok, "fbeta"] * out.loc[ok, "weight"]).sum() / wsum) if wsum \
        else float("nan")
    tot = out[["n_true", "n_predicted", "tp"]].sum()
    p, r, _ = _prf(int(tot["tp"]), int(tot["n_predicted"]), int(tot["n_true"]))
    out.loc[len(out)] = ["weighted", "all classes", int(tot["n_true"]), int(tot["n_predicted"]),
                         int(tot["tp"]), p, r, weighted, wsum]
    return out


def truth_classes(particles: pd.DataFrame, truth: pd.DataFrame, tolerance_angst: float
                  ) -> np.ndarray:
    """True class of each particle (0 when no true particle lies within the tolerance).

    Particles and truth are matched one-to-one per tomogram on
    ``rlnCenteredCoordinate*Angst`` (see :func:`match_points`).
    """
    out = np.zeros(len(particles), dtype=np.int64)
    truth = truth.reset_index(drop=True)
    for _, pi, ti, a, b in _match_by_tomogram(particles.reset_index(drop=True), truth,
                                             tolerance_angst):
        out[pi[a]] = truth.loc[ti[b], "rlnClassNumber"].to_numpy()
    return out


def _match_by_tomogram(picks: pd.DataFrame, truth: pd.DataFrame, tolerance_angst: float):
    """Per tomogram (sorted names of both tables): ``(name, pick rows, truth rows, i_pick,
    i_truth)``, the last two indexing the first two as :func:`match_points` returns them."""
    cols = [f"rlnCenteredCoordinate{a}Angst" for a in "XYZ"]
    pn, tn = picks["rlnTomoName"].to_numpy(), truth["rlnTomoName"].to_numpy()
    for tomo in sorted(set(pn) | set(tn)):
        pi, ti = np.flatnonzero(pn == tomo), np.flatnonzero(tn == tomo)
        a, b = match_points(picks.iloc[pi][cols].to_numpy(), truth.iloc[ti][cols].to_numpy(),
                            tolerance_angst)
        yield tomo, pi, ti, a, b


def truth_by_index(particles: pd.DataFrame, truth: pd.DataFrame) -> np.ndarray:
    """True class of each particle row from a :func:`truth_table` (matched by
    ``tclStackIndex``); raises when a particle has no truth row."""
    lut = dict(zip(truth["tclStackIndex"].astype(int), truth["rlnClassNumber"].astype(int),
                   strict=True))
    idx = particles["tclStackIndex"].to_numpy(dtype=np.int64)
    missing = [int(i) for i in idx if int(i) not in lut]
    if missing:
        raise TomoclustError(f"{len(missing)} particle(s) have no ground-truth row (first "
                             f"tclStackIndex {missing[0]}); the truth table is stale")
    return np.array([lut[int(i)] for i in idx], dtype=np.int64)


# ------------------------------------------------------------------ a method's classes
CHALLENGE_COLUMNS = ["class", "name", "n_true", "n_predicted", "tp", "precision", "recall",
                     "fbeta", "weight"]


def classification_scores(clusters: pd.DataFrame, truth: pd.DataFrame, tolerance_angst: float,
                          challenge_tolerance_angst: float, method: str
                          ) -> tuple[dict, pd.DataFrame, pd.DataFrame]:
    """A method's classes (``clusters``) against the ground truth: (the clustering metrics
    as one row, the challenge's per-class F-beta table, the confusion matrix).

    ``truth`` with ``tclStackIndex`` holds the input STAR's classes, matched by row; else it
    is a simulation's, matched by position within ``tolerance_angst`` (picks without a match
    are junk: they count in ``n_unmatched_picks`` and, through the class their cluster is
    matched to, in the challenge score, where a pick counts within
    ``challenge_tolerance_angst`` of a true particle). The input STAR's classes have no
    positions, so their challenge table is empty.
    """
    by_index = "tclStackIndex" in truth.columns
    if by_index:
        true_cls = truth_by_index(clusters, truth)
        ok = true_cls > 0
        log.info("%d of %d particles carry a class number in the input STAR", int(ok.sum()),
                 len(ok))
    else:
        true_cls = truth_classes(clusters, truth, tolerance_angst)
        ok = true_cls > 0
        log.info("%d of %d particles match a true particle within %.0f Å; the rest are junk "
                 "picks", int(ok.sum()), len(ok), tolerance_angst)
    pred = clusters["rlnClassNumber"].to_numpy()
    m = {"method": method, **clustering_metrics(true_cls[ok], pred[ok]),
         "n_unmatched_picks": int((~ok).sum())}
    scores = pd.DataFrame(columns=CHALLENGE_COLUMNS)
    if not by_index:
        mapping = hungarian_mapping(true_cls[ok], pred[ok])
        predicted = np.array([mapping.get(int(c), 0) for c in pred])
        names = {}
        if "tclTemplateName" in truth.columns:
            names = dict(zip(truth["rlnClassNumber"].astype(int), truth["tclTemplateName"],
                             strict=True))
        scores = challenge_scores(clusters, predicted, truth, challenge_tolerance_angst,
                                  names=names)
        m["fbeta4_weighted"] = float(scores["fbeta"].iloc[-1])
        log.info("challenge F-beta (β = 4, within %.0f Å):\n%s", challenge_tolerance_angst,
                 scores.to_string(index=False))
    return m, scores, confusion(true_cls, pred)


def _mean_or_nan(x: np.ndarray) -> float:
    return float(x.mean()) if len(x) else float("nan")


def fewshot_scores(labels: pd.DataFrame, truth: pd.DataFrame, tolerance_angst: float,
                   variant: str) -> tuple[dict, pd.DataFrame]:
    """Few-shot predicted classes (``labels``, with ``tclSupport``) against a simulation's
    ground truth: (metrics as one row, confusion of true against predicted class names).

    Support particles are left out (their class was given), and so are picks that match no
    true particle within ``tolerance_angst``. Besides the clustering metrics,
    ``accuracy_direct`` compares the predicted class *names* with the true template names,
    with no matching; it (and the mean confidence of right and wrong predictions) is NaN when
    the support classes are not named after the templates.
    """
    true_cls = truth_classes(labels, truth, tolerance_angst)
    support = labels["tclSupport"].to_numpy() == 1
    ok = (true_cls > 0) & ~support
    names = dict(zip(truth["rlnClassNumber"].astype(int), truth["tclTemplateName"].astype(str),
                     strict=True))
    true_names = np.array([names.get(int(c), "") for c in true_cls])
    pred_names = labels["rlnClassName"].astype(str).to_numpy()
    conf = labels["tclClassProbability"].to_numpy(dtype=float)
    m = {"method": variant, **clustering_metrics(true_cls[ok], labels["rlnClassNumber"][ok])}
    direct = set(pred_names) <= set(names.values())
    right = true_names == pred_names
    m["accuracy_direct"] = float(right[ok].mean()) if direct and ok.any() else float("nan")
    m["mean_confidence"] = _mean_or_nan(conf[ok])
    if direct and ok.any():
        m["mean_confidence_correct"] = _mean_or_nan(conf[ok & right])
        m["mean_confidence_wrong"] = _mean_or_nan(conf[ok & ~right])
    m["n_support"] = int(support.sum())
    m["n_unmatched_picks"] = int(((true_cls == 0) & ~support).sum())
    return m, confusion(true_names[ok], pred_names[ok])
