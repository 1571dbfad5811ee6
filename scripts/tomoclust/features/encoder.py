"""The shipped pretrained subtomogram encoder: network, weights file + manifest, embedding.

A small 3D CNN maps a subtomogram (any side ≥ 16 voxels; trained on 32³ boxes at 12 Å) to a
unit-length embedding in which boxes of the same molecule lie close together whatever its
orientation, position in the box (a few voxels), defocus, tilt range and noise level. It is
trained once, by :mod:`tomoclust.features.pretrain` (supervised-contrastive loss over hundreds of
simulated shapes), and shipped as a ``state_dict`` in ``resources/models/`` beside a JSON
manifest (name, SHA-256, architecture, training command, corpus, date, commit, measured
figures). Loading checks the SHA-256 and uses ``weights_only=True``: a missing, truncated or
foreign file is a clear error naming it.

Network: input standardised per box → Conv3d 1→c1 (stride 2) → Conv c1→c2 → MaxPool →
Conv c2→c3 → MaxPool → Conv c3→c4, every conv 3³ + BatchNorm + ReLU → global average and max
pooling → Linear → BatchNorm → ReLU → Linear(embed_dim) → L2 normalisation.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import TomoclustError

log = logging.getLogger(__name__)

#: the shipped model, relative to the workflow's base directory
DEFAULT_MODEL = "resources/models/encoder-v1.pt"


@dataclass
class EncoderSettings:
    channels: tuple[int, int, int, int] = (16, 32, 64, 64)
    hidden: int = 128
    embed_dim: int = 64
    voxel_size: float = 12.0  # Å; the voxel size the network was trained at
    box: int = 32  # the training box side

    def as_dict(self) -> dict:
        d = asdict(self)
        d["channels"] = list(self.channels)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> EncoderSettings:
        d = dict(d)
        d["channels"] = tuple(d["channels"])
        return cls(**d)


def _conv(c_in: int, c_out: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv3d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm3d(c_out), nn.ReLU(inplace=True)]


class SubtomoEncoder(nn.Module):
    """``(n, 1, d, d, d)`` → ``(n, embed_dim)`` unit vectors (see module docstring)."""

    MIN_BOX = 16

    def __init__(self, cfg: EncoderSettings | None = None):
        super().__init__()
        self.cfg = cfg or EncoderSettings()
        c1, c2, c3, c4 = self.cfg.channels
        self.conv = nn.Sequential(*_conv(1, c1, 2), *_conv(c1, c2), nn.MaxPool3d(2),
                                  *_conv(c2, c3), nn.MaxPool3d(2), *_conv(c3, c4))
        self.fc = nn.Sequential(nn.Linear(2 * c4, self.cfg.hidden),
                                nn.BatchNorm1d(self.cfg.hidden), nn.ReLU(inplace=True),
                                nn.Linear(self.cfg.hidden, self.cfg.embed_dim))

    @property
    def feature_dim(self) -> int:
        return self.cfg.embed_dim

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        """Global average + max pooled convolutional features (before the MLP)."""
        if x.shape[-1] < self.MIN_BOX:
            raise ValueError(f"box {x.shape[-1]} is smaller than the encoder's minimum "
                             f"{self.MIN_BOX}")
        mu = x.mean(dim=(2, 3, 4), keepdim=True)
        sd = x.std(dim=(2, 3, 4), keepdim=True)
        h = self.conv((x - mu) / torch.clamp(sd, min=1e-6))
        return torch.cat([h.mean(dim=(2, 3, 4)), h.amax(dim=(2, 3, 4))], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.fc(self.pooled(x)), dim=1)


# ------------------------------------------------------------------ weights and manifest
def sha256_of(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def manifest_path(weights: str | Path) -> Path:
    p = Path(weights)
    return p.with_name(p.stem + ".json")


def save_encoder(path: str | Path, model: SubtomoEncoder, manifest: dict) -> dict:
    """Write the CPU ``state_dict`` to ``path`` and the manifest (with the file's SHA-256,
    size and architecture filled in) beside it as ``<stem>.json``; both atomically."""
    from ..formats.atomic import atomic_output

    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    with atomic_output(path) as tmp:
        torch.save(state, tmp)
    man = dict(manifest)
    man.update({"file": Path(path).name, "sha256": sha256_of(path),
                "bytes": Path(path).stat().st_size, "architecture": model.cfg.as_dict(),
                "parameters": sum(p.numel() for p in model.parameters())})
    with atomic_output(manifest_path(path)) as tmp:
        Path(tmp).write_text(json.dumps(man, indent=2) + "\n")
    return man


def read_manifest(path: str | Path) -> dict:
    m = manifest_path(path)
    if not m.is_file():
        raise TomoclustError(f"{m}: manifest of the encoder {path} not found (every shipped "
                             "model has a <name>.json beside it)")
    try:
        man = json.loads(m.read_text())
        man["architecture"], man["sha256"]
    except (ValueError, KeyError, TypeError) as exc:
        raise TomoclustError(f"{m}: not an encoder manifest ({exc})") from None
    return man


def load_encoder(path: str | Path, device="cpu") -> tuple[SubtomoEncoder, dict]:
    """The encoder at ``path`` (in eval mode on ``device``) and its manifest.

    Raises :class:`TomoclustError` naming the file when the weights or the manifest are
    missing, when the file's SHA-256 differs from the manifest's (truncated, corrupted or
    replaced), or when the weights do not fit the architecture.
    """
    p = Path(path)
    if not p.is_file():
        raise TomoclustError(f"{p}: encoder weights not found")
    man = read_manifest(p)
    digest = sha256_of(p)
    if digest != man["sha256"]:
        raise TomoclustError(f"{p}: SHA-256 {digest[:16]}… differs from its manifest's "
                             f"{str(man['sha256'])[:16]}… (the file is corrupt or was replaced)")
    try:
        model = SubtomoEncoder(EncoderSettings.from_dict(man["architecture"]))
        state = torch.load(p, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    except Exception as exc:  # unreadable, or weights of another architecture
        raise TomoclustError(f"{p}: not loadable as a tomoclust encoder ({exc})") from None
    return model.to(device).eval(), man


def resolve_model(path: str | Path, basedir: str | Path | None) -> Path:
    """A relative model path is looked up in the working directory first, then under the
    workflow's ``basedir`` (where the shipped models live)."""
    p = Path(path)
    if p.is_absolute() or p.exists() or basedir is None:
        return p
    return Path(basedir) / p


@torch.inference_mode()
def embed(model: SubtomoEncoder, stack: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """``(n, d, d, d)`` boxes → ``(n, embed_dim)`` float32 embeddings (model's device)."""
    from .train import infer

    device = next(model.parameters()).device
    model.eval()
    # 3-D convolutions in channels-last order: ~1.5× faster on CPU (oneDNN); the layout is
    # restored afterwards, so a model that trains next is as it was
    cl = torch.channels_last_3d
    model.to(memory_format=cl)
    try:
        with torch.inference_mode():
            out = infer(lambda x: model(x.contiguous(memory_format=cl)), stack, device,
                        batch_size)
    finally:
        model.to(memory_format=torch.contiguous_format)
    if out.size == 0:
        return np.zeros((0, model.feature_dim), np.float32)
    return out


def embed_particles(model: SubtomoEncoder, stack: np.ndarray, voxel_size: float,
                    chunks: Sequence[str] | None = None) -> np.ndarray:
    """The embedding of every particle (:func:`prepare_boxes`, then :func:`embed`); with
    ``chunks``, gathered from the files of jobs that computed it in shares
    (:mod:`tomoclust.features.chunks`)."""
    if chunks:
        from .chunks import gather

        out = gather(chunks, len(stack))
        if out.shape[1] != model.feature_dim:
            raise TomoclustError(f"feature chunks hold {out.shape[1]} columns, the encoder "
                                 f"gives {model.feature_dim}")
        return out
    return embed(model, prepare_boxes(stack, voxel_size, model.cfg))


def prepare_boxes(stack: np.ndarray, voxel_size: float, cfg: EncoderSettings,
                  chunk: int = 512) -> np.ndarray:
    """Boxes as the encoder was trained on them: Fourier-resampled to its voxel size and
    centre-cropped or zero-padded to its box side. Returns ``stack`` itself when it already
    matches."""
    from ..numerics.fourier import fourier_resample
    from ..simulate.density import fit_box

    d = stack.shape[-1]
    if d == cfg.box and np.isclose(voxel_size, cfg.voxel_size, rtol=1e-3):
        return stack
    side = max(round(d * voxel_size / cfg.voxel_size), 1)
    out = np.empty((len(stack), cfg.box, cfg.box, cfg.box), np.float32)
    for a in range(0, len(stack), chunk):
        for i, v in enumerate(np.asarray(stack[a:a + chunk], dtype=np.float32)):
            r = fourier_resample(v, (side,) * 3) if side != d else v
            out[a + i] = fit_box(r, cfg.box)
    log.info("boxes %d³ at %.3g Å resampled to %d³ at %.3g Å and fitted to %d³ for the encoder",
             d, voxel_size, side, cfg.voxel_size, cfg.box)
    return out


def template_prototypes(model: SubtomoEncoder, densities: dict[str, np.ndarray],
                        views: int, tilt: tuple[float, float], ctf: dict | None = None,
                        snr: float = 1.0, seed: int = 0) -> np.ndarray:
    """``(n_templates, embed_dim)`` unit vectors: the mean embedding of ``views`` simulated
    subtomograms of each template density (at the encoder's voxel size), imaged with the
    data's tilt range and CTF, ±1 voxel shifts, at ``snr`` (aitom)."""
    from ..simulate.subtomograms import simulate_subtomograms
    from ..simulate.tomograms import CtfSettings, Template

    cfg = model.cfg
    lib = [Template(n, i + 1, d) for i, (n, d) in enumerate(densities.items())]
    res = simulate_subtomograms(lib, n_per_class=views, box=cfg.box, voxel_size=cfg.voxel_size,
                                snr=snr, tilt_min=tilt[0], tilt_max=tilt[1],
                                ctf=CtfSettings(**(ctf or {})), max_shift_vox=1.0, seed=seed)
    z = embed(model, res.stack)
    cls = res.truth["rlnClassNumber"].to_numpy()
    proto = np.stack([z[cls == i + 1].mean(axis=0) for i in range(len(lib))])
    return proto / np.linalg.norm(proto, axis=1, keepdims=True).clip(1e-12)


def nearest_prototype(z: np.ndarray, prototypes: np.ndarray, temperature: float = 0.1
                      ) -> np.ndarray:
    """Softmax over the cosine similarities of embeddings ``z`` to the prototypes."""
    s = (z @ prototypes.T) / temperature
    s -= s.max(axis=1, keepdims=True)
    p = np.exp(s)
    return p / p.sum(axis=1, keepdims=True)


def template_probabilities(model: SubtomoEncoder, z: np.ndarray, templates: dict[str, str],
                           views: int, tilt: tuple[float, float], ctf: dict | None = None
                           ) -> np.ndarray:
    """``(n_particles, n_templates)``: how near each embedding of ``z`` is to the
    prototype of each atomic model of ``templates`` (name -> PDB/mmCIF path), simulated with
    the data's tilt range and CTF (:func:`template_prototypes`, :func:`nearest_prototype`)."""
    from ..simulate.density import template_density

    dens = {n: template_density(p, model.cfg.voxel_size) for n, p in templates.items()}
    return nearest_prototype(z, template_prototypes(model, dens, int(views), tuple(tilt),
                                                    dict(ctf or {})))


class EncoderClassifier(nn.Module):
    """The encoder with a linear classification head on its embedding: DISCA's backbone when
    it starts from the shipped weights. Same interface as :class:`tomoclust.nn.Yopo`
    (``features``, ``forward``, ``new_head``, ``n_classes``, ``min_box``); the logits are
    the head applied to the unit embedding divided by ``temperature``."""

    def __init__(self, cfg: EncoderSettings, n_classes: int = 2, temperature: float = 0.1):
        super().__init__()
        self.encoder = SubtomoEncoder(cfg)
        self.cfg = cfg
        self.temperature = temperature
        self.head = nn.Linear(cfg.embed_dim, n_classes)

    @classmethod
    def from_file(cls, path: str | Path, n_classes: int = 2, device="cpu") -> EncoderClassifier:
        enc, _ = load_encoder(path)
        model = cls(enc.cfg, n_classes)
        model.encoder.load_state_dict(enc.state_dict())
        return model.to(device)

    @property
    def n_classes(self) -> int:
        return self.head.out_features

    def min_box(self) -> int:
        return SubtomoEncoder.MIN_BOX

    def new_head(self, n_classes: int) -> None:
        self.head = nn.Linear(self.cfg.embed_dim, n_classes).to(self.head.weight.device)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x) / self.temperature)
