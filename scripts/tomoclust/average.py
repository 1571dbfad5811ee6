"""Reference-free subtomogram alignment and averaging of one class, with gold-standard FSC.

Model and conventions
    A particle ``X`` is the reference ``V`` rotated by ``R`` and shifted by ``t`` (voxels, xyz):
    ``X(q) = V(Rᵀ(q − t))``, seen through the missing wedge ``W`` of its tomogram (tilt axis y,
    :func:`tomoclust.numerics.fourier.wedge_mask`), plus noise. ``R`` follows
    :mod:`tomoclust.numerics.rotations`
    (RELION: ``rlnAngle*`` = :func:`~tomoclust.numerics.rotations.relion_angles` of ``R``); RELION's
    ``rlnOrigin*Angst`` is ``−t · voxel_size`` (the particle's centre lies at the box centre
    minus the origin, as in RELION's re-centring ``coordinate − origin``). Volumes rotate about
    voxel ``d // 2``; spectra are taken of ``ifftshift``-ed volumes so that this centre is the
    Fourier origin and rotations act on frequencies as on positions.

Scoring (missing-wedge-aware)
    Constrained cross-correlation in Fourier space (Förster et al. 2008): for a candidate
    ``(R, t)`` only the frequencies the particle measured count,
    ``CC = Σ_k W(k) X̂(k) conj(M̂(k)) / sqrt(Σ_k W|X̂|² · Σ_k W|M̂|²)`` with ``M`` the rotated,
    masked reference, summed over a band ``0 < |k| ≤ k_band``. Applying the particle's wedge to
    the rotated reference is the same as rotating the wedge with the particle into the reference
    frame (``W(R k)``). The reference normalisation depends on ``R`` (the wedge cuts a different
    part of the rotated reference) — that is the "constrained" part; with no wedge the score is
    the plain normalised correlation.

Search
    *Global*: every rotation of a uniform SO(3) grid
    (:func:`tomoclust.numerics.rotations.so3_grid`, super-Fibonacci
    spiral, ``ceil(8π²/δ³)`` rotations for a step ``δ``) with a translational search by inverse
    FFT of the product spectra on a grid cropped to the band (shifts up to ``max_shift``,
    parabolic sub-grid peak). The band is limited by the angular step: a rotation error of
    ``δ/2`` moves a point at the mask radius ``r`` by ``r δ/2`` voxels, so only frequencies up
    to ``1 / (r δ)`` are compared. *Local*: around each particle's 3 best grid rotations (the
    single best is sometimes a false peak at the coarse band), a 3×3×3 grid
    of axis-angle perturbations of spacing ``δ/2``, then ``δ/4`` ... down to ``local_step``,
    each with its own translational search at the correspondingly higher band. Both run in
    every iteration (a particle misaligned against an early, noisy reference can recover). Rotated
    references are never built in real space: the masked reference's spectrum, oversampled
    twice by zero padding, is interpolated (trilinear, ``torch.grid_sample``) at the rotated
    band frequencies of all particles x rotations in one call.

Averaging (wedge-compensated)
    Every particle is brought into the reference frame (``V_i(p) = X_i(R_i p + t_i)``,
    trilinear interpolation on a 2x Fourier-oversampled grid), its spectrum weighted by its
    rotated wedge ``w_i(k) = W(R_i k)``, and ``V̂ = Σ w_i X̂_i / (Σ w_i² + λ)`` with the
    Wiener-like regulariser ``λ = wiener · n`` (frequencies measured by few particles are
    damped, never amplified).

Gold standard
    The particles are split at random (seeded) into two halves, refined independently, each
    from its own initial reference: the most typical particle of the half (the one whose
    radial density profile correlates best with the half's mean profile), low-passed to
    ``initial_resolution``. After every iteration half 2 is aligned to half 1 (proper rotations
    only) to measure the FSC, whose 0.143 crossing sets the band of the next iteration; at the
    end half 2's orientations are composed with that alignment so that all particles, both half
    maps and the full average share one frame. FSCs are of the masked maps (soft sphere).

Everything is batched in torch: the device follows the particle tensor (CPU always works).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from . import TomoclustError
from .evaluate import truth_classes
from .formats.image_names import stack_rows
from .formats.mrc import read_mrc
from .formats.stacks import open_stack
from .formats.star import read_star
from .numerics.class_maps import (
    MIN_PER_HALF,
    ctf_phase_flip,
    dominant_class,
    fsc,
    resolution_at,
    shell_resolution,
    soft_sphere,
)
from .numerics.fourier import wedge_mask
from .numerics.rotations import local_grid, relion_angles, so3_grid

log = logging.getLogger(__name__)

# ------------------------------------------------------------------------------ settings
@dataclass
class AveragingSettings:
    """Settings of :func:`average_class` (see ``averaging`` in schemas/config.schema.yaml)."""

    angular_step: float = 30.0  # degrees, global SO(3) grid
    local_step: float = 7.5  # degrees, finest local refinement step
    iterations: int = 3
    max_shift: float = 4.0  # voxels
    mask_radius: float | None = None  # voxels; None: 0.4 x box
    mask_edge: float = 3.0  # voxels, cosine soft edge
    initial_resolution: float = 4.0  # voxels (low-pass of the initial references)
    wiener: float = 0.05
    min_particles: int = 4
    seed: int = 0
    batch: int = 2**23  # complex values per FFT batch (particles x rotations x grid)
    global_every_iteration: bool = True  # False: global search in the first iteration only

    def radius(self, box: int) -> float:
        return float(self.mask_radius) if self.mask_radius else 0.4 * box


@dataclass
class AverageResult:
    average: np.ndarray  # (b, b, b) full average (unmasked)
    half1: np.ndarray
    half2: np.ndarray
    rotations: np.ndarray  # (n, 3, 3) particle = reference rotated by R
    shifts: np.ndarray  # (n, 3) xyz voxels
    subset: np.ndarray  # (n,) 1 or 2
    scores: np.ndarray  # (n,) final constrained correlation
    fsc: np.ndarray  # (b//2 + 1,) masked half-map FSC per shell
    history: list[dict] = field(default_factory=list)


class TooFewParticles(TomoclustError):
    """A class too small for gold-standard averaging."""


# -------------------------------------------------------------------- torch engine
def _centre_fft(vol: torch.Tensor) -> torch.Tensor:
    """Spectrum of volumes (``..., b, b, b``) with voxel ``b // 2`` as the origin."""
    return torch.fft.fftn(torch.fft.ifftshift(vol, dim=(-3, -2, -1)), dim=(-3, -2, -1))


def _centre_ifft(spec: torch.Tensor) -> torch.Tensor:
    return torch.fft.fftshift(torch.fft.ifftn(spec, dim=(-3, -2, -1)).real, dim=(-3, -2, -1))


class _Band:
    """Frequencies ``0 < |n| ≤ k·b`` (integer index units, half space ``n_x ≥ 0``) and their
    places in the particle's ``fftn`` grid and in a cropped ``rfftn`` search grid of side s.

    Correlation spectra of real volumes are Hermitian, so the half space is enough: the
    inverse real FFT of the cropped half grid gives the correlation at shifts ``j · b / s``.
    """

    def __init__(self, box: int, k_band: float, device: torch.device):
        kmax = max(1.0, min(k_band, 0.5) * box)
        s = min(box + box % 2, 2 * math.ceil(kmax) + 2)
        s += s % 2
        idx = np.arange(-(s // 2), s - s // 2)
        nz, ny, nx = np.meshgrid(idx, idx, np.arange(s // 2 + 1), indexing="ij")
        rad = np.sqrt(nz**2 + ny**2 + nx**2)
        sel = (rad > 0) & (rad <= kmax) & (np.abs(nz) <= box // 2) & (np.abs(ny) <= box // 2) \
            & (nx <= box // 2) & (nx < s // 2)
        n = np.stack([nx[sel], ny[sel], nz[sel]], 1)  # xyz index units
        # weight 2 for the points whose Hermitian partner is left out (n_x > 0)
        self.weight = torch.as_tensor(np.where(n[:, 0] > 0, 2.0, 1.0), dtype=torch.float32,
                                      device=device)
        self.box, self.s, self.kmax = box, s, kmax
        self.n_xyz = torch.as_tensor(n, dtype=torch.float32, device=device)
        self.full_index = torch.as_tensor(
            ((n[:, 2] % box) * box + (n[:, 1] % box)) * box + (n[:, 0] % box), device=device)
        h = s // 2 + 1
        self.crop_index = torch.as_tensor(((n[:, 2] % s) * s + (n[:, 1] % s)) * h + n[:, 0],
                                          device=device)
        self.k = len(n)


class _PaddedSpectrum:
    """A volume's centred spectrum, oversampled twice, for trilinear sampling at any k."""

    def __init__(self, vol: torch.Tensor):
        b = vol.shape[-1]
        p = 2 * b
        pad = torch.zeros((p, p, p), dtype=vol.dtype, device=vol.device)
        o = p // 2 - b // 2
        pad[o:o + b, o:o + b, o:o + b] = vol
        spec = torch.fft.fftshift(_centre_fft(pad), dim=(-3, -2, -1))  # origin at index p//2
        self.p, self.b = p, b
        self.grid = torch.stack([spec.real, spec.imag])[None].float()  # (1, 2, p, p, p)

    def sample(self, k_xyz: torch.Tensor) -> torch.Tensor:
        """Complex spectrum at frequencies ``k_xyz`` (``(..., 3)``, units of 1/b cycles/voxel)."""
        return self.sample_rotated(None, k_xyz)

    def sample_rotated(self, rots: torch.Tensor | None, n_xyz: torch.Tensor) -> torch.Tensor:
        """Spectrum at ``Rᵀ n`` for rotations ``(..., 3, 3)`` and points ``(k, 3)``:
        ``(..., k)`` complex (without rotations: at ``n``, any leading shape)."""
        scale = 4.0 / (self.p - 1)  # 1/b cycles -> padded index (x2) -> grid_sample units
        off = 2.0 * (self.p // 2) / (self.p - 1) - 1.0
        if rots is None:
            shape = n_xyz.shape[:-1]
            g = n_xyz.reshape(-1, 3) * scale + off
        else:
            shape = (*rots.shape[:-2], n_xyz.shape[0])
            g = torch.matmul(n_xyz * scale, rots.reshape(-1, 3, 3)) + off  # (nR, k, 3) = nᵀR
        out = torch.nn.functional.grid_sample(self.grid, g.reshape(1, -1, 1, 1, 3),
                                              mode="bilinear", padding_mode="zeros",
                                              align_corners=True).reshape(2, -1)
        return torch.complex(out[0], out[1]).reshape(shape)


def _shift_mask(s: int, box: int, max_shift: float, device: torch.device) -> torch.Tensor:
    """Cropped-grid shift positions within ``max_shift`` voxels (bool ``(s, s, s)``)."""
    j = np.fft.fftfreq(s) * box  # shift in voxels of grid index j
    zz, yy, xx = np.meshgrid(j, j, j, indexing="ij")
    ok = np.sqrt(zz**2 + yy**2 + xx**2) <= max_shift + 1e-6
    return torch.as_tensor(ok, device=device)


def _parabolic(m: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
    """Sub-grid offsets (``(n, 3)``, zyx grid units) of peaks at flat indices ``i`` of maps
    ``m`` (``(n, s, s, s)``), by a parabola through the peak and its two periodic neighbours."""
    n, s = m.shape[0], m.shape[-1]
    iz, iy, ix = i // (s * s), (i // s) % s, i % s
    ar = torch.arange(n, device=m.device)
    out = []
    centre = (iz, iy, ix)
    for axis in range(3):
        vals = []
        for off in (-1, 0, 1):
            idx = list(centre)
            idx[axis] = (centre[axis] + off) % s
            vals.append(m[ar, idx[0], idx[1], idx[2]])
        lo, mid, hi = vals
        den = lo - 2 * mid + hi
        off = torch.where(den < 0, 0.5 * (lo - hi) / torch.where(den < 0, den, -1.0),
                          torch.zeros_like(mid))
        out.append(off.clamp(-0.5, 0.5))
    return torch.stack(out, 1)


def _search(parts_full: torch.Tensor, wedge_full: torch.Tensor, ref: _PaddedSpectrum,
            rots: torch.Tensor, band: _Band, max_shift: float, batch: int,
            per_rotation: torch.Tensor | None = None
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Best rotation and shift of every particle among candidate rotations.

    With ``per_rotation`` (an ``(n, m)`` tensor) the best score over shifts of every particle
    and rotation is written into it as well.

    Parameters
    ----------
    parts_full
        ``(n, b³)`` complex centred spectra of the particles (flattened).
    wedge_full
        ``(b³,)`` or ``(n, b³)`` wedge weights in the particles' frame.
    rots
        ``(m, 3, 3)`` shared by all particles, or ``(n, m, 3, 3)`` per particle.

    Returns
    -------
    (score, rotation index, shift xyz voxels), each with leading dimension ``n``.
    """
    n = parts_full.shape[0]
    dev = parts_full.device
    b, s = band.box, band.s
    w = wedge_full[..., band.full_index]  # (k,) or (n, k)
    x = parts_full[:, band.full_index] * w  # (n, k)
    xnorm = torch.sqrt((x.abs() ** 2 * band.weight).sum(1)).clamp_min(1e-20)
    x = x / xnorm[:, None]
    per_particle = rots.dim() == 4
    m = rots.shape[-3]
    allowed = torch.nonzero(_shift_mask(s, b, max_shift, dev).reshape(-1)).squeeze(1)
    best_score = torch.full((n,), -torch.inf, device=dev)
    best_rot = torch.zeros(n, dtype=torch.long, device=dev)
    best_shift = torch.zeros((n, 3), device=dev)
    w_ref = (w if w.dim() == 2 else w[None]) * band.weight
    h = s // 2 + 1
    maps = max(1, batch // (s * s * h))  # search maps per FFT batch
    step_m = max(1, min(m, maps // max(1, min(n, maps))))
    step_n = max(1, maps // step_m)
    j = torch.as_tensor(np.fft.fftfreq(s) * b, dtype=torch.float32, device=dev)
    for m0 in range(0, m, step_m):
        m1 = min(m, m0 + step_m)
        if not per_particle:
            refs = ref.sample_rotated(rots[m0:m1], band.n_xyz)  # M̂_R(k) = V̂(Rᵀ k): (mb, k)
        for n0 in range(0, n, step_n):
            n1 = min(n, n0 + step_n)
            if per_particle:
                r = ref.sample_rotated(rots[n0:n1, m0:m1], band.n_xyz)  # (nb, mb, k)
            else:
                r = refs[None]  # (1, mb, k)
            wr = w_ref[n0:n1] if w_ref.shape[0] > 1 else w_ref
            rnorm = torch.sqrt(((r.abs() ** 2) * wr[:, None, :]).sum(-1)).clamp_min(1e-20)
            prod = x[n0:n1, None, :] * r.conj()  # (nb, mb, k)
            grid = torch.zeros((n1 - n0, m1 - m0, s * s * h), dtype=prod.dtype, device=dev)
            grid[..., band.crop_index] = prod
            cc = torch.fft.irfftn(grid.reshape(n1 - n0, m1 - m0, s, s, h), s=(s, s, s),
                                  dim=(-3, -2, -1))
            cc = cc * (s**3) / rnorm[..., None, None, None]
            flat = cc.reshape(n1 - n0, -1, s**3)[..., allowed]
            if per_rotation is not None:
                per_rotation[n0:n1, m0:m1] = flat.max(-1).values
            val, arg = flat.reshape(n1 - n0, -1).max(1)
            better = val > best_score[n0:n1]
            if better.any():
                ir = arg // len(allowed)
                it = allowed[arg % len(allowed)]
                sub = cc.reshape(n1 - n0, -1, s, s, s)[torch.arange(n1 - n0, device=dev), ir]
                off = _parabolic(sub, it)  # zyx grid units
                iz, iy, ix = it // (s * s), (it // s) % s, it % s
                t_zyx = torch.stack([j[iz], j[iy], j[ix]], 1) + off * (b / s)
                norm = t_zyx.norm(dim=1, keepdim=True)  # sub-grid step stays within max_shift
                t_zyx = t_zyx * torch.clamp(max_shift / norm.clamp_min(1e-12), max=1.0)
                sel = torch.nonzero(better).squeeze(1)
                best_score[n0 + sel] = val[sel]
                best_rot[n0 + sel] = m0 + ir[sel]
                best_shift[n0 + sel] = t_zyx[sel].flip(1)
    return best_score, best_rot, best_shift


def _rotated_band(box: int, angular_step_deg: float, radius: float, k_current: float) -> float:
    """Band (cycles/voxel) that an angular sampling of ``δ`` supports at mask radius ``r``."""
    return min(k_current, 1.0 / (radius * math.radians(angular_step_deg)), 0.5)


def align(parts: torch.Tensor, wedge: torch.Tensor, reference: torch.Tensor,
          angular_step: float, local_step: float, max_shift: float, radius: float,
          k_current: float, batch: int = 2**23, start: torch.Tensor | None = None,
          spectra: torch.Tensor | None = None, candidates: int = 3
          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Align particles to a reference: global grid search (unless ``start`` rotations are given)
    then local refinement; returns ``(rotations (n,3,3), shifts (n,3) xyz voxels, scores)``.

    ``parts`` are real ``(n, b, b, b)`` (or ``spectra``, their flattened centred spectra);
    ``wedge`` is the ``(b, b, b)`` fftn-layout weight of the particles' frame; ``reference``
    is the (masked) ``(b, b, b)`` reference. The ``candidates`` best rotations of the global
    grid are all refined locally (a single best grid point is sometimes a false peak at the
    coarse band of the global search); local refinement levels use axis-angle steps
    ``angular_step / 2, / 4, ...`` down to ``local_step``.
    """
    b = reference.shape[-1]
    dev = reference.device
    spec = _centre_fft(parts).reshape(len(parts), -1) if spectra is None else spectra
    n = len(spec)
    wflat = wedge.reshape(-1).to(torch.float32)
    ref = _PaddedSpectrum(reference)
    if start is None:
        # global: keep each particle's `candidates` best grid rotations for local refinement
        grid = torch.as_tensor(so3_grid(angular_step), dtype=torch.float32, device=dev)
        band = _Band(b, _rotated_band(b, angular_step, radius, k_current), dev)
        table = torch.empty((n, len(grid)), device=dev)
        _search(spec, wflat, ref, grid, band, max_shift, batch, per_rotation=table)
        top = table.topk(min(candidates, len(grid)), dim=1).indices
        rots = grid[top]  # (n, c, 3, 3)
    else:
        rots = start.to(dev, torch.float32)[:, None]
    step = angular_step / 2.0
    while True:
        loc = torch.as_tensor(local_grid(step), dtype=torch.float32, device=dev)
        cand = torch.einsum("ncij,mjk->ncmik", rots, loc).reshape(n, -1, 3, 3)  # R · ΔR
        band = _Band(b, _rotated_band(b, step, radius, k_current), dev)
        score, il, shift = _search(spec, wflat, ref, cand, band, max_shift, batch)
        rots = cand[torch.arange(n, device=dev), il][:, None]
        if step / 2.0 < local_step - 1e-9:
            break
        step /= 2.0
    return rots[:, 0], shift, score


def _sample_grid(box: int, rots: torch.Tensor, shifts: torch.Tensor | None,
                 oversample: int = 1) -> torch.Tensor:
    """``grid_sample`` coordinates of ``R p + t`` for every output voxel ``p`` (xyz about
    ``box // 2``) in an input ``oversample`` times finer: ``(n, b, b, b, 3)`` normalised for
    ``align_corners=True``."""
    dev = rots.device
    c = box // 2
    ar = torch.arange(box, dtype=torch.float32, device=dev) - c
    zz, yy, xx = torch.meshgrid(ar, ar, ar, indexing="ij")
    p = torch.stack([xx, yy, zz], -1).reshape(-1, 3)  # xyz
    q = torch.einsum("nij,kj->nki", rots, p)
    if shifts is not None:
        q = q + shifts[:, None, :]
    size = box * oversample
    q = (q * oversample + size // 2) / (size - 1) * 2 - 1
    return q.reshape(len(rots), box, box, box, 3)


def _upsample(vols: torch.Tensor, factor: int) -> torch.Tensor:
    """Fourier zero-padding of ``(n, b, b, b)`` volumes by ``factor``, centre to centre."""
    if factor == 1:
        return vols
    b = vols.shape[-1]
    p = b * factor
    spec = torch.fft.fftshift(_centre_fft(vols), dim=(-3, -2, -1))  # origin at b // 2
    pad = torch.zeros((len(vols), p, p, p), dtype=spec.dtype, device=vols.device)
    o = p // 2 - b // 2
    pad[:, o:o + b, o:o + b, o:o + b] = spec
    return _centre_ifft(torch.fft.ifftshift(pad, dim=(-3, -2, -1))) * factor**3


def transform_volumes(vols: torch.Tensor, rots: torch.Tensor, shifts: torch.Tensor | None,
                      oversample: int = 1) -> torch.Tensor:
    """``V_i(p) = X_i(R_i p + t_i)``: bring particles ``X`` into the reference frame
    (trilinear, on a grid ``oversample`` times finer by Fourier padding: 2 keeps 0.8 of the
    amplitude at Nyquist where plain trilinear interpolation keeps 0.4). Equivalently,
    ``X_i`` rotated by ``R_iᵀ`` after shifting by ``−t_i``."""
    b = vols.shape[-1]
    g = _sample_grid(b, rots, shifts, oversample).to(vols.dtype)
    src = _upsample(vols, oversample)
    return torch.nn.functional.grid_sample(src[:, None], g, mode="bilinear",
                                           padding_mode="zeros", align_corners=True)[:, 0]


def place_volume(vol: torch.Tensor, rot: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`transform_volumes` for one map: ``out(R p + t) = vol(p)``."""
    rt = rot.T[None]
    return transform_volumes(vol[None], rt, -(rt[0] @ shift)[None])[0]


def reconstruct(parts: torch.Tensor, wedge_shifted: torch.Tensor, rots: torch.Tensor,
                shifts: torch.Tensor, wiener: float, batch: int = 32
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Wedge-compensated sums: ``(Σ w_i X̂_i, Σ w_i²)`` over particles in the reference frame.

    ``wedge_shifted`` is the particles' wedge as a centred (``fftshift``-ed) real cube, so that
    rotating it like a volume rotates the frequencies.
    """
    b = parts.shape[-1]
    num = torch.zeros((b, b, b), dtype=torch.complex64, device=parts.device)
    den = torch.zeros((b, b, b), dtype=torch.float32, device=parts.device)
    for a in range(0, len(parts), batch):
        r, t = rots[a:a + batch], shifts[a:a + batch]
        v = transform_volumes(parts[a:a + batch], r, t, oversample=2)
        w = transform_volumes(wedge_shifted[None].expand(len(r), b, b, b), r, None)
        w = torch.fft.ifftshift(w, dim=(-3, -2, -1)).clamp(0, 1)
        num += (w * _centre_fft(v)).sum(0)
        den += (w * w).sum(0)
    return num, den


def _map(num: torch.Tensor, den: torch.Tensor, lam: float) -> torch.Tensor:
    return _centre_ifft(num / (den + lam))


def lowpass(vol: torch.Tensor, k_cut: float, width: float = 0.05) -> torch.Tensor:
    """Raised-cosine low-pass at ``k_cut`` cycles/voxel (edge ``width``)."""
    b = vol.shape[-1]
    f = torch.fft.fftfreq(b, device=vol.device)
    k = torch.sqrt(f[:, None, None] ** 2 + f[None, :, None] ** 2 + f[None, None, :] ** 2)
    filt = torch.clamp((k_cut + width - k) / (2 * width) + 0.5, 0, 1)
    filt = 0.5 - 0.5 * torch.cos(math.pi * filt)
    return _centre_ifft(_centre_fft(vol) * filt)


def typical_particle(parts: torch.Tensor) -> int:
    """Index of the particle whose radial density profile best matches the mean profile."""
    from .features.invariant import spherical_means

    prof = spherical_means(parts.float())
    prof = prof - prof.mean(1, keepdim=True)
    mean = prof.mean(0)
    corr = (prof @ mean) / (prof.norm(dim=1) * mean.norm()).clamp_min(1e-20)
    return int(torch.argmax(corr))


def split_halves(n: int, seed: int) -> np.ndarray:
    """Random gold-standard half sets (1 or 2), sizes differing by at most one."""
    rng = np.random.default_rng(seed)
    subset = np.ones(n, dtype=np.int64)
    subset[rng.permutation(n)[n // 2:]] = 2
    return subset


def check_size(n: int, min_particles: int) -> None:
    """Raise :class:`TooFewParticles` unless ``n`` particles allow gold-standard averaging."""
    need = max(int(min_particles), 2 * MIN_PER_HALF)
    if n < need:
        raise TooFewParticles(
            f"{n} particle{'s' if n != 1 else ''}: too few to average (need at least {need}: "
            f"averaging.min_particles = {min_particles} and {MIN_PER_HALF} per half set)")


def align_maps(fixed: torch.Tensor, moving: torch.Tensor, angular_step: float,
               local_step: float, max_shift: float, radius: float, k_current: float = 0.5
               ) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Proper rotation ``Q`` and shift ``u`` with ``fixed ≈ moving rotated by Q, shifted by u``.

    No wedge; returns ``(Q, u, correlation)``.
    """
    ones = torch.ones(fixed.shape, dtype=torch.float32, device=fixed.device)
    r, t, sc = align(fixed[None], ones, moving, angular_step, local_step, max_shift, radius,
                     k_current)
    return r[0], t[0], float(sc[0])


def average_class(particles: np.ndarray | torch.Tensor, settings: AveragingSettings,
                  tilt_range: tuple[float, float] | None = (-60.0, 60.0),
                  device: str | torch.device | None = None) -> AverageResult:
    """Reference-free gold-standard alignment and averaging of one class (module docstring).

    Parameters
    ----------
    particles
        ``(n, b, b, b)`` subtomograms (any float dtype; a memory map is fine).
    tilt_range
        The tilt range of the tomograms (degrees); ``None`` for no missing wedge.
    device
        Torch device; default: the device of ``particles`` if a tensor, else the CPU.

    Raises
    ------
    TooFewParticles
        Fewer than ``max(min_particles, 4)`` particles.
    """
    check_size(len(particles), settings.min_particles)
    run = _Run.prepare(particles, settings, tilt_range, device)
    refs = run.initial_references()
    history: list[dict] = []
    for it in range(settings.iterations):
        maps = run.refine_halves(refs, it)
        q, u = run.measure_fsc(maps, it, history)
        refs = [lowpass(mp, run.k_cur) * run.mask for mp in maps]
    run.one_frame(q, u)
    return run.result(history)


@dataclass
class _Run:
    """The state of one gold-standard refinement: the centred particles and their spectra,
    the wedge and mask, the half sets, each particle's current orientation and score, and the
    current band (cycles/voxel)."""

    settings: AveragingSettings
    x: torch.Tensor
    spectra: torch.Tensor
    wedge: torch.Tensor
    wedge_shifted: torch.Tensor
    mask: torch.Tensor
    radius: float
    subset: np.ndarray
    halves: list[np.ndarray]
    rots: torch.Tensor
    shifts: torch.Tensor
    scores: torch.Tensor
    k_cur: float

    @classmethod
    def prepare(cls, particles, settings: AveragingSettings,
                tilt_range: tuple[float, float] | None, device) -> _Run:
        """Particles as mean-free float32 cubes on the device, the wedge, the soft mask, the
        random half sets and the initial band."""
        n = len(particles)
        if device is None:
            device = particles.device if isinstance(particles, torch.Tensor) else "cpu"
        dev = torch.device(device)
        x = torch.as_tensor(np.asarray(particles, dtype=np.float32) if not isinstance(
            particles, torch.Tensor) else particles, dtype=torch.float32).to(dev)
        b = x.shape[-1]
        if x.shape[1:] != (b, b, b):
            raise TomoclustError(f"particles must be cubes, got shape {tuple(x.shape[1:])}")
        x = x - x.mean(dim=(1, 2, 3), keepdim=True)
        if tilt_range is None:
            wedge = np.ones((b,) * 3, dtype=np.float32)
        else:
            wedge = wedge_mask((b,) * 3, float(tilt_range[0]), float(tilt_range[1]),
                               rfft=False)
        wedge_t = torch.as_tensor(wedge, device=dev)
        radius = settings.radius(b)
        subset = split_halves(n, settings.seed)
        return cls(settings=settings, x=x, spectra=_centre_fft(x).reshape(n, -1),
                   wedge=wedge_t, wedge_shifted=torch.fft.fftshift(wedge_t),
                   mask=torch.as_tensor(soft_sphere(b, radius, settings.mask_edge), device=dev),
                   radius=radius, subset=subset,
                   halves=[np.flatnonzero(subset == h) for h in (1, 2)],
                   rots=torch.zeros((n, 3, 3), device=dev),
                   shifts=torch.zeros((n, 3), device=dev), scores=torch.zeros(n, device=dev),
                   k_cur=1.0 / max(settings.initial_resolution, 2.0))

    @property
    def box(self) -> int:
        return self.x.shape[-1]

    def _index(self, idx: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(idx, device=self.x.device)

    def initial_references(self) -> list[torch.Tensor]:
        """Each half's most typical particle, low-passed to the initial band and masked."""
        refs = []
        for idx in self.halves:
            i0 = typical_particle(self.x[idx])
            refs.append(lowpass(self.x[idx[i0]], self.k_cur) * self.mask)
        return refs

    def refine_halves(self, refs: list[torch.Tensor], it: int) -> list[torch.Tensor]:
        """Align each half to its own reference (iteration ``it``); return the half maps."""
        s = self.settings
        sums = []
        for h, idx in enumerate(self.halves):
            it_idx = self._index(idx)
            # a global search lets particles misaligned against an early, noisy reference
            # recover; without it later iterations refine locally from the last result
            glob = it == 0 or s.global_every_iteration
            r, t, sc = align(self.x[it_idx], self.wedge, refs[h], s.angular_step,
                             s.local_step, s.max_shift, self.radius, self.k_cur, s.batch,
                             start=None if glob else self.rots[it_idx],
                             spectra=self.spectra[it_idx])
            self.rots[it_idx], self.shifts[it_idx], self.scores[it_idx] = r, t, sc
            sums.append(reconstruct(self.x[it_idx], self.wedge_shifted, r, t, s.wiener))
        return [_map(nm, dn, s.wiener * len(idx))
                for (nm, dn), idx in zip(sums, self.halves, strict=True)]

    def measure_fsc(self, maps: list[torch.Tensor], it: int, history: list[dict]
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Align half 2's map to half 1's, record the masked FSC of iteration ``it`` in
        ``history`` and widen the band to its 0.143 crossing; return the alignment."""
        s, mask, b = self.settings, self.mask, self.box
        q, u, cc = align_maps(maps[0] * mask, maps[1] * mask, s.angular_step, s.local_step,
                              s.max_shift, self.radius)
        h2 = place_volume(maps[1], q, u)
        curve = fsc((maps[0] * mask).cpu().numpy(), (h2 * mask).cpu().numpy())
        res = resolution_at(curve, 0.143, b)
        history.append({"iteration": it + 1, "band_cycles_per_voxel": self.k_cur,
                        "resolution_0143_voxels": res, "half_alignment_cc": cc,
                        "mean_score": float(self.scores.mean())})
        log.info("iteration %d: band %.3f cycles/voxel, half-map FSC 0.143 at %.2f voxels, "
                 "mean score %.3f", it + 1, self.k_cur, res, float(self.scores.mean()))
        self.k_cur = min(0.5, max(self.k_cur, 1.0 / res + 1.0 / b))
        return q, u

    def one_frame(self, q: torch.Tensor, u: torch.Tensor) -> None:
        """Half 2's orientations composed with its alignment to half 1 (R' = R Qᵀ,
        t' = t − R' u), so that every particle and map shares one frame."""
        i2 = self._index(self.halves[1])
        r2 = self.rots[i2] @ q.T
        self.rots[i2] = r2
        self.shifts[i2] = self.shifts[i2] - torch.einsum("nij,j->ni", r2, u)

    def result(self, history: list[dict]) -> AverageResult:
        """Both half maps and the full average from the final orientations, and their FSC."""
        s, mask = self.settings, self.mask
        lam = [s.wiener * len(idx) for idx in self.halves]
        sums = [reconstruct(self.x[self._index(idx)], self.wedge_shifted,
                            self.rots[self._index(idx)], self.shifts[self._index(idx)],
                            s.wiener)
                for idx in self.halves]
        half_maps = [_map(nm, dn, lm) for (nm, dn), lm in zip(sums, lam, strict=True)]
        full = _map(sums[0][0] + sums[1][0], sums[0][1] + sums[1][1], s.wiener * len(self.x))
        curve = fsc((half_maps[0] * mask).cpu().numpy(), (half_maps[1] * mask).cpu().numpy())
        return AverageResult(
            average=full.cpu().numpy(), half1=half_maps[0].cpu().numpy(),
            half2=half_maps[1].cpu().numpy(), rotations=self.rots.double().cpu().numpy(),
            shifts=self.shifts.double().cpu().numpy(), subset=self.subset,
            scores=self.scores.cpu().numpy(), fsc=curve, history=history)


def fsc_against_truth(average: np.ndarray, truth: np.ndarray, settings: AveragingSettings,
                      ) -> tuple[np.ndarray, np.ndarray, float]:
    """FSC of a (masked) average against a true map aligned to it (proper rotations only).

    Returns ``(curve, aligned truth, alignment correlation)``.
    """
    avg = torch.as_tensor(np.asarray(average, dtype=np.float32))
    tru = torch.as_tensor(np.asarray(truth, dtype=np.float32))
    b = avg.shape[-1]
    radius = settings.radius(b)
    mask = torch.as_tensor(soft_sphere(b, radius, settings.mask_edge))
    q, u, cc = align_maps(avg * mask, tru * mask, settings.angular_step,
                          min(settings.local_step, 3.0), settings.max_shift + 2, radius)
    placed = place_volume(tru, q, u)
    curve = fsc((avg * mask).numpy(), (placed * mask).numpy())
    return curve, placed.numpy(), cc


# ------------------------------------------------------------------ one class of a method
def settings_from_config(cfg: Mapping[str, Any], voxel_size: float) -> AveragingSettings:
    """The ``averaging`` section (lengths in Å unless named ``_vox``) as the settings of
    particles at ``voxel_size`` Å (lengths in voxels)."""
    return AveragingSettings(
        angular_step=float(cfg["angular_step"]), local_step=float(cfg["local_step"]),
        iterations=int(cfg["iterations"]), max_shift=float(cfg["max_shift_vox"]),
        mask_radius=None if cfg["mask_radius"] is None else cfg["mask_radius"] / voxel_size,
        mask_edge=float(cfg["mask_edge_vox"]),
        initial_resolution=float(cfg["initial_resolution"]) / voxel_size,
        wiener=float(cfg["wiener"]), min_particles=int(cfg["min_particles"]),
        seed=int(cfg["seed"]))


@dataclass
class ClassParticles:
    """The particles of one class: their rows of the cluster table, the optics block of the
    particle table (None when it has none) and the stack they live in."""

    table: pd.DataFrame
    optics: pd.DataFrame | None
    rows: np.ndarray  # 0-based rows of the stack, in table order
    stack: np.ndarray  # the whole stack (memory-mapped)
    voxel_size: float

    def volumes(self, device) -> torch.Tensor:
        """The class's subtomograms in table order on ``device`` (read in stack order)."""
        parts = torch.as_tensor(np.asarray(self.stack[np.sort(self.rows)], dtype=np.float32))
        return parts[np.argsort(np.argsort(self.rows))].to(device)


def read_class(clusters: str, particles: str, stack: str, k: int) -> ClassParticles:
    """Class ``k`` of a cluster table (``clusters``), with the optics of the particle table
    (``particles``; the clustering writes the particles block only) and the gathered
    ``stack``; every image must lie in the stack."""
    table = read_star(clusters, what="cluster table")
    try:
        optics = read_star(particles, block="optics", what="particle table")
    except TomoclustError:
        optics = None
    table = table[table["rlnClassNumber"].to_numpy() == k].reset_index(drop=True)
    data, vs = open_stack(stack)
    rows = stack_rows(table["rlnImageName"], f"cluster table {clusters}")
    if len(rows) and rows.max() >= len(data):
        raise TomoclustError(f"cluster table {clusters}: image {rows.max() + 1} is "
                             f"beyond the {len(data)} subtomograms of {stack}")
    return ClassParticles(table, optics, rows, data, vs)


@dataclass
class TruthMaps:
    """A simulation's ground truth for the class averages: the truth table, the true maps
    (``<template>.mrc`` at the particles' voxel size), the template names in class-number
    order, the matching tolerance (Å) and the microscope (the averages are not CTF-corrected:
    the true map is compared as imaged)."""

    star: str
    maps: Sequence[str]
    templates: Sequence[str]
    tolerance_angst: float
    ctf: Mapping[str, Any] | None = None


def compare_with_truth(average: np.ndarray, table: pd.DataFrame, truth: TruthMaps,
                       settings: AveragingSettings, voxel_size: float
                       ) -> tuple[dict, np.ndarray | None, np.ndarray | None]:
    """Which template the class's particles are (the dominant true class of those matching a
    true particle) and the FSC of the average against its true map: (what info.json
    records, the FSC curve, the true map placed on the average), the last two None when no
    particle matches."""
    true_cls = truth_classes(table, read_star(truth.star, what="ground truth"),
                             truth.tolerance_angst)
    cls, count = dominant_class(true_cls)
    info: dict[str, Any] = {"truth_matched": int((true_cls > 0).sum())}
    if not cls:
        log.info("no particle of this class matches a true particle: no FSC against truth")
        return info, None, None
    name = truth.templates[cls - 1]
    tmap, _ = read_mrc(next(p for p in truth.maps if Path(p).stem == name), what="true map")
    if truth.ctf:
        tmap = ctf_phase_flip(tmap, voxel_size, **truth.ctf)
    curve, placed, cc = fsc_against_truth(average, tmap, settings)
    box = average.shape[0]
    info.update({"template": name, "template_particles": count, "truth_alignment_cc": cc,
                 "fsc_truth_05_angst": resolution_at(curve, 0.5, box) * voxel_size,
                 "fsc_truth_0143_angst": resolution_at(curve, 0.143, box) * voxel_size})
    log.info("dominant template %s (%d of %d particles); FSC vs truth 0.5 at %.1f Å, "
             "0.143 at %.1f Å", name, count, len(table), info["fsc_truth_05_angst"],
             info["fsc_truth_0143_angst"])
    return info, curve, placed


def refined_table(table: pd.DataFrame, res: AverageResult, voxel_size: float) -> pd.DataFrame:
    """The class's particle table with RELION's angles, origins (Å; added to extraction's
    where the boxes were re-centred), half sets and the alignment scores."""
    out = table.copy()
    ang = relion_angles(res.rotations)
    out["rlnAngleRot"], out["rlnAngleTilt"], out["rlnAnglePsi"] = ang.T
    origin = -res.shifts * voxel_size  # RELION: the particle's centre is at coordinate - origin
    prior = [c for c in ("rlnOriginXAngst", "rlnOriginYAngst", "rlnOriginZAngst")
             if c in table.columns]
    if len(prior) == 3:  # the boxes were re-centred at extraction: origins add up
        origin = origin + table[prior].to_numpy(dtype=np.float64)
    out["rlnOriginXAngst"], out["rlnOriginYAngst"], out["rlnOriginZAngst"] = origin.T
    out["rlnRandomSubset"] = res.subset
    out["tclAlignmentScore"] = res.scores
    return out


@dataclass
class ClassAverage:
    """One class averaged: the maps and orientations, the refined particle table (with the
    optics block, if any), the FSC table (half maps, and against the truth where known),
    what info.json records, and the true map placed on the average (or None)."""

    result: AverageResult
    particles: pd.DataFrame | dict[str, pd.DataFrame]
    fsc: pd.DataFrame
    info: dict
    truth_view: np.ndarray | None
    voxel_size: float


def average_method_class(cls: ClassParticles, cfg: Mapping[str, Any], method: str, k: int,
                         tilt_range: Sequence[float], device: str,
                         truth: TruthMaps | None = None) -> ClassAverage:
    """Average class ``k`` of ``method`` (:func:`average_class`) with the ``averaging``
    settings ``cfg``, and compare it with the truth when there is one."""
    vs = cls.voxel_size
    settings = settings_from_config(cfg, vs)
    log.info("%s class %d: %d particles, %d³ at %.4g Å, tilt range %s, device %s", method, k,
             len(cls.table), cls.stack.shape[-1], vs, list(tilt_range), device)
    res = average_class(cls.volumes(device), settings, tilt_range=tuple(tilt_range))
    box = res.average.shape[0]
    fsc_table = pd.DataFrame({"shell": np.arange(box // 2 + 1),
                              "resolution_angst": shell_resolution(box, vs),
                              "fsc_half_maps": res.fsc})
    info = {"method": method, "class": k, "n_particles": len(cls.table), "voxel_size": vs,
            "box": box, "device": device,
            "resolution_0143_angst": resolution_at(res.fsc, 0.143, box) * vs,
            "history": res.history}
    view = None
    if truth is not None:
        extra, curve, view = compare_with_truth(res.average, cls.table, truth, settings, vs)
        info.update(extra)
        if curve is not None:
            fsc_table["fsc_truth"] = curve
    out = refined_table(cls.table, res, vs)
    particles = {"optics": cls.optics, "particles": out} if cls.optics is not None else out
    return ClassAverage(res, particles, fsc_table, info, view, vs)
