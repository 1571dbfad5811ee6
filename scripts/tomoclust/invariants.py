"""Rotation-invariant descriptors of subtomograms: spherical-harmonic shell spectra.

Each volume is sampled on concentric spheres about the box centre ``d // 2`` (trilinear
interpolation at quasi-uniform Fibonacci points), expanded in real spherical harmonics up to
degree ``l_max`` on every shell, and summarised by the cross-shell power
``P_l(r, s) = Σ_m a_lm(r) a_lm(s)``. Rotating the volume rotates each degree's coefficients by
an orthogonal matrix, which leaves ``P_l(r, s)`` unchanged, so the descriptor does not depend
on the particle's orientation (up to interpolation error and the missing wedge, which stays
fixed while the particle turns). It does depend on centring.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy.special import sph_harm_y


def fibonacci_sphere(n: int) -> np.ndarray:
    """``(n, 3)`` quasi-uniform unit vectors (xyz)."""
    i = np.arange(n) + 0.5
    phi = np.arccos(1 - 2 * i / n)
    theta = np.pi * (1 + 5**0.5) * i
    return np.stack([np.cos(theta) * np.sin(phi), np.sin(theta) * np.sin(phi), np.cos(phi)], 1)


def real_sph_harm(l_max: int, dirs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Real spherical harmonics ``(n_dirs, (l_max+1)²)`` and the degree of each column."""
    polar = np.arccos(np.clip(dirs[:, 2], -1, 1))
    azim = np.arctan2(dirs[:, 1], dirs[:, 0])
    cols, degree = [], []
    for ll in range(l_max + 1):
        for m in range(-ll, ll + 1):
            y = sph_harm_y(ll, abs(m), polar, azim)
            if m > 0:
                cols.append(np.sqrt(2) * (-1) ** m * y.real)
            elif m < 0:
                cols.append(np.sqrt(2) * (-1) ** m * y.imag)
            else:
                cols.append(y.real)
            degree.append(ll)
    return np.stack(cols, 1), np.asarray(degree)


class ShellSpectrum:
    """Computes the descriptor for ``(n, d, d, d)`` volumes (torch, any device).

    Parameters
    ----------
    box
        Side ``d`` of the volumes.
    l_max
        Highest spherical-harmonic degree.
    radii
        Shell radii in voxels (default ``1 .. d//2 - 1``).
    """

    def __init__(self, box: int, l_max: int = 6, radii: np.ndarray | None = None,
                 n_points: int | None = None):
        self.box = box
        self.radii = np.arange(1, box // 2) if radii is None else np.asarray(radii, float)
        self.l_max = l_max
        n_points = n_points or max(4 * (l_max + 1) ** 2, 64)
        dirs = fibonacci_sphere(n_points)
        ylm, self.degree = real_sph_harm(l_max, dirs)
        # least-squares projection onto the harmonics (well conditioned with 4x oversampling)
        self._proj = np.linalg.pinv(ylm)  # ((l+1)², n_points)
        pts = self.radii[:, None, None] * dirs[None]  # (shells, points, 3) xyz rel. centre
        c = box // 2
        self._grid = (2.0 * (pts + c) / (box - 1) - 1.0).astype(np.float32)

    @property
    def n_features(self) -> int:
        s = len(self.radii)
        return (self.l_max + 1) * s * (s + 1) // 2

    def __call__(self, vols: torch.Tensor) -> torch.Tensor:
        n = vols.shape[0]
        dev = vols.device
        grid = torch.as_tensor(self._grid, device=dev)[None, None].expand(n, 1, *self._grid.shape)
        vals = F.grid_sample(vols[:, None].float(), grid, mode="bilinear",
                             padding_mode="zeros", align_corners=True)[:, 0, 0]  # (n, S, P)
        coef = vals @ torch.as_tensor(self._proj.T, device=dev, dtype=vals.dtype)  # (n, S, L²)
        s = len(self.radii)
        iu = torch.triu_indices(s, s, device=dev)
        feats = []
        deg = torch.as_tensor(self.degree, device=dev)
        for ll in range(self.l_max + 1):
            a = coef[:, :, deg == ll]  # (n, S, 2l+1)
            p = a @ a.transpose(1, 2)  # (n, S, S)
            feats.append(p[:, iu[0], iu[1]])
        return torch.cat(feats, dim=1)


def gaussian_blur(vols: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur of ``(n, d, d, d)`` volumes by multiplication in Fourier space (periodic
    boundary), σ in voxels."""
    d = vols.shape[-1]
    f = torch.fft.fftfreq(d, device=vols.device)
    fr = torch.fft.rfftfreq(d, device=vols.device)
    k2 = f[:, None, None] ** 2 + f[None, :, None] ** 2 + fr[None, None, :] ** 2
    transfer = torch.exp(-2 * (torch.pi * sigma) ** 2 * k2)
    spec = torch.fft.rfftn(vols, dim=(-3, -2, -1)) * transfer
    return torch.fft.irfftn(spec, s=vols.shape[-3:], dim=(-3, -2, -1))


def shell_spectra(stack: np.ndarray, l_max: int = 6, lowpass_sigma: float = 0.0,
                  device: str = "cpu", batch_size: int = 256) -> np.ndarray:
    """Descriptor of every volume of a ``(n, d, d, d)`` stack, ``(n, n_features)`` float32.

    ``lowpass_sigma`` (voxels) blurs each volume first, which suppresses noise at low SNR.
    Quadratic features are made signed-square-root (``sign(x)·sqrt|x|``) to tame their range.
    """
    from .train import batches, to_tensor

    ss = ShellSpectrum(stack.shape[-1], l_max)
    out = np.empty((len(stack), ss.n_features), dtype=np.float32)  # filled batch by batch
    with torch.inference_mode():
        for idx in batches(len(stack), batch_size):
            v = to_tensor(stack, idx, device)
            if lowpass_sigma > 0:
                v = gaussian_blur(v, lowpass_sigma)
            f = ss(v)
            out[idx] = (torch.sign(f) * f.abs().sqrt()).cpu().numpy()
    return out
