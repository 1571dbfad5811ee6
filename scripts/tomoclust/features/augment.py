"""Rotation augmentation of subtomograms that respects chirality and the missing wedge (torch).

The DISCA reference draws "rotations" from the SVD of a random matrix (not uniform, and
sometimes a reflection, which turns a molecule into its mirror image) and zero-fills the
corners, while the missing wedge turns with the particle. Here:

- rotations are uniform on SO(3) (proper, never reflections);
- voxels rotated in from outside the box are filled with Gaussian noise matched to the
  particle's own background (the outer shell of the box);
- the wedge is handled by one of two modes:

  ``wedge_symmetric``
      only the three 180° rotations about x, y and z (and the identity) are used: they map a
      wedge symmetric about the beam axis onto itself, so augmented particles carry exactly
      the missing wedge of real ones.
  ``uniform_masked``
      uniform rotations, then the tomogram's wedge mask is applied again, so an augmented
      particle misses the union of its rotated wedge and the real one: it never shows
      information a real particle in this orientation could not have.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

AUGMENT_MODES = ("uniform_masked", "wedge_symmetric", "none")


def _klein_rotations() -> np.ndarray:
    eye = np.eye(3)
    return np.stack([eye, np.diag([1.0, -1, -1]), np.diag([-1.0, 1, -1]), np.diag([-1.0, -1, 1])])


def rotate_batch(vols: torch.Tensor, mats_xyz: torch.Tensor, fill_std: torch.Tensor | None = None,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """Rotate ``(n, d, d, d)`` volumes by ``(n, 3, 3)`` xyz matrices about voxel ``d // 2``.

    ``out(R p) = vol(p)`` (positions relative to the centre), trilinear. Voxels whose source
    lies outside the box get Gaussian noise of standard deviation ``fill_std`` (per volume), or
    zero when ``fill_std`` is None.
    """
    n, d = vols.shape[0], vols.shape[-1]
    dev, dt = vols.device, vols.dtype
    c = float(d // 2)
    ax = torch.arange(d, device=dev, dtype=dt) - c
    zz, yy, xx = torch.meshgrid(ax, ax, ax, indexing="ij")
    pos = torch.stack([xx, yy, zz], dim=-1).reshape(-1, 3)  # output positions, xyz
    r = mats_xyz.to(device=dev, dtype=dt)
    src = torch.einsum("nji,pj->npi", r, pos) + c  # R^T p + c, xyz voxel coords
    grid = (2.0 * src / (d - 1) - 1.0).reshape(n, d, d, d, 3)
    out = F.grid_sample(vols[:, None], grid, mode="bilinear", padding_mode="zeros",
                        align_corners=True)[:, 0]
    if fill_std is not None:
        outside = ((src < 0) | (src > d - 1)).any(dim=-1).reshape(n, d, d, d)
        noise = torch.randn(out.shape, device=dev, dtype=dt, generator=generator)
        out = torch.where(outside, noise * fill_std.view(n, 1, 1, 1), out)
    return out


def shell_std(vols: torch.Tensor, width: int = 2) -> torch.Tensor:
    """Standard deviation of the outer ``width``-voxel shell of each ``(n, d, d, d)`` volume."""
    d = vols.shape[-1]
    m = torch.ones((d, d, d), dtype=torch.bool, device=vols.device)
    m[width:d - width, width:d - width, width:d - width] = False
    return vols[:, m].std(dim=1)


def wedge_mask_torch(d: int, tilt_min: float, tilt_max: float, device) -> torch.Tensor:
    """The :func:`tomoclust.numerics.fourier.wedge_mask` on an ``rfftn`` grid, as a tensor."""
    from ..numerics.fourier import wedge_mask

    return torch.as_tensor(wedge_mask((d, d, d), tilt_min, tilt_max, rfft=True), device=device)


def augment(vols: torch.Tensor, mode: str, rng: np.random.Generator,
            wedge: torch.Tensor | None = None) -> torch.Tensor:
    """One randomly rotated copy of each volume in ``(n, d, d, d)`` (see module docstring)."""
    if mode == "none":
        return vols
    n = vols.shape[0]
    if mode == "wedge_symmetric":
        mats = _klein_rotations()[rng.integers(0, 4, size=n)]
    elif mode == "uniform_masked":
        from ..numerics.rotations import random_rotations

        mats = random_rotations(n, rng)
    else:
        raise ValueError(f"unknown augmentation mode {mode!r}; use one of {AUGMENT_MODES}")
    gen = torch.Generator(device=vols.device)
    gen.manual_seed(int(rng.integers(2**31)))
    out = rotate_batch(vols, torch.as_tensor(mats), fill_std=shell_std(vols), generator=gen)
    if mode == "uniform_masked" and wedge is not None:
        spec = torch.fft.rfftn(out, dim=(-3, -2, -1)) * wedge
        out = torch.fft.irfftn(spec, s=out.shape[-3:], dim=(-3, -2, -1))
        out = (out - out.mean(dim=(1, 2, 3), keepdim=True)) / out.std(
            dim=(1, 2, 3), keepdim=True).clamp_min(1e-6)
    return out
