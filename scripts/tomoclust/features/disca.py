"""DISCA: unsupervised subtomogram classification by alternating clustering and training.

Zeng et al., PNAS 2023. Each iteration:

1. features of every particle from the YOPO network (eval mode);
2. standardise, PCA, then full-covariance Gaussian mixtures for each K in a range plus a
   refit of the current K warm-started from the current labels; the lowest BIC wins; empty
   clusters disappear (labels are renumbered);
3. if K is unchanged, labels are matched to the previous iteration's (Hungarian), so class
   numbers are stable and the convergence test (fraction of unchanged labels) is meaningful;
4. the iteration's Davies–Bouldin index (Mahalanobis, per-cluster covariance) is recorded; the
   best iteration's labels, features and weights are the result;
5. the network is trained for a few epochs on the labels, smoothed by ``α`` (starting at 0.2,
   ×0.9 per iteration): ``target = (1 − α)·onehot + α/K``; a new head (warmed up on frozen
   features) replaces the old when K changes; each epoch sees every particle plus one randomly
   rotated copy (:mod:`tomoclust.features.augment`: proper rotations, noise fill, wedge-aware).

The reference starts from the features of a randomly initialised network. With
``init="invariant"`` (the default) the first labels come instead from rotation-invariant
shell spectra (:mod:`tomoclust.features.invariant`), so the network is first trained on labels that
already reflect shape rather than orientation; that iteration is not a candidate for "best"
(its features are not the network's).

The run stops after ``iterations`` clusterings of network features (plus the invariant
initial clustering) or when more than ``convergence`` of the labels are
unchanged. State is checkpointed after every iteration; a killed run resumes there.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment

from .. import TomoclustError
from ..cluster import compact_labels, gmm_bic, reduce_features
from . import distributed
from .augment import AUGMENT_MODES, augment, wedge_mask_torch
from .networks import Yopo, YopoSettings
from .train import (
    Checkpoint,
    MicroBatches,
    batches,
    check_finite,
    infer,
    rng_state,
    set_rng_state,
    to_tensor,
    write_history,
)

log = logging.getLogger(__name__)


@dataclass
class DiscaSettings:
    preset: str = "light"
    blocks: int | None = None
    width: int | None = None
    width_step: int | None = None
    feature_dim: int | None = None
    input_binning: int | None = None
    dropout: float | None = None  # Gaussian dropout on the input; None: the preset's
    k_min: int = 2
    k_max: int = 20
    pca_components: int = 8
    gmm_n_init: int = 3
    iterations: int = 10
    epochs_per_iteration: int = 1
    batch_size: int = 64
    lr: float = 1e-3
    lr_decay: float = 0.95
    smoothing: float = 0.2
    smoothing_decay: float = 0.9
    loss: str = "cross_entropy"  # or "hinge" (the reference's categorical hinge)
    augment: str = "uniform_masked"
    tilt_min: float = -60.0
    tilt_max: float = 60.0
    convergence: float = 0.999
    head_warmup_steps: int = 50
    init: str = "invariant"  # "invariant" (shell-spectrum labels), "random" (the reference) or
    # "network" (the backbone's own features; with a pretrained backbone)
    pretrained: str | None = None  # encoder weights: the backbone starts from them
    invariant_l_max: int = 6
    invariant_lowpass_vox: float = 1.0  # voxels
    invariant_radial: bool = False
    invariant_components: int | None = None
    seed: int = 0

    def network(self) -> YopoSettings:
        """The YOPO configuration (the backbone unless ``pretrained``)."""
        return YopoSettings.from_preset(
            self.preset, blocks=self.blocks, width=self.width, width_step=self.width_step,
            feature_dim=self.feature_dim, input_binning=self.input_binning,
            dropout=self.dropout)


@dataclass
class DiscaResult:
    features: np.ndarray  # (n, feature_dim) at the best iteration
    labels: np.ndarray  # (n,) 1-based at the best iteration
    probability: np.ndarray  # (n,) GMM posterior of the assigned label
    state_dict: dict
    history: pd.DataFrame
    best_iteration: int
    bic: pd.DataFrame = field(default_factory=pd.DataFrame)  # BIC table of the best iteration


def match_labels(new: np.ndarray, old: np.ndarray) -> np.ndarray:
    """Relabel ``new`` (0-based) to agree with ``old`` as much as possible (Hungarian)."""
    k = int(max(new.max(), old.max())) + 1
    cm = np.zeros((k, k), dtype=np.int64)
    np.add.at(cm, (new, old), 1)
    r, c = linear_sum_assignment(-cm)
    mapping = np.empty(k, dtype=np.int64)
    mapping[r] = c
    return mapping[new]


def davies_bouldin_mahalanobis(z: np.ndarray, labels: np.ndarray, reg: float = 1e-5) -> float:
    """Davies–Bouldin index with Mahalanobis distances (per-cluster covariance); lower is better.

    Scatter ``S_i`` = mean Mahalanobis distance of cluster i's members to its centroid under
    ``Σ_i``; separation ``M_ij`` = Mahalanobis distance between centroids under
    ``(Σ_i + Σ_j) / 2``. Infinite for fewer than two clusters.
    """
    ks = np.unique(labels)
    if len(ks) < 2:
        return float("inf")
    d = z.shape[1]
    mus, covs, scat = [], [], []
    for k in ks:
        x = z[labels == k]
        mu = x.mean(axis=0)
        cov = np.cov(x, rowvar=False) if len(x) > 1 else np.zeros((d, d))
        cov = np.atleast_2d(cov) + reg * np.eye(d)
        inv = np.linalg.inv(cov)
        diff = x - mu
        scat.append(float(np.sqrt(np.einsum("ni,ij,nj->n", diff, inv, diff)).mean()))
        mus.append(mu)
        covs.append(cov)
    db = []
    for i in range(len(ks)):
        worst = 0.0
        for j in range(len(ks)):
            if i == j:
                continue
            diff = mus[i] - mus[j]
            m = float(np.sqrt(diff @ np.linalg.inv((covs[i] + covs[j]) / 2) @ diff))
            worst = max(worst, (scat[i] + scat[j]) / max(m, 1e-12))
        db.append(worst)
    return float(np.mean(db))


def _loss(logits: torch.Tensor, target: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "cross_entropy":
        return -(target * F.log_softmax(logits, dim=1)).sum(dim=1).mean()
    if kind == "hinge":
        p = F.softmax(logits, dim=1)
        pos = (target * p).sum(dim=1)
        neg = ((1 - target) * p).amax(dim=1)
        return F.relu(neg - pos + 1).mean()
    raise ValueError(f"unknown loss {kind!r} (cross_entropy or hinge)")


def _smoothed(labels: np.ndarray, k: int, alpha: float, device) -> torch.Tensor:
    t = torch.full((len(labels), k), alpha / k, device=device)
    t[torch.arange(len(labels)), torch.as_tensor(labels, device=device)] += 1 - alpha
    return t


def _warm_up_head(model: Yopo, feats: np.ndarray, labels: np.ndarray, steps: int,
                  device) -> None:
    """Train only the head on frozen features (full batch) after it was replaced."""
    x = torch.as_tensor(feats, device=device)
    y = torch.as_tensor(labels, device=device)
    opt = torch.optim.Adam(model.head.parameters(), lr=1e-2)
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(model.head(x), y).backward()
        opt.step()


def run_disca(stack: np.ndarray, params: DiscaSettings, device: str | torch.device,
              checkpoint: Checkpoint | None = None, history_path=None,
              on_iteration: Callable[[int], None] | None = None,
              processes: int = 1) -> DiscaResult:
    """Run DISCA on a ``(n, d, d, d)`` stack (array or memory map) on ``device``.

    ``on_iteration(i)`` is called after iteration ``i`` was checkpointed (tests use it to
    interrupt a run). ``processes`` > 1 runs data-parallel
    (:mod:`tomoclust.features.distributed`): the network features of every iteration are
    computed in shares and gathered, every process clusters them (rank 0's labels are
    broadcast), and each training batch is split over the processes.
    """
    return distributed.run(_run_disca, processes, str(device), stack, params,
                           checkpoint=checkpoint, history_path=history_path,
                           on_iteration=on_iteration, main_only=("history_path", "on_iteration"))


def _run_disca(stack: np.ndarray, params: DiscaSettings, *, device: str,
               checkpoint: Checkpoint | None, history_path,
               on_iteration: Callable[[int], None] | None) -> DiscaResult:
    par = distributed.current()
    n, d = len(stack), stack.shape[-1]
    _check_run(params, n)
    torch.manual_seed(params.seed)
    rng = np.random.default_rng(params.seed)
    model = _network(params, d, device)
    par.decorrelate(params.seed)
    opt = torch.optim.NAdam(model.parameters(), lr=params.lr)
    wedge = wedge_mask_torch(d, params.tilt_min, params.tilt_max, device)
    k_values = list(range(params.k_min, params.k_max + 1))
    fit = MicroBatches("DISCA training", device)

    start, prev, history = 0, None, []
    best: dict = {"db": np.inf}
    state = checkpoint.load(device) if checkpoint is not None else None
    if state is not None:
        opt, start, prev, history, best = _resume(state, model, params, rng)

    if params.init == "invariant":
        inv, z_inv = _invariant_start(stack, params, device)
    n_passes = params.iterations + (1 if params.init == "invariant" else 0)

    def network_features(rows: np.ndarray) -> np.ndarray:  # a contiguous share of the rows
        part = stack[rows[0]:rows[-1] + 1] if len(rows) else stack[:0]
        return infer(model.features, part, device, what="DISCA features")

    for it in range(start, n_passes):
        t0 = time.time()
        model.eval()
        from_invariants = it == 0 and params.init == "invariant"
        if from_invariants:
            feats, z = inv, z_inv
        else:
            feats = par.infer(network_features, n)
            check_finite(feats, "the network features", "DISCA", f"iteration {it}")
            z = reduce_features(feats, params.pca_components, params.seed)
        labels, prob, bic, changed, db = _cluster_step(z, k_values, params, it, prev)
        row = {"iteration": it, "k": int(labels.max()) + 1, "bic": float(bic["bic"].min()),
               "davies_bouldin": db, "changed_fraction": changed,
               "sizes": ",".join(map(str, np.bincount(labels))),
               "features": "invariant" if from_invariants else "network"}
        if db < best["db"] and not from_invariants:
            best = {"db": db, "iteration": it, "labels": labels.copy(), "prob": prob,
                    "features": feats, "bic": bic.to_dict("list"),
                    "state_dict": copy.deepcopy(model.state_dict())}
        converged = (prev is not None and 1.0 - changed > params.convergence
                     and "features" in best)
        # every process clustered the same gathered features; rank 0's decision is binding
        labels, converged = par.broadcast((labels, converged))
        k = int(labels.max()) + 1
        if not converged:
            if k != model.n_classes:
                model.new_head(k)
                net_feats = par.infer(network_features, n) if from_invariants else feats
                _warm_up_head(model, net_feats, labels, params.head_warmup_steps, device)
                opt = torch.optim.NAdam(model.parameters(),
                                        lr=params.lr * params.lr_decay**it)
            row["loss"] = _train_iteration(model, opt, fit, stack, labels, it, params, rng,
                                           wedge, device)
        row["seconds"] = time.time() - t0
        history.append(row)
        log.info("DISCA iteration %d: K=%d, DB=%.3f, changed %.2f%%, loss %s, %.1f s", it, k, db,
                 100 * changed, f"{row.get('loss', float('nan')):.4f}", row["seconds"])
        write_history(history_path, history)
        prev = labels
        if checkpoint is not None:
            checkpoint.save(_checkpoint_state(it, model, opt, rng, prev, history, best))
        if on_iteration is not None:
            on_iteration(it)
        if converged:
            log.info("converged: %.3f%% of labels unchanged", 100 * (1 - changed))
            break
    write_history(history_path, history)  # also when a resumed run had nothing left to do
    return _result(best, history)


# ------------------------------------------------------------------- steps of run_disca
def _check_run(params: DiscaSettings, n: int) -> None:
    """Settings the schema cannot rule out, and enough particles for k_min."""
    if params.augment not in AUGMENT_MODES:
        raise ValueError(f"unknown augmentation {params.augment!r}; use one of {AUGMENT_MODES}")
    if params.init not in ("invariant", "random", "network"):
        raise ValueError(f"unknown DISCA init {params.init!r} (invariant, random or network)")
    if n < max(params.k_min, 2) + 1:
        raise ValueError(f"DISCA needs more particles than k_min; got {n}")


def _network(params: DiscaSettings, d: int, device) -> torch.nn.Module:
    """The YOPO network of the preset, or the pretrained encoder as backbone, checked against
    the box size."""
    if params.pretrained:
        from .encoder import EncoderClassifier

        model = EncoderClassifier.from_file(params.pretrained, n_classes=2, device=device)
        log.info("DISCA backbone: the pretrained encoder %s, fine-tuned in the EM loop",
                 params.pretrained)
        if d < model.min_box():
            raise TomoclustError(f"a {d}-voxel box is too small for the pretrained encoder "
                                 f"(at least {model.min_box()} voxels)")
        return model
    cfg = params.network()
    model = Yopo(cfg, n_classes=2).to(device)
    if d < model.min_box():
        raise TomoclustError(f"a {d}-voxel box is too small for this YOPO network ({cfg.blocks} "
                             f"blocks, input binning {cfg.input_binning}: at least "
                             f"{model.min_box()} voxels); use a smaller preset or fewer blocks")
    return model


def _train_iteration(model, opt: torch.optim.Optimizer, fit: MicroBatches, stack: np.ndarray,
                     labels: np.ndarray, it: int, params: DiscaSettings,
                     rng: np.random.Generator, wedge: torch.Tensor, device) -> float:
    """The M step of iteration ``it``: ``epochs_per_iteration`` epochs on the labels (each
    batch with its augmented copy, smoothed targets), then the learning-rate decay; returns the
    mean loss (NaN when no batch had two particles)."""
    par = distributed.current()
    k = int(labels.max()) + 1
    alpha = params.smoothing * params.smoothing_decay**it
    model.train()
    losses = []
    with par.wrap(model) as net:

        def step(part: np.ndarray, weight: float) -> float:
            x = to_tensor(stack, part, device)
            x = torch.cat([x, augment(x, params.augment, rng, wedge)])
            y = _smoothed(np.concatenate([labels[part], labels[part]]), k, alpha, device)
            loss = _loss(par.gather(net(par.shard(x[:, None]))), y, params.loss)
            value = float(loss.detach())
            check_finite(value, "the training loss", "DISCA", f"iteration {it}")
            (loss * weight).backward()
            return value

        for _ in range(params.epochs_per_iteration):
            for idx in batches(len(stack), params.batch_size, rng):
                if len(idx) < 2:
                    continue
                losses.append(fit(opt, step, idx))
    for g in opt.param_groups:
        g["lr"] *= params.lr_decay
    return float(np.mean(losses)) if losses else float("nan")


def _resume(state: dict, model, params: DiscaSettings, rng: np.random.Generator
            ) -> tuple[torch.optim.Optimizer, int, np.ndarray | None, list, dict]:
    """Restore a checkpointed run: the head's size, the weights, the optimiser and the random
    state; return (optimiser, first iteration to run, last labels, history, best so far)."""
    model.new_head(int(state["n_classes"]))
    model.load_state_dict(state["model"])
    opt = torch.optim.NAdam(model.parameters(), lr=params.lr)
    opt.load_state_dict(state["optimizer"])
    set_rng_state(rng, state["rng"])
    start = int(state["iteration"]) + 1
    prev = state["labels"].cpu().numpy() if state["labels"] is not None else None
    best = {k: (v.cpu().numpy() if isinstance(v, torch.Tensor) and k != "state_dict" else v)
            for k, v in state["best"].items()}
    log.info("resuming DISCA from checkpoint after iteration %d", start - 1)
    return opt, start, prev, list(state["history"]), best


def _invariant_start(stack: np.ndarray, params: DiscaSettings, device
                     ) -> tuple[np.ndarray, np.ndarray]:
    """The rotation-invariant shell spectra of the first labels and their reduced form."""
    from .invariant import invariant_features

    inv = invariant_features(stack, params.invariant_l_max, params.invariant_lowpass_vox,
                             radial=params.invariant_radial,
                             spectrum_components=params.invariant_components, device=device)
    check_finite(inv, "the invariant features of the first labels", "DISCA", "iteration 0")
    return inv, reduce_features(inv, params.pca_components, params.seed)


def _cluster_step(z: np.ndarray, k_values: list[int], params: DiscaSettings, it: int,
                  prev: np.ndarray | None
                  ) -> tuple[np.ndarray, np.ndarray, pd.DataFrame, float, float]:
    """The E step of iteration ``it``: a GMM with K by BIC on the reduced features ``z``
    (warm-started from the last labels ``prev``), labels matched to the last ones when K
    is unchanged. Returns (0-based labels, their posterior, the BIC table, the fraction of
    labels changed, the Davies-Bouldin index)."""
    gm, bic = gmm_bic(z, k_values, n_init=params.gmm_n_init, seed=params.seed + it,
                      warm_labels=prev)
    post = gm.predict_proba(z)
    labels = compact_labels(post.argmax(axis=1))
    prob = post.max(axis=1)
    k = int(labels.max()) + 1
    if prev is not None and k == int(prev.max()) + 1:
        labels = match_labels(labels, prev)
    changed = float(np.mean(labels != prev)) if prev is not None else 1.0
    return labels, prob, bic, changed, davies_bouldin_mahalanobis(z, labels)


def _checkpoint_state(it: int, model, opt: torch.optim.Optimizer, rng: np.random.Generator,
                      labels: np.ndarray, history: list, best: dict) -> dict:
    """What a checkpoint after iteration ``it`` holds (tensors, loadable weights-only)."""
    return {
        "iteration": it, "n_classes": model.n_classes, "model": model.state_dict(),
        "optimizer": opt.state_dict(), "rng": rng_state(rng),
        "labels": torch.as_tensor(labels), "history": history,
        "best": {kk: (torch.as_tensor(v) if isinstance(v, np.ndarray) else v)
                 for kk, v in best.items()},
    }


def _result(best: dict, history: list) -> DiscaResult:
    """The result at the best iteration (lowest Davies-Bouldin index on network features)."""
    return DiscaResult(
        features=np.asarray(best["features"], dtype=np.float32),
        labels=np.asarray(best["labels"]) + 1,
        probability=np.asarray(best["prob"]),
        state_dict=best["state_dict"],
        history=pd.DataFrame(history),
        best_iteration=int(best["iteration"]),
        bic=pd.DataFrame(best["bic"]),
    )


def params_from_config(cfg: dict, tilt_min: float = -60.0, tilt_max: float = 60.0
                       ) -> DiscaSettings:
    """DiscaSettings from the workflow's ``disca`` config section (unknown keys are an error)."""
    known = {f for f in DiscaSettings.__dataclass_fields__}
    extra = set(cfg) - known
    if extra:
        raise ValueError(f"unknown DISCA settings {sorted(extra)}")
    return DiscaSettings(**{**cfg, "tilt_min": tilt_min, "tilt_max": tilt_max})


def describe(params: DiscaSettings) -> dict:
    if params.pretrained:
        from .encoder import read_manifest

        man = read_manifest(params.pretrained)
        return {**asdict(params), "network": {"pretrained": man["sha256"],
                                              **man["architecture"]}}
    return {**asdict(params), "network": params.network().as_dict()}
