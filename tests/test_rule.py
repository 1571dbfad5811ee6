"""tomoclust.rule: rule-script error handling and device selection."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
from tomoclust import TomoclustError
from tomoclust.rule import resolve_device, run_rule


@pytest.fixture
def restore_root_logger():
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for h in root.handlers:
        if h not in handlers:
            h.close()
    root.handlers[:] = handlers
    root.setLevel(level)
    logging.captureWarnings(False)


def _smk(tmp_path):
    return SimpleNamespace(log=[str(tmp_path / "logs" / "step.log")], rule="step")


def test_run_rule_success_logs_to_the_rule_log(tmp_path, restore_root_logger):
    smk = _smk(tmp_path)
    run_rule(smk, lambda s: logging.getLogger("tomoclust").info("working on %s", s.rule))
    text = (tmp_path / "logs" / "step.log").read_text()
    assert "rule step: start" in text and "working on step" in text and "done in" in text


def test_run_rule_user_error_is_one_line_and_exits_nonzero(tmp_path, restore_root_logger):
    smk = _smk(tmp_path)

    def main(_):
        raise TomoclustError("tomogram /data/t1.mrc: file does not exist")

    with pytest.raises(SystemExit) as exc:
        run_rule(smk, main)
    assert exc.value.code == 1
    text = (tmp_path / "logs" / "step.log").read_text()
    assert "ERROR" in text and "tomogram /data/t1.mrc: file does not exist" in text
    assert "Traceback" not in text


def test_run_rule_unexpected_error_keeps_the_traceback(tmp_path, restore_root_logger):
    smk = _smk(tmp_path)

    def main(_):
        raise KeyError("surprise")

    with pytest.raises(SystemExit) as exc:
        run_rule(smk, main)
    assert exc.value.code == 1
    text = (tmp_path / "logs" / "step.log").read_text()
    assert "unexpected error" in text and "Traceback" in text and "surprise" in text


def test_resolve_device():
    import torch

    assert resolve_device("cpu") == "cpu"
    has_gpu = torch.cuda.is_available()
    assert resolve_device("auto") == ("cuda" if has_gpu else "cpu")
    if has_gpu:
        assert resolve_device("cuda:0") == "cuda:0"
    else:
        with pytest.raises(TomoclustError, match="no GPU"):
            resolve_device("cuda")
        with pytest.raises(TomoclustError, match="no GPU"):
            resolve_device("cuda:1")


# --------------------------------------------------------------------- glue of the rules
def test_labels_table_keeps_names_and_positions_then_the_classes():
    import numpy as np
    import pandas as pd
    from tomoclust.rule import labels_table

    df = pd.DataFrame({"rlnImageName": ["1@p.mrcs", "2@p.mrcs"], "rlnTomoName": ["a", "b"],
                       "rlnCoordinateX": [1.0, 2.0], "rlnOpticsGroup": [1, 1],
                       "tclDogScore": [3.0, 4.0]})
    out = labels_table(df, np.array([2, 1]), np.array([0.9, 0.6]))
    assert list(out.columns) == ["rlnImageName", "rlnTomoName", "rlnCoordinateX",
                                 "rlnClassNumber", "tclClassProbability"]
    assert out["rlnClassNumber"].tolist() == [2, 1] and "tclDogScore" in df  # input untouched


def test_class_predictions_take_the_most_probable_class():
    import numpy as np
    import pandas as pd
    from tomoclust.rule import class_predictions

    prob = np.array([[0.2, 0.8], [0.7, 0.3], [0.5, 0.5]])
    pred = class_predictions(pd.Series(["1@p", "2@p", "3@p"]), ["ribo", "prot"], prob)
    assert list(pred.columns) == ["rlnImageName", "class", "probability", "p_ribo", "p_prot"]
    assert pred["class"].tolist() == ["prot", "ribo", "ribo"]  # a tie goes to the first
    assert pred["probability"].tolist() == [0.8, 0.7, 0.5]
    with pytest.raises(ValueError, match="probabilities of shape"):
        class_predictions(pd.Series(["1@p"]), ["ribo", "prot"], prob)


def test_torch_device_sets_the_threads_and_run_info_records_them(tmp_path):
    import json

    import torch
    from tomoclust.rule import read_json, torch_device, write_run_info

    before = torch.get_num_threads()
    try:
        smk = SimpleNamespace(threads=0, params=SimpleNamespace(device="cpu"))
        assert torch_device(smk) == "cpu" and torch.get_num_threads() == 1  # at least one
        write_run_info(tmp_path / "info.json", "cpu", seconds=1.5, k=3)
    finally:
        torch.set_num_threads(before)
    info = read_json(tmp_path / "info.json")
    assert info == json.loads((tmp_path / "info.json").read_text())
    assert info["device"] == "cpu" and info["threads"] == 1 and info["k"] == 3
    assert list(info)[:5] == ["device", "torch", "python", "cpu", "threads"]
