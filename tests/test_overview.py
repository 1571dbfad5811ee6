"""The report's first page (tomoclust.report.overview): the recommendation rule, the per-method
blocks, the slice thumbnails."""

from __future__ import annotations

import io
import json

import numpy as np
import pandas as pd
import pytest
from tomoclust import TomoclustError
from tomoclust.report.overview import central_slices_png, method_rows, overview_html, recommend


def _methods(acc=(np.nan, np.nan, np.nan), stab=(0.9, 0.95, 0.99), k=(3, 2, 1)):
    return pd.DataFrame({"method": ["a", "b", "c"], "k": list(k),
                         "class_sizes": [[5] * n for n in k], "stability": list(stab),
                         "mean_probability": [0.8, 0.7, 1.0], "accuracy": list(acc)})


def test_recommend_prefers_accuracy_then_reproducibility():
    assert recommend(_methods(acc=(0.5, 0.9, 0.7)))[0] == "b"
    # no truth: c has one class (trivially stable) so b, the most stable of the others
    best, why = recommend(_methods())
    assert best == "b" and "no ground truth" in why
    # a tie in stability goes to the more confident
    assert recommend(_methods(stab=(0.95, 0.95, 0.99)))[0] == "a"
    assert recommend(_methods(k=(1, 1, 1)))[0] is None
    assert recommend(_methods().iloc[:0])[0] is None


def test_central_slices_png_is_a_strip_of_three_slices():
    from matplotlib import image

    vol = np.zeros((9, 10, 11), np.float32)
    vol[4, 5, 5] = -1.0  # dark voxel at the centre of every central slice
    png = central_slices_png(vol)
    img = image.imread(io.BytesIO(png))
    assert img.shape[:2] == (10, 11 + 11 + 10 + 4)  # xy (10 x 11), xz (9 x 11), yz (9 x 10)
    grey = img[..., 0]
    assert grey[5, 5] < 0.1 and grey[4, 11 + 2 + 5] < 0.1 and grey[4, 22 + 4 + 5] < 0.1
    assert grey[0, 0] > 0.5
    with pytest.raises(TomoclustError):
        central_slices_png(np.zeros((4, 4)))


def test_overview_html_puts_the_recommended_method_first(tmp_path):
    for name, k, sizes in (("a", 2, [6, 4]), ("b", 3, [5, 3, 2])):
        (tmp_path / f"{name}.json").write_text(json.dumps(
            {"method": name, "k": k, "class_sizes": sizes, "stability_ari": 0.8}))
    (tmp_path / "cls.tsv").write_text("method\taccuracy\na\t0.6\nb\t0.9\n")
    methods = method_rows([tmp_path / "a.json", tmp_path / "b.json"], tmp_path / "cls.tsv")
    classes = {"b": pd.DataFrame({"class": [1, 2, 3], "status": ["averaged", "averaged",
                                                                   "too few particles"],
                                  "resolution_0143_angst": [31.4, 40.0, np.nan]})}
    slices = {("b", 1): central_slices_png(np.ones((4, 4, 4))),
              ("b", 2): central_slices_png(np.ones((4, 4, 4)))}
    best, why = recommend(methods)
    text = overview_html(methods, classes, slices, best, why)
    assert best == "b" and text.index('data-method="b"') < text.index('data-method="a"')
    b = text[text.index('data-method="b"'):text.index('data-method="a"')]
    assert "3 classes" in b and "accuracy 0.90" in b and "stability ARI 0.80" in b
    assert b.count("data:image/png;base64,") == 2 and "too few particles" in b
    assert "31 Å" in b and "40 Å" in b
    a = text[text.index('data-method="a"'):]
    assert a.count("<tr><td>") == 2 and "not averaged" in a
    assert "<script" not in text
