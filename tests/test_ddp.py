"""Data-parallel training (tomoclust.features.distributed) on the CPU: two gloo processes
against one process on the same global batches, for every trainer that can run
data-parallel, and the exact resume of a two-process run. On a machine with two GPUs the same
comparisons also run with NCCL (device cuda); none has been available to this project yet.

Tolerance. Two processes compute the same global batch as one (same data order, same
augmentations, BatchNorm over the whole batch), but every reduction sums its float32 terms in
another order (per-process partial sums, then the all-reduce): each loss and gradient differs
by float32 rounding, |δ| ≲ n·ε·Σ|terms| with ε = 6e-8 and n ≲ 10² terms, i.e. ~1e-6
relative. Losses: 1e-4 relative, 50x the worst seen (2e-5 over 6 seeds x 4 trainers; typically
1e-7 to 1e-6); a wrong split (a missing gradient share, an unsynchronised BatchNorm, a
shuffled gather) moves them by 1e-2 or more. The gradients themselves are compared in
test_split_gradients_equal_the_whole_batch_gradient (Adam would hide a wrong scale).

Weights are compared as a whole, ‖Δθ‖/‖θ‖ ≤ 1e-2 (seen: ≤ 4e-4), not entry by entry: Adam
normalises each coordinate's gradient, so where a gradient is as small as its rounding noise
(a unit that is almost never active) both runs take steps of up to ~lr in directions set by
noise, and single entries end up to 3e-3 apart after 6 steps at lr 3e-3 while the rest agree
to 1e-6. A wrong split changes every weight by ~lr per step instead: ‖Δθ‖/‖θ‖ of 1e-1.
A bias feeding a BatchNorm has an analytically zero gradient (the normalisation removes any
shift), so it wanders by up to lr per step in both runs, and the BatchNorm's running mean
follows it: those entries are left out of the norm (listed per network).

Dropout draws differ by construction (each process draws its own), so the equivalence runs
switch it off; the resume test keeps it on, which checks that every process's generator is
saved and restored.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from tomoclust.features import distributed
from tomoclust.features.train import Checkpoint

RTOL_LOSS = 1e-4
RTOL_WEIGHTS = 1e-2
#: the NCCL path needs two GPUs (a machine with one runs the gloo tests only)
DDP_DEVICES = ["cpu"] + (["cuda"] if torch.cuda.device_count() >= 2 else [])


def _close_losses(a, b) -> None:
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    assert a.shape == b.shape and len(a) > 0
    np.testing.assert_allclose(b, a, rtol=RTOL_LOSS, atol=0)


def _close_weights(sd1: dict, sd2: dict, skip_bias_before_bn: tuple[str, ...] = ()) -> float:
    """‖Δθ‖/‖θ‖ over the state dicts (see the module docstring), asserted ≤ RTOL_WEIGHTS;
    BatchNorm batch counts must be equal."""
    assert sd1.keys() == sd2.keys()
    diff, ref = [], []
    for k in sd1:
        if k.endswith("num_batches_tracked"):
            assert int(sd1[k]) == int(sd2[k]), k
            continue
        if k in skip_bias_before_bn:
            continue
        a, b = sd1[k].float().cpu().flatten(), sd2[k].float().cpu().flatten()
        diff.append(a - b)
        ref.append(a)
    rel = float(torch.cat(diff).norm() / torch.cat(ref).norm())
    assert rel <= RTOL_WEIGHTS, f"weights differ: ‖Δθ‖/‖θ‖ = {rel:.2e}"
    return rel


def _blobs(rng, n: int, box: int, classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Noisy boxes of ``classes`` planted shapes (balls of different radii)."""
    zz, yy, xx = np.indices((box, box, box)) - box // 2
    r2 = zz**2 + yy**2 + xx**2
    labels = np.arange(n) % classes
    stack = rng.normal(0, 0.5, (n, box, box, box)).astype(np.float32)
    for c in range(classes):
        stack[labels == c] += (r2 <= (2 + 1.5 * c) ** 2).astype(np.float32)
    return stack, labels


# ------------------------------------------------------------------------ how many processes
def test_processes_from_the_gpu_resource_and_the_environment(monkeypatch):
    monkeypatch.delenv(distributed.ENV_PROCESSES, raising=False)
    assert distributed.gpus_requested(2) == 2
    assert distributed.gpus_requested(0, "'gpu:a100:4'") == 4
    assert distributed.gpus_requested(0, "gpu:3") == 3
    assert distributed.gpus_requested(None, None) == 1
    assert distributed.processes_for("cpu", 4) == 1  # no GPU: one process
    assert distributed.processes_for("cuda:1", 4) == 1  # one named GPU
    monkeypatch.setenv(distributed.ENV_PROCESSES, "2")
    assert distributed.processes_for("cpu", 1) == 2
    monkeypatch.setenv(distributed.ENV_PROCESSES, "zero")
    with pytest.raises(Exception, match="whole number"):
        distributed.processes_for("cpu", 1)


def test_shares_cover_the_batch_in_order():
    for n in (0, 1, 5, 8):
        for world in (1, 2, 3):
            parts = [distributed.Parallel(r, world).bounds(n) for r in range(world)]
            assert parts[0][0] == 0 and parts[-1][1] == n
            assert all(a[1] == b[0] for a, b in itertools.pairwise(parts))
            sizes = [b - a for a, b in parts]
            assert max(sizes) - min(sizes) <= 1


# -------------------------------------------------------------------------------- gradients
def _gradient_probe(x: np.ndarray, y: np.ndarray, *, device: str) -> dict:
    """One forward and backward of a small network with BatchNorm, split over the processes
    as the trainers do (wrap, shard, gather, loss of the whole batch); the gradients and the
    BatchNorm statistics."""
    par = distributed.current()
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.ReLU(),
                                torch.nn.BatchNorm1d(6), torch.nn.Linear(6, 3)).to(device)
    xt, yt = torch.as_tensor(x, device=device), torch.as_tensor(y, device=device)
    with par.wrap(model) as net:
        logits = par.gather(net(par.shard(xt)))
        torch.nn.functional.cross_entropy(logits, yt).backward()
    out = {n: p.grad.cpu() for n, p in model.named_parameters()}
    out.update({f"{n}[buffer]": b.cpu() for n, b in model.named_buffers()})
    return out


@pytest.mark.parametrize("device", DDP_DEVICES)
def test_split_gradients_equal_the_whole_batch_gradient(rng, device):
    """Not only their direction (Adam would hide a scale error): the gradient itself, the
    BatchNorm statistics, with shares of 4 and 3 rows."""
    x = rng.normal(size=(7, 4)).astype(np.float32)
    y = rng.integers(0, 3, 7)
    one = distributed.run(_gradient_probe, 1, device, x, y)
    two = distributed.run(_gradient_probe, 2, device, x, y)
    for k, v in one.items():
        np.testing.assert_allclose(two[k].numpy(), v.numpy(), rtol=1e-5, atol=1e-7,
                                   err_msg=k)


# ------------------------------------------------------------------------------- trainers
@pytest.mark.parametrize("device", DDP_DEVICES)
def test_transfer_two_processes_train_as_one(rng, device):
    from tomoclust.features.transfer import train_transfer
    from tomoclust.features.transfer_settings import TransferSettings

    stack, labels = _blobs(rng, 36, 16, 3)
    p = TransferSettings(width=4, stages=2, hidden=16, feature_dim=8, dropout=0.0, epochs=2,
                         batch_size=11, lr=3e-3, val_fraction=0.1)  # 11: unequal shares
    one = train_transfer(stack, labels, ["a", "b", "c"], p, device, processes=1)
    two = train_transfer(stack, labels, ["a", "b", "c"], p, device, processes=2)
    _close_losses(one.history["loss"], two.history["loss"])
    np.testing.assert_allclose(two.history["val_loss"], one.history["val_loss"], rtol=RTOL_LOSS)
    # fc.0 and fc.4 are Linear layers feeding BatchNorm1d fc.1 and fc.5
    skip = ("fc.0.bias", "fc.1.running_mean", "fc.4.bias", "fc.5.running_mean")
    _close_weights(one.model.state_dict(), two.model.state_dict(), skip)


@pytest.mark.parametrize("device", DDP_DEVICES)
def test_fewshot_two_processes_train_as_one(rng, device):
    from tomoclust.features.fewshot import FewShotSettings, train_protonet

    stack, labels = _blobs(rng, 30, 8, 3)
    # ProtoNet-CE: the encoder runs split, the set attention on the gathered embeddings
    p = FewShotSettings(variant="protonet_ce", width=4, blocks=2, way=3, shot=2, query=3,
                        epochs=2, episodes_per_epoch=3, lr=3e-3, seed=1)
    one = train_protonet(stack, labels, p, device, processes=1)
    two = train_protonet(stack, labels, p, device, processes=2)
    _close_losses(one.history["loss"], two.history["loss"])
    # every conv feeds a BatchNorm3d: its bias has a zero gradient
    skip = ("encoder.net.0.bias", "encoder.net.1.running_mean", "encoder.net.4.bias",
            "encoder.net.5.running_mean")
    _close_weights(one.model.state_dict(), two.model.state_dict(), skip)


@pytest.mark.parametrize("device", DDP_DEVICES)
def test_disca_two_processes_train_as_one(rng, device):
    from tomoclust.features.disca import DiscaSettings, run_disca
    from tomoclust.features.networks import Yopo
    from tomoclust.features.train import infer

    stack, _ = _blobs(rng, 30, 16, 3)
    p = DiscaSettings(preset="tiny", dropout=0.0, init="random", iterations=2, k_min=2,
                      k_max=3, gmm_n_init=1, pca_components=3, batch_size=10,
                      head_warmup_steps=5, seed=0)
    one = run_disca(stack, p, device, processes=1)
    two = run_disca(stack, p, device, processes=2)
    _close_losses(one.history["loss"], two.history["loss"])
    np.testing.assert_array_equal(one.history["k"], two.history["k"])
    np.testing.assert_array_equal(one.labels, two.labels)
    # the features of the best iteration were computed in two shares and gathered in order:
    # they are the best model's features of every particle, in particle order
    model = Yopo(p.network(), n_classes=two.state_dict["head.weight"].shape[0]).to(device)
    model.load_state_dict(two.state_dict)
    own = infer(model.eval().features, stack, device)
    np.testing.assert_allclose(two.features, own, rtol=0, atol=1e-5)
    # the last block's BatchNorm shift passes a global max pool into BatchNorm1d `norm`,
    # which removes it: a zero-gradient direction (see the module docstring); it enters the
    # eval-mode features through norm's running mean, by up to ~1e-3 after these few steps
    skip = ("blocks.2.2.bias", "norm.running_mean")
    _close_weights(one.state_dict, two.state_dict, skip)
    np.testing.assert_allclose(two.features, one.features, rtol=0, atol=2e-3)


@pytest.mark.parametrize("device", DDP_DEVICES)
def test_pretraining_two_processes_train_as_one(rng, device):
    from tomoclust.features.encoder import EncoderSettings
    from tomoclust.features.pretrain import ImagingSettings, PretrainSettings, train_encoder

    corpus, _ = _blobs(rng, 6, 16, 3)
    corpus = np.clip(corpus, 0, None)
    tp = PretrainSettings(steps=3, shapes_per_batch=5, views=2, lr=2e-3, checkpoint_every=50,
                     encoder=EncoderSettings(channels=(4, 4, 4, 4), hidden=8, embed_dim=8,
                                           box=16))
    ip = ImagingSettings(defocus_um=(3.0,), tilt_ranges=((-60.0, 60.0),))
    m1, h1 = train_encoder(corpus, tp, ip, device=device, processes=1)
    m2, h2 = train_encoder(corpus, tp, ip, device=device, processes=2)
    _close_losses([h["loss"] for h in h1], [h["loss"] for h in h2])
    # the contrastive loss couples every view with every other: the gather must be in order
    # and the gradient of each embedding summed over the processes' loss terms
    skip = ("fc.0.bias", "fc.1.running_mean")
    _close_weights(m1.state_dict(), m2.state_dict(), skip)


# ---------------------------------------------------------------------------------- resume
class _Stop(Exception):
    pass


def _stop_after(epoch: int):
    def hook(ep: int) -> None:
        if ep == epoch:
            raise _Stop(f"stopped after epoch {ep}")
    return hook


def test_two_process_run_resumes_exactly(rng, tmp_path):
    """Killed after epoch 1 of 3 and resumed with two processes, the transfer network (with
    dropout: each process's generator must come back) ends where the uninterrupted run
    does; the checkpoint holds what a one-process checkpoint holds, plus each process's
    generators."""
    from tomoclust.features.transfer import train_transfer
    from tomoclust.features.transfer_settings import TransferSettings

    stack, labels = _blobs(rng, 24, 16, 2)
    p = TransferSettings(width=4, stages=2, hidden=16, feature_dim=8, dropout=0.3, epochs=3,
                         batch_size=8, lr=3e-3)
    full = train_transfer(stack, labels, ["a", "b"], p, "cpu", processes=2)
    ck = Checkpoint(tmp_path / "ck.pt", "fp")
    with pytest.raises(_Stop):
        train_transfer(stack, labels, ["a", "b"], p, "cpu", checkpoint=ck, processes=2,
                       on_epoch=_stop_after(1))
    state = torch.load(ck.path, weights_only=True)
    assert {"epoch", "model", "optimizer", "rng", "augment_rng", "history"} <= set(state)
    assert int(state["epoch"]) == 1 and len(state["rng"]["ranks"]) == 2
    resumed = train_transfer(stack, labels, ["a", "b"], p, "cpu", checkpoint=ck, processes=2)
    assert resumed.history["loss"].tolist() == full.history["loss"].tolist()
    for k, v in full.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k


def test_memory_mapped_stacks_reach_the_other_processes_as_file_references(rng, tmp_path):
    """A particle stack (an MRC memory map) is handed to the other processes as its file,
    offset and shape, not as a copy of its data; slices keep their place in the file."""
    import pickle

    from tomoclust.formats.stacks import StackWriter, open_stack

    data = rng.normal(size=(7, 8, 8, 8)).astype(np.float32)
    with StackWriter(tmp_path / "s.mrcs", 7, 8, 10.0) as w:
        w[0:7] = data
    stack, _ = open_stack(tmp_path / "s.mrcs")
    for view in (stack, stack[2:5]):
        ref = distributed._portable(view)
        assert isinstance(ref, distributed._MemmapRef)
        assert len(pickle.dumps(ref)) < 1000
        np.testing.assert_array_equal(distributed._restore(pickle.loads(pickle.dumps(ref))),
                                      view)
    assert distributed._portable(data) is data  # arrays in memory travel as they are


SCRIPT = '''
import sys
from types import SimpleNamespace

import numpy as np
from tomoclust.features.distributed import job_processes
from tomoclust.features.transfer import train_transfer
from tomoclust.features.transfer_settings import TransferSettings
from tomoclust.formats.stacks import StackWriter, open_stack

work = sys.argv[1]
with open(work + "/runs.txt", "a") as fh:  # a rule script runs its rule at import
    fh.write("run\\n")
rng = np.random.default_rng(0)
with StackWriter(work + "/s.mrcs", 12, 16, 10.0) as w:
    w[0:12] = rng.normal(size=(12, 16, 16, 16)).astype(np.float32)
stack, _ = open_stack(work + "/s.mrcs")
n = job_processes("cpu", SimpleNamespace(gpu=1))
p = TransferSettings(width=4, stages=2, hidden=8, feature_dim=4, epochs=1, batch_size=6,
                     val_fraction=0.0)
res = train_transfer(stack, np.arange(12) % 2, ["a", "b"], p, "cpu", processes=n)
print("processes", n, "epochs", len(res.history))
'''


def test_a_rule_script_is_not_rerun_by_the_other_processes(tmp_path, repo):
    """As in a Snakemake job: a script (main module with side effects at import) on a
    memory-mapped stack, the process count from TOMOCLUST_PROCESSES; the other process runs
    the library function only."""
    import os
    import subprocess
    import sys

    (tmp_path / "rule.py").write_text(SCRIPT)
    env = {**os.environ, distributed.ENV_PROCESSES: "2", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(repo / "scripts")}
    out = subprocess.run([sys.executable, str(tmp_path / "rule.py"), str(tmp_path)], env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "processes 2 epochs 1" in out.stdout
    assert (tmp_path / "runs.txt").read_text() == "run\n"


FAILING = '''
import torch.distributed as dist
from tomoclust.features import distributed


def train(*, device):
    if distributed.current().rank == 1:
        raise RuntimeError("planted failure in rank 1")
    dist.barrier()  # rank 0 waits for a process that is gone
    return "finished"
'''


def test_a_failing_process_ends_the_job_with_its_error(tmp_path, repo):
    """A process that dies must not leave rank 0 waiting in a collective: the job exits
    non-zero within seconds and its log carries the process's error."""
    import os
    import subprocess
    import sys

    (tmp_path / "planted.py").write_text(FAILING)
    code = ("import logging, sys; logging.basicConfig(level=logging.INFO); import planted; "
            "from tomoclust.features import distributed; "
            "print(distributed.run(planted.train, 2, 'cpu'))")
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(repo / "scripts"), str(tmp_path)])}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode != 0
    assert "finished" not in out.stdout
    assert "planted failure in rank 1" in out.stderr
    assert "a training process failed" in out.stderr
