"""Few-shot classification of subtomograms: ProtoNet3D and ProtoNet-CE (Li et al., PLOS CB 2020).

ProtoNet3D
    A 3D CNN encoder, ``blocks`` × [Conv3d ``width`` @3³ pad 1 → BatchNorm → ReLU → MaxPool 2]
    → flatten, embeds every subtomogram. A class prototype is the mean embedding of its support
    examples; a query's logits are minus its squared Euclidean distances to the prototypes
    (divided by ``temperature``), so a query identical to a prototype is assigned to it.
ProtoNet-CE
    Adds a FEAT-style set-to-set adaptation: single-head self-attention (residual + LayerNorm)
    over the set [prototypes, query], run for every query. The logits mix the plain and the
    adapted squared distances, ``-((1 - β) d_plain + β d_adapted) / T`` with β =
    ``ce_weight``. The attention sees *detached* embeddings, so the encoder is trained through
    the plain term only and the attention learns to re-weight on top of it. Self-attention
    without positional encoding is equivariant to the order of the prototypes.

Training is episodic: each episode draws ``way`` classes of a labelled (simulated) set,
``shot`` support and ``query`` query examples per class (disjoint), and minimises the
cross-entropy of the query logits. Adam, learning rate halved every ``lr_step`` epochs;
checkpoints after every epoch, resumable (:class:`tomoclust.features.train.Checkpoint`).

At inference every particle gets a class (1-based, in the order of the support classes), a
confidence (its softmax probability) and its embedding (the feature the shared clustering can
also use).

Support sets given by the user are STAR files validated by
:func:`tomoclust.features.fewshot_support.load_support_star` (no torch there, nor here in the
simulation of labelled sets, :mod:`tomoclust.simulate.labelled_sets`), so CPU-only steps need no
torch.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from .. import TomoclustError
from . import distributed
from .train import (
    Checkpoint,
    check_finite,
    resume_epochs,
    rng_state,
    to_tensor,
    write_history,
)

log = logging.getLogger(__name__)

VARIANTS = ("protonet3d", "protonet_ce")
#: Encoder width (channels of every block) per preset; "published" is the paper's size.
PRESETS = {"published": 64, "light": 16, "tiny": 4}


# ----------------------------------------------------------------------------- parameters
@dataclass
class FewShotSettings:
    variant: str = "protonet3d"
    preset: str = "light"
    width: int | None = None  # overrides the preset
    blocks: int = 4
    way: int | None = None  # classes per training episode; None: every training class (≤ 5)
    shot: int = 5
    query: int = 15
    epochs: int = 20
    episodes_per_epoch: int = 50
    lr: float = 1e-3
    lr_step: int = 20  # epochs between learning-rate halvings
    lr_gamma: float = 0.5
    temperature: float = 1.0
    ce_weight: float = 0.5  # β: share of the adapted distance in ProtoNet-CE's logits
    augment: bool = True  # random 180° turns that keep the missing wedge
    pretrained: str | None = None  # encoder weights (features.encoder); None: ProtoEncoder3D
    finetune: bool = False  # with pretrained: update the encoder in episodic training too
    seed: int = 0

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise TomoclustError(f"few-shot variant must be one of {VARIANTS}, "
                                 f"not {self.variant!r}")
        if self.preset not in PRESETS:
            raise TomoclustError(f"few-shot preset must be one of {sorted(PRESETS)}, "
                                 f"not {self.preset!r}")
        if not 0.0 <= self.ce_weight <= 1.0:
            raise TomoclustError(f"few-shot ce_weight must be in [0, 1], got {self.ce_weight}")

    @property
    def channels(self) -> int:
        return int(self.width or PRESETS[self.preset])


def params_from_config(cfg: dict, variant: str) -> FewShotSettings:
    """The model/training subset of the ``fewshot`` config section for one variant."""
    keys = {f for f in FewShotSettings.__dataclass_fields__ if f != "variant"}
    return FewShotSettings(variant=variant, **{k: v for k, v in cfg.items() if k in keys})


def describe(params: FewShotSettings) -> dict:
    return {**asdict(params), "channels": params.channels}


# ---------------------------------------------------------------------------------- model
class ProtoEncoder3D(nn.Module):
    """``blocks`` × [Conv3d @3³ pad 1 → BatchNorm → ReLU → MaxPool 2] → flatten."""

    def __init__(self, box: int, width: int = 64, blocks: int = 4):
        super().__init__()
        if box < 2**blocks:
            raise TomoclustError(f"few-shot encoder: a {box}³ box is too small for {blocks} "
                                 f"pooling blocks (needs at least {2**blocks}³)")
        layers: list[nn.Module] = []
        cin = 1
        for _ in range(blocks):
            layers += [nn.Conv3d(cin, width, 3, padding=1), nn.BatchNorm3d(width), nn.ReLU(),
                       nn.MaxPool3d(2)]
            cin = width
        self.net = nn.Sequential(*layers)
        side = box
        for _ in range(blocks):
            side //= 2
        self.out_dim = width * side**3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 4:
            x = x[:, None]
        return self.net(x).flatten(1)


class PretrainedProtoEncoder(nn.Module):
    """The shipped encoder (:mod:`tomoclust.features.encoder`) as a few-shot encoder: its
    unit-length embedding scaled by ``1 / sqrt(2 τ)``, so that the squared distance of two
    embeddings, ``(1 - cos) / τ``, is the similarity the encoder was trained with (τ = 0.1)."""

    def __init__(self, path: str, tau: float = 0.1):
        super().__init__()
        from .encoder import EncoderSettings, SubtomoEncoder, read_manifest

        self.net = SubtomoEncoder(EncoderSettings.from_dict(read_manifest(path)["architecture"]))
        self.scale = 1.0 / math.sqrt(2 * tau)
        self.out_dim = self.net.feature_dim

    def load_pretrained(self, path: str) -> None:
        from .encoder import load_encoder

        enc, _ = load_encoder(path)
        self.net.load_state_dict(enc.state_dict())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 4:
            x = x[:, None]
        return self.net(x) * self.scale


class SetAttention(nn.Module):
    """Single-head scaled dot-product self-attention over a set, residual + LayerNorm.

    Input and output ``(batch, set size, dim)``. No positional encoding: permuting the set
    permutes the output the same way.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.q = nn.Linear(dim, dim, bias=False)
        self.k = nn.Linear(dim, dim, bias=False)
        self.v = nn.Linear(dim, dim, bias=False)
        self.out = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim)
        self.scale = 1.0 / math.sqrt(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        att = torch.softmax(self.q(x) @ self.k(x).transpose(-1, -2) * self.scale, dim=-1)
        return self.norm(x + self.out(att @ self.v(x)))


def prototypes(emb: torch.Tensor, labels: torch.Tensor, n_class: int) -> torch.Tensor:
    """Mean embedding of each class ``0 .. n_class-1``; ``(n_class, dim)``."""
    onehot = F.one_hot(labels.long(), n_class).to(emb.dtype)  # (n, C)
    counts = onehot.sum(0)
    if bool((counts == 0).any()):
        missing = torch.nonzero(counts == 0).flatten().tolist()
        raise TomoclustError(f"prototypes: no support example for class index(es) {missing}")
    return (onehot.T @ emb) / counts[:, None]


def squared_distances(q: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """``(..., n, d)`` and ``(..., c, d)`` → ``(..., n, c)`` squared Euclidean distances."""
    return ((q.unsqueeze(-2) - p.unsqueeze(-3)) ** 2).sum(-1)


class ProtoNet(nn.Module):
    """ProtoNet3D (``variant="protonet3d"``) or ProtoNet-CE (``"protonet_ce"``)."""

    def __init__(self, box: int, params: FewShotSettings):
        super().__init__()
        self.variant = params.variant
        self.encoder = (PretrainedProtoEncoder(params.pretrained) if params.pretrained
                        else ProtoEncoder3D(box, params.channels, params.blocks))
        self.attention = (SetAttention(self.encoder.out_dim)
                          if params.variant == "protonet_ce" else None)
        self.temperature = float(params.temperature)
        self.ce_weight = float(params.ce_weight)

    @property
    def dim(self) -> int:
        return self.encoder.out_dim

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def logits(self, protos: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        """Logits ``(n_query, n_class)`` of query embeddings against prototypes."""
        d_plain = squared_distances(query, protos)
        if self.attention is None:
            return -d_plain / self.temperature
        n, c = query.shape[0], protos.shape[0]
        pd_, qd = protos.detach(), query.detach()
        s = torch.cat([pd_.unsqueeze(0).expand(n, c, -1), qd.unsqueeze(1)], dim=1)
        a = self.attention(s)  # (n, c + 1, dim)
        d_adapt = ((a[:, c:, :] - a[:, :c, :]) ** 2).sum(-1)  # (n, c)
        mix = (1.0 - self.ce_weight) * d_plain + self.ce_weight * d_adapt
        return -mix / self.temperature

    def episode_logits(self, support_x: torch.Tensor, support_y: torch.Tensor, n_class: int,
                       query_x: torch.Tensor) -> torch.Tensor:
        """Embed support and query together (one BatchNorm batch) and score the queries."""
        emb = self.embed(torch.cat([support_x, query_x]))
        ns = support_x.shape[0]
        return self.logits(prototypes(emb[:ns], support_y, n_class), emb[ns:])


# -------------------------------------------------------------------------------- episodes
@dataclass
class Episode:
    classes: np.ndarray  # the original labels of the episode's classes, in episode order
    support: np.ndarray  # indices into the data set, (way * shot,)
    support_y: np.ndarray  # episode class index 0..way-1
    query: np.ndarray  # (way * query,)
    query_y: np.ndarray


def sample_episode(labels: np.ndarray, way: int, shot: int, query: int,
                   rng: np.random.Generator) -> Episode:
    """An N-way K-shot episode with Q queries per class; support and query are disjoint.

    Only classes with at least ``shot + query`` examples are eligible.
    """
    labels = np.asarray(labels)
    values, counts = np.unique(labels, return_counts=True)
    eligible = values[counts >= shot + query]
    if len(eligible) < way:
        raise TomoclustError(
            f"episode of {way} ways × ({shot} shots + {query} queries): only {len(eligible)} "
            f"class(es) have {shot + query} examples (class sizes: "
            f"{dict(zip(values.tolist(), counts.tolist(), strict=True))})")
    classes = rng.choice(eligible, size=way, replace=False)
    sup, qry = [], []
    for c in classes:
        idx = rng.choice(np.flatnonzero(labels == c), size=shot + query, replace=False)
        sup.append(idx[:shot])
        qry.append(idx[shot:])
    return Episode(classes, np.concatenate(sup), np.repeat(np.arange(way), shot),
                   np.concatenate(qry), np.repeat(np.arange(way), query))


# -------------------------------------------------------------------------------- training
def wedge_preserving_turns(x: torch.Tensor, rng: np.random.Generator,
                           symmetric_wedge: bool = True) -> torch.Tensor:
    """Turn each ``(b, 1, z, y, x)`` volume by a random 180° rotation that keeps a missing
    wedge about y: identity or a turn about y; with a symmetric tilt range
    (``tilt_min = -tilt_max``) also turns about x or z.

    A 180° turn about y flips (kz, kx) together and maps every Fourier line onto itself
    modulo Friedel symmetry, so any wedge about y is kept; a turn about x or z mirrors the
    tilt range (θ → −θ), which keeps only a symmetric one. Proper rotations only (no
    mirror images); exact on the grid (no interpolation) about the centre ``(d - 1) / 2``,
    which for even boxes is half a voxel off ``d // 2`` per axis, well within picking error.
    """
    kinds = rng.integers(0, 4 if symmetric_wedge else 2, size=x.shape[0])
    out = x.clone()
    # kind 1: about y (flip z, x); 2: about x (flip z, y); 3: about z (flip y, x)
    for kind, dims in ((1, (-3, -1)), (2, (-3, -2)), (3, (-2, -1))):
        sel = np.flatnonzero(kinds == kind)
        if len(sel):
            idx = torch.as_tensor(sel, device=x.device)
            out[idx] = torch.flip(x[idx], dims)
    return out


@dataclass
class TrainResult:
    model: ProtoNet
    history: pd.DataFrame


def train_protonet(stack: np.ndarray, labels: np.ndarray, params: FewShotSettings, device,
                   checkpoint: Checkpoint | None = None, history_path=None,
                   on_epoch: Callable[[int], None] | None = None,
                   tilt_range: tuple[float, float] = (-60.0, 60.0),
                   processes: int = 1) -> TrainResult:
    """Episodic training on a labelled ``(n, d, d, d)`` stack (labels: any integers).

    ``tilt_range`` is the training data's: it decides which 180° turns augment it
    (:func:`wedge_preserving_turns`). ``processes`` > 1 trains data-parallel: the boxes of
    each episode (support and query) are embedded by the processes in shares, the episode's
    loss is computed on them all (:mod:`tomoclust.features.distributed`).
    """
    return distributed.run(_train_protonet, processes, str(device), stack, labels, params,
                           checkpoint=checkpoint, history_path=history_path, on_epoch=on_epoch,
                           tilt_range=tilt_range, main_only=("history_path", "on_epoch"))


def _train_protonet(stack: np.ndarray, labels: np.ndarray, params: FewShotSettings, *, device,
                    checkpoint: Checkpoint | None, history_path,
                    on_epoch: Callable[[int], None] | None,
                    tilt_range: tuple[float, float]) -> TrainResult:
    par = distributed.current()
    symmetric = abs(float(tilt_range[0]) + float(tilt_range[1])) < 1e-6
    labels = np.asarray(labels)
    n_train_classes = len(np.unique(labels))
    way = int(params.way) if params.way else min(n_train_classes, 5)
    if way < 2:
        raise TomoclustError(f"few-shot training needs at least 2 classes, got {n_train_classes}")
    torch.manual_seed(params.seed)
    rng = np.random.default_rng(params.seed)
    model = ProtoNet(stack.shape[-1], params).to(device)
    par.decorrelate(params.seed)
    frozen = bool(params.pretrained) and not params.finetune
    if params.pretrained:
        model.encoder.load_pretrained(params.pretrained)
        log.info("few-shot encoder: the pretrained %s (%s)", params.pretrained,
                 "fine-tuned episodically" if params.finetune else "frozen")
    if frozen:
        for p in model.encoder.parameters():
            p.requires_grad_(False)
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable:  # ProtoNet3D on a frozen pretrained encoder: nothing to train
        log.info("nothing to train: the prototypes use the pretrained embedding as it is")
        model.eval()
        write_history(history_path, [])
        return TrainResult(model, pd.DataFrame(columns=["epoch", "loss", "episode_accuracy"]))
    opt = torch.optim.Adam(trainable, lr=params.lr)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=params.lr_step, gamma=params.lr_gamma)
    start, history, state = resume_epochs(checkpoint, device, model, opt, rng, sched)
    if state is not None:
        log.info("resuming few-shot training from checkpoint after epoch %d", start - 1)
    # the encoder runs on each process's share of the episode's boxes; the prototypes, the
    # set attention and the loss on all of them, in every process
    replicated = [p for n, p in model.named_parameters()
                  if p.requires_grad and not n.startswith("encoder.")]
    with par.wrap(model.encoder) as encoder:
        for ep in range(start, params.epochs):
            t0 = time.time()
            model.train()
            if frozen:
                model.encoder.eval()  # keep the pretrained BatchNorm statistics
            tot_loss, tot_acc = 0.0, 0.0
            for _ in range(params.episodes_per_epoch):
                e = sample_episode(labels, way, params.shot, params.query, rng)
                xs = to_tensor(stack, e.support, device)[:, None]
                xq = to_tensor(stack, e.query, device)[:, None]
                if params.augment:
                    xs = wedge_preserving_turns(xs, rng, symmetric)
                    xq = wedge_preserving_turns(xq, rng, symmetric)
                ys = torch.as_tensor(e.support_y, device=device)
                yq = torch.as_tensor(e.query_y, device=device)
                opt.zero_grad()
                emb = par.gather(encoder(par.shard(torch.cat([xs, xq]))))
                ns = xs.shape[0]
                logits = model.logits(prototypes(emb[:ns], ys, way), emb[ns:])
                loss = F.cross_entropy(logits, yq)
                check_finite(float(loss.detach()), "the training loss",
                             f"few-shot {params.variant}", f"epoch {ep}")
                loss.backward()
                par.average_gradients(replicated)
                opt.step()
                tot_loss += float(loss.detach())
                tot_acc += float((logits.argmax(1) == yq).float().mean())
            sched.step()
            k = max(params.episodes_per_epoch, 1)
            history.append({"epoch": ep, "loss": tot_loss / k, "episode_accuracy": tot_acc / k,
                            "lr": opt.param_groups[0]["lr"], "seconds": time.time() - t0})
            log.info("few-shot %s epoch %d: loss %.4f, episode accuracy %.3f (%.1f s)",
                     params.variant, ep, history[-1]["loss"], history[-1]["episode_accuracy"],
                     history[-1]["seconds"])
            write_history(history_path, history)
            if checkpoint is not None:
                checkpoint.save({"epoch": ep, "model": model.state_dict(),
                                 "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                                 "rng": rng_state(rng), "history": history})
            if on_epoch is not None:
                on_epoch(ep)
    write_history(history_path, history)
    model.eval()
    return TrainResult(model, pd.DataFrame(history))


# ------------------------------------------------------------------------------- inference
@torch.inference_mode()
def embed_stack(model: ProtoNet, stack: np.ndarray, device, batch_size: int = 128
                ) -> torch.Tensor:
    """Embeddings ``(n, dim)`` of a stack, in eval mode, on ``device``."""
    model.eval()
    out = [model.embed(to_tensor(stack, np.arange(a, min(a + batch_size, len(stack))),
                                 device)[:, None])
           for a in range(0, len(stack), batch_size)]
    if not out:
        return torch.zeros((0, model.dim), device=device)
    return torch.cat(out)


@dataclass
class Prediction:
    features: np.ndarray  # (n, dim) float32 embeddings
    labels: np.ndarray  # (n,) 1-based class numbers of the support classes
    confidence: np.ndarray  # (n,) softmax probability of the assigned class
    probabilities: np.ndarray  # (n, n_class)


@torch.inference_mode()
def classify_embeddings(model: ProtoNet, support: torch.Tensor, support_y: np.ndarray,
                        n_class: int, query: torch.Tensor, batch_size: int = 512
                        ) -> np.ndarray:
    """Class probabilities ``(n_query, n_class)`` from embeddings (support_y: 0-based)."""
    ys = torch.as_tensor(np.asarray(support_y), device=support.device)
    protos = prototypes(support, ys, n_class)
    out = [torch.softmax(model.logits(protos, query[a:a + batch_size]), dim=1)
           for a in range(0, len(query), batch_size)]
    if not out:
        return np.zeros((0, n_class), dtype=np.float32)
    return torch.cat(out).float().cpu().numpy()


def classify(model: ProtoNet, support_stack: np.ndarray, support_labels: np.ndarray,
             stack: np.ndarray, device, batch_size: int = 128,
             chunks: Sequence[str] | None = None) -> Prediction:
    """Classify every particle of ``stack`` against a support set.

    ``support_labels`` are 1-based class numbers ``1..C``; every class needs an example.
    With ``chunks``, the particles' embeddings are gathered from the files of jobs that
    computed them in shares (:mod:`tomoclust.features.chunks`).
    """
    support_labels = np.asarray(support_labels, dtype=np.int64)
    n_class = int(support_labels.max())
    sup = embed_stack(model, support_stack, device, batch_size)
    if chunks:
        from .chunks import gather

        emb = torch.as_tensor(gather(chunks, len(stack)), device=sup.device)
        if emb.shape[1] != model.dim:
            raise TomoclustError(f"embedding chunks hold {emb.shape[1]} columns, the network "
                                 f"gives {model.dim}")
    else:
        emb = embed_stack(model, stack, device, batch_size)
    prob = classify_embeddings(model, sup, support_labels - 1, n_class, emb)
    lab = prob.argmax(1)
    return Prediction(emb.float().cpu().numpy().astype(np.float32), lab + 1,
                      prob[np.arange(len(lab)), lab].astype(np.float64), prob)


def evaluate_episodes(model: ProtoNet, stack: np.ndarray, labels: np.ndarray, way: int,
                      shot: int, query: int, n_episodes: int, seed: int, device
                      ) -> np.ndarray:
    """Accuracy of each of ``n_episodes`` test episodes (the paper protocol).

    Every volume is embedded once in eval mode (BatchNorm uses its running statistics, so an
    embedding does not depend on the batch), then episodes are drawn over the embeddings.
    """
    emb = embed_stack(model, stack, device)
    rng = np.random.default_rng(seed)
    accs = []
    for _ in range(n_episodes):
        e = sample_episode(labels, way, shot, query, rng)
        prob = classify_embeddings(model, emb[e.support], e.support_y, way, emb[e.query])
        accs.append(float((prob.argmax(1) == e.query_y).mean()))
    return np.array(accs)


def load_trained(model_path: str, training_info: dict, stack_path: str, box: int,
                 voxel_size: float, variant: str, device) -> tuple[ProtoNet, FewShotSettings]:
    """A trained ProtoNet (``model_path``, its training run's info.json as
    ``training_info``) on ``device``; its boxes must be those of the particles
    (``box``³ at ``voxel_size`` Å, from ``stack_path``)."""
    if int(training_info["box"]) != box or abs(float(training_info["voxel_size"])
                                                 - voxel_size) > 1e-3:
        raise TomoclustError(
            f"{model_path} was trained on {training_info['box']}³ boxes at "
            f"{training_info['voxel_size']} Å but {stack_path} holds {box}³ at {voxel_size} Å")
    params = params_from_config(dict(training_info["params"]), variant)
    model = ProtoNet(box, params).to(device)
    model.load_state_dict(torch.load(model_path, map_location=device, weights_only=True))
    return model, params
