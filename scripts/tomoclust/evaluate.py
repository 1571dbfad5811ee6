"""Evaluation against ground truth: picking precision / recall / F1.

Picks are matched one-to-one to true particles of the same tomogram within a distance
tolerance by a minimum-total-distance assignment (Hungarian algorithm on the candidate pairs),
so a true particle is never counted twice.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.optimize import linear_sum_assignment
from scipy.spatial import cKDTree

from . import TomoclustError
from .formats.star import voxels_from_centered_angst


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


def _prf(tp: int, n_pred: int, n_true: int) -> tuple[float, float, float]:
    precision = tp / n_pred if n_pred else float("nan")
    recall = tp / n_true if n_true else float("nan")
    f1 = 2 * tp / (n_pred + n_true) if (n_pred + n_true) else float("nan")
    return precision, recall, f1


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


def evaluate_picking(picks: pd.DataFrame, truth: pd.DataFrame, tolerance_angst: float
                     ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Precision, recall and F1 of picks against truth, per tomogram, per class and overall.

    Both tables use RELION-5 columns: ``rlnTomoName`` and ``rlnCenteredCoordinate*Angst``
    (so picks and truth may come from different voxel sizes); truth carries
    ``rlnClassNumber`` (and optionally ``tclTemplateName``).

    Returns
    -------
    (metrics, annotated)
        ``metrics``: rows ``scope`` (``all``, ``tomogram``, ``class``), ``name``, ``n_true``,
        ``n_picked``, ``tp``, ``precision``, ``recall``, ``f1``. Per-class rows have recall
        only (a pick has no class until it is matched). ``annotated``: the picks with
        ``tclTruthClass`` (0 when unmatched) and ``tclTruthDistanceAngst``.
    """
    cols = [f"rlnCenteredCoordinate{a}Angst" for a in "XYZ"]
    picks = picks.reset_index(drop=True).copy()
    picks["tclTruthClass"] = 0
    picks["tclTruthDistanceAngst"] = np.nan
    truth = truth.reset_index(drop=True)
    truth_hit = np.zeros(len(truth), dtype=bool)
    rows = []
    for tomo, pi, ti, a, b in _match_by_tomogram(picks, truth, tolerance_angst):
        truth_hit[ti[b]] = True
        picks.loc[pi[a], "tclTruthClass"] = truth.loc[ti[b], "rlnClassNumber"].to_numpy()
        d = np.linalg.norm(picks.loc[pi[a], cols].to_numpy() - truth.loc[ti[b], cols].to_numpy(),
                           axis=1)
        picks.loc[pi[a], "tclTruthDistanceAngst"] = d
        rows.append(("tomogram", tomo, len(ti), len(pi), len(a), *_prf(len(a), len(pi), len(ti))))
    tp = int(truth_hit.sum())
    rows.insert(0, ("all", "all", len(truth), len(picks), tp, *_prf(tp, len(picks), len(truth))))
    label = truth.get("tclTemplateName", truth["rlnClassNumber"].astype(str))
    for cls in sorted(truth["rlnClassNumber"].unique()):
        sel = truth["rlnClassNumber"].to_numpy() == cls
        name = f"{int(cls)}:{label[sel].iloc[0]}"
        rec = truth_hit[sel].mean()
        rows.append(("class", name, int(sel.sum()), np.nan, int(truth_hit[sel].sum()),
                     np.nan, float(rec), np.nan))
    metrics = pd.DataFrame(rows, columns=["scope", "name", "n_true", "n_picked", "tp",
                                          "precision", "recall", "f1"])
    return metrics, picks


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
