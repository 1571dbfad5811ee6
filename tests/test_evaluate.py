"""tomoclust.evaluate: one-to-one matching, precision/recall/F1, edge masks."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from tomoclust.evaluate import (
    challenge_scores,
    evaluate_picking,
    fbeta,
    match_points,
    within_edge,
)

CEN = [f"rlnCenteredCoordinate{a}Angst" for a in "XYZ"]


def _table(tomo, xyz, classes=None, names=None):
    xyz = np.asarray(xyz, dtype=np.float64).reshape(-1, 3)
    df = pd.DataFrame({"rlnTomoName": [tomo] * len(xyz)})
    for k, col in enumerate(CEN):
        df[col] = xyz[:, k]
    if classes is not None:
        df["rlnClassNumber"] = classes
    if names is not None:
        df["tclTemplateName"] = names
    return df


def _pairs(i, j):
    return sorted(zip(i.tolist(), j.tolist()))


def test_two_picks_near_one_truth_give_one_match():
    truth = np.array([[0.0, 0, 0], [100.0, 0, 0]])
    picks = np.array([[1.0, 0, 0], [2.0, 0, 0], [99.0, 0, 0], [500.0, 0, 0]])
    ip, it = match_points(picks, truth, 10.0)
    assert _pairs(ip, it) == [(0, 0), (2, 1)]  # the nearer of the two picks wins


def test_matching_is_one_to_one_and_maximal():
    """Greedy nearest-truth matching would give 1 pair here; the optimum gives 2."""
    truth = np.array([[0.0, 0, 0], [6.0, 0, 0]])
    picks = np.array([[4.0, 0, 0], [8.5, 0, 0]])  # pick 0 is nearer truth 1, its only rival
    ip, it = match_points(picks, truth, 4.5)
    assert _pairs(ip, it) == [(0, 0), (1, 1)]
    assert len(set(it.tolist())) == len(it)


def test_matching_tolerance_and_empty_inputs():
    truth = np.array([[0.0, 0, 0]])
    assert len(match_points(np.array([[10.0, 0, 0]]), truth, 9.99)[0]) == 0
    assert len(match_points(np.array([[0, 6.0, 8.0]]), truth, 10.0)[0]) == 1  # distance 10
    for a, b in ((np.zeros((0, 3)), truth), (truth, np.zeros((0, 3))),
                 (np.array([[50.0, 0, 0]]), truth)):
        ip, it = match_points(a, b, 5.0)
        assert len(ip) == len(it) == 0


def test_evaluate_picking_hand_made_example():
    # tomogram A: 3 true particles (classes 1, 1, 2), 4 picks: 2 hits, one double, one miss
    truth = pd.concat([
        _table("A", [[0, 0, 0], [200, 0, 0], [0, 300, 0]], classes=[1, 1, 2],
               names=["ribo", "ribo", "prot"]),
        # tomogram B: 2 true particles (classes 2, 1); 1 pick hits the class-2 one
        _table("B", [[0, 0, 0], [500, 500, 500]], classes=[2, 1], names=["prot", "ribo"]),
    ], ignore_index=True)
    picks = pd.concat([
        _table("A", [[10, 0, 0], [15, 5, 0], [0, 290, 20], [900, 900, 900]]),
        # a pick in B at A's particle position must not match across tomograms
        _table("B", [[5, 5, 5], [200, 0, 0]]),
    ], ignore_index=True)
    metrics, annotated = evaluate_picking(picks, truth, tolerance_angst=30.0)
    m = metrics.set_index(["scope", "name"])
    # overall: 3 TP of 6 picks and 5 true particles
    assert m.loc[("all", "all"), "tp"] == 3
    assert m.loc[("all", "all"), "precision"] == pytest.approx(3 / 6)
    assert m.loc[("all", "all"), "recall"] == pytest.approx(3 / 5)
    assert m.loc[("all", "all"), "f1"] == pytest.approx(2 * 3 / (6 + 5))
    assert m.loc[("tomogram", "A"), "tp"] == 2
    assert m.loc[("tomogram", "A"), "precision"] == pytest.approx(2 / 4)
    assert m.loc[("tomogram", "A"), "recall"] == pytest.approx(2 / 3)
    assert m.loc[("tomogram", "B"), "precision"] == pytest.approx(1 / 2)
    assert m.loc[("tomogram", "B"), "recall"] == pytest.approx(1 / 2)
    # per class: recall only (ribo: 1 of 3 found; prot: 2 of 2)
    assert m.loc[("class", "1:ribo"), "recall"] == pytest.approx(1 / 3)
    assert m.loc[("class", "2:prot"), "recall"] == pytest.approx(1.0)
    assert np.isnan(m.loc[("class", "1:ribo"), "precision"])
    # annotated picks: matched class and distance, 0 / NaN when unmatched
    assert annotated["tclTruthClass"].tolist() == [1, 0, 2, 0, 2, 0]
    d = annotated["tclTruthDistanceAngst"].to_numpy()
    assert d[0] == pytest.approx(10.0)
    assert d[2] == pytest.approx(np.sqrt(10**2 + 20**2))
    assert d[4] == pytest.approx(np.sqrt(75))
    assert np.isnan(d[[1, 3, 5]]).all()


def test_class_rows_have_counts_under_count_columns():
    """Per-class rows: the count of true particles picked under ``tp``, the fraction under
    ``recall``; nothing under ``n_picked``/precision (a pick has no class of its own)."""
    truth = _table("A", [[0, 0, 0], [200, 0, 0], [0, 300, 0]], classes=[1, 1, 2],
                   names=["ribo", "ribo", "prot"])
    picks = _table("A", [[10, 0, 0], [0, 290, 20], [900, 900, 900]])
    metrics, _ = evaluate_picking(picks, truth, 30.0, challenge_tolerance_angst=12.0)
    m = metrics.set_index(["scope", "name"])
    ribo = m.loc[("class", "1:ribo")]
    assert ribo["n_true"] == 2 and ribo["tp"] == 1 and ribo["recall"] == pytest.approx(0.5)
    assert pd.isna(ribo["n_picked"]) and pd.isna(ribo["precision"]) and pd.isna(ribo["f1"])
    # within 12 Å (the challenge's half radius) only the 10 Å pick counts
    assert ribo["tp_half_radius"] == 1 and m.loc[("class", "2:prot"), "tp_half_radius"] == 0
    assert m.loc[("class", "2:prot"), "tp"] == 1
    for col in ("n_true", "n_picked", "tp", "tp_half_radius"):
        assert str(metrics[col].dtype) == "Int64", col
    allrow = m.loc[("all", "all")]
    assert allrow["tp"] == 2 and allrow["tp_half_radius"] == 1
    # F-beta: TP 1, FP 2, FN 2 -> 17 / (17 + 16*2 + 2)
    assert allrow["fbeta4_half_radius"] == pytest.approx(17 / (17 + 32 + 2))
    assert allrow["recall_half_radius"] == pytest.approx(1 / 3)


def test_fbeta_formula_and_limits():
    assert fbeta(5, 5, 5) == 1.0
    assert fbeta(5, 10, 5, beta=1) == pytest.approx(2 * 5 / (10 + 5))  # beta 1 is F1
    # beta 4: recall weighs 16 times precision; halving recall costs far more than precision
    assert fbeta(5, 10, 10) < fbeta(10, 20, 10)
    assert fbeta(0, 3, 4) == 0.0
    assert np.isnan(fbeta(0, 0, 0))
    with pytest.raises(ValueError):
        fbeta(3, 2, 5)


def test_challenge_scores_per_class_and_weighted():
    truth = _table("A", [[0, 0, 0], [100, 0, 0], [300, 0, 0], [0, 400, 0]],
                   classes=[1, 1, 2, 3], names=["ribo", "ribo", "prot", "ferr"])
    parts = _table("A", [[2, 0, 0], [100, 9, 0], [303, 0, 0], [0, 405, 0], [800, 0, 0]])
    # picks: ribo hit, ribo at 9 Å (outside 5 Å), prot hit but called ribo, ferr hit, junk
    pred = np.array([1, 1, 1, 3, 3])
    out = challenge_scores(parts, pred, truth, 5.0, names={1: "ribo", 2: "prot", 3: "ferr"},
                           weights={1: 1.0, 2: 2.0, 3: 1.0}).set_index("class")
    assert out.loc["1", ["n_true", "n_predicted", "tp"]].tolist() == [2, 3, 1]
    assert out.loc["1", "fbeta"] == pytest.approx(fbeta(1, 3, 2))
    assert out.loc["2", "tp"] == 0 and out.loc["2", "fbeta"] == 0.0
    assert out.loc["3", "fbeta"] == pytest.approx(fbeta(1, 2, 1))
    w = (fbeta(1, 3, 2) + 2 * 0.0 + fbeta(1, 2, 1)) / 4
    assert out.loc["weighted", "fbeta"] == pytest.approx(w)
    assert out.loc["weighted", "tp"] == 2 and out.loc["2", "name"] == "prot"
    with pytest.raises(ValueError):
        challenge_scores(parts, pred[:2], truth, 5.0)


def test_evaluate_picking_without_picks():
    truth = _table("A", [[0, 0, 0]], classes=[1])
    picks = _table("A", np.zeros((0, 3)))
    metrics, annotated = evaluate_picking(picks, truth, 30.0)
    row = metrics.iloc[0]
    assert row["scope"] == "all" and row["tp"] == 0 and row["recall"] == 0.0
    assert np.isnan(row["precision"])
    assert row["f1"] == 0.0
    assert len(annotated) == 0
    # class label falls back to the class number without tclTemplateName
    assert "1:1" in metrics["name"].tolist()


def test_within_edge():
    shape = (20, 30, 40)  # z, y, x voxels; centre (x, y, z) = (20, 15, 10)
    vs = 10.0
    vox_x = np.array([2, 3, 36, 37, 20])
    xyz = np.column_stack([vox_x, np.full(5, 15), np.full(5, 10)])
    table = _table("T", (xyz - np.array([20, 15, 10])) * vs)
    other = _table("U", [[0, 0, 0]])  # a tomogram not listed: never kept
    both = pd.concat([table, other], ignore_index=True)
    keep = within_edge(both, {"T": shape}, {"T": vs}, {"T": 30.0})
    np.testing.assert_array_equal(keep, [False, True, True, False, True, False])
    # the edge applies along z too
    zt = _table("T", [[0, 0, (2 - 10) * vs], [0, 0, (3 - 10) * vs], [0, 0, (17 - 10) * vs]])
    np.testing.assert_array_equal(within_edge(zt, {"T": shape}, {"T": vs}, {"T": 30.0}),
                                  [False, True, False])


def test_embedding_colours_follow_the_matching():
    """A cluster and the true class it is matched to share a colour, whatever the numbers."""
    from tomoclust.report.plots import embedding_colours

    truth = np.array([1, 1, 1, 2, 2, 2, 3, 3, 0, 0])
    clusters = np.array([3, 3, 3, 1, 1, 1, 2, 2, 4, 4])  # 3 -> 1, 1 -> 2, 2 -> 3, 4 -> none
    clu, cls, mapping = embedding_colours(clusters, truth)
    assert mapping == {1: 2, 2: 3, 3: 1, 4: 0}
    assert clu[3] == cls[1] and clu[1] == cls[2] and clu[2] == cls[3]
    assert clu[4] not in cls.values()  # an unmatched cluster looks like no class
    assert len(set(cls.values())) == len(cls)
    clu_only, _, _ = embedding_colours(clusters, None)
    assert len(set(clu_only.values())) == 4


def test_metrics_tsv_keeps_every_value_under_its_header(tmp_path):
    """Missing values are written as NA, so no field is empty (``column -t`` and similar
    tools merge empty fields and shift the class rows' values left)."""
    from tomoclust.formats.atomic import write_tsv

    truth = _table("A", [[0, 0, 0], [200, 0, 0]], classes=[1, 2], names=["a", "b"])
    metrics, _ = evaluate_picking(_table("A", [[5, 0, 0]]), truth, 30.0, 12.0)
    write_tsv(tmp_path / "m.tsv", metrics, na_rep="NA")
    lines = (tmp_path / "m.tsv").read_text().splitlines()
    header = lines[0].split("\t")
    for line in lines[1:]:
        fields = line.split("\t")
        assert len(fields) == len(header) and all(fields), line
    back = pd.read_csv(tmp_path / "m.tsv", sep="\t")
    assert back.loc[back["scope"] == "class", "n_picked"].isna().all()
    assert back.loc[back["name"] == "1:a", "recall"].item() == 1.0


# ----------------------------------------------------------- a method's classes (rule steps)
def _clusters():
    """Six picks near true particles of two classes (clusters numbered the other way round),
    and one junk pick far from every true particle."""
    truth = _table("A", [[0, 0, 0], [100, 0, 0], [200, 0, 0], [0, 300, 0], [100, 300, 0],
                         [200, 300, 0]], classes=[1, 1, 1, 2, 2, 2],
                   names=["ribo"] * 3 + ["prot"] * 3)
    picks = _table("A", [[3, 0, 0], [100, 4, 0], [200, 0, 2], [0, 300, 3], [101, 300, 0],
                         [200, 302, 0], [900, 900, 0]], classes=[2, 2, 2, 1, 1, 1, 1])
    return picks, truth


def test_classification_scores_match_clusters_to_classes():
    from tomoclust.evaluate import classification_scores

    clusters, truth = _clusters()
    m, scores, cm = classification_scores(clusters, truth, 30.0, 10.0, "inv")
    assert m["method"] == "inv" and m["accuracy"] == pytest.approx(1.0)
    assert m["ari"] == pytest.approx(1.0) and m["n_unmatched_picks"] == 1
    s = scores.set_index("class")
    # every true particle is hit within 10 Å by a pick of its matched class; the junk pick
    # went to cluster 1 = prot, so prot has one false positive
    assert s.loc["1", ["n_true", "n_predicted", "tp"]].tolist() == [3, 3, 3]
    assert s.loc["2", ["n_true", "n_predicted", "tp"]].tolist() == [3, 4, 3]
    assert s.loc["2", "name"] == "prot" and m["fbeta4_weighted"] == scores["fbeta"].iloc[-1]
    assert int(cm.to_numpy().sum()) == len(clusters)


def test_classification_scores_by_stack_index_have_no_challenge_table():
    from tomoclust.evaluate import classification_scores

    clusters = pd.DataFrame({"tclStackIndex": [0, 1, 2, 3], "rlnClassNumber": [1, 1, 2, 2]})
    truth = pd.DataFrame({"tclStackIndex": [0, 1, 2, 3], "rlnClassNumber": [2, 2, 0, 1]})
    m, scores, _ = classification_scores(clusters, truth, 30.0, 10.0, "inv")
    # row 2 carries no class in the input: left out of the metrics, counted as unmatched
    assert m["n_unmatched_picks"] == 1 and "fbeta4_weighted" not in m
    assert scores.empty and "fbeta" in scores.columns


def test_fewshot_scores_leave_the_support_out_and_compare_names():
    from tomoclust.evaluate import fewshot_scores

    labels, truth = _clusters()
    labels["rlnClassNumber"] = [1, 1, 2, 2, 2, 2, 1]
    labels["rlnClassName"] = ["ribo", "ribo", "prot", "prot", "prot", "prot", "ribo"]
    labels["tclClassProbability"] = [0.9, 0.8, 0.6, 0.7, 0.7, 0.7, 0.5]
    labels["tclSupport"] = [1, 0, 0, 1, 0, 0, 0]
    m, cm = fewshot_scores(labels, truth, 30.0, "protonet3d")
    # scored: rows 1, 2 (ribo; one called prot) and 4, 5 (prot, right); support and junk out
    assert m["n_support"] == 2 and m["n_unmatched_picks"] == 1
    assert m["accuracy_direct"] == pytest.approx(3 / 4)
    assert m["mean_confidence"] == pytest.approx((0.8 + 0.6 + 0.7 + 0.7) / 4)
    assert m["mean_confidence_wrong"] == pytest.approx(0.6)
    assert m["mean_confidence_correct"] == pytest.approx((0.8 + 0.7 + 0.7) / 3)
    assert cm.loc["ribo", "prot"] == 1 and int(cm.to_numpy().sum()) == 4
    # classes not named after the templates: no direct accuracy
    labels["rlnClassName"] = ["a", "a", "b", "b", "b", "b", "a"]
    m, _ = fewshot_scores(labels, truth, 30.0, "protonet3d")
    assert np.isnan(m["accuracy_direct"]) and "mean_confidence_wrong" not in m
