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
