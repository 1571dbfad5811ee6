"""Fourier-space helpers: frequency grids, Fourier cropping/padding (resampling), filters.

Frequencies are in cycles per voxel unless a function says otherwise. Arrays are ``(z, y, x)``.
"""

from __future__ import annotations

import numpy as np


def freq_grid(shape: tuple[int, ...], rfft: bool = False) -> list[np.ndarray]:
    """Broadcastable frequency coordinates (cycles/voxel), one per axis, in ``fftn`` layout.

    With ``rfft=True`` the last axis follows ``rfftn`` (non-negative frequencies only).
    """
    grids = []
    nd = len(shape)
    for axis, n in enumerate(shape):
        f = np.fft.rfftfreq(n) if (rfft and axis == nd - 1) else np.fft.fftfreq(n)
        view = [1] * nd
        view[axis] = f.size
        grids.append(f.reshape(view))
    return grids


def radial_freq(shape: tuple[int, ...], rfft: bool = False) -> np.ndarray:
    """Modulus of the frequency (cycles/voxel) on an ``fftn`` (or ``rfftn``) grid."""
    grids = freq_grid(shape, rfft=rfft)
    return np.sqrt(sum(g**2 for g in grids))


def fourier_resample(volume: np.ndarray, shape_out: tuple[int, ...]) -> np.ndarray:
    """Resample by cropping or zero-padding the centred Fourier transform.

    The output spans the same physical extent as the input, so its voxel size is
    ``voxel_in * n_in / n_out`` along each axis. Mean values are preserved.

    Parameters
    ----------
    volume
        Real array of any dimensionality.
    shape_out
        Target shape, same dimensionality.
    """
    vol = np.asarray(volume)
    if vol.ndim != len(shape_out):
        raise ValueError(f"shape_out {shape_out} does not match a {vol.ndim}-d array")
    if tuple(vol.shape) == tuple(shape_out):
        return vol.astype(np.float32, copy=True)
    spec = np.fft.fftshift(np.fft.fftn(vol.astype(np.float64)))
    out = np.zeros(shape_out, dtype=np.complex128)
    src, dst = [], []
    for n_in, n_out in zip(vol.shape, shape_out, strict=True):
        n = min(n_in, n_out)
        c_in, c_out = n_in // 2, n_out // 2
        lo = n // 2
        src.append(slice(c_in - lo, c_in - lo + n))
        dst.append(slice(c_out - lo, c_out - lo + n))
    out[tuple(dst)] = spec[tuple(src)]
    scale = np.prod(shape_out) / np.prod(vol.shape)
    res = np.fft.ifftn(np.fft.ifftshift(out)).real * scale
    return res.astype(np.float32)


def binned_shape(shape: tuple[int, ...], voxel_in: float, voxel_out: float,
                 tol: float = 1e-3) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Shapes for exact Fourier rescaling from ``voxel_in`` to ``voxel_out``.

    Returns ``(crop_shape, out_shape)``: the input is first cut (from the high end of each
    axis, so voxel coordinates keep their origin) to ``crop_shape``, the largest shape whose
    physical extent is a whole number of output voxels; ``fourier_resample`` of that gives
    ``out_shape`` at exactly ``voxel_out``.
    """
    ratio = voxel_out / voxel_in
    crop, out = [], []
    for n in shape:
        m = int(np.floor(n / ratio + 1e-9))
        while m > 0:
            n_c = m * ratio
            if abs(n_c - round(n_c)) <= tol * max(1.0, ratio) and round(n_c) <= n:
                break
            m -= 1
        if m <= 0:
            raise ValueError(
                f"no shape of at most {n} voxels at {voxel_in} Å spans a whole number of "
                f"{voxel_out} Å voxels"
            )
        crop.append(round(m * ratio))
        out.append(m)
    return tuple(crop), tuple(out)


def gaussian_lowpass(volume: np.ndarray, sigma_freq: float) -> np.ndarray:
    """Multiply the spectrum by ``exp(-k² / (2 sigma_freq²))`` (k in cycles/voxel)."""
    vol = np.asarray(volume, dtype=np.float64)
    k2 = radial_freq(vol.shape, rfft=True) ** 2
    spec = np.fft.rfftn(vol) * np.exp(-k2 / (2.0 * sigma_freq**2))
    return np.fft.irfftn(spec, s=vol.shape, axes=tuple(range(vol.ndim))).astype(np.float32)


def wedge_mask(shape: tuple[int, int, int], tilt_min: float, tilt_max: float,
               rfft: bool = True) -> np.ndarray:
    """Binary missing-wedge mask for a single-axis tilt series about ``y``.

    A Fourier component ``(kz, ky, kx)`` is measured when the plane of some tilt angle
    ``θ`` in ``[tilt_min, tilt_max]`` contains it. Tilting the specimen by ``θ`` about y
    rotates the measured central plane (normal ``z``) to normal ``(sin θ, 0, cos θ)`` in
    ``(x, _, z)``; the component is in that plane when ``kx sin θ + kz cos θ = 0``, i.e. at
    angle ``atan2(-kz, kx)`` measured from the ``kx`` axis. Components on the ``ky`` axis
    (``kx = kz = 0``) are always measured.
    """
    kz, ky, kx = freq_grid(shape, rfft=rfft)
    kz, ky, kx = np.broadcast_arrays(kz, ky, kx)
    # angle of the (kx, kz) projection from the kx axis, folded to [-90, 90)
    ang = np.degrees(np.arctan2(-kz, kx))
    ang = (ang + 90.0) % 180.0 - 90.0
    mask = (ang >= tilt_min - 1e-9) & (ang <= tilt_max + 1e-9)
    mask |= (kx == 0) & (kz == 0)
    return mask.astype(np.float32)
