"""Neural networks for subtomogram features (torch): YOPO (DISCA) and the 3D autoencoder.

All modules take ``(n, 1, d, d, d)`` float tensors (a channel axis added to ``(n, z, y, x)``
subtomograms) and keep every new tensor on their input's device.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

YOPO_PRESETS: dict[str, dict] = {
    # Zeng et al. (PNAS 2023): 10 blocks, 64, 80, ..., 208 channels, 1024-d feature (~6.3 M params)
    "published": dict(blocks=10, width=64, width_step=16, feature_dim=1024, input_binning=1),
    # practical on a laptop CPU: the same architecture, narrower, on 2x binned input
    "light": dict(blocks=6, width=16, width_step=8, feature_dim=128, input_binning=2),
    # for unit tests and CI smoke runs
    "tiny": dict(blocks=3, width=4, width_step=4, feature_dim=16, input_binning=2),
}


@dataclass
class YopoSettings:
    blocks: int = 6
    width: int = 16
    width_step: int = 8
    feature_dim: int = 128
    input_binning: int = 2
    dropout: float = 0.5  # rate of the multiplicative Gaussian dropout on the input

    @classmethod
    def from_preset(cls, preset: str, **overrides) -> YopoSettings:
        if preset not in YOPO_PRESETS:
            raise ValueError(f"unknown YOPO preset {preset!r}; choose from {list(YOPO_PRESETS)}")
        base = dict(YOPO_PRESETS[preset])
        base.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**base)

    def as_dict(self) -> dict:
        return asdict(self)


class GaussianDropout(nn.Module):
    """Multiplicative Gaussian noise ``x · N(1, rate / (1 − rate))`` in training mode only."""

    def __init__(self, rate: float):
        super().__init__()
        self.std = (rate / (1.0 - rate)) ** 0.5 if 0 < rate < 1 else 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.std == 0:
            return x
        return x * (1.0 + self.std * torch.randn_like(x))


class Yopo(nn.Module):
    """YOPO feature network: valid 3³ conv blocks, a global max pool after every block.

    ``features(x)`` returns the ``feature_dim`` clustering feature; ``forward(x)`` the class
    logits of the current head (``n_classes`` outputs, replaced when K changes).
    """

    def __init__(self, cfg: YopoSettings, n_classes: int = 2):
        super().__init__()
        self.cfg = cfg
        self.dropout = GaussianDropout(cfg.dropout)
        blocks = []
        c_in = 1
        for i in range(cfg.blocks):
            c_out = cfg.width + i * cfg.width_step
            conv = nn.Conv3d(c_in, c_out, 3, padding=0)
            nn.init.orthogonal_(conv.weight)
            nn.init.zeros_(conv.bias)
            blocks.append(nn.Sequential(conv, nn.ELU(), nn.BatchNorm3d(c_out)))
            c_in = c_out
        self.blocks = nn.ModuleList(blocks)
        pooled = sum(cfg.width + i * cfg.width_step for i in range(cfg.blocks))
        self.norm = nn.BatchNorm1d(pooled)
        self.embed = nn.Linear(pooled, cfg.feature_dim)
        self.head = nn.Linear(cfg.feature_dim, n_classes)

    @property
    def n_classes(self) -> int:
        return self.head.out_features

    def min_box(self) -> int:
        """Smallest input side: each valid 3³ convolution trims 2 voxels after binning."""
        return self.cfg.input_binning * (2 * self.cfg.blocks + 1)

    def new_head(self, n_classes: int) -> None:
        """Replace the classification head (when the number of clusters changes)."""
        dev = self.embed.weight.device
        self.head = nn.Linear(self.cfg.feature_dim, n_classes).to(dev)

    def _bin(self, x: torch.Tensor) -> torch.Tensor:
        b = self.cfg.input_binning
        return F.avg_pool3d(x, b) if b > 1 else x

    def features(self, x: torch.Tensor) -> torch.Tensor:
        h = self.dropout(self._bin(x))
        pooled = []
        for block in self.blocks:
            h = block(h)
            pooled.append(torch.amax(h, dim=(2, 3, 4)))
        return self.embed(self.norm(torch.cat(pooled, dim=1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class AutoEncoder3D(nn.Module):
    """3D convolutional autoencoder (Zeng et al., JSB 2018) with a ``code_dim`` bottleneck.

    Encoder: [Conv3d 32 @3³ same, ReLU, MaxPool 2] × 2 → Linear(code_dim) + ReLU;
    the decoder mirrors it with upsampling. Input side must be divisible by 4.
    """

    def __init__(self, box: int, code_dim: int = 32, channels: int = 32):
        super().__init__()
        if box % 4:
            raise ValueError(f"autoencoder box must be divisible by 4, got {box}")
        self.box, self.channels = box, channels
        s = box // 4
        self.enc = nn.Sequential(
            nn.Conv3d(1, channels, 3, padding=1), nn.ReLU(), nn.MaxPool3d(2),
            nn.Conv3d(channels, channels, 3, padding=1), nn.ReLU(), nn.MaxPool3d(2),
        )
        self.to_code = nn.Linear(channels * s**3, code_dim)
        self.from_code = nn.Linear(code_dim, channels * s**3)
        self.dec = nn.Sequential(
            nn.ReLU(), nn.Upsample(scale_factor=2), nn.Conv3d(channels, channels, 3, padding=1),
            nn.ReLU(), nn.Upsample(scale_factor=2), nn.Conv3d(channels, 1, 3, padding=1),
        )

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.to_code(self.enc(x).flatten(1)))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        code = self.encode(x)
        s = self.box // 4
        h = self.from_code(code).view(-1, self.channels, s, s, s)
        return self.dec(h), code


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
