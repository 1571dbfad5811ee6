"""Difference-of-Gaussians (DoG) particle picking, on numpy (CPU) or torch (CPU/GPU).

Score map ``S = sign · (G(σ₁) − G(σ₂)) * volume`` with ``σ₂ = ratio · σ₁`` and ``sign = +1``
for bright particles, ``−1`` for dark ones (raw cryo-ET: protein is dark). Peaks are local
maxima of ``S`` (3×3×3 neighbourhood) whose robust z-score ``(S − median) / (1.4826 MAD)``
(statistics over all voxels) reaches the threshold; greedy non-maximum suppression keeps the
strongest peak within ``min_distance``; peaks closer than ``edge`` to a face are dropped.

With ``bin`` = b > 1 the score map is computed on a b-times coarser grid: the volume is
low-passed by a cubic B-spline of width b (anti-aliasing) while keeping every b-th voxel,
the DoG (with σ reduced by that filter's own blur) is applied there by FFT, and peaks are
refined to sub-voxel positions by a parabola through their neighbours. The DoG passes almost
nothing near the coarse grid's Nyquist frequency, so little is lost while the work shrinks
about b³-fold.

Large tomograms are processed in slabs along ``z`` with enough overlap that every slab's core
sees exactly what the whole volume would; memory then scales with the slab, not the tomogram.
Both backends use the same filters, truncated Gaussian kernels and edge mode ("nearest"), so
they give the same picks up to floating-point ties.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import scipy.fft
from scipy.spatial import cKDTree

from . import TomoclustError
from .extract import edge_voxels, plan_resampling
from .formats.mrc import open_mrc
from .formats.star import particle_table

log = logging.getLogger(__name__)

_MAD_TO_SIGMA = 1.4826


@dataclass
class DogSettings:
    """Picking parameters in voxels (see :func:`params_from_angst` for the Å front end)."""

    sigma: float  # σ₁ in voxels
    ratio: float = 1.1  # σ₂ / σ₁
    contrast: str = "dark"  # "dark" or "bright"
    threshold: float = 3.0  # robust z-score
    min_distance: float = 10.0  # voxels
    edge: int = 0  # voxels from each face
    max_count: int | None = None
    chunk_z: int = 128  # slab depth: voxels of core per slab on the working grid (× bin fine)
    bin: int = 1  # evaluate the score map on a grid this many times coarser (1 = exact)


def params_from_angst(voxel_size: float, radius_angst: float, sigma_scale: float = 0.577,
                      ratio: float = 1.1, contrast: str = "dark", threshold: float = 3.0,
                      min_distance_angst: float | None = None, edge_angst: float = 0.0,
                      max_count: int | None = None, chunk_z: int = 128, bin: int = 1
                      ) -> DogSettings:
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
    return DogSettings(
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


def _bin_weights(b: int) -> np.ndarray:
    """Integer taps of the anti-aliasing filter used before keeping every ``b``-th voxel: the
    box of width ``b`` convolved with itself three times (1 3 3 1 for ``b`` = 2, a cubic
    B-spline); they sum to ``b³``. The transfer function ``(sin πbk / (b sin πk))³`` vanishes
    to third order at the frequencies that would alias onto the coarse grid's zero."""
    w = np.ones(1, dtype=np.int64)
    for _ in range(3):
        w = np.convolve(w, np.ones(b, dtype=np.int64))
    return w


#: variance (voxels²) of :func:`_bin_weights` per ``b² − 1``: 3 boxes of ``(b² − 1)/12`` each
_BIN_VARIANCE = 3.0 / 12.0


def _put(op, dst: np.ndarray, src: np.ndarray) -> None:
    """``dst = src`` (op = np.copyto) or ``dst += src`` (op = np.add), broadcasting src."""
    if op is np.copyto:
        np.copyto(dst, src, casting="unsafe")
    else:
        np.add(dst, src, out=dst, casting="unsafe")


def _reduce_axis(arr: np.ndarray, ax: int, b: int, n: int, rows: range, first: int = 0
                 ) -> np.ndarray:
    """Output voxels ``rows`` (coarse indices) of :func:`_bin_smooth` along one axis.

    ``arr`` holds fine voxels ``first ..`` of an axis of ``n`` voxels. Every tap reads a
    strided view; output voxels whose tap falls outside ``[0, n)`` read the face voxel
    instead. Taps of equal weight are added before one multiplication; the normalisation
    is left to the caller.
    """
    w = _bin_weights(b)
    pre = (slice(None),) * ax
    shape = arr.shape[:ax] + (len(rows),) + arr.shape[ax + 1:]
    acc = None
    for weight in sorted(set(w.tolist())):
        part = np.empty(shape, dtype=np.float32)
        for k, t in enumerate(np.flatnonzero(w == weight)):
            op = np.copyto if k == 0 else np.add  # the first tap sets every row
            off = int(t) - (b - 1)
            # output rows j (0-based within ``rows``) read fine voxel b·(start + j) + off
            j0 = max(-(off // b) - rows.start, 0)  # first row whose voxel is >= 0
            j1 = min((n - 1 - off) // b + 1 - rows.start, len(rows))  # past the last <= n − 1
            j1 = max(j1, j0)
            if j1 > j0:
                f0 = b * (rows.start + j0) + off - first
                f1 = b * (rows.start + j1 - 1) + off - first + 1
                _put(op, part[pre + (slice(j0, j1),)], arr[pre + (slice(f0, f1, b),)])
            if j0 > 0:
                _put(op, part[pre + (slice(0, j0),)], arr[pre + (slice(-first, 1 - first),)])
            if j1 < len(rows):
                _put(op, part[pre + (slice(j1, None),)],
                     arr[pre + (slice(n - 1 - first, n - first),)])
        if weight != 1:
            part *= np.float32(weight)
        if acc is None:
            acc = part
        else:
            acc += part
    return acc


def _bin_smooth(vol: np.ndarray, b: int, block: int = 4, workers: int = 1) -> np.ndarray:
    """Low-pass by :func:`_bin_weights` and keep every ``b``-th voxel, axis by axis.

    Voxel ``i`` of the result is centred on fine voxel ``b·i + (b − 1)/2``; edges are
    "nearest". The input (an array or a memory map) is read once, ``block`` output planes
    at a time, so that the temporaries of the three axis passes stay in the CPU cache;
    nothing larger than the output is allocated. Blocks are shared among ``workers``
    threads (numpy releases the GIL in the additions).
    """
    nz, ny, nx = vol.shape
    mz, my, mx = (-(-n // b) for n in vol.shape)
    out = np.empty((mz, my, mx), dtype=np.float32)

    def one(i0: int) -> None:
        rows = range(i0, min(i0 + block, mz))
        lo = max(rows.start * b - (b - 1), 0)
        hi = min((rows.stop - 1) * b + 2 * b - 1, nz)
        slab = np.asarray(vol[lo:hi])
        t = _reduce_axis(slab, 0, b, nz, rows, first=lo)
        t = _reduce_axis(t, 1, b, ny, range(my))
        out[rows.start:rows.stop] = _reduce_axis(t, 2, b, nx, range(mx))

    starts = range(0, mz, block)
    if workers > 1 and len(starts) > 1:
        with ThreadPoolExecutor(min(workers, len(starts))) as ex:
            for f in [ex.submit(one, i0) for i0 in starts]:
                f.result()
    else:
        for i0 in starts:
            one(i0)
    out *= np.float32(1.0 / float(b) ** 9)
    return out


def _bin_smooth_torch(v, b: int):
    """:func:`_bin_smooth` for a ``(z, y, x)`` torch tensor (edge padding, strided views)."""
    import torch.nn.functional as F

    w = _bin_weights(b)
    for ax in range(3):
        n = v.shape[ax]
        m = -(-n // b)
        pad = [0] * 6  # F.pad order: x, y, z (low, high)
        pad[2 * (2 - ax)] = b - 1
        pad[2 * (2 - ax) + 1] = b * m + b - 1 - n
        vp = F.pad(v[None, None], pad, mode="replicate")[0, 0]
        acc = None
        for t, wt in enumerate(w):
            sl = [slice(None)] * 3
            sl[ax] = slice(t, t + b * (m - 1) + 1, b)
            part = vp[tuple(sl)] * float(wt)
            acc = part if acc is None else acc.add_(part)
        v = acc
    return v / float(b) ** 9


def _grid_sigmas(p: DogSettings) -> tuple[float, float, int]:
    """σ₁, σ₂ (voxels of the working grid) and the DoG kernel radius on that grid.

    On a ``b``-times coarser grid the anti-aliasing filter has already blurred the volume
    (variance :data:`_BIN_VARIANCE` · (b² − 1) fine voxels²), which is taken off the Gaussians.
    """
    b = max(int(p.bin), 1)
    pre = _BIN_VARIANCE * (b * b - 1)
    s1 = float(np.sqrt(max(p.sigma**2 - pre, 0.25))) / b
    s2 = float(np.sqrt(max((p.sigma * p.ratio) ** 2 - pre, 0.25))) / b
    return s1, s2, int(4.0 * s2 + 0.5)


def _max3(s: np.ndarray) -> np.ndarray:
    """3×3×3 maximum filter with "nearest" edges, by shifted maxima along each axis."""
    m = s
    for ax in range(3):
        if s.shape[ax] < 2:
            continue
        out = m.copy()
        hi = (slice(None),) * ax + (slice(1, None),)
        lo = (slice(None),) * ax + (slice(None, -1),)
        np.maximum(out[hi], m[lo], out=out[hi])
        np.maximum(out[lo], m[hi], out=out[lo])
        m = out
    return m


def _dog_fft(v: np.ndarray, s1: float, s2: float, sign: float, workers: int) -> np.ndarray:
    """``sign · (G(s1) − G(s2)) * v`` with truncated kernels and "nearest" edges, by FFT.

    Padding by the kernel radius with edge values makes the circular product identical to
    separable correlation in "nearest" mode (to float32 rounding).
    """
    r = int(4.0 * s2 + 0.5)
    shp = [scipy.fft.next_fast_len(n + 2 * r, real=True) for n in v.shape]
    vp = np.pad(v, [(r, n - s - r) for n, s in zip(shp, v.shape, strict=True)], mode="edge")
    spec = scipy.fft.rfftn(vp, workers=workers, overwrite_x=True)
    del vp

    def transfer(sigma: float) -> np.ndarray:
        return (_kernel_transfer(shp[0], sigma)[:, None, None]
                * _kernel_transfer(shp[1], sigma)[None, :, None]
                * _kernel_transfer(shp[2], sigma, rfft=True)[None, None, :])

    spec *= np.float32(sign) * (transfer(s1) - transfer(s2))
    full = scipy.fft.irfftn(spec, s=shp, workers=workers, overwrite_x=True)
    return np.ascontiguousarray(full[r:r + v.shape[0], r:r + v.shape[1], r:r + v.shape[2]],
                                dtype=np.float32)


def _dog_numpy(vol: np.ndarray, p: DogSettings, workers: int = -1
               ) -> tuple[np.ndarray, np.ndarray, float]:
    """Score map, local-maximum mask and max |voxel| (of the working grid) for one slab.

    With ``bin`` = 1 the two Gaussian blurs are one multiplication in Fourier space by the
    difference of the truncated kernels' transforms (exactly the separable correlation of
    the torch backend). With ``bin`` = b > 1 the slab is first averaged over b×b×b blocks
    (cheap, memory-bound) and the DoG computed the same way on that b-times coarser grid:
    at σ₁ of a few voxels the DoG passes nothing near the coarse grid's Nyquist frequency,
    so the score map loses almost nothing while the FFTs shrink b³-fold.
    """
    b = max(int(p.bin), 1)
    threads = (os.cpu_count() or 1) if workers < 0 else max(workers, 1)
    v = np.asarray(vol, dtype=np.float32) if b == 1 else _bin_smooth(vol, b, workers=threads)
    s1, s2, _ = _grid_sigmas(p)
    mag = max(abs(float(v.max())), abs(float(v.min())))
    s = _dog_fft(v, s1, s2, -1.0 if p.contrast == "dark" else 1.0, workers)
    return s, s == _max3(s), mag


def _dog_torch(vol: np.ndarray, p: DogSettings, device: str
               ) -> tuple[np.ndarray, np.ndarray, float]:
    """:func:`_dog_numpy` on torch (any device): the same steps (anti-aliased binning, FFT
    with the truncated kernels' transfer functions, 3×3×3 maximum)."""
    try:
        import torch
        import torch.nn.functional as F
    except ImportError:
        raise TomoclustError("the torch backend of DoG picking needs PyTorch, which is not "
                             "installed in this step's environment") from None

    v = torch.as_tensor(np.ascontiguousarray(vol, dtype=np.float32), device=device)[None, None]
    b = max(int(p.bin), 1)
    if b > 1:
        v = _bin_smooth_torch(v[0, 0], b)[None, None]
    mag = float(v.abs().max())
    s1, s2, r = _grid_sigmas(p)
    shp = [scipy.fft.next_fast_len(n + 2 * r, real=True) for n in v.shape[2:]]
    pad = []
    for n, s in zip(reversed(shp), reversed(v.shape[2:]), strict=True):
        pad += [r, n - s - r]
    vp = F.pad(v, pad, mode="replicate")[0, 0]
    spec = torch.fft.rfftn(vp)
    del vp

    def transfer(sigma: float):
        t = [torch.as_tensor(_kernel_transfer(n, sigma, rfft=(i == 2)), device=spec.device)
             for i, n in enumerate(shp)]
        return t[0][:, None, None] * t[1][None, :, None] * t[2][None, None, :]

    sign = -1.0 if p.contrast == "dark" else 1.0
    spec *= sign * (transfer(s1) - transfer(s2))
    n0, n1, n2 = v.shape[2:]
    s = torch.fft.irfftn(spec, s=shp)[r:r + n0, r:r + n1, r:r + n2].contiguous()
    del spec
    mx = F.max_pool3d(F.pad(s[None, None], [1] * 6, mode="replicate"), kernel_size=3,
                      stride=1)[0, 0]
    peaks = s == mx
    return s.cpu().numpy(), peaks.cpu().numpy(), mag


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


def dog_pick(volume: np.ndarray, params: DogSettings, device: str | None = None,
             sample_per_slab: int = 200_000, seed: int = 0) -> pd.DataFrame:
    """Pick particles in a ``(z, y, x)`` volume (an array or a read-only memory map).

    Parameters
    ----------
    volume
        Tomogram; read slab by slab, so a memory-mapped MRC stays on disk.
    params
        :class:`DogSettings` in voxels.
    device
        ``None`` for the numpy backend, or a torch device string (``"cpu"``, ``"cuda"``,
        ``"cuda:1"``) for the torch backend.
    sample_per_slab
        Voxels per slab (of the working grid) sampled uniformly with replacement (seeded)
        for the global median/MAD; slabs smaller than this contribute every voxel.

    Returns
    -------
    DataFrame
        One row per pick, strongest first: ``x, y, z`` (voxels), ``score`` (DoG value) and
        ``zscore`` (robust z). Empty when nothing passes the threshold.
    """
    nz = volume.shape[0]
    p = params
    b = max(int(p.bin), 1)
    # blur support + local-max neighbourhood + parabola neighbour, in voxels of the grid
    reach = b * (_grid_sigmas(p)[2] + 2)
    # memory per slab follows the working grid (the fine slab is read a few planes at a
    # time): chunk_z working voxels are chunk_z · b fine ones, and slabs start on that grid
    step = max(int(p.chunk_z), 1) * b
    rng = np.random.default_rng(seed)
    cand_c, cand_s, samples, scale = [], [], [], 0.0
    for z0 in range(0, nz, step):
        z1 = min(z0 + step, nz)
        a, e = max(z0 - reach, 0), min(z1 + reach, nz)
        slab = volume[a:e]
        s, peaks, mag = _dog_numpy(slab, p) if device is None else _dog_torch(slab, p, device)
        scale = max(scale, mag)
        lo, hi = (z0 - a) // b, -(-(z1 - a) // b)
        core = s[lo:hi]
        flat = core.ravel()
        if flat.size > sample_per_slab:  # uniform, with replacement (cheap; seeded)
            flat = flat[rng.integers(0, flat.size, sample_per_slab)]
        samples.append(flat.astype(np.float64))
        idx = np.argwhere(peaks[lo:hi])
        pos = idx.astype(np.float64)
        if b > 1:  # sub-voxel peak position on the coarse grid (parabola through neighbours)
            pos += _parabolic_offsets(s, idx + np.array([lo, 0, 0]))
        # coarse voxel i is the mean of fine voxels b·i .. b·i + b − 1
        cand_c.append(pos * b + (b - 1) / 2 + np.array([z0, 0, 0]))
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


def refine_centres(volume: np.ndarray, coords_zyx: np.ndarray, radius: float,
                   contrast: str = "dark", iterations: int = 5, smooth: float = 1.0,
                   max_shift: float | None = None, margin: float = 0.0
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Sub-voxel particle centres: the centre of mass of each particle's own density at full
    resolution, found by mean shift.

    For each pick, a cube around it is read from ``volume`` (``(z, y, x)``; a memory map is
    fine) and lightly smoothed (Gaussian, ``smooth`` voxels). Its contrast-signed density
    above the cube's median (``contrast="dark"``: protein darker than the background) is
    the mass; its centre of mass inside a sphere of ``radius`` voxels about the current
    centre becomes the new centre, ``iterations`` times (stopping early when it moves less
    than 0.05 voxel). A pick that would move farther than ``max_shift`` (default: ``radius``)
    from where it started, or closer than ``margin`` voxels to a face, keeps its position: no
    neighbour is pulled in and no face crossed.

    Returns ``(refined (n, 3) zyx, moved (n,) bool)``.
    """
    from scipy.ndimage import gaussian_filter

    coords = np.asarray(coords_zyx, dtype=np.float64).reshape(-1, 3)
    out = coords.copy()
    moved = np.zeros(len(coords), dtype=bool)
    if len(coords) == 0 or iterations < 1:
        return out, moved
    if contrast not in ("dark", "bright"):
        raise TomoclustError(f"contrast must be 'dark' or 'bright', got {contrast!r}")
    sign = -1.0 if contrast == "dark" else 1.0
    max_shift = float(radius if max_shift is None else max_shift)
    shape = np.asarray(volume.shape)
    half = int(np.ceil(radius + max_shift + 2 * smooth + 1))
    for i, c0 in enumerate(coords):
        lo = np.maximum(np.round(c0).astype(np.int64) - half, 0)
        hi = np.minimum(np.round(c0).astype(np.int64) + half + 1, shape)
        cube = np.asarray(volume[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]], dtype=np.float32)
        if min(cube.shape) < 3:
            continue
        if smooth > 0:
            cube = gaussian_filter(cube, smooth, mode="nearest")
        mass = np.clip(sign * (cube - np.median(cube)), 0, None).astype(np.float64)
        grid = np.indices(cube.shape, dtype=np.float64)
        c = c0 - lo
        found = False
        for _ in range(iterations):
            d2 = sum((grid[a] - c[a]) ** 2 for a in range(3))
            w = mass * (d2 <= radius * radius)
            total = w.sum()
            if total <= 0:
                break
            found = True
            new = np.array([(w * grid[a]).sum() / total for a in range(3)])
            step = np.linalg.norm(new - c)
            c = new
            if step < 0.05:
                break
        pos = c + lo
        inside = np.all(pos >= margin) and np.all(pos < shape - margin) \
            and np.all(pos <= shape - 1)
        if found and np.linalg.norm(pos - c0) <= max_shift and inside:
            out[i] = pos
            moved[i] = True
    return out, moved


def refine_picks(volume: np.ndarray, picks: pd.DataFrame, params: DogSettings, radius: float
                 ) -> tuple[pd.DataFrame, np.ndarray]:
    """:func:`dog_pick`'s table with centres refined by :func:`refine_centres` (within the
    same edge), the DoG peaks kept as ``dog_x, dog_y, dog_z``. Picks that converged onto one
    particle are thinned again by the non-maximum suppression (the stronger DoG peak stays).

    Returns the table (strongest first) and, per row, whether its centre moved."""
    out = picks.copy()
    dog = picks[["z", "y", "x"]].to_numpy(dtype=np.float64)
    zyx, moved = refine_centres(volume, dog, radius, contrast=params.contrast, margin=params.edge)
    keep = np.sort(_nms(zyx, picks["score"].to_numpy(dtype=np.float64), params.min_distance))
    if len(keep) < len(picks):
        log.info("centre refinement: %d picks converged onto a stronger neighbour and were "
                 "dropped", len(picks) - len(keep))
    for k, a in enumerate("zyx"):
        out[f"dog_{a}"] = dog[:, k]
        out[a] = zyx[:, k]
    return out.iloc[keep].reset_index(drop=True), moved[keep]


def pick_tomogram(tomogram: str, name: str, cfg: Mapping[str, Any], extraction_voxel_size: float,
                  box: int, device: str = "cpu") -> pd.DataFrame:
    """DoG picks of one tomogram file as its RELION particle table.

    ``cfg`` holds the ``picking`` settings (Å); picks closer to a face than half an
    extraction box (``box``³ at ``extraction_voxel_size`` Å) are left out. The numpy engine
    runs on the CPU, torch only where it brings a GPU (``device``). With ``cfg["refine"]``
    the centres are refined at full resolution (:func:`refine_picks`). The table keeps the
    DoG score, its robust z-score and the DoG peak itself (``tclDogCoordinateX/Y/Z``, voxels,
    before refinement).
    """
    with open_mrc(tomogram, "tomogram") as mrc:
        vs = float(mrc.voxel_size.x)
        edge = edge_voxels(plan_resampling(vs, float(extraction_voxel_size), int(box)))
        params = params_from_angst(
            vs, cfg["particle_radius"], sigma_scale=cfg["sigma_scale"], ratio=cfg["sigma_ratio"],
            contrast=cfg["contrast"], threshold=cfg["threshold"],
            min_distance_angst=cfg["min_distance"], edge_angst=edge * vs,
            max_count=cfg["max_count"], chunk_z=cfg["chunk_z"], bin=cfg["bin"],
        )
        picks = dog_pick(mrc.data, params, device=None if device == "cpu" else device)
        shape = mrc.data.shape
        if cfg["refine"]:  # sub-voxel centres at full resolution (local centre of mass)
            picks, moved = refine_picks(mrc.data, picks, params, cfg["particle_radius"] / vs)
            shift = np.linalg.norm(picks[["x", "y", "z"]].to_numpy()
                                   - picks[["dog_x", "dog_y", "dog_z"]].to_numpy(), axis=1) * vs
            log.info("%s: centres refined for %d of %d picks (median shift %.1f Å)",
                     name, int(moved.sum()), len(moved),
                     float(np.median(shift)) if len(shift) else 0.0)
        else:
            for a in "xyz":
                picks[f"dog_{a}"] = picks[a]
    log.info("%s: %d picks (σ1 = %.2f voxels, backend %s)", name, len(picks),
             params.sigma, "numpy" if device == "cpu" else f"torch/{device}")
    return particle_table(name, picks[["x", "y", "z"]].to_numpy(), shape, vs,
                          extra={"tclDogScore": picks["score"].to_numpy(),
                                 "tclDogZScore": picks["zscore"].to_numpy(),
                                 **{f"tclDogCoordinate{a.upper()}": picks[f"dog_{a}"].to_numpy()
                                    for a in "xyz"}})
