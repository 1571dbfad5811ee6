"""Map-level helpers of the averaging that need no torch: soft masks, FSC and resolution,
resampling of true maps, CTF phase flips, and which classes are large enough to average.

Kept apart from :mod:`tomoclust.average` so that the CPU-only steps (true maps, summaries) and
the workflow's input functions do not import torch.
"""

from __future__ import annotations

import numpy as np

MIN_PER_HALF = 2  # particles per gold-standard half set, at least


# ----------------------------------------------------------------------- masks and FSC
def soft_sphere(box: int, radius: float, edge: float) -> np.ndarray:
    """Sphere about ``box // 2`` of ``radius`` voxels with a raised-cosine edge of ``edge``."""
    c = box // 2
    zz, yy, xx = np.indices((box,) * 3, dtype=np.float64)
    r = np.sqrt((zz - c) ** 2 + (yy - c) ** 2 + (xx - c) ** 2)
    m = np.ones_like(r)
    if edge > 0:
        band = (r > radius) & (r < radius + edge)
        m[band] = 0.5 * (1 + np.cos(np.pi * (r[band] - radius) / edge))
        m[r >= radius + edge] = 0.0
    else:
        m[r > radius] = 0.0
    return m.astype(np.float32)


def fsc(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Fourier shell correlation of two cubes, shells ``0 .. box // 2`` (1/box cycles/voxel).

    Shell ``s`` holds frequencies with ``round(|k| · box) = s``. A shell where either map has no
    power gets 0.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 3 or len(set(a.shape)) != 1:
        raise ValueError(f"FSC needs two cubes of one shape, got {a.shape} and {b.shape}")
    n = a.shape[0]
    fa, fb = np.fft.rfftn(a), np.fft.rfftn(b)
    shell = _shells(n).ravel()
    # rfft: count the half-space columns 1..n/2-1 twice (their Hermitian partners are absent)
    wt = np.full((n, n, n // 2 + 1), 2.0)
    wt[..., 0] = 1.0
    if n % 2 == 0:
        wt[..., -1] = 1.0
    wt = wt.ravel()
    keep = shell <= n // 2
    s = shell[keep]
    num = np.bincount(s, (wt * (fa * fb.conj()).real.ravel())[keep], n // 2 + 1)
    pa = np.bincount(s, (wt * np.abs(fa.ravel()) ** 2)[keep], n // 2 + 1)
    pb = np.bincount(s, (wt * np.abs(fb.ravel()) ** 2)[keep], n // 2 + 1)
    den = np.sqrt(pa * pb)
    return np.where(den > 0, num / np.where(den > 0, den, 1.0), 0.0)


def _shells(n: int) -> np.ndarray:
    kz = np.fft.fftfreq(n)[:, None, None]
    ky = np.fft.fftfreq(n)[None, :, None]
    kx = np.fft.rfftfreq(n)[None, None, :]
    return np.rint(np.sqrt(kz**2 + ky**2 + kx**2) * n).astype(np.int64)


def resolution_at(curve: np.ndarray, threshold: float, box: int) -> float:
    """Resolution in voxels (``box / shell``) where ``curve`` first falls below ``threshold``.

    The crossing is interpolated linearly between shells, starting from shell 1. A curve that
    stays above the threshold up to Nyquist gives 2.0 (Nyquist); one below it already at shell 1
    gives ``box`` (no resolved detail).
    """
    c = np.asarray(curve, dtype=np.float64)
    for s in range(1, len(c)):
        if c[s] < threshold:
            if s == 1:
                return float(box)
            frac = (c[s - 1] - threshold) / (c[s - 1] - c[s])
            return float(box / (s - 1 + frac))
    return 2.0


def shell_resolution(box: int, voxel_size: float) -> np.ndarray:
    """Resolution (Å) of each FSC shell (``inf`` for shell 0)."""
    s = np.arange(box // 2 + 1, dtype=np.float64)
    with np.errstate(divide="ignore"):
        return np.where(s > 0, box * voxel_size / np.maximum(s, 1e-300), np.inf)


# --------------------------------------------------------------- workflow-level helpers
def classes_to_average(class_sizes: list[int], k: int, min_particles: int
                       ) -> tuple[list[int], dict[int, int]]:
    """Split classes ``1..k`` into those large enough to average and the rest.

    ``class_sizes[i]`` is the size of class ``i + 1`` (missing trailing entries are empty
    classes). Returns ``(kept class numbers, {skipped class number: size})``.
    """
    need = max(int(min_particles), 2 * MIN_PER_HALF)
    sizes = list(class_sizes) + [0] * max(0, k - len(class_sizes))
    kept = [c for c in range(1, k + 1) if sizes[c - 1] >= need]
    skipped = {c: int(sizes[c - 1]) for c in range(1, k + 1) if sizes[c - 1] < need}
    return kept, skipped


def resample_map(volume: np.ndarray, voxel_in: float, voxel_out: float, box: int) -> np.ndarray:
    """Resample a cube centred at ``d // 2`` to ``voxel_out`` on a ``box`` cube centred at
    ``box // 2`` (cubic splines; the map should be band-limited below the new Nyquist)."""
    from scipy import ndimage

    vol = np.asarray(volume, dtype=np.float64)
    c_in, c_out = vol.shape[0] // 2, box // 2
    ar = (np.arange(box) - c_out) * (voxel_out / voxel_in) + c_in
    zz, yy, xx = np.meshgrid(ar, ar, ar, indexing="ij")
    out = ndimage.map_coordinates(vol, [zz, yy, xx], order=3, mode="constant", cval=0.0)
    return out.astype(np.float32)


def ctf_phase_flip(volume: np.ndarray, voxel_size: float, **ctf_params: float) -> np.ndarray:
    """Multiply a map's spectrum by the sign of the (radial, 3D) CTF: the map as an
    uncorrected average of CTF-modulated data shows it (dark protein, flipped shells)."""
    from .ctf import ctf_grid

    vol = np.asarray(volume, dtype=np.float64)
    sign = np.sign(ctf_grid(vol.shape, voxel_size, rfft=True, **ctf_params))
    return np.fft.irfftn(np.fft.rfftn(vol) * sign, s=vol.shape,
                         axes=(0, 1, 2)).astype(np.float32)


def dominant_class(true_classes: np.ndarray) -> tuple[int, int]:
    """Most frequent non-zero true class of a class's particles and its count (0, 0 if none)."""
    t = np.asarray(true_classes, dtype=np.int64)
    t = t[t > 0]
    if t.size == 0:
        return 0, 0
    counts = np.bincount(t)
    c = int(np.argmax(counts))
    return c, int(counts[c])
