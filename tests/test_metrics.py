"""tomoclust.numerics.metrics: Hungarian accuracy, confusion matrix and the metric table."""

from __future__ import annotations

import numpy as np
import pytest
from tomoclust.numerics.metrics import clustering_metrics, confusion, hungarian_accuracy

KEYS = ["n", "n_classes", "n_clusters", "accuracy", "ari", "nmi", "v_measure", "homogeneity",
        "completeness"]


def test_permuted_labels_are_perfect(rng):
    truth = rng.integers(1, 5, size=200)
    perm = np.array([0, 3, 1, 4, 2])  # class c -> cluster perm[c]
    pred = perm[truth] + 10
    assert hungarian_accuracy(truth, pred) == 1.0
    m = clustering_metrics(truth, pred)
    for key in ["accuracy", "ari", "nmi", "v_measure", "homogeneity", "completeness"]:
        assert m[key] == pytest.approx(1.0), key


def test_hand_made_confusion():
    # class 1: 4 in cluster A, 1 in B; class 2: 1 in A, 4 in B -> 8 of 10 after matching
    truth = np.array([1, 1, 1, 1, 1, 2, 2, 2, 2, 2])
    pred = np.array(["A", "A", "A", "A", "B", "A", "B", "B", "B", "B"])
    cm = confusion(truth, pred)
    assert cm.to_numpy().tolist() == [[4, 1], [1, 4]]
    assert cm.index.tolist() == [1, 2] and cm.columns.tolist() == ["A", "B"]
    assert hungarian_accuracy(truth, pred) == pytest.approx(0.8)


def test_more_clusters_than_classes_counts_the_extra_as_wrong():
    # class 1: all 5 in cluster 7; class 2: 3 in cluster 8, 2 in cluster 9
    truth = np.array([1] * 5 + [2] * 5)
    pred = np.array([7] * 5 + [8, 8, 8, 9, 9])
    assert hungarian_accuracy(truth, pred) == pytest.approx(0.8)
    m = clustering_metrics(truth, pred)
    assert m["n_clusters"] == 3 and m["n_classes"] == 2
    assert m["homogeneity"] == pytest.approx(1.0)  # every cluster is pure
    assert m["completeness"] < 1.0  # class 2 is split


def test_fewer_clusters_than_classes():
    # three classes, one cluster takes classes 2 and 3: the larger of them counts
    truth = np.array([1, 1, 1, 2, 2, 2, 2, 3, 3])
    pred = np.array([1, 1, 1, 2, 2, 2, 2, 2, 2])
    assert hungarian_accuracy(truth, pred) == pytest.approx(7 / 9)
    assert clustering_metrics(truth, pred)["completeness"] == pytest.approx(1.0)


def test_metrics_table_for_perfect_and_random_labelings(rng):
    truth = np.repeat([1, 2, 3, 4], 500)
    perfect = clustering_metrics(truth, truth.copy())
    assert list(perfect) == KEYS
    assert perfect["n"] == 2000 and perfect["n_classes"] == 4 and perfect["n_clusters"] == 4
    for key in KEYS[3:]:
        assert perfect[key] == pytest.approx(1.0), key
        assert isinstance(perfect[key], float)
    rand = clustering_metrics(truth, rng.integers(1, 5, size=len(truth)))
    assert abs(rand["ari"]) < 0.02
    assert rand["nmi"] < 0.02 and rand["v_measure"] < 0.02
    # the best matching of a random labeling is a little above chance (1/4)
    assert 0.25 <= rand["accuracy"] < 0.3
