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

import logging

import numpy as np
import torch
import torch.nn.functional as F
from scipy.special import sph_harm_y

log = logging.getLogger(__name__)


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


def spherical_means(vols: torch.Tensor) -> torch.Tensor:
    """Mean of each ``(n, d, d, d)`` volume on shells of rounded radius ``0 .. d//2 - 1`` about
    ``d // 2``, plus one last bin for everything at ``d // 2`` or farther (the corners):
    ``(n, d//2 + 1)``, accumulated in the dtype of ``vols``, on its device."""
    d = vols.shape[-1]
    c = torch.arange(d, device=vols.device, dtype=torch.float32) - d // 2
    r = torch.sqrt(c[:, None, None] ** 2 + c[None, :, None] ** 2 + c[None, None, :] ** 2)
    shell = torch.round(r).long().clamp(max=d // 2).reshape(-1)
    sums = torch.zeros((len(vols), d // 2 + 1), device=vols.device, dtype=vols.dtype)
    sums.index_add_(1, shell, vols.reshape(len(vols), -1))
    return sums / torch.bincount(shell, minlength=d // 2 + 1).to(vols.dtype)


def radial_profile(stack: np.ndarray, device: str = "cpu", batch_size: int = 256) -> np.ndarray:
    """Spherical mean of every volume of a ``(n, d, d, d)`` stack on shells about ``d // 2``
    (:func:`spherical_means`, accumulated in float64), ``(n, d//2 + 1)`` float32.

    This is the ``l = 0`` harmonic coefficient, kept *linear* in the data: noise averages out
    of it instead of adding a positive bias, which is what makes it the most useful invariant
    at very low SNR. It depends on centring like the shell spectra.
    """
    from .train import batches, to_tensor

    d = stack.shape[-1]
    out = np.empty((len(stack), d // 2 + 1), dtype=np.float32)
    with torch.inference_mode():
        for idx in batches(len(stack), batch_size):
            v = to_tensor(stack, idx, device).double()
            out[idx] = spherical_means(v).float().cpu().numpy()
    return out


def principal_components(x: np.ndarray, n_components: int, also: np.ndarray | None = None
                         ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Scores of the first ``n_components`` principal components of the column-standardised
    ``x`` (columns of zero variance are only centred), each score column scaled to unit variance.

    The sign of every component is fixed (its largest loading is positive), so the result does
    not depend on the eigen-solver. ``n_components`` is capped at ``min(n - 1, n_features)``.
    Unlike :func:`tomoclust.cluster.reduce_features` (scikit-learn's PCA, which switches to a
    randomized solver for large inputs) the components are exact; the benchmark figures of the
    radial descriptor were measured with these.

    ``also``: more rows put through the same transform (``x``'s means, deviations, axes and
    score scales); then ``(scores of x, scores of also)`` is returned.
    """
    x = np.asarray(x, dtype=np.float64)
    n, p = x.shape
    m = int(min(n_components, n - 1, p))
    if m < 1:
        raise ValueError(f"principal_components needs at least 2 rows, got {n}")
    mean, sd = x.mean(axis=0), x.std(axis=0)
    sd[sd == 0] = 1.0

    def standardise(a: np.ndarray) -> np.ndarray:
        return (np.asarray(a, dtype=np.float64) - mean) / sd

    xs = standardise(x)
    evals, evecs = np.linalg.eigh(xs.T @ xs / n)
    order = np.argsort(evals)[::-1][:m]
    vecs = evecs[:, order]
    vecs *= np.sign(vecs[np.abs(vecs).argmax(axis=0), np.arange(m)])
    scores = xs @ vecs
    sc = scores.std(axis=0)
    sc[sc == 0] = 1.0
    out = (scores / sc).astype(np.float32)
    if also is None:
        return out
    return out, (standardise(also) @ vecs / sc).astype(np.float32)


def _separable(z: torch.Tensor, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The ``(n, d, d, d/2+1)`` product of one factor per axis (``(n, d)``, ``(n, d)``,
    ``(n, d/2+1)``)."""
    return (z[:, :, None] * y[:, None, :])[..., None] * x[:, None, None, :]


def centred_descriptors(stack: np.ndarray, l_max: int = 6, lowpass_sigma: float = 1.0,
                        radial: bool = False, device: str = "cpu", batch_size: int = 256,
                        **com) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Shell spectra (and the radial profile when ``radial``) of every box re-centred on its
    centre of mass, with one forward FFT per box: ``(spectra, radial profile or None, offsets)``.

    The same descriptors as :func:`shell_spectra` of
    :func:`tomoclust.numerics.centring.recentre_com`'s boxes, up to float32 rounding: the
    centre-of-mass blur, the descriptors' low-pass and the re-centring shift are all products in
    Fourier space, and they commute, so the box's spectrum is computed once: the centre of mass
    works on :func:`tomoclust.numerics.centring.lowpass_half` of it, as
    :func:`~tomoclust.numerics.centring.com_offsets` does (``com`` are its settings), and the
    shift's phase ramp and the Gaussian are each a product of one factor per axis, so they are
    applied as one product before one inverse FFT. Batch by batch: memory is bounded whatever
    the stack's length.
    """
    from ..numerics.centring import com_offsets_pooled, lowpass_half
    from .train import batches, to_tensor

    n, d = len(stack), stack.shape[-1]
    ss = ShellSpectrum(d, l_max)
    spec = np.empty((n, ss.n_features), dtype=np.float32)
    radii = np.empty((n, d // 2 + 1), dtype=np.float32) if radial else None
    offsets = np.empty((n, 3), dtype=np.float32)
    com_sigma = com.pop("sigma", 1.0)
    f_full = torch.fft.fftfreq(d, device=device)
    f_half = torch.fft.rfftfreq(d, device=device)
    # the descriptors' Gaussian, one factor per axis, folded into the shift's per-axis ramps
    g_full, g_half = (torch.exp(-2 * (torch.pi * max(lowpass_sigma, 0.0) * f) ** 2)
                      for f in (f_full, f_half))
    dims = (-3, -2, -1)
    with torch.inference_mode():
        for idx in batches(n, batch_size):
            f = torch.fft.rfftn(to_tensor(stack, idx, device), dim=dims)
            low = lowpass_half(f, d, com_sigma, torch)
            off = com_offsets_pooled(low.cpu().numpy(), d, **com)
            offsets[idx] = off
            s = torch.as_tensor(off, device=device)  # content moves by -offset
            rz, ry, rx = (torch.exp((2j * torch.pi) * s[:, i, None] * fr)
                          for i, fr in enumerate((f_full, f_full, f_half)))
            if radial:  # the radial profile is of the shifted box without the low-pass
                f = f * _separable(rz, ry, rx)
                v = torch.fft.irfftn(f, s=(d, d, d), dim=dims)
                radii[idx] = spherical_means(v.double()).float().cpu().numpy()
                rz, ry, rx = g_full[None], g_full[None], g_half[None]
            else:
                rz, ry, rx = rz * g_full, ry * g_full, rx * g_half
            f = f * _separable(rz, ry, rx)
            v = torch.fft.irfftn(f, s=(d, d, d), dim=dims)
            q = ss(v)
            spec[idx] = (torch.sign(q) * q.abs().sqrt()).cpu().numpy()
    return spec, radii, offsets


#: boxes whose phase-randomised copies estimate the features' noise covariance
NULL_BOXES = 4000
#: the noise covariance is shrunk towards this fraction of its mean eigenvalue times identity
NOISE_SHRINKAGE = 0.1
#: most noise-fraction components kept (a power of two: see :func:`noise_fraction`)
NOISE_COMPONENTS = 32
#: fewer particles than this are not whitened: two 32×32 covariances (528 free entries
#: each) are then too noisy, and on a few hundred particles the whitening loses
#: (benchmarks/RESULTS.md, "Robustness")
NOISE_MIN_PARTICLES = 1000


def phase_randomised(stack: np.ndarray, seed: int = 0, device: str = "cpu",
                     batch_size: int = 256) -> np.ndarray:
    """Copies of the boxes with the same Fourier amplitudes and random phases (the phases of
    white Gaussian noise, so the result is real): the boxes' power spectra without their
    structure, i.e. what noise of that spectrum looks like to the descriptors."""
    from .train import batches, to_tensor

    rng = np.random.default_rng(seed)
    out = np.empty(stack.shape, dtype=np.float32)
    dims = (-3, -2, -1)
    with torch.inference_mode():
        for idx in batches(len(stack), batch_size):
            f = torch.fft.rfftn(to_tensor(stack, idx, device), dim=dims)
            w = torch.fft.rfftn(torch.as_tensor(
                rng.standard_normal((len(idx), *stack.shape[1:]), dtype=np.float32),
                device=device), dim=dims)
            f = f * (w / w.abs().clamp_min(1e-12))
            out[idx] = torch.fft.irfftn(f, s=stack.shape[1:], dim=dims).cpu().numpy()
    return out


def noise_fraction(features: np.ndarray, null: np.ndarray,
                   n_components: int = NOISE_COMPONENTS,
                   shrinkage: float = NOISE_SHRINKAGE) -> tuple[np.ndarray, np.ndarray]:
    """Project features on the directions where they vary most *relative to noise*.

    ``null`` holds the same descriptors of structureless boxes (:func:`phase_randomised`).
    The features are standardised, reduced to their leading ``P`` principal components (``P``
    the largest power of two ≤ ``n_components``, the feature count and a quarter of the
    particles), and the generalised eigenproblem ``C w = λ N w`` is solved, with ``C`` the
    features' covariance and ``N`` the null's, shrunk towards ``shrinkage`` × its mean
    eigenvalue × identity (so directions the null barely spans are not blown up). ``λ`` is
    each direction's variance in units of noise variance (the maximum noise fraction
    transform of remote sensing): at low SNR the classes live in the few directions of large
    ``λ``, which plain PCA, ranking by total variance, mixes with noisy ones.

    The ``P`` projections (variance ``λ_i``, uncorrelated) are returned rotated by the
    orthonormal Hadamard matrix, which gives every column the same variance (the mean ``λ``)
    while keeping the covariance's eigenvectors and eigenvalues: the clustering's
    per-column standardisation then changes nothing, and its PCA recovers the projections in
    order of ``λ``. Returns ``(features (n, P) float32, λ descending)``.
    """
    from scipy.linalg import eigh, hadamard

    x = np.asarray(features, dtype=np.float64)
    x0 = np.asarray(null, dtype=np.float64)
    n, d = x.shape
    limit = min(n_components, d, max(n // 4, 2))
    p = 1 << (int(limit).bit_length() - 1)
    mu, sd = x.mean(0), x.std(0)
    sd[sd == 0] = 1.0
    x, x0 = (x - mu) / sd, (x0 - mu) / sd
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    y, y0 = x @ vt[:p].T, x0 @ vt[:p].T
    c = np.atleast_2d(np.cov(y, rowvar=False))
    nc = np.atleast_2d(np.cov(y0, rowvar=False))
    nc += shrinkage * max(np.trace(nc) / p, 1e-12) * np.eye(p)
    lam, w = eigh(c, nc)
    order = np.argsort(lam)[::-1]
    lam, w = lam[order], w[:, order]
    z = y @ w
    z -= z.mean(0)
    return (z @ (hadamard(p) / np.sqrt(p))).astype(np.float32), lam


def invariant_features(stack: np.ndarray, l_max: int = 6, lowpass_sigma: float = 1.0,
                       radial: bool = False, spectrum_components: int | None = None,
                       device: str = "cpu", centring: str = "none",
                       noise_whitening: str = "none", seed: int = 0) -> np.ndarray:
    """The ``invariant`` method's features (:func:`invariant_representations`, first of the
    pair)."""
    return invariant_representations(stack, l_max, lowpass_sigma, radial, spectrum_components,
                                     device, centring, noise_whitening, seed)[0]


def invariant_representations(stack: np.ndarray, l_max: int = 6, lowpass_sigma: float = 1.0,
                              radial: bool = False, spectrum_components: int | None = None,
                              device: str = "cpu", centring: str = "none",
                              noise_whitening: str = "none", seed: int = 0
                              ) -> tuple[np.ndarray, np.ndarray | None]:
    """The ``invariant`` method's features and, when they were noise-whitened, the same features
    before whitening (else None): the clustering can pool both when it chooses K.

    The features: the shell spectra (:func:`shell_spectra`), optionally
    reduced to their first ``spectrum_components`` principal components, and optionally
    preceded by the linear radial profile (:func:`radial_profile`, when ``radial``). The
    defaults (no radial profile, all ``(l_max+1)·S(S+1)/2`` spectrum columns) are the plain
    shell spectra.

    Why the reduction goes with the radial profile: the clustering standardises every column,
    so 840 spectrum columns would drown the ~17 radial ones. On the 5-class benchmark of
    isolated, centred particles (5,000 per set) ``radial=True, spectrum_components=64`` lifts
    SNR 0.01 by about 0.27 for 0.01–0.03 less at SNR 0.03–0.1; on a few hundred picked
    particles (the demo) it loses, because 64 whitened components are mostly noise there and
    the radial profile feels neighbours and centring errors. See benchmarks/RESULTS.md,
    "Radial profile".

    ``centring`` other than ``"none"`` re-centres every box first, since every descriptor here
    is expanded about the box centre: ``"com"`` box by box in one pass
    (:func:`centred_descriptors`, bounded memory), ``"align"`` to the rotational average of all
    boxes (:func:`tomoclust.features.centring.recentre`, which needs them all).

    ``noise_whitening="phase"`` returns, instead, the :func:`noise_fraction` projection of
    those features: the noise covariance comes from the same features of phase-randomised
    copies (:func:`phase_randomised`, ``seed``) of up to :data:`NULL_BOXES` boxes; with fewer
    than :data:`NOISE_MIN_PARTICLES` particles the features are returned unwhitened. On the
    robustness suite's off-centred, similar-sized classes at SNR 0.1 this takes the accuracy
    with the true K from about 0.65 to 0.85 (benchmarks/RESULTS.md, "Robustness").
    """
    if noise_whitening not in ("none", "phase"):
        raise ValueError(f"noise_whitening must be 'none' or 'phase', not {noise_whitening!r}")
    if noise_whitening == "phase":
        # both unreduced first: the null must go through the data's own principal axes
        feats = invariant_features(stack, l_max, lowpass_sigma, radial, None, device, centring)
        r = stack.shape[-1] // 2 + 1 if radial else 0
        null = None
        if len(stack) >= NOISE_MIN_PARTICLES:
            rng = np.random.default_rng(seed)
            pick = np.sort(rng.choice(len(stack), min(len(stack), NULL_BOXES), replace=False))
            null = invariant_features(phase_randomised(stack[pick], seed, device), l_max,
                                      lowpass_sigma, radial, None, device, centring)
        if spectrum_components is not None:
            red = principal_components(feats[:, r:], spectrum_components,
                                       also=None if null is None else null[:, r:])
            spec, null_spec = red if null is not None else (red, None)
            feats = np.concatenate([feats[:, :r], spec], axis=1)
            if null is not None:
                null = np.concatenate([null[:, :r], null_spec], axis=1)
        if null is None:
            log.info("noise whitening skipped: %d particles, fewer than the %d it needs; the "
                     "shell spectra are used as they are", len(stack), NOISE_MIN_PARTICLES)
            return feats, None
        return noise_fraction(feats, null)[0], feats
    if centring == "com":
        spec, radii, _ = centred_descriptors(stack, l_max, lowpass_sigma, radial, device)
    else:
        part = stack
        if centring != "none":
            from .centring import recentre

            part, _ = recentre(stack, centring, device=device)
        spec = shell_spectra(part, l_max, lowpass_sigma, device=device)
        radii = radial_profile(part, device=device) if radial else None
    if spectrum_components is not None:
        spec = principal_components(spec, spectrum_components)
    if not radial:
        return spec, None
    return np.concatenate([radii, spec], axis=1), None
