"""Re-centring of subtomograms by their centre of mass, on arrays (no torch).

Picks sit a few voxels off the particle's centre (a DoG pick: median 2 voxels of 12 Å, 90th
percentile 4), and everything expanded about the box centre (the rotation-invariant shell
spectra, the radial profile, class averaging's first reference) changes with that offset. The
estimator here is the iterated centre of mass of the low-passed, sign-corrected box inside a
sphere about the current estimate; the shift is a Fourier phase ramp (periodic: noise that
wraps around stays noise). :mod:`tomoclust.features.centring` adds alignment to the
rotational average and noise whitening, on torch tensors.
"""

from __future__ import annotations

import numpy as np


def _freqs(d: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    f = np.fft.fftfreq(d).astype(np.float32)
    fr = np.fft.rfftfreq(d).astype(np.float32)
    return f[:, None, None], f[None, :, None], fr[None, None, :]


def fourier_shift(vols: np.ndarray, shifts_zyx: np.ndarray) -> np.ndarray:
    """Shift ``(n, d, d, d)`` volumes by ``(n, 3)`` voxels (zyx; content moves by +shift),
    periodically, by a phase ramp; float32."""
    d = vols.shape[-1]
    fz, fy, fx = _freqs(d)
    s = np.asarray(shifts_zyx, dtype=np.float32)
    phase = (-2j * np.pi) * (s[:, 0, None, None, None] * fz + s[:, 1, None, None, None] * fy
                             + s[:, 2, None, None, None] * fx)
    spec = np.fft.rfftn(np.asarray(vols, dtype=np.float32), axes=(-3, -2, -1))
    spec *= np.exp(phase.astype(np.complex64))
    return np.fft.irfftn(spec, s=vols.shape[-3:], axes=(-3, -2, -1)).astype(np.float32)


def com_offsets(vols: np.ndarray, sigma: float = 1.0, radius: float | None = None,
                iterations: int = 3, contrast: str = "dark", max_shift: float | None = None
                ) -> np.ndarray:
    """``(n, 3)`` zyx offsets (voxels) of the particles from the box centre ``d // 2``, by the
    iterated centre of mass of the low-passed box (Gaussian, ``sigma`` voxels), sign-corrected
    (``contrast="dark"``: density is negative, as in raw cryo-ET), less its mean, positive
    part, inside a sphere of ``radius`` (default ``d / 5``) about the current estimate.
    Defaults measured on off-centred (±2 voxels) 32³ boxes of ~250 kDa complexes at 12 Å
    (benchmarks/RESULTS.md, "Robustness"): rms error per axis 0.20 voxel at SNR 100, 0.30 at
    SNR 0.1, 0.38 at SNR 0.05 (0.34 / 0.52 / 0.66 as 3-D distances; aitom convention, 2 seeds ×
    500 boxes); a wider sphere or a stronger blur is worse there.

    The low-passed box is resampled at half the rate first (:func:`lowpass_half`; ``sigma`` ≥
    1 keeps that harmless), which makes the iterations 8 times cheaper. Offsets are clamped
    to ``max_shift`` (default ``d / 4``) per axis.
    """
    if contrast not in ("dark", "bright"):
        raise ValueError(f"contrast must be 'dark' or 'bright', not {contrast!r}")
    vols = np.asarray(vols, dtype=np.float32)
    d = vols.shape[-1]
    spec = np.fft.rfftn(vols, axes=(-3, -2, -1))
    low = lowpass_half(spec, d, sigma, np)
    return com_offsets_pooled(low, d, radius, iterations, contrast, max_shift)


def lowpass_half(spec, d: int, sigma: float, xp):
    """The low-passed boxes :func:`com_offsets` works on, from their half spectra ``spec``
    (``rfftn`` of ``(n, d, d, d)`` boxes; ``xp`` is ``numpy`` or ``torch``, on ``spec``'s
    device): Gaussian of ``sigma`` voxels, and, when ``d`` is even and ``sigma`` ≥ 1 (the
    Gaussian has taken the top half of the band by then), the band cropped to the lowest
    ``d/2`` frequencies per axis, so the box comes back at ``(d/2)``³, its sample ``j`` at voxel
    ``2j`` of the original (the scale of the values changes; a centre of mass does not care).
    The Gaussian is separable: one factor per axis."""
    m = d // 2 if d % 2 == 0 and sigma >= 1 else d
    gz = np.exp(-2 * (np.pi * sigma * np.fft.fftfreq(d)) ** 2).astype(np.float32)
    gx = np.exp(-2 * (np.pi * sigma * np.fft.rfftfreq(d)) ** 2).astype(np.float32)
    if m < d:
        k = np.r_[0:(m + 1) // 2, d - m // 2:d]
        gz, gx = gz[k], gx[:m // 2 + 1]
        if xp is not np:
            k = xp.as_tensor(k, device=spec.device)
        spec = spec[:, k][:, :, k][..., :m // 2 + 1]
    if xp is not np:
        gz, gx = (xp.as_tensor(g, device=spec.device) for g in (gz, gx))
    spec = spec * (gz[:, None, None] * gz[None, :, None] * gx[None, None, :])
    if xp is np:
        return np.fft.irfftn(spec, s=(m, m, m), axes=(-3, -2, -1)).astype(np.float32)
    return xp.fft.irfftn(spec, s=(m, m, m), dim=(-3, -2, -1))


def com_offsets_pooled(pooled: np.ndarray, box: int, radius: float | None = None,
                       iterations: int = 3, contrast: str = "dark",
                       max_shift: float | None = None) -> np.ndarray:
    """The iterations of :func:`com_offsets`, on its low-passed ``box``³ boxes as
    :func:`lowpass_half` returns them (``pooled``: ``(n, m, m, m)``, sample ``j`` at voxel
    ``j·box/m``), for callers that have the boxes' spectra anyway (the invariant features, in
    torch)."""
    if contrast not in ("dark", "bright"):
        raise ValueError(f"contrast must be 'dark' or 'bright', not {contrast!r}")
    n, d, m = len(pooled), box, pooled.shape[-1]
    b = d // m
    radius = d / 5 if radius is None else radius
    max_shift = d / 4 if max_shift is None else max_shift
    low = -pooled if contrast == "dark" else pooled
    low = np.clip(low - low.mean((1, 2, 3), keepdims=True), 0, None)
    c = (np.arange(m, dtype=np.float32) * b - d // 2).astype(np.float32)
    gz, gy, gx = c[:, None, None], c[None, :, None], c[None, None, :]
    g2 = gz**2 + gy**2 + gx**2
    est = np.zeros((n, 3), dtype=np.float32)
    for _ in range(iterations):
        ez, ey, ex = (est[:, i, None, None, None] for i in range(3))
        r2 = g2 - 2 * (ez * gz + ey * gy + ex * gx) + (est**2).sum(1)[:, None, None, None]
        w = low * (r2 <= radius**2)
        tot = np.maximum(w.sum((1, 2, 3)), 1e-12)
        est = np.stack([(w.sum((2, 3)) * c).sum(1), (w.sum((1, 3)) * c).sum(1),
                        (w.sum((1, 2)) * c).sum(1)], 1) / tot[:, None]
        est = np.clip(est, -max_shift, max_shift).astype(np.float32)
    return est


def recentre_com(stack: np.ndarray, batch_size: int = 256, **kw
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Re-centred copy of a ``(n, d, d, d)`` stack (float32) and the ``(n, 3)`` offsets (zyx
    voxels, :func:`com_offsets`; ``kw`` go there) of the particles from the original box
    centres: each box was shifted by minus its offset. Batch by batch (bounded memory)."""
    out = np.empty(stack.shape, dtype=np.float32)
    off = np.zeros((len(stack), 3), dtype=np.float32)
    for a in range(0, len(stack), batch_size):
        sl = slice(a, a + batch_size)
        off[sl] = com_offsets(stack[sl], **kw)
        out[sl] = fourier_shift(stack[sl], -off[sl])
    return out, off
