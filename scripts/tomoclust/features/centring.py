"""Re-centring of subtomograms and noise pre-whitening, before any features are computed
(torch: the alignment estimator and whitening; the centre-of-mass estimator and the Fourier
shift work on arrays, :mod:`tomoclust.numerics.centring`, so that extraction needs no torch).

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

from ..numerics.centring import com_offsets as com_offsets_array
from ..numerics.centring import recentre_com
from .invariant import gaussian_blur, spherical_means


def fourier_shift(vols: torch.Tensor, shifts_zyx: torch.Tensor) -> torch.Tensor:
    """Shift ``(n, d, d, d)`` volumes by ``(n, 3)`` voxels (zyx; content moves by +shift),
    periodically, by a phase ramp (on the volumes' device)."""
    d = vols.shape[-1]
    f = torch.fft.fftfreq(d, device=vols.device)
    fr = torch.fft.rfftfreq(d, device=vols.device)
    s = shifts_zyx.to(device=vols.device, dtype=torch.float32)
    phase = -2j * torch.pi * (s[:, 0, None, None, None] * f[:, None, None]
                              + s[:, 1, None, None, None] * f[None, :, None]
                              + s[:, 2, None, None, None] * fr[None, None, :])
    spec = torch.fft.rfftn(vols.to(torch.float32), dim=(-3, -2, -1)) * torch.exp(phase)
    return torch.fft.irfftn(spec, s=vols.shape[-3:], dim=(-3, -2, -1)).to(vols.dtype)


def com_offsets(vols: torch.Tensor, **kw) -> torch.Tensor:
    """:func:`tomoclust.numerics.centring.com_offsets` of a tensor (computed on the CPU)."""
    off = com_offsets_array(vols.detach().float().cpu().numpy(), **kw)
    return torch.as_tensor(off, device=vols.device)


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
    from .train import to_tensor

    if method not in ("align", "com", "com+align"):
        raise ValueError(f"unknown centring method {method!r} (com, align or com+align)")
    if method == "com":
        return recentre_com(stack, **kw)
    with torch.inference_mode():
        v = to_tensor(stack, np.arange(len(stack)), device)
        if method == "align":
            off = align_offsets(v, **kw)
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
