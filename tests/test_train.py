"""tomoclust.features.train: checkpoints (round trip, fingerprints, corrupt files), batches,
inference,
generator state."""

from __future__ import annotations

import logging
import os

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import DEVICES
from tomoclust.features.train import (
    Checkpoint,
    batches,
    fingerprint,
    infer,
    rng_state,
    set_rng_state,
    to_tensor,
    write_history,
)


@pytest.fixture
def info_logs(caplog):
    caplog.set_level(logging.INFO, logger="tomoclust")
    return caplog


def _state() -> dict:
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    return {"iteration": 7, "model": model.state_dict(), "labels": torch.arange(5),
            "history": [{"iteration": 0, "k": 2, "bic": 1.5, "sizes": "3,2"}],
            "best": {"db": 0.25, "iteration": 3, "state_dict": model.state_dict()},
            "rng": rng_state(np.random.default_rng(1))}


def test_checkpoint_round_trip(tmp_path):
    ck = Checkpoint(tmp_path / "sub" / "ck.pt", "abc123")
    assert ck.load() is None  # nothing there yet
    state = _state()
    ck.save(state)
    assert ck.path.is_file()
    assert not list(ck.path.parent.glob("*.part"))  # atomic: no temporary left behind
    back = ck.load()
    assert back["fingerprint"] == "abc123"
    assert back["iteration"] == 7
    assert back["history"] == state["history"]
    assert back["best"]["db"] == 0.25 and back["best"]["iteration"] == 3
    torch.testing.assert_close(back["labels"], state["labels"])
    for key, value in state["model"].items():
        torch.testing.assert_close(back["model"][key], value)
        torch.testing.assert_close(back["best"]["state_dict"][key], value)
    ck.remove()
    assert not ck.path.exists()
    ck.remove()  # removing twice is fine


@pytest.mark.parametrize("device", DEVICES)
def test_checkpoint_loads_onto_the_device(tmp_path, device):
    ck = Checkpoint(tmp_path / "ck.pt", "fp")
    ck.save({"w": torch.ones(3)})
    back = ck.load(device)
    assert back["w"].device.type == torch.device(device).type


def test_checkpoint_of_another_run_is_ignored(tmp_path, info_logs):
    Checkpoint(tmp_path / "ck.pt", "run-a").save(_state())
    assert Checkpoint(tmp_path / "ck.pt", "run-b").load() is None
    assert "belongs to another run" in info_logs.text
    assert Checkpoint(tmp_path / "ck.pt", "run-a").load() is not None  # still there


@pytest.mark.parametrize("content", [b"", b"not a torch file at all", "truncate"])
def test_corrupt_checkpoint_is_ignored_with_a_warning(tmp_path, caplog, content):
    ck = Checkpoint(tmp_path / "ck.pt", "fp")
    if content == "truncate":
        ck.save(_state())
        data = ck.path.read_bytes()
        ck.path.write_bytes(data[: len(data) // 2])
    else:
        ck.path.write_bytes(content)
    with caplog.at_level(logging.WARNING, logger="tomoclust"):
        assert ck.load() is None
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings and "unreadable" in warnings[0].getMessage()
    assert str(ck.path) in warnings[0].getMessage()
    # a new save replaces the broken file
    ck.save({"iteration": 1})
    assert ck.load()["iteration"] == 1


def test_fingerprint_depends_on_params_and_stack(tmp_path):
    stack = tmp_path / "stack.npy"
    np.save(stack, np.zeros((2, 4, 4, 4), np.float32))
    params = {"lr": 1e-3, "preset": "tiny", "network": {"blocks": 3}}
    fp = fingerprint(params, stack)
    assert fp == fingerprint(dict(reversed(list(params.items()))), stack)  # key order is moot
    assert len(fp) == 16 and int(fp, 16) >= 0
    assert fingerprint({**params, "lr": 2e-3}, stack) != fp
    assert fingerprint({**params, "network": {"blocks": 4}}, stack) != fp
    assert fingerprint(params) != fp  # without the stack
    # a rewritten stack (new size, or only a new modification time) is another input
    st = stack.stat()
    os.utime(stack, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert fingerprint(params, stack) != fp
    np.save(stack, np.zeros((3, 4, 4, 4), np.float32))
    os.utime(stack, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert fingerprint(params, stack) != fp


@pytest.mark.parametrize(("n", "size"), [(10, 3), (9, 3), (1, 4), (0, 2), (64, 64)])
@pytest.mark.parametrize("shuffle", [False, True])
def test_batches_cover_every_index_once(n, size, shuffle):
    rng = np.random.default_rng(0) if shuffle else None
    out = list(batches(n, size, rng))
    assert all(0 < len(b) <= size for b in out)
    assert len(out) == -(-n // size)
    flat = np.concatenate(out) if out else np.zeros(0, int)
    np.testing.assert_array_equal(np.sort(flat), np.arange(n))
    for b in out:
        np.testing.assert_array_equal(b, np.sort(b))
    if not shuffle:
        np.testing.assert_array_equal(flat, np.arange(n))


def test_shuffled_batches_differ_between_epochs():
    rng = np.random.default_rng(0)
    first = [b.tolist() for b in batches(40, 8, rng)]
    second = [b.tolist() for b in batches(40, 8, rng)]
    assert first != second


@pytest.mark.parametrize("device", DEVICES)
def test_to_tensor_and_infer(tmp_path, device, rng):
    data = rng.standard_normal((7, 4, 4, 4))
    np.save(tmp_path / "s.npy", data)
    mm = np.load(tmp_path / "s.npy", mmap_mode="r")
    t = to_tensor(mm, np.array([1, 5]), device)
    assert t.shape == (2, 4, 4, 4) and t.dtype == torch.float32
    assert t.device.type == torch.device(device).type
    np.testing.assert_allclose(t.cpu().numpy(), data[[1, 5]], rtol=1e-6)
    seen = []

    def fn(x):
        seen.append((x.shape, x.device.type))
        return x.flatten(1)[:, :3].double() * 2

    out = infer(fn, mm, device, batch_size=3)
    assert out.shape == (7, 3) and out.dtype == np.float32 and isinstance(out, np.ndarray)
    np.testing.assert_allclose(out, 2 * data.reshape(7, -1)[:, :3], rtol=1e-6)
    assert [s[0] for s in seen] == [(3, 1, 4, 4, 4), (3, 1, 4, 4, 4), (1, 1, 4, 4, 4)]
    assert {s[1] for s in seen} == {torch.device(device).type}
    assert infer(fn, data[:0], device).shape == (0, 0)


@pytest.mark.parametrize("device", DEVICES)
def test_rng_state_round_trip(tmp_path, device):
    """Also through a checkpoint loaded onto the training device (a GPU resume)."""
    rng = np.random.default_rng(3)
    rng.standard_normal(10)
    torch.manual_seed(5)
    torch.randn(3)
    ck = Checkpoint(tmp_path / "ck.pt", "fp")
    ck.save({"rng": rng_state(rng)})  # must survive weights_only loading
    expected_np, expected_torch = rng.standard_normal(4), torch.randn(4)
    other = np.random.default_rng(99)
    torch.manual_seed(99)
    set_rng_state(other, ck.load(device)["rng"])
    np.testing.assert_array_equal(other.standard_normal(4), expected_np)
    torch.testing.assert_close(torch.randn(4), expected_torch)


def test_write_history(tmp_path):
    rows = [{"epoch": 0, "loss": 1.5}, {"epoch": 1, "loss": 0.5}]
    write_history(tmp_path / "h" / "history.tsv", rows)
    df = pd.read_csv(tmp_path / "h" / "history.tsv", sep="\t")
    assert df.to_dict("records") == rows
    write_history(None, rows)  # no path: nothing happens, no error
