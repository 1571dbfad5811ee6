"""Difference-of-Gaussians (DoG) particle picking, on numpy (CPU) or torch (CPU/GPU).

Score map ``S = sign · (G(σ₁) − G(σ₂)) * volume`` with ``σ₂ = ratio · σ₁`` and ``sign = +1``
for bright particles, ``−1`` for dark ones (raw cryo-ET: protein is dark). Peaks are local
maxima of ``S`` (3×3×3 neighbourhood) whose robust z-score ``(S − median) / (1.4826 MAD)``
(statistics over all voxels) reaches the threshold; greedy non-maximum suppression keeps the
strongest peak within ``min_distance``; peaks closer than ``edge`` to a face are dropped.

Large tomograms are processed in slabs along ``z`` with enough overlap that every slab's core
sees exactly what the whole volume would; memory then scales with the slab, not the tomogram.
Both backends use the same truncated Gaussian kernel and edge mode ("nearest"), so they give
the same picks up to floating-point ties.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.fft
from scipy import ndimage
from scipy.spatial import cKDTree

from . import TomoclustError

log = logging.getLogger(__name__)

_MAD_TO_SIGMA = 1.4826


@dataclass
class DogParams:
    """Picking parameters in voxels (see :func:`params_from_angst` for the Å front end)."""

    sigma: float  # σ₁ in voxels
    ratio: float = 1.1  # σ₂ / σ₁
    contrast: str = "dark"  # "dark" or "bright"
    threshold: float = 3.0  # robust z-score
    min_distance: float = 10.0  # voxels
    edge: int = 0  # voxels from each face
    max_count: int | None = None
    chunk_z: int = 128  # slab depth (voxels of core per slab)
    bin: int = 1  # evaluate the score map on a grid this many times coarser (1 = exact)


def params_from_angst(voxel_size: float, radius_angst: float, sigma_scale: float = 0.577,
                      ratio: float = 1.1, contrast: str = "dark", threshold: float = 3.0,
                      min_distance_angst: float | None = None, edge_angst: float = 0.0,
                      max_count: int | None = None, chunk_z: int = 128, bin: int = 1
                      ) -> DogParams:
    """DoG parameters from physical sizes.

    ``σ₁ = sigma_scale · radius`` (``1/√3 ≈ 0.577`` is the scale at which a normalised
    Laplacian-of-Gaussian responds most to a solid ball). ``min_distance`` defaults to the
    particle radius.
    """
    if contrast not in ("dark", "bright"):
        raise ValueError(f"contrast must be 'dark' or 'bright', not {contrast!r}")
    if radius_angst <= 0 or voxel_size <= 0:
        raise ValueError("particle radius and voxel size must be positive")
    md = radius_angst if min_distance_angst is None else min_distance_angst
    return DogParams(
        sigma=max(sigma_scale * radius_angst / voxel_size, 0.5), ratio=ratio, contrast=contrast,
        threshold=threshold, min_distance=md / voxel_size,
        edge=int(np.ceil(edge_angst / voxel_size)), max_count=max_count, chunk_z=chunk_z,
        bin=int(bin),
    )


def gaussian_kernel(sigma: float, truncate: float = 4.0) -> np.ndarray:
    """Normalised 1D Gaussian kernel of radius ``int(truncate·σ + 0.5)`` (as scipy)."""
    radius = int(truncate * sigma + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def _kernel_transfer(n: int, sigma: float, rfft: bool = False) -> np.ndarray:
    """DFT (length ``n``) of the truncated kernel of :func:`gaussian_kernel`, centred at 0.

    The kernel is symmetric, so its transform is real. Multiplying by it is exactly the
    circular correlation with that kernel.
    """
    k = gaussian_kernel(sigma)
    r = (len(k) - 1) // 2
    h = np.zeros(n)
    h[: r + 1] = k[r:]
    h[n - r:] = k[:r]
    return (np.fft.rfft(h) if rfft else np.fft.fft(h)).real.astype(np.float32)


def _dog_numpy(vol: np.ndarray, p: DogParams, workers: int = -1
               ) -> tuple[np.ndarray, np.ndarray]:
    """Score map and local-maximum mask for one slab (numpy / scipy).

    The two Gaussian blurs are one multiplication in Fourier space by the difference of the
    truncated kernels' transforms; padding the slab by the kernel radius with its edge values
    makes this identical to separable correlation in "nearest" mode (the torch backend), to
    floating-point rounding, at a fraction of the cost.
    """
    v = np.asarray(vol, dtype=np.float32)
    b = max(int(p.bin), 1)
    r = int(4.0 * p.sigma * p.ratio + 0.5)
    r += (-r) % b  # the coarse grid must start on voxel 0
    shp = [scipy.fft.next_fast_len(n + 2 * r, real=True) for n in v.shape]
    shp = [n + (-n) % (2 * b) for n in shp]
    vp = np.pad(v, [(r, n - s - r) for n, s in zip(shp, v.shape, strict=True)], mode="edge")
    spec = scipy.fft.rfftn(vp, workers=workers, overwrite_x=True)
    del vp

    def transfer(sigma: float) -> np.ndarray:
        return (_kernel_transfer(shp[0], sigma)[:, None, None]
                * _kernel_transfer(shp[1], sigma)[None, :, None]
                * _kernel_transfer(shp[2], sigma, rfft=True)[None, None, :])

    sign = -1.0 if p.contrast == "dark" else 1.0
    spec *= sign * (transfer(p.sigma) - transfer(p.sigma * p.ratio))
    if b > 1:
        # the DoG is band-limited far below the coarse grid's Nyquist: crop the spectrum
        nz, ny, nx = (n // b for n in shp)
        zi = np.r_[0:nz // 2, shp[0] - nz // 2:shp[0]]
        yi = np.r_[0:ny // 2, shp[1] - ny // 2:shp[1]]
        spec = spec[:, :, :nx // 2 + 1][zi][:, yi]
        full = scipy.fft.irfftn(spec, s=(nz, ny, nx), workers=workers) / b**3
        o = r // b
        cz, cy, cx = (-(-n // b) for n in v.shape)
        s = np.ascontiguousarray(full[o:o + cz, o:o + cy, o:o + cx], dtype=np.float32)
    else:
        full = scipy.fft.irfftn(spec, s=shp, workers=workers, overwrite_x=True)
        s = np.ascontiguousarray(full[r:r + v.shape[0], r:r + v.shape[1], r:r + v.shape[2]],
                                 dtype=np.float32)
    peaks = s == ndimage.maximum_filter(s, size=3, mode="nearest")
    return s, peaks


def _dog_torch(vol: np.ndarray, p: DogParams, device: str) -> tuple[np.ndarray, np.ndarray]:
    """Score map and local-maximum mask for one slab (torch, any device)."""
    try:
        import torch
        import torch.nn.functional as F
    except ImportError:
        raise TomoclustError("the torch backend of DoG picking needs PyTorch, which is not "
                             "installed in this step's environment") from None

    v = torch.as_tensor(np.ascontiguousarray(vol, dtype=np.float32), device=device)[None, None]

    def blur(sigma: float):
        k = torch.as_tensor(gaussian_kernel(sigma), dtype=torch.float32, device=v.device)
        r = (k.numel() - 1) // 2
        out = v
        for ax in range(3):
            shape = [1, 1, 1, 1, 1]
            shape[2 + ax] = k.numel()
            pad = [0, 0, 0, 0, 0, 0]
            pad[2 * (2 - ax)] = r
            pad[2 * (2 - ax) + 1] = r
            out = F.conv3d(F.pad(out, pad, mode="replicate"), k.view(shape))
        return out

    s = blur(p.sigma) - blur(p.sigma * p.ratio)
    if p.contrast == "dark":
        s = -s
    b = max(int(p.bin), 1)
    if b > 1:  # the same coarse grid as the numpy backend (the DoG is band-limited)
        s = s[:, :, ::b, ::b, ::b].contiguous()
    mx = F.max_pool3d(F.pad(s, [1] * 6, mode="replicate"), kernel_size=3, stride=1)
    peaks = s == mx
    return s[0, 0].cpu().numpy(), peaks[0, 0].cpu().numpy()


def _parabolic_offsets(s: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Offsets in ``[-0.5, 0.5]`` of the maximum of a parabola through each peak and its two
    neighbours along every axis (0 at the volume's faces)."""
    off = np.zeros(idx.shape, dtype=np.float64)
    for ax in range(3):
        inner = (idx[:, ax] > 0) & (idx[:, ax] < s.shape[ax] - 1)
        i = idx[inner]
        lo_i, hi_i = i.copy(), i.copy()
        lo_i[:, ax] -= 1
        hi_i[:, ax] += 1
        f0, fm, fp = (s[tuple(j.T)].astype(np.float64) for j in (i, lo_i, hi_i))
        den = fm - 2 * f0 + fp
        with np.errstate(divide="ignore", invalid="ignore"):
            d = np.where(den < 0, 0.5 * (fm - fp) / den, 0.0)
        off[inner, ax] = np.clip(d, -0.5, 0.5)
    return off


def _nms(coords: np.ndarray, scores: np.ndarray, min_distance: float) -> np.ndarray:
    """Indices kept by greedy non-maximum suppression (strongest first)."""
    order = np.argsort(-scores, kind="stable")
    if min_distance <= 0 or len(order) == 0:
        return order
    tree = cKDTree(coords)
    suppressed = np.zeros(len(coords), dtype=bool)
    keep = []
    for i in order:
        if suppressed[i]:
            continue
        keep.append(i)
        suppressed[tree.query_ball_point(coords[i], r=min_distance - 1e-9)] = True
    return np.asarray(keep, dtype=np.int64)


def dog_pick(volume: np.ndarray, params: DogParams, device: str | None = None,
             sample_per_slab: int = 200_000, seed: int = 0) -> pd.DataFrame:
    """Pick particles in a ``(z, y, x)`` volume (an array or a read-only memory map).

    Parameters
    ----------
    volume
        Tomogram; read slab by slab, so a memory-mapped MRC stays on disk.
    params
        :class:`DogParams` in voxels.
    device
        ``None`` for the numpy backend, or a torch device string (``"cpu"``, ``"cuda"``,
        ``"cuda:1"``) for the torch backend.
    sample_per_slab
        Voxels per slab sampled (uniformly, seeded) for the global median/MAD; slabs
        smaller than this contribute every voxel.

    Returns
    -------
    DataFrame
        One row per pick, strongest first: ``x, y, z`` (voxels), ``score`` (DoG value) and
        ``zscore`` (robust z). Empty when nothing passes the threshold.
    """
    nz = volume.shape[0]
    p = params
    b = max(int(p.bin), 1)
    reach = int(np.ceil(4 * p.sigma * p.ratio)) + 2 * b  # blur support + local-max neighbourhood
    reach += (-reach) % b
    step = max(int(p.chunk_z), b)
    step += (-step) % b  # slabs start on the coarse grid
    rng = np.random.default_rng(seed)
    cand_c, cand_s, samples, scale = [], [], [], 0.0
    for z0 in range(0, nz, step):
        z1 = min(z0 + step, nz)
        a, e = max(z0 - reach, 0), min(z1 + reach, nz)
        slab = np.asarray(volume[a:e], dtype=np.float32)
        scale = max(scale, float(np.abs(slab).max()))
        s, peaks = _dog_numpy(slab, p) if device is None else _dog_torch(slab, p, device)
        lo, hi = (z0 - a) // b, -(-(z1 - a) // b)
        core = s[lo:hi]
        flat = core.ravel()
        if flat.size > sample_per_slab:
            flat = flat[rng.choice(flat.size, sample_per_slab, replace=False)]
        samples.append(flat.astype(np.float64))
        idx = np.argwhere(peaks[lo:hi])
        pos = idx.astype(np.float64)
        if b > 1:  # sub-voxel peak position on the coarse grid (parabola through neighbours)
            pos += _parabolic_offsets(s, idx + np.array([lo, 0, 0]))
        cand_c.append(pos * b + np.array([z0, 0, 0]))
        cand_s.append(core[tuple(idx.T)])
    allsamp = np.concatenate(samples)
    med = float(np.median(allsamp))
    mad = float(np.median(np.abs(allsamp - med))) * _MAD_TO_SIGMA
    if mad <= 1e-6 * scale:  # a (numerically) constant score map: no structure, no picks
        mad = 0.0
    coords = np.concatenate(cand_c).astype(np.float64)
    scores = np.concatenate(cand_s).astype(np.float64)
    z = (scores - med) / mad if mad > 0 else np.zeros_like(scores)
    ok = z >= p.threshold
    if p.edge > 0:
        shp = np.array(volume.shape)
        ok &= np.all((coords >= p.edge) & (coords < shp - p.edge), axis=1)
    coords, scores, z = coords[ok], scores[ok], z[ok]
    keep = _nms(coords, scores, p.min_distance)
    if p.max_count is not None:
        keep = keep[: p.max_count]
    coords, scores, z = coords[keep], scores[keep], z[keep]
    log.info("DoG: %d local maxima above z=%.2f, %d after NMS (median %.4g, robust sd %.4g)",
             int(ok.sum()), p.threshold, len(keep), med, mad)
    return pd.DataFrame({"x": coords[:, 2], "y": coords[:, 1], "z": coords[:, 0],
                         "score": scores, "zscore": z})
