"""Transfer-learned encoder (after Moebel & Kervrann, CMPB 2022).

A 3D CNN is trained, with labels, to classify *simulated* subtomograms of a template library
(plus a "no particle" class) imaged like the data: uniform random proper rotations, the same
3D CTF, missing wedge and noise model
(:func:`tomoclust.simulate.subtomograms.simulate_subtomograms`), with
the SNR of every simulated group drawn log-uniformly from a range so that one model serves
several noise levels. Its penultimate layer (``feature_dim`` = 32 by default) is the feature of
a particle: applied to real particles, it is clustered by the shared clustering rule. Rotation
invariance comes from the training data, not from alignment.

The training set and the model are cached: :func:`training_set_key` and :func:`model_key`
(in the torch-free :mod:`tomoclust.features.transfer_settings`) hash everything that determines them
(template files, voxel size, box, imaging model, simulation and training settings) and nothing
else, so the workflow keeps them in directories named by the keys and retrains only when one
of those changes.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from .. import TomoclustError
from ..simulate.density import fit_box
from ..simulate.subtomograms import simulate_subtomograms
from ..simulate.tomograms import CtfSettings, Template
from . import distributed
from .train import (
    Checkpoint,
    MicroBatches,
    batches,
    check_finite,
    infer,
    resume_epochs,
    rng_state,
    to_tensor,
    write_history,
)
from .transfer_settings import (
    NO_PARTICLE,
    TrainingSetSettings,
    TransferNetSettings,
    TransferSettings,
)

log = logging.getLogger(__name__)

# ------------------------------------------------------------------------------ the network
class TransferNet(nn.Module):
    """3D CNN classifier: ``stages`` × [Conv3d 3³ → BN → ReLU → Conv3d 3³ → BN → ReLU →
    MaxPool 2], global average + max pooling, FC ``hidden`` → FC ``feature_dim`` (the feature)
    → FC ``n_classes``.

    Each input box is standardised (zero mean, unit variance) inside the network, so features
    do not depend on whether the extraction normalised. Any box side works (global pooling);
    it must survive ``input_binning · 2^stages``.
    """

    def __init__(self, cfg: TransferNetSettings):
        super().__init__()
        self.cfg = cfg
        layers: list[nn.Module] = []
        c_in = 1
        for i in range(cfg.stages):
            c = cfg.width * 2**i
            layers += [nn.Conv3d(c_in, c, 3, padding=1, bias=False), nn.BatchNorm3d(c),
                       nn.ReLU(inplace=True),
                       nn.Conv3d(c, c, 3, padding=1, bias=False), nn.BatchNorm3d(c),
                       nn.ReLU(inplace=True), nn.MaxPool3d(2)]
            c_in = c
        self.conv = nn.Sequential(*layers)
        self.fc = nn.Sequential(
            nn.Linear(2 * c_in, cfg.hidden), nn.BatchNorm1d(cfg.hidden), nn.ReLU(inplace=True),
            nn.Dropout(cfg.dropout),
            nn.Linear(cfg.hidden, cfg.feature_dim), nn.BatchNorm1d(cfg.feature_dim),
            nn.ReLU(inplace=True),
        )
        self.head = nn.Sequential(nn.Dropout(cfg.dropout), nn.Linear(cfg.feature_dim,
                                                                      cfg.n_classes))

    def min_box(self) -> int:
        return self.cfg.input_binning * 2**self.cfg.stages

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """``(n, 1, d, d, d)`` → ``(n, feature_dim)``: the penultimate-layer activations."""
        if x.shape[-1] < self.min_box():
            raise ValueError(f"box {x.shape[-1]} is smaller than the network's minimum "
                             f"{self.min_box()} (input_binning · 2^stages)")
        mu = x.mean(dim=(2, 3, 4), keepdim=True)
        sd = x.std(dim=(2, 3, 4), keepdim=True)
        x = (x - mu) / torch.clamp(sd, min=1e-6)
        b = self.cfg.input_binning
        if b > 1:
            x = F.avg_pool3d(x, b)
        h = self.conv(x)
        h = torch.cat([h.mean(dim=(2, 3, 4)), h.amax(dim=(2, 3, 4))], dim=1)
        return self.fc(h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


# ------------------------------------------------------------------------- the training set
@dataclass
class TrainingSet:
    stack: np.ndarray  # (n, b, b, b) float32
    labels: np.ndarray  # (n,) int64 in 0 .. len(class_names) - 1
    class_names: list[str]
    table: pd.DataFrame  # per box: label, class name, template, SNR
    info: dict


def class_names_for(template_names: Sequence[str], no_particle: bool) -> list[str]:
    """Network class index → name: ``no_particle`` first (when used), then the templates."""
    names = list(template_names)
    if NO_PARTICLE in names:
        raise TomoclustError(f"template name {NO_PARTICLE!r} is reserved for the empty class")
    return ([NO_PARTICLE] if no_particle else []) + names


def _neighbour_density(t: Template, box: int, rng: np.random.Generator) -> np.ndarray:
    """``t`` moved off-centre so that only part of it lies in a ``box`` cube: what a box
    centred next to a particle (a false pick) sees. The shift is along +x; the simulation's
    random rotation about the box centre then sends it in a uniformly random direction. The
    result is cut to the ball of radius ``box / 2`` so that the cut looks the same after any
    rotation."""
    big = fit_box(t.density, 2 * box)
    r = max(t.radius, 2.0)
    dist = box / 2 + rng.uniform(-0.4, 0.4) * r
    shifted = np.roll(big, round(dist), axis=2)
    out = fit_box(shifted, box)
    zz, yy, xx = np.indices(out.shape) - box // 2
    out[zz**2 + yy**2 + xx**2 > (box / 2) ** 2] = 0
    return out


def snr_schedule(params: TrainingSetSettings) -> np.ndarray:
    """The SNR of each group: log-uniform draws in ``[snr_min, snr_max]`` (seeded)."""
    if not 0 < params.snr_min <= params.snr_max:
        raise TomoclustError(f"transfer: need 0 < snr_min <= snr_max, got "
                             f"{params.snr_min}, {params.snr_max}")
    rng = np.random.default_rng([params.seed, 1])
    lo, hi = math.log(params.snr_min), math.log(params.snr_max)
    return np.exp(rng.uniform(lo, hi, size=params.snr_groups))


def simulate_training_set(templates: Sequence[Template], params: TrainingSetSettings
                          ) -> TrainingSet:
    """Simulate ``n_per_class`` labelled boxes per template (and of "no particle")."""
    if not templates:
        raise TomoclustError("transfer: the template library is empty")
    if params.snr_groups < 1 or params.n_per_class < params.snr_groups:
        raise TomoclustError(f"transfer: n_per_class ({params.n_per_class}) must be at least "
                             f"snr_groups ({params.snr_groups}) and snr_groups >= 1")
    names = class_names_for([t.name for t in templates], params.no_particle)
    label_of = {nm: i for i, nm in enumerate(names)}
    ctf = CtfSettings(**params.ctf)
    snrs = snr_schedule(params)
    rng = np.random.default_rng([params.seed, 2])
    sizes = np.full(params.snr_groups, params.n_per_class // params.snr_groups)
    sizes[: params.n_per_class % params.snr_groups] += 1
    # renumber 1..K for the simulator; class number 0 marks boxes without a centred particle
    lib = [Template(t.name, i + 1, fit_box(t.density, params.box)) for i, t in
           enumerate(templates)]
    stacks, rows = [], []
    for g, (snr, k) in enumerate(zip(snrs, sizes, strict=True)):
        group = list(lib)
        empty = False
        if params.no_particle:
            if rng.random() < params.neighbour_fraction:
                nb = lib[int(rng.integers(len(lib)))]
                group.append(Template(f"{NO_PARTICLE}:{nb.name}", 0,
                                      _neighbour_density(nb, params.box, rng)))
            else:
                empty = True
        res = simulate_subtomograms(
            group, n_per_class=int(k), box=params.box, voxel_size=params.voxel_size,
            snr=float(snr), convention=params.convention, tilt_min=params.tilt_min,
            tilt_max=params.tilt_max, ctf=ctf, max_shift_vox=params.max_shift_vox,
            normalise=True, seed=int(rng.integers(2**31)), include_empty=empty)
        tab = res.truth
        cls = [NO_PARTICLE if c == 0 else lib[c - 1].name for c in tab["rlnClassNumber"]]
        stacks.append(res.stack)
        rows.append(pd.DataFrame({
            "label": [label_of[c] for c in cls], "class_name": cls,
            "source": tab["tclTemplateName"].tolist(), "group": g,
            "snr_nominal": float(snr), "snr_measured": float(res.info["snr_measured"]),
        }))
        log.info("training set group %d/%d: SNR %.3g (%s), %d boxes per class", g + 1,
                 params.snr_groups, snr, params.convention, k)
    stack = np.concatenate(stacks)
    table = pd.concat(rows, ignore_index=True)
    order = np.random.default_rng([params.seed, 3]).permutation(len(stack))
    stack, table = stack[order], table.iloc[order].reset_index(drop=True)
    info = {"params": params.as_dict(), "class_names": names, "n": len(stack),
            "snr_groups": snrs.tolist(),
            "counts": table["class_name"].value_counts().reindex(names).astype(int).tolist()}
    return TrainingSet(stack.astype(np.float32), table["label"].to_numpy(np.int64), names,
                       table, info)


# ---------------------------------------------------------------------------------- training
@dataclass
class TransferResult:
    model: TransferNet
    history: pd.DataFrame
    class_names: list[str]
    val_index: np.ndarray


def split_validation(labels: np.ndarray, fraction: float, seed: int
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Stratified split: ``fraction`` of each class (at least one if it has two) held out."""
    rng = np.random.default_rng([seed, 4])
    train, val = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        k = round(fraction * len(idx))
        if fraction > 0 and len(idx) >= 2:
            k = min(max(k, 1), len(idx) - 1)
        val.append(idx[:k])
        train.append(idx[k:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


def wedge_preserving_turn(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Turn each ``(n, 1, d, d, d)`` box by 180° about x, y or z (or not at all), about the
    voxel ``d // 2``.

    A 180° turn flips the two other axes. Together with Friedel symmetry these turns map a
    missing wedge about y with a symmetric tilt range onto itself, so the augmented boxes keep
    the imaging model of the data.
    """
    choice = torch.randint(0, 4, (x.shape[0],), generator=gen).tolist()
    out = x.clone()
    axes = {1: (3, 4), 2: (2, 4), 3: (2, 3)}  # about z: flip y, x; about y: z, x; about x: z, y
    for i, c in enumerate(choice):
        if c:
            dims = tuple(a - 1 for a in axes[c])  # axes of the (1, d, d, d) box
            v = torch.flip(x[i], dims=dims)
            # index j -> d - 1 - j; one more roll on even sides makes it j -> d - j (mod d),
            # the turn about d // 2
            even = tuple(a for a in dims if x.shape[a + 1] % 2 == 0)
            if even:
                v = torch.roll(v, shifts=(1,) * len(even), dims=even)
            out[i] = v
    return out


@torch.inference_mode()
def _evaluate(model: TransferNet, stack: np.ndarray, labels: np.ndarray, idx: np.ndarray,
              device, batch_size: int) -> tuple[float, float]:
    if len(idx) == 0:
        return float("nan"), float("nan")
    model.eval()
    loss, correct = 0.0, 0
    for a in range(0, len(idx), batch_size):
        b = idx[a:a + batch_size]
        x = to_tensor(stack, b, device)[:, None]
        y = torch.as_tensor(labels[b], device=device)
        logits = model(x)
        loss += float(F.cross_entropy(logits, y, reduction="sum"))
        correct += int((logits.argmax(1) == y).sum())
    return loss / len(idx), correct / len(idx)


def train_transfer(stack: np.ndarray, labels: np.ndarray, class_names: Sequence[str],
                   params: TransferSettings, device, checkpoint: Checkpoint | None = None,
                   history_path=None, on_epoch=None, processes: int = 1) -> TransferResult:
    """Train the classifier on a labelled ``(n, d, d, d)`` stack (labels ``0..K-1``).

    Adam with a cosine learning-rate decay; each epoch logs loss, training accuracy,
    validation loss and accuracy (a stratified ``val_fraction`` hold-out). With a
    ``checkpoint``, state is saved after every epoch and a rerun resumes after the last one.
    ``processes`` > 1 trains data-parallel, each batch split over the processes
    (:mod:`tomoclust.features.distributed`).
    """
    return distributed.run(_train_transfer, processes, str(device), stack, labels,
                           list(class_names), params, checkpoint=checkpoint,
                           history_path=history_path, on_epoch=on_epoch,
                           main_only=("history_path", "on_epoch"))


def _train_transfer(stack: np.ndarray, labels: np.ndarray, class_names: Sequence[str],
                    params: TransferSettings, *, device, checkpoint: Checkpoint | None,
                    history_path, on_epoch) -> TransferResult:
    par = distributed.current()
    labels = np.asarray(labels, dtype=np.int64)
    n_classes = len(class_names)
    if len(labels) != len(stack):
        raise TomoclustError(f"transfer: {len(stack)} boxes but {len(labels)} labels")
    if labels.min() < 0 or labels.max() >= n_classes:
        raise TomoclustError(f"transfer: labels outside 0..{n_classes - 1}")
    torch.manual_seed(params.seed)
    rng = np.random.default_rng(params.seed)
    gen = torch.Generator().manual_seed(params.seed)
    model = TransferNet(params.net_config(n_classes)).to(device)
    par.decorrelate(params.seed)
    if stack.shape[-1] < model.min_box():
        raise TomoclustError(f"transfer: box {stack.shape[-1]} is smaller than the network's "
                             f"minimum {model.min_box()} (input_binning · 2^stages)")
    opt = torch.optim.AdamW(model.parameters(), lr=params.lr, weight_decay=params.weight_decay)
    train_idx, val_idx = split_validation(labels, params.val_fraction, params.seed)
    fit = MicroBatches("transfer training", device)
    start, history, state = resume_epochs(checkpoint, device, model, opt, rng)
    if state is not None:
        gen.set_state(state["augment_rng"].cpu())
        log.info("resuming transfer training from checkpoint after epoch %d", start - 1)
    with par.wrap(model) as net:
        for ep in range(start, params.epochs):
            t0 = time.time()
            lr = 0.5 * params.lr * (1 + math.cos(math.pi * ep / params.epochs))
            for g in opt.param_groups:
                g["lr"] = lr
            model.train()
            tot, cnt = 0.0, 0
            hit = np.zeros(len(labels), dtype=bool)  # per box, so a retried step counts once

            def step(idx: np.ndarray, weight: float, ep: int = ep,
                     hit: np.ndarray = hit) -> float:
                x = to_tensor(stack, idx, device)[:, None]
                if params.augment:
                    x = wedge_preserving_turn(x, gen)
                y = torch.as_tensor(labels[idx], device=device)
                logits = par.gather(net(par.shard(x)))
                loss = F.cross_entropy(logits, y)
                value = float(loss.detach())
                check_finite(value, "the training loss", "transfer", f"epoch {ep}")
                (loss * weight).backward()
                hit[idx] = (logits.detach().argmax(1) == y).cpu().numpy()
                return value

            for bi in batches(len(train_idx), params.batch_size, rng):
                if len(bi) < 2:  # BatchNorm needs two samples
                    continue
                tot += fit(opt, step, train_idx[bi]) * len(bi)
                cnt += len(bi)
            correct = int(hit.sum())
            val_loss, val_acc = (_evaluate(model, stack, labels, val_idx, device,
                                           2 * params.batch_size) if par.is_main
                                 else (float("nan"), float("nan")))
            history.append({"epoch": ep, "lr": lr, "loss": tot / max(cnt, 1),
                            "train_accuracy": correct / max(cnt, 1), "val_loss": val_loss,
                            "val_accuracy": val_acc, "seconds": time.time() - t0})
            log.info("transfer epoch %d: loss %.4f, train acc %.3f, val loss %.4f, val acc "
                     "%.3f (%.1f s)", ep, history[-1]["loss"], history[-1]["train_accuracy"],
                     val_loss, val_acc, history[-1]["seconds"])
            write_history(history_path, history)
            if checkpoint is not None:
                checkpoint.save({"epoch": ep, "model": model.state_dict(),
                                 "optimizer": opt.state_dict(), "rng": rng_state(rng),
                                 "augment_rng": gen.get_state(), "history": history})
            if on_epoch is not None:
                on_epoch(ep)
    write_history(history_path, history)
    model.eval()
    return TransferResult(model, pd.DataFrame(history), list(class_names), val_idx)


# --------------------------------------------------------------------- saving and applying
def save_model(path: str | Path, model: TransferNet, class_names: Sequence[str],
               extra: Mapping | None = None) -> None:
    """Weights (on the CPU), the architecture and the class names, loadable with
    ``weights_only=True``."""
    from ..formats.atomic import atomic_output

    payload = {"state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
               "config": json.dumps(model.cfg.as_dict()),
               "class_names": json.dumps(list(class_names)),
               "extra": json.dumps(dict(extra or {}), default=str)}
    with atomic_output(path) as tmp:
        torch.save(payload, tmp)


def load_model(path: str | Path, device="cpu") -> tuple[TransferNet, list[str], dict]:
    p = Path(path)
    if not p.exists():
        raise TomoclustError(f"{p}: transfer model not found")
    try:
        payload = torch.load(p, map_location="cpu", weights_only=True)
        cfg = TransferNetSettings(**json.loads(payload["config"]))
        model = TransferNet(cfg)
        model.load_state_dict(payload["state_dict"])
    except Exception as exc:  # unreadable, truncated or another kind of file
        raise TomoclustError(f"{p}: not a tomoclust transfer model ({exc})") from None
    model.to(device).eval()
    return model, json.loads(payload["class_names"]), json.loads(payload["extra"])


def transfer_features(model: TransferNet, stack: np.ndarray, batch_size: int = 128,
                      chunks: Sequence[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The 32-d features and the class probabilities of every box (model's device); with
    ``chunks``, gathered from the files of jobs that computed them in shares
    (:mod:`tomoclust.features.chunks`)."""
    k = model.cfg.feature_dim
    if chunks:
        from .chunks import gather

        out = gather(chunks, len(stack))
        if out.shape[1] != k + model.cfg.n_classes:
            raise TomoclustError(f"feature chunks hold {out.shape[1]} columns, the model "
                                 f"gives {k} features + {model.cfg.n_classes} probabilities")
        return out[:, :k], out[:, k:]
    device = next(model.parameters()).device
    model.eval()

    def both(x: torch.Tensor) -> torch.Tensor:
        f = model.features(x)
        return torch.cat([f, torch.softmax(model.head(f), dim=1)], dim=1)

    out = infer(both, stack, device, batch_size)
    if out.size == 0:
        return (np.zeros((0, k), np.float32), np.zeros((0, model.cfg.n_classes), np.float32))
    return out[:, :k], out[:, k:]


# ------------------------------------------------------------------------ rule inputs
def read_training_set(star: str | Path, stack: str | Path
                      ) -> tuple[np.ndarray, float, np.ndarray, list[str], dict]:
    """A simulated training set as written by the transfer_training_set rule: (stack, voxel
    size, 0-based labels, class names, the set's parameters from the JSON beside the stack)."""
    from ..formats.stacks import open_stack
    from ..formats.star import read_star

    with open(str(stack).rsplit(".", 1)[0] + ".json") as fh:  # training_set.json
        set_info = json.load(fh)
    df = read_star(star, what="transfer training set")
    data, vs = open_stack(stack)
    if len(df) != len(data):
        raise TomoclustError(f"{star} has {len(df)} rows but {stack} holds {len(data)} volumes")
    return data, vs, df["rlnClassNumber"].to_numpy() - 1, set_info["class_names"], \
        set_info["params"]


def check_model_input(model_path: str | Path, extra: Mapping, stack_path: str | Path,
                      box: int, voxel_size: float) -> None:
    """The particles (``box``³ at ``voxel_size`` Å) must be what the model was trained on
    (``extra`` of :func:`load_model`)."""
    if box != extra["box"] or not np.isclose(voxel_size, extra["voxel_size"], rtol=1e-3):
        raise TomoclustError(
            f"{stack_path}: particles are {box}³ at {voxel_size:g} Å but the transfer model "
            f"{model_path} was trained on {extra['box']}³ at {extra['voxel_size']:g} Å")
