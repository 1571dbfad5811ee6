"""Pretraining corpus and recipe of the shipped encoder (:mod:`tomoclust.features.encoder`).

Corpus
    Densities (at the encoder's voxel size, in its box) of atomic models from
    ``resources/structures/`` *minus a held-out list*, plus procedurally generated
    pseudo-molecules: assemblies of anisotropic Gaussian subunits with cyclic (C_n) or
    dihedral (D_n) symmetry, rings, stacked-ring barrels, short helical filaments and
    asymmetric clusters, 5–40 nm across. Every shape is one class.

Imaging (on the fly, every view new)
    A uniformly random proper rotation and a uniform shift of up to ``max_shift`` voxels per
    axis (trilinear), optionally a cut-off neighbour shape in the box (crowding); the CTF at a
    defocus drawn from ``defocus_um``; a missing wedge with a tilt range drawn from
    ``tilt_ranges``; aitom-convention noise (white noise of variance var(density) / SNR, half
    before and half after the CTF, both through the wedge) at an SNR drawn log-uniformly from
    ``snr``; each box standardised. A fraction of "junk" boxes (noise only, or only a cut-off
    neighbour) forms one extra class.

Objective
    Supervised-contrastive loss (Khosla et al., NeurIPS 2020) on the unit-length embedding:
    each batch holds ``views`` independent views of ``shapes_per_batch`` shapes; views of the
    same shape are positives. Adam, cosine learning-rate decay, a checkpoint every
    ``checkpoint_every`` steps (a rerun resumes).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..numerics.ctf import ctf_grid
from ..numerics.fourier import wedge_mask
from ..numerics.rotations import random_rotations
from ..simulate.density import bounding_radius, fit_box, template_density
from . import distributed
from .encoder import EncoderSettings, SubtomoEncoder

log = logging.getLogger(__name__)

#: SHREC'21 complexes of similar size kept out of pretraining: the robustness suite's
#: evaluation classes, so that the encoder is measured on molecules it has never seen
HELD_OUT = ("1bxn", "1qvr", "3cf3", "1u6g", "3d2f")


@dataclass
class CorpusSettings:
    n_pseudo: int = 1500
    voxel_size: float = 12.0
    box: int = 32
    size_nm: tuple[float, float] = (5.0, 40.0)
    held_out: tuple[str, ...] = HELD_OUT
    seed: int = 0


@dataclass
class ImagingSettings:
    snr: tuple[float, float] = (0.03, 100.0)  # log-uniform, aitom convention
    defocus_um: tuple[float, ...] = (2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5.0, 5.5, 6.0)
    tilt_ranges: tuple[tuple[float, float], ...] = (
        (-45.0, 45.0), (-50.0, 50.0), (-55.0, 55.0), (-60.0, 60.0), (-60.0, 50.0),
        (-50.0, 60.0), (-60.0, 45.0))
    max_shift: float = 2.5  # voxels per axis
    crowding: float = 0.3  # fraction of views with a cut-off neighbour
    junk: float = 0.04  # fraction of views that are junk (noise or neighbour only)


@dataclass
class PretrainSettings:
    steps: int = 1500
    shapes_per_batch: int = 48
    views: int = 2
    lr: float = 2e-3
    weight_decay: float = 1e-4
    temperature: float = 0.1
    checkpoint_every: int = 50
    seed: int = 0
    encoder: EncoderSettings = field(default_factory=EncoderSettings)


# ------------------------------------------------------------------------- pseudo-molecules
def _blob(grid: np.ndarray, centre: np.ndarray, axes: np.ndarray, rot: np.ndarray) -> np.ndarray:
    """Anisotropic Gaussian of semi-axes ``axes`` (voxels, xyz), orientation ``rot``."""
    d = grid - centre  # (..., 3) xyz
    local = d @ rot  # coordinates in the blob frame
    return np.exp(-0.5 * np.sum((local / axes) ** 2, axis=-1))


def _rz(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]])


def pseudo_molecule(rng: np.random.Generator, box: int, voxel_size: float,
                    size_nm: tuple[float, float]) -> tuple[np.ndarray, str]:
    """One random pseudo-molecule density ``(box, box, box)`` and its kind."""
    ax = np.arange(box, dtype=np.float64) - box // 2
    zz, yy, xx = np.meshgrid(ax, ax, ax, indexing="ij")
    grid = np.stack([xx, yy, zz], axis=-1)
    lo, hi = math.log(size_nm[0]), math.log(size_nm[1])
    diam = math.exp(rng.uniform(lo, hi)) * 10.0 / voxel_size  # voxels, log-uniform
    radius = diam / 2
    kind = rng.choice(["cyclic", "dihedral", "ring", "barrel", "filament", "cluster"],
                      p=[0.2, 0.2, 0.12, 0.13, 0.13, 0.22])
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # centre, axes, rotation

    def rand_axes(scale: float) -> np.ndarray:
        return np.maximum(scale * rng.uniform(0.5, 1.4, 3), 0.9)

    if kind in ("cyclic", "dihedral", "ring", "barrel"):
        n = int(rng.integers(2, 9)) if kind in ("cyclic", "dihedral") else int(rng.integers(5, 15))
        layers = 1
        if kind == "barrel":
            layers = int(rng.integers(2, 5))
        r_ring = radius * rng.uniform(0.35, 0.8)
        sub = max(radius * rng.uniform(0.15, 0.4), 1.0)
        if kind in ("ring", "barrel"):
            sub = max(min(sub, 0.9 * math.pi * r_ring / n), 0.9)
        # an asymmetric unit of 1-3 blobs, repeated around z
        unit = []
        for _ in range(int(rng.integers(1, 4)) if kind in ("cyclic", "dihedral") else 1):
            off = rng.normal(0, sub * 0.6, 3)
            unit.append((np.array([r_ring, 0.0, 0.0]) + off, rand_axes(sub),
                         random_rotations(1, rng)[0]))
        height = radius * rng.uniform(0.3, 0.8)
        for layer in range(layers):
            z = (layer - (layers - 1) / 2) * 2 * sub * rng.uniform(0.9, 1.1) if layers > 1 else 0
            twist = rng.uniform(0, 2 * math.pi / n) if layer % 2 else 0.0
            for k in range(n):
                rot = _rz(2 * math.pi * k / n + twist)
                for c, a, r in unit:
                    cc = rot @ c + np.array([0, 0, z])
                    if kind == "dihedral":
                        cc = cc + np.array([0, 0, height / 2])
                    parts.append((cc, a, rot @ r))
                    if kind == "dihedral":  # the two-fold about x maps (x, y, z) to (x, -y, -z)
                        flip = np.diag([1.0, -1, -1])
                        parts.append((flip @ cc, a, flip @ rot @ r))
        if kind == "cyclic" and rng.random() < 0.6:  # a central stalk or cap along the axis
            parts.append((np.array([0, 0, rng.uniform(-1, 1) * height]),
                          np.array([sub, sub, sub * rng.uniform(1, 3)]), np.eye(3)))
    elif kind == "filament":
        n = int(rng.integers(4, 16))
        rise = diam / n
        twist = rng.uniform(0.3, 3.0)
        r_h = radius * rng.uniform(0.0, 0.3)
        sub = max(rise * rng.uniform(0.5, 1.0), 1.0)
        base = random_rotations(1, rng)[0]
        for k in range(n):
            a = twist * k
            parts.append((np.array([r_h * math.cos(a), r_h * math.sin(a),
                                    (k - (n - 1) / 2) * rise]), rand_axes(sub), _rz(a) @ base))
    else:  # asymmetric cluster
        n = int(rng.integers(2, 13))
        sub = max(radius / (n ** (1 / 3)) * rng.uniform(0.5, 0.9), 1.0)
        for _ in range(n):
            v = rng.normal(size=3)
            c = v / np.linalg.norm(v) * radius * rng.uniform(0, 0.75)
            parts.append((c, rand_axes(sub), random_rotations(1, rng)[0]))
    dens = np.zeros((box, box, box))
    for c, a, r in parts:
        dens += _blob(grid, c, a, r)
    # centre on the centre of mass (as atomic models are)
    m = dens.sum()
    com = np.array([(dens * g).sum() / m for g in (zz, yy, xx)])
    shift = np.round(-com).astype(int)
    dens = np.roll(dens, tuple(shift), axis=(0, 1, 2))
    return dens.astype(np.float32), str(kind)


def build_corpus(structures_dir: str | Path, params: CorpusSettings) -> dict:
    """Densities of the corpus: ``{"density": (n, b, b, b), "names": [...], "kinds": [...]}``."""
    structures = sorted(Path(structures_dir).glob("*.pdb.gz")) + sorted(
        Path(structures_dir).glob("*.cif.gz"))
    dens, names, kinds = [], [], []
    for p in structures:
        name = p.name.split(".")[0]
        if name in params.held_out:
            continue
        d = fit_box(template_density(p, params.voxel_size), params.box)
        dens.append(d / max(float(d.max()), 1e-12))
        names.append(name)
        kinds.append("atomic")
        log.info("corpus: atomic model %s (radius %.1f voxels)", name, bounding_radius(d))
    rng = np.random.default_rng([params.seed, 7])
    t0 = time.time()
    for i in range(params.n_pseudo):
        d, kind = pseudo_molecule(rng, params.box, params.voxel_size, params.size_nm)
        dens.append(d / max(float(d.max()), 1e-12))
        names.append(f"pseudo{i:05d}")
        kinds.append(kind)
        if (i + 1) % 250 == 0:
            log.info("corpus: %d / %d pseudo-molecules (%.0f s)", i + 1, params.n_pseudo,
                     time.time() - t0)
    return {"density": np.stack(dens).astype(np.float32), "names": names, "kinds": kinds}


# -------------------------------------------------------------------------------- imaging
class Imager:
    """Turns canonical densities into simulated subtomograms (see module docstring), torch."""

    def __init__(self, box: int, voxel_size: float, params: ImagingSettings, device="cpu"):
        self.box, self.p, self.device = box, params, device
        shape = (box, box, box)
        self.ctfs = torch.as_tensor(np.stack([
            ctf_grid(shape, voxel_size, rfft=True, defocus_um=d) for d in params.defocus_um]),
            device=device)
        self.wedges = torch.as_tensor(np.stack([
            wedge_mask(shape, a, b, rfft=True) for a, b in params.tilt_ranges]), device=device)
        ax = torch.arange(box, dtype=torch.float32, device=device) - box // 2
        zz, yy, xx = torch.meshgrid(ax, ax, ax, indexing="ij")
        self.pos = torch.stack([xx, yy, zz], dim=-1).reshape(-1, 3)

    def place(self, dens: torch.Tensor, mats: torch.Tensor, shifts: torch.Tensor
              ) -> torch.Tensor:
        """``out(R p + t) = dens(p)`` for each ``(b, b, b)`` density (trilinear, zero fill)."""
        n, d = dens.shape[0], self.box
        c = float(d // 2)
        src = torch.einsum("nji,npj->npi", mats, self.pos[None] - shifts[:, None]) + c
        grid = (2.0 * src / (d - 1) - 1.0).reshape(n, d, d, d, 3)
        return F.grid_sample(dens[:, None], grid, mode="bilinear", padding_mode="zeros",
                             align_corners=True)[:, 0]

    def __call__(self, dens: torch.Tensor, rng: np.random.Generator,
                 neighbours: torch.Tensor | None = None,
                 junk: np.ndarray | None = None) -> torch.Tensor:
        n, b, p, dev = dens.shape[0], self.box, self.p, self.device
        mats = torch.as_tensor(random_rotations(n, rng), dtype=torch.float32, device=dev)
        shifts = torch.as_tensor(rng.uniform(-p.max_shift, p.max_shift, (n, 3)),
                                 dtype=torch.float32, device=dev)
        raw = self.place(dens, mats, shifts)
        if junk is not None and junk.any():
            raw[torch.as_tensor(junk, device=dev)] = 0
        if neighbours is not None:
            crowd = rng.random(n) < p.crowding
            if junk is not None:
                crowd |= junk & (rng.random(n) < 0.5)
            if crowd.any():
                idx = np.flatnonzero(crowd)
                v = rng.normal(size=(len(idx), 3))
                v /= np.linalg.norm(v, axis=1, keepdims=True)
                dist = rng.uniform(0.45, 0.75, len(idx)) * b
                sh = torch.as_tensor(v * dist[:, None], dtype=torch.float32, device=dev)
                nm = torch.as_tensor(random_rotations(len(idx), rng), dtype=torch.float32,
                                     device=dev)
                raw[torch.as_tensor(idx, device=dev)] += self.place(neighbours[idx], nm, sh)
        var = raw.var(dim=(1, 2, 3))
        var = torch.where(var > 0, var, var[var > 0].mean() if (var > 0).any() else
                          torch.ones_like(var))
        lo, hi = math.log(p.snr[0]), math.log(p.snr[1])
        snr = torch.as_tensor(np.exp(rng.uniform(lo, hi, n)), dtype=torch.float32, device=dev)
        sigma = torch.sqrt(var / snr).view(n, 1, 1, 1)
        ctf = self.ctfs[torch.as_tensor(rng.integers(0, len(self.ctfs), n), device=dev)]
        wedge = self.wedges[torch.as_tensor(rng.integers(0, len(self.wedges), n), device=dev)]
        gen = torch.Generator(device=dev).manual_seed(int(rng.integers(2**62)))
        pre = torch.randn(raw.shape, generator=gen, device=dev) * sigma / math.sqrt(2)
        post = torch.randn(raw.shape, generator=gen, device=dev) * sigma / math.sqrt(2)
        dims = (-3, -2, -1)
        spec = (torch.fft.rfftn(raw + pre, dim=dims) * ctf + torch.fft.rfftn(post, dim=dims))
        out = torch.fft.irfftn(spec * wedge, s=(b, b, b), dim=dims)
        mu = out.mean(dim=dims, keepdim=True)
        sd = out.std(dim=dims, keepdim=True).clamp_min(1e-6)
        return (out - mu) / sd


# ------------------------------------------------------------------------------- training
def supcon_loss(z: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
    """Supervised-contrastive loss of unit vectors ``z`` (n, k) with integer ``labels``."""
    n = z.shape[0]
    sim = z @ z.T / temperature
    self_mask = torch.eye(n, dtype=torch.bool, device=z.device)
    sim = sim.masked_fill(self_mask, -1e9)
    log_prob = sim - torch.logsumexp(sim, dim=1, keepdim=True)
    pos = (labels[:, None] == labels[None, :]) & ~self_mask
    n_pos = pos.sum(1)
    has = n_pos > 0
    mean_log_prob = (log_prob * pos).sum(1)[has] / n_pos[has]
    return -mean_log_prob.mean()


def sample_batch(corpus: torch.Tensor, params: PretrainSettings, imaging: ImagingSettings,
                 imager: Imager, rng: np.random.Generator, weights: np.ndarray | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """``views`` views of ``shapes_per_batch`` shapes drawn with probabilities ``weights``
    (+ junk views): boxes and labels."""
    n_shapes = corpus.shape[0]
    ids = rng.choice(n_shapes, params.shapes_per_batch, replace=False, p=weights)
    ids = np.repeat(ids, params.views)
    junk = rng.random(len(ids)) < imaging.junk
    labels = np.where(junk, n_shapes, ids)  # every junk view: one extra class
    neighbours = corpus[torch.as_tensor(rng.integers(0, n_shapes, len(ids)))]
    x = imager(corpus[torch.as_tensor(ids)], rng, neighbours=neighbours, junk=junk)
    return x, torch.as_tensor(labels)


def train_encoder(corpus: np.ndarray, params: PretrainSettings, imaging: ImagingSettings,
                  checkpoint_path: str | Path | None = None, device="cpu",
                  weights: np.ndarray | None = None,
                  on_step=None, processes: int = 1) -> tuple[SubtomoEncoder, list[dict]]:
    """Supervised-contrastive pretraining (see module docstring); resumes from a checkpoint.
    ``weights``: relative sampling weight of each shape (uniform when None). ``processes``
    > 1 trains data-parallel (:mod:`tomoclust.features.distributed`): every process images
    the step's views, embeds its share of them, and the loss is taken over all the views."""
    return distributed.run(_train_encoder, processes, str(device), corpus, params, imaging,
                           checkpoint_path=checkpoint_path, weights=weights, on_step=on_step,
                           main_only=("on_step",))


def _train_encoder(corpus: np.ndarray, params: PretrainSettings, imaging: ImagingSettings, *,
                   checkpoint_path: str | Path | None, device, weights: np.ndarray | None,
                   on_step) -> tuple[SubtomoEncoder, list[dict]]:
    par = distributed.current()
    if weights is not None:
        weights = np.asarray(weights, dtype=np.float64) / np.sum(weights)
    torch.manual_seed(params.seed)
    rng = np.random.default_rng([params.seed, 11])
    cfg = params.encoder
    model = SubtomoEncoder(cfg).to(device)
    par.decorrelate(params.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=params.lr, weight_decay=params.weight_decay)
    dens = torch.as_tensor(corpus, device=device)
    imager = Imager(cfg.box, cfg.voxel_size, imaging, device)
    start, history = 0, []
    ck = Path(checkpoint_path) if checkpoint_path else None
    if ck is not None and ck.exists():
        from .train import set_rng_state

        state = torch.load(ck, map_location=device, weights_only=True)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        set_rng_state(rng, state["rng"])
        start = int(state["step"]) + 1
        import json

        history = json.loads(state["history"])
        log.info("resuming pretraining after step %d", start - 1)
    t0, seen = time.time(), 0
    with par.wrap(model) as net:
        for step in range(start, params.steps):
            lr = 0.5 * params.lr * (1 + math.cos(math.pi * step / params.steps))
            warm = min(1.0, (step + 1) / 50)
            for g in opt.param_groups:
                g["lr"] = lr * warm
            model.train()
            with torch.no_grad():
                x, y = sample_batch(dens, params, imaging, imager, rng, weights)
            z = par.gather(net(par.shard(x[:, None])))
            loss = supcon_loss(z, y.to(device), params.temperature)
            opt.zero_grad()
            loss.backward()
            opt.step()
            seen += len(y)
            history.append({"step": step, "lr": lr * warm, "loss": float(loss.detach())})
            if step % 10 == 0:
                rate = seen / max(time.time() - t0, 1e-9)
                recent = np.mean([h["loss"] for h in history[-10:]])
                log.info("step %d/%d: loss %.4f (mean of last 10 %.4f), lr %.2e (%.0f boxes/s)",
                         step, params.steps, history[-1]["loss"], recent, lr * warm, rate)
            if ck is not None and ((step + 1) % params.checkpoint_every == 0
                                   or step + 1 == params.steps):
                import json

                from ..formats.atomic import atomic_output
                from .train import rng_state

                state = {"step": step, "model": model.state_dict(), "optimizer": opt.state_dict(),
                         "rng": rng_state(rng), "history": json.dumps(history)}  # every rank
                if par.is_main:
                    with atomic_output(ck) as tmp:
                        torch.save(state, tmp)
            if on_step is not None:
                on_step(step, model)
    model.eval()
    return model, history


def params_dict(*objs) -> dict:
    return {type(o).__name__: asdict(o) for o in objs}
