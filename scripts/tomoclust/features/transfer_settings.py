"""Settings and cache keys of the transfer-learned encoder (no torch: the workflow computes
the keys when it parses the configuration).

:func:`training_set_key` and :func:`model_key` hash everything that determines the training
set and the model (template names, order and file contents; voxel size, box, imaging model,
simulation and training settings) and nothing else, so the workflow keeps them in directories
named by the keys and retrains only when one of those changes.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .. import TomoclustError

NO_PARTICLE = "no_particle"


@dataclass
class TransferNetSettings:
    n_classes: int
    width: int = 16  # channels of the first stage; doubled at every stage
    stages: int = 3  # conv stages, each followed by 2x max pooling
    feature_dim: int = 32  # the penultimate layer: the feature
    hidden: int = 128  # the fully connected layer before the feature
    input_binning: int = 1  # average-pool the input by this factor first
    dropout: float = 0.3

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class TrainingSetSettings:
    """How the labelled training subtomograms are simulated (see
    :mod:`tomoclust.features.transfer`)."""

    box: int = 32
    voxel_size: float = 12.0
    n_per_class: int = 200
    snr_min: float = 0.05
    snr_max: float = 1.0
    snr_groups: int = 10  # each group of n_per_class / snr_groups per class has one SNR
    convention: str = "aitom"
    tilt_min: float = -60.0
    tilt_max: float = 60.0
    ctf: dict = field(default_factory=dict)  # CtfSettings keywords
    no_particle: bool = True
    neighbour_fraction: float = 0.5  # of the no-particle groups: a cut-off neighbour, not empty
    max_shift_vox: float = 1.0
    seed: int = 0

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class TransferSettings:
    """Network and training settings."""

    width: int = 16
    stages: int = 3
    feature_dim: int = 32
    hidden: int = 128
    input_binning: int = 1
    dropout: float = 0.3
    epochs: int = 20
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-4
    val_fraction: float = 0.1
    augment: bool = True  # random 180° turns about x, y or z (they keep the missing wedge)
    seed: int = 0

    def net_config(self, n_classes: int) -> TransferNetSettings:
        return TransferNetSettings(n_classes=n_classes, width=self.width, stages=self.stages,
                                 feature_dim=self.feature_dim, hidden=self.hidden,
                                 input_binning=self.input_binning, dropout=self.dropout)

    def as_dict(self) -> dict:
        return asdict(self)


# ------------------------------------------------------------------------------- cache keys
def file_digest(path: str | Path, chunk: int = 1 << 20) -> str:
    """SHA-256 of a file's bytes (a template's identity: its content, not its name or mtime)."""
    p = Path(path)
    if not p.exists():
        raise TomoclustError(f"transfer template {p}: file not found")
    h = hashlib.sha256()
    with open(p, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def _short_hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


def training_set_key(templates: Mapping[str, str | Path], set_params: TrainingSetSettings) -> str:
    """Key of a training set: the template library (names, order and file contents) and every
    simulation setting (voxel size, box, CTF, wedge, SNR range, counts, seed)."""
    lib = [[name, file_digest(path)] for name, path in templates.items()]
    return _short_hash({"templates": lib, "simulation": set_params.as_dict()})


def model_key(set_key: str, params: TransferSettings) -> str:
    """Key of a trained model: its training set's key and the network/training settings."""
    return _short_hash({"training_set": set_key, "training": params.as_dict()})
