"""Re-centring of subtomograms and noise pre-whitening, before any features are computed.

Picks sit a few voxels off the particle's centre (a DoG pick: median 2 voxels of 12 Å, 90th
percentile 4), and descriptors expanded about the box centre (shell spectra, radial profile)
change with that offset as much as with the particle's shape. Two estimators of each particle's
offset, both on a low-passed copy of the box:

``com``
    iterated centre of mass of the (sign-corrected, positive part of the) low-passed box inside
    a sphere about the current centre estimate;
``align``
    translational alignment, by FFT cross-correlation, to the rotational average of all boxes
    (the spherical mean of their average about the box centre), iterated: each round re-centres
    every box, and the reference is recomputed from the re-centred boxes. A rotational average
    matches any orientation of the particle equally, so the correlation peak sits at the
    particle's centre of density whatever its rotation.

The shift is applied by a Fourier phase ramp (periodic; noise that wraps around stays noise).

Pre-whitening (:func:`whiten`) divides every box's spectrum by the square root of a radial
noise power spectrum estimated from the data themselves: the boxes' corners outside a sphere
that holds the particle (or empty boxes, when given), so that smooth low-frequency noise does
not dominate the descriptors.
"""

from __future__ import annotations

import numpy as np
import torch

from ..features.invariant import gaussian_blur, spherical_means


def _freqs(d: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    f = torch.fft.fftfreq(d, device=device, dtype=torch.float64)
    fr = torch.fft.rfftfreq(d, device=device, dtype=torch.float64)
    return f[:, None, None], f[None, :, None], fr[None, None, :]


def fourier_shift(vols: torch.Tensor, shifts_zyx: torch.Tensor) -> torch.Tensor:
    """Shift ``(n, d, d, d)`` volumes by ``(n, 3)`` voxels (zyx; content moves by +shift),
    periodically, by a phase ramp."""
    d = vols.shape[-1]
    fz, fy, fx = _freqs(d, vols.device)
    s = shifts_zyx.to(torch.float32)
    fz, fy, fx = fz.float(), fy.float(), fx.float()
    phase = -2j * torch.pi * (s[:, 0, None, None, None] * fz + s[:, 1, None, None, None] * fy
                              + s[:, 2, None, None, None] * fx)
    spec = torch.fft.rfftn(vols.to(torch.float32), dim=(-3, -2, -1)) * torch.exp(phase)
    return torch.fft.irfftn(spec, s=vols.shape[-3:], dim=(-3, -2, -1)).to(vols.dtype)


def _grid(d: int, device) -> torch.Tensor:
    c = torch.arange(d, device=device, dtype=torch.float64) - d // 2
    return torch.stack(torch.meshgrid(c, c, c, indexing="ij"))  # (3, d, d, d) zyx


def com_offsets(vols: torch.Tensor, sigma: float = 1.0, radius: float | None = None,
                iterations: int = 3, contrast: str = "dark", max_shift: float | None = None
                ) -> torch.Tensor:
    """``(n, 3)`` zyx offsets (voxels) of the particles from the box centre ``d // 2``, by the
    iterated centre of mass of the low-passed box (Gaussian, ``sigma`` voxels), sign-corrected
    (``contrast="dark"``: density is negative, as in raw cryo-ET), less its mean, positive
    part, inside a sphere of ``radius`` (default ``d / 5``) about the current estimate.
    Defaults measured on off-centred (±2 voxels) 32³ boxes of ~250 kDa complexes at 12 Å
    (benchmarks/RESULTS.md, "Robustness"): rms error 0.2 voxel at SNR 100, 0.6 at SNR 0.1,
    0.7 at SNR 0.05 (aitom convention); a wider sphere or a stronger blur is worse there.

    The low-passed box is averaged over 2×2×2 blocks first (``sigma`` ≥ 1 keeps that
    harmless), which makes the iterations 8 times cheaper. Offsets are clamped to
    ``max_shift`` (default ``d / 4``) per axis.
    """
    d = vols.shape[-1]
    radius = d / 5 if radius is None else radius
    max_shift = d / 4 if max_shift is None else max_shift
    low = gaussian_blur(vols.to(torch.float32), sigma)
    if contrast == "dark":
        low = -low
    elif contrast != "bright":
        raise ValueError(f"contrast must be 'dark' or 'bright', not {contrast!r}")
    b = 2 if d % 2 == 0 and sigma >= 1 else 1
    if b > 1:
        low = torch.nn.functional.avg_pool3d(low[:, None], b)[:, 0]
    low = (low - low.mean((1, 2, 3), keepdim=True)).clamp(min=0)
    m = low.shape[-1]
    c = (torch.arange(m, device=vols.device, dtype=torch.float32) * b + (b - 1) / 2 - d // 2)
    gz, gy, gx = c[:, None, None], c[None, :, None], c[None, None, :]
    g2 = gz**2 + gy**2 + gx**2
    est = torch.zeros((len(vols), 3), dtype=torch.float32, device=vols.device)
    for _ in range(iterations):
        ez, ey, ex = (est[:, i, None, None, None] for i in range(3))
        r2 = g2 - 2 * (ez * gz + ey * gy + ex * gx) + (est**2).sum(1)[:, None, None, None]
        w = low * (r2 <= radius**2)
        tot = w.sum((1, 2, 3)).clamp(min=1e-12)
        est = torch.stack([(w.sum((2, 3)) * c).sum(1), (w.sum((1, 3)) * c).sum(1),
                           (w.sum((1, 2)) * c).sum(1)], 1) / tot[:, None]
        est = est.clamp(-max_shift, max_shift)
    return est


def _radial_reference(vols: torch.Tensor) -> torch.Tensor:
    """The spherical mean about the centre of the average of ``vols``, as a volume."""
    d = vols.shape[-1]
    avg = vols.mean(0, keepdim=True)
    prof = spherical_means(avg)[0]
    c = torch.arange(d, device=vols.device, dtype=torch.float64) - d // 2
    r = torch.sqrt(c[:, None, None] ** 2 + c[None, :, None] ** 2 + c[None, None, :] ** 2)
    shell = torch.round(r).long().clamp(max=d // 2)
    ref = prof[shell]
    return ref - ref.mean()


def align_offsets(vols: torch.Tensor, sigma: float = 1.5, iterations: int = 3,
                  max_shift: float | None = None, batch_size: int = 512) -> torch.Tensor:
    """``(n, 3)`` zyx offsets by FFT cross-correlation with the rotational average of all
    boxes, iterated (module docstring). Sub-voxel by a parabola through the peak's neighbours
    along each axis."""
    d = vols.shape[-1]
    max_shift = d / 4 if max_shift is None else max_shift
    low = gaussian_blur(vols.to(torch.float64), sigma)
    g = torch.fft.fftfreq(d, device=vols.device) * d  # signed integer lags
    lag = torch.stack(torch.meshgrid(g, g, g, indexing="ij")).to(torch.float64)
    allowed = (lag**2).sum(0) <= max_shift**2
    est = torch.zeros((len(vols), 3), dtype=torch.float64, device=vols.device)
    for _ in range(iterations):
        ref = _radial_reference(fourier_shift(low, -est))
        fref = torch.conj(torch.fft.rfftn(ref, dim=(-3, -2, -1)))
        for a in range(0, len(vols), batch_size):
            sl = slice(a, a + batch_size)
            cc = torch.fft.irfftn(torch.fft.rfftn(low[sl], dim=(-3, -2, -1)) * fref,
                                  s=(d, d, d), dim=(-3, -2, -1))
            cc = torch.where(allowed, cc, torch.tensor(-torch.inf, dtype=cc.dtype))
            idx = cc.flatten(1).argmax(1)
            iz, iy, ix = idx // (d * d), (idx // d) % d, idx % d
            peak = torch.stack([iz, iy, ix], 1)
            sub = torch.zeros((len(idx), 3), dtype=torch.float64, device=vols.device)
            rows = torch.arange(len(idx), device=vols.device)
            c0 = cc[rows, iz, iy, ix]
            for ax in range(3):
                lo, hi = peak.clone(), peak.clone()
                lo[:, ax] = (lo[:, ax] - 1) % d
                hi[:, ax] = (hi[:, ax] + 1) % d
                cm = cc[rows, lo[:, 0], lo[:, 1], lo[:, 2]]
                cp = cc[rows, hi[:, 0], hi[:, 1], hi[:, 2]]
                den = cm - 2 * c0 + cp
                ok = torch.isfinite(cm) & torch.isfinite(cp) & (den < 0)
                sub[:, ax] = torch.where(ok, 0.5 * (cm - cp) / torch.where(ok, den, 1.0), 0.0)
            est[sl] = (lag[:, iz, iy, ix].T + sub.clamp(-0.5, 0.5))
    return est


def recentre(stack: np.ndarray, method: str = "com", device: str = "cpu",
             batch_size: int = 1024, **kw) -> tuple[np.ndarray, np.ndarray]:
    """Re-centred copy of a ``(n, d, d, d)`` stack and the ``(n, 3)`` offsets (zyx voxels) of
    the particles from the original box centres (the box was shifted by minus these)."""
    from ..features.train import to_tensor

    if method not in ("align", "com", "com+align"):
        raise ValueError(f"unknown centring method {method!r} (com, align or com+align)")
    with torch.inference_mode():
        v = to_tensor(stack, np.arange(len(stack)), device)
        if method == "align":
            off = align_offsets(v, **kw)
        elif method == "com":
            off = com_offsets(v, **kw)
        else:
            off = com_offsets(v, **kw.get("com", {}))
            off = off + align_offsets(fourier_shift(v, -off), **kw.get("align", {}))
        out = np.empty(stack.shape, dtype=np.float32)
        for a in range(0, len(stack), batch_size):
            sl = slice(a, a + batch_size)
            out[sl] = fourier_shift(v[sl], -off[sl]).float().cpu().numpy()
    return out, off.cpu().numpy()


def noise_spectrum(stack: np.ndarray, radius: float | None = None,
                   empty: np.ndarray | None = None) -> np.ndarray:
    """Radial noise power spectrum ``(d//2 + 1,)`` (shells of the rounded frequency index),
    from ``empty`` boxes when given, else from every box's corners outside a sphere of
    ``radius`` voxels (default ``0.4 d``) about the centre, corrected for the masked fraction."""
    x = torch.as_tensor(np.asarray(empty if empty is not None else stack), dtype=torch.float64)
    d = x.shape[-1]
    if empty is None:
        radius = 0.4 * d if radius is None else radius
        c = torch.arange(d, dtype=torch.float64) - d // 2
        r = torch.sqrt(c[:, None, None] ** 2 + c[None, :, None] ** 2 + c[None, None, :] ** 2)
        mask = (r > radius).to(torch.float64)
        x = (x - (x * mask).sum((1, 2, 3), keepdim=True) / mask.sum()) * mask
        frac = float(mask.mean())
    else:
        frac = 1.0
    p = (torch.fft.fftn(x, dim=(-3, -2, -1)).abs() ** 2).mean(0) / frac
    return spherical_means(torch.fft.ifftshift(p)[None])[0].numpy()


def whiten(stack: np.ndarray, spectrum: np.ndarray, floor: float = 1e-3) -> np.ndarray:
    """Divide every box's spectrum by ``sqrt(spectrum)`` (radial, :func:`noise_spectrum`), with
    the spectrum floored at ``floor`` times its maximum; boxes renormalised to unit variance."""
    x = torch.as_tensor(np.asarray(stack), dtype=torch.float32)
    d = x.shape[-1]
    f = torch.fft.fftfreq(d) * d
    fr = torch.fft.rfftfreq(d) * d
    r = torch.sqrt(f[:, None, None] ** 2 + f[None, :, None] ** 2 + fr[None, None, :] ** 2)
    shell = torch.round(r).long().clamp(max=d // 2)
    s = torch.as_tensor(spectrum, dtype=torch.float64)
    s = torch.clamp(s, min=floor * float(s.max()))
    filt = (1.0 / torch.sqrt(s))[shell].to(torch.float32)
    out = torch.fft.irfftn(torch.fft.rfftn(x, dim=(-3, -2, -1)) * filt, s=(d, d, d),
                           dim=(-3, -2, -1))
    out = out - out.mean((1, 2, 3), keepdim=True)
    out = out / out.std(dim=(1, 2, 3), keepdim=True).clamp(min=1e-12)
    return out.numpy()
