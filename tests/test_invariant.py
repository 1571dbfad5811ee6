"""tomoclust.features.invariant: spherical-harmonic shell spectra are rotation invariant and
discriminative; the harmonics are orthonormal; the Gaussian blur; the linear radial profile
(known values, linearity, invariance) and the combined ``invariant`` features."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import DEVICES
from scipy import ndimage
from tomoclust.features.invariant import (
    ShellSpectrum,
    fibonacci_sphere,
    gaussian_blur,
    invariant_features,
    noise_fraction,
    phase_randomised,
    principal_components,
    radial_profile,
    real_sph_harm,
    shell_spectra,
)
from tomoclust.numerics.rotations import random_rotations, rotate_volume


def _smooth_volume(rng: np.random.Generator, d: int = 24, sigma: float = 2.0) -> np.ndarray:
    """Smooth random (asymmetric) density, softly masked to a ball well inside the box, so a
    rotation never carries anything out of the box."""
    v = ndimage.gaussian_filter(rng.standard_normal((d, d, d)), sigma)
    zz, yy, xx = np.indices((d, d, d)) - d // 2
    r = np.sqrt(xx**2 + yy**2 + zz**2)
    return (v / v.std() * np.clip((d // 2 - 1 - r) / 2, 0, 1)).astype(np.float32)


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.mark.parametrize("device", DEVICES)
def test_shell_spectra_are_rotation_invariant_and_discriminative(device, rng):
    a, b = _smooth_volume(rng), _smooth_volume(rng)
    mats = random_rotations(6, rng)
    assert np.allclose(np.linalg.det(mats), 1.0)
    # cubic-spline rotation, so that interpolation blur is not what is being measured
    vols = np.stack([a, b] + [rotate_volume(a, m, order=3) for m in mats])
    f = shell_spectra(vols, l_max=6, lowpass_sigma=1.0, device=device).astype(np.float64)
    assert f.shape == (len(vols), ShellSpectrum(24, 6).n_features)
    for i in range(2, len(vols)):
        assert _rel(f[i], f[0]) < 0.05, (i, _rel(f[i], f[0]))
        assert _cos(f[i], f[0]) > 0.995
    # a different shape differs clearly
    assert _rel(f[1], f[0]) > 0.3
    assert _cos(f[1], f[0]) < 0.9
    # the raw volumes themselves are not invariant: the rotations did change them
    for m in mats[:2]:
        assert np.corrcoef(rotate_volume(a, m, order=3).ravel(), a.ravel())[0, 1] < 0.5


def test_fibonacci_sphere_is_unit_and_balanced():
    dirs = fibonacci_sphere(500)
    assert dirs.shape == (500, 3)
    np.testing.assert_allclose(np.linalg.norm(dirs, axis=1), 1.0, atol=1e-12)
    np.testing.assert_allclose(dirs.mean(axis=0), 0.0, atol=0.01)


def test_real_spherical_harmonics_are_orthonormal():
    n, l_max = 3000, 6
    dirs = fibonacci_sphere(n)
    y, degree = real_sph_harm(l_max, dirs)
    assert y.shape == (n, (l_max + 1) ** 2) and y.dtype == np.float64
    assert np.bincount(degree).tolist() == [2 * ll + 1 for ll in range(l_max + 1)]
    # ∫ Y_i Y_j dΩ = δ_ij; a quasi-uniform quadrature has weights 4π / n
    gram = y.T @ y * (4 * np.pi / n)
    np.testing.assert_allclose(gram, np.eye(len(gram)), atol=0.01)
    # known low degrees: Y_00 = 1/sqrt(4π), Y_10 = sqrt(3/4π) z, and Y_1±1 span {x, y}
    np.testing.assert_allclose(y[:, 0], 1 / np.sqrt(4 * np.pi), atol=1e-12)
    np.testing.assert_allclose(y[:, 2], np.sqrt(3 / (4 * np.pi)) * dirs[:, 2], atol=1e-12)
    for col in (1, 3):
        coef, *_ = np.linalg.lstsq(dirs[:, :2], y[:, col], rcond=None)
        np.testing.assert_allclose(dirs[:, :2] @ coef, y[:, col], atol=1e-10)
        assert np.linalg.norm(coef) == pytest.approx(np.sqrt(3 / (4 * np.pi)), rel=1e-10)


@pytest.mark.parametrize("device", DEVICES)
def test_a_degree_one_volume_has_power_in_degree_one(device):
    """v(p) = g(|p|) · z/|p| is a pure l = 1 harmonic on every shell."""
    d, l_max = 24, 4
    zz, yy, xx = (np.indices((d, d, d)) - d // 2).astype(np.float64)
    r = np.sqrt(xx**2 + yy**2 + zz**2)
    vol = (np.exp(-((r - 5) ** 2) / 8) * np.where(r > 0, zz / np.maximum(r, 1e-9), 0))
    ss = ShellSpectrum(d, l_max)
    f = ss(torch.as_tensor(vol[None], dtype=torch.float32, device=device))
    assert f.device.type == torch.device(device).type and f.dtype == torch.float32
    s = len(ss.radii)
    per_degree = f.cpu().numpy().reshape(l_max + 1, s * (s + 1) // 2)
    # diagonal entries P_l(r, r) are powers (>= 0); compare the degrees' total power
    diag = np.array([i * s - i * (i - 1) // 2 for i in range(s)])  # (r, r) in triu order
    power = per_degree[:, diag].sum(axis=1)
    assert np.all(power >= -1e-6)
    assert power[1] > 0.999 * power.sum(), power


def test_n_features_and_output_dtype(rng):
    ss = ShellSpectrum(16, l_max=6)
    np.testing.assert_array_equal(ss.radii, np.arange(1, 8))
    assert ss.n_features == 7 * 7 * 8 // 2 == 196
    assert ShellSpectrum(16, l_max=3, radii=[2.0, 4.0, 6.0]).n_features == 4 * 6
    stack = rng.standard_normal((5, 16, 16, 16)).astype(np.float32)
    f = shell_spectra(stack, l_max=6, batch_size=2)
    assert f.shape == (5, 196) and f.dtype == np.float32
    assert np.all(np.isfinite(f))
    # batching does not change the result
    np.testing.assert_allclose(f, shell_spectra(stack, l_max=6, batch_size=256), rtol=1e-5,
                               atol=1e-6)


@pytest.mark.parametrize("device", DEVICES)
def test_gaussian_blur_keeps_the_mean_and_reduces_white_noise(device, rng):
    d, sigma = 32, 1.0
    noise = rng.standard_normal((8, d, d, d)) + 3.0
    vols = torch.as_tensor(noise, dtype=torch.float32, device=device)
    out = gaussian_blur(vols, sigma)
    assert out.shape == vols.shape and out.dtype == torch.float32
    assert out.device.type == torch.device(device).type
    out = out.cpu().numpy().astype(np.float64)
    np.testing.assert_allclose(out.mean(axis=(1, 2, 3)), noise.mean(axis=(1, 2, 3)), atol=1e-5)
    # white noise variance shrinks by the mean squared transfer function ...
    k = np.fft.fftfreq(d)
    k2 = k[:, None, None] ** 2 + k[None, :, None] ** 2 + k[None, None, :] ** 2
    factor = float(np.mean(np.exp(-4 * (np.pi * sigma) ** 2 * k2)))
    # ... which is 1 / (8 π^(3/2) σ³) for a Gaussian well inside Nyquist
    assert factor == pytest.approx(1 / (8 * np.pi**1.5 * sigma**3), rel=0.01)
    assert out.var() / noise.var() == pytest.approx(factor, rel=0.05)
    # σ = 0 is the identity
    np.testing.assert_allclose(gaussian_blur(torch.as_tensor(noise[:1]), 0.0).numpy(),
                               noise[:1], atol=1e-10)


@pytest.mark.parametrize("device", DEVICES)
def test_radial_profile_known_values_linearity_and_invariance(device, rng):
    d = 24
    zz, yy, xx = np.indices((d, d, d)) - d // 2
    r = np.sqrt(xx**2 + yy**2 + zz**2)
    # a constant volume has a constant profile; a ball of radius 5.2 fills shells 0..5 only
    const = np.full((d, d, d), 2.5, np.float32)
    ball = (r <= 5.2).astype(np.float32)
    a, b = _smooth_volume(rng), _smooth_volume(rng)
    vols = np.stack([const, ball, a, b, 3 * a - b])
    p = radial_profile(vols, device=device, batch_size=2)
    assert p.shape == (5, d // 2 + 1) and p.dtype == np.float32
    np.testing.assert_allclose(p[0], 2.5, rtol=1e-6)
    np.testing.assert_allclose(p[1, :5], 1.0, atol=1e-6)  # every voxel with round(r) <= 4
    assert 0.2 < p[1, 5] < 1.0  # shell 5 straddles the ball's edge
    np.testing.assert_allclose(p[1, 7:], 0.0, atol=1e-7)
    # linear in the data (the point of keeping it: noise averages out, no bias)
    np.testing.assert_allclose(p[4], 3 * p[2] - p[3], atol=1e-5)
    # shell 3 by hand
    np.testing.assert_allclose(p[2, 3], a[np.rint(r) == 3].mean(), rtol=1e-5)
    # zero-mean noise averages towards zero in the outer shells (no positive bias)
    noise = rng.standard_normal((200, d, d, d)).astype(np.float32)
    pn = radial_profile(noise, device=device)
    assert abs(pn[:, 8:].mean()) < 0.01
    # invariant under proper rotations (cubic interpolation; the ball is soft-masked inside)
    rot = np.stack([rotate_volume(a, m, order=3) for m in random_rotations(4, rng)])
    pr = radial_profile(rot, device=device)
    for q in pr:
        assert _rel(q[1:10], p[2, 1:10]) < 0.05


def test_principal_components_are_unit_variance_uncorrelated_and_sign_fixed(rng):
    x = rng.standard_normal((300, 3)) @ np.array([[3.0, 1.0, 0.0], [0.0, 1.0, 0.5],
                                                   [0.0, 0.0, 0.2]])
    x = np.hstack([x, np.full((300, 1), 7.0)])  # a constant column is harmless
    z = principal_components(x, 2)
    assert z.shape == (300, 2) and z.dtype == np.float32
    np.testing.assert_allclose(z.std(axis=0), 1.0, rtol=1e-5)
    np.testing.assert_allclose(np.corrcoef(z.T)[0, 1], 0.0, atol=1e-6)
    # deterministic: permuting the rows permutes the scores (same components, same signs)
    perm = rng.permutation(300)
    np.testing.assert_allclose(principal_components(x[perm], 2), z[perm], atol=1e-5)
    assert principal_components(x, 50).shape == (300, 4)  # capped at n_features
    with pytest.raises(ValueError, match="at least 2 rows"):
        principal_components(x[:1], 2)


def test_invariant_features_layout_and_rotation_invariance(rng):
    shapes = [_smooth_volume(rng) for _ in range(3)]
    mats = random_rotations(4, rng)
    vols = np.stack([rotate_volume(v, m, order=3) for v in shapes for m in mats])
    # three shapes span two between-shape directions: keep those two components (further
    # ones would be interpolation error scaled up to unit variance)
    f = invariant_features(vols, l_max=4, lowpass_sigma=1.0, radial=True, spectrum_components=2)
    assert f.shape == (12, 13 + 2)
    np.testing.assert_allclose(f[:, :13], radial_profile(vols))
    # same shape in any orientation -> (nearly) the same features; different shapes differ
    spread = [np.abs(f[4 * i:4 * i + 4, 13:] - f[4 * i:4 * i + 4, 13:].mean(0)).max()
              for i in range(3)]
    means = np.stack([f[4 * i:4 * i + 4, 13:].mean(0) for i in range(3)])
    gap = min(np.abs(means[i] - means[j]).max() for i in range(3) for j in range(i))
    assert max(spread) < 0.2 * gap, (spread, gap)
    raw = invariant_features(vols, l_max=4)  # the defaults: the plain shell spectra
    np.testing.assert_allclose(raw, shell_spectra(vols, 4, 1.0))


@pytest.mark.parametrize("radial, components", [(False, None), (True, 4)])
def test_centred_features_equal_descriptors_of_recentred_boxes(rng, radial, components):
    """Centre-of-mass re-centring inside the features (one forward FFT per box, the blur, the
    shift and the low-pass as products in Fourier space) gives the descriptors of the boxes
    re-centred on their own (tomoclust.numerics.centring.recentre_com), to float32 rounding;
    and the batch size does not matter (each box is re-centred on its own)."""
    from tomoclust.features.invariant import centred_descriptors, radial_profile
    from tomoclust.numerics.centring import recentre_com

    stack = rng.normal(size=(23, 16, 16, 16)).astype(np.float32)
    stack[:, 5:10, 6:11, 7:12] -= 3.0  # an off-centre dark blob, so the offsets are not zero
    kw = dict(l_max=3, lowpass_sigma=1.0, radial=radial, spectrum_components=components,
              centring="com")
    whole = invariant_features(stack, **kw)
    assert whole.shape == (23, (9 if radial else 0) + (components or whole.shape[1]))
    moved, off = recentre_com(stack)
    assert np.abs(off).max() > 0.5
    spec, radii, off2 = centred_descriptors(stack, 3, 1.0, radial=True, batch_size=5)
    np.testing.assert_allclose(off2, off, atol=1e-4)
    ref = shell_spectra(moved, 3, 1.0)
    np.testing.assert_allclose(spec, ref, atol=1e-4 * np.abs(ref).max())
    np.testing.assert_allclose(radii, radial_profile(moved), atol=1e-5)
    spec1, _, _ = centred_descriptors(stack, 3, 1.0, batch_size=64)
    np.testing.assert_allclose(spec1, spec, rtol=1e-5, atol=1e-6 * np.abs(ref).max())


# ---------------------------------------------------------------- noise-fraction whitening
@pytest.mark.parametrize("device", DEVICES)
def test_phase_randomised_keeps_amplitudes_and_destroys_structure(device, rng):
    vol = np.zeros((2, 16, 16, 16), np.float32)
    vol[:, 4:12, 6:10, 5:11] = 1.0
    vol += 0.1 * rng.standard_normal(vol.shape).astype(np.float32)
    out = phase_randomised(vol, seed=3, device=device)
    assert out.dtype == np.float32 and out.shape == vol.shape
    amp_in = np.abs(np.fft.rfftn(vol, axes=(1, 2, 3)))
    amp_out = np.abs(np.fft.rfftn(out, axes=(1, 2, 3)))
    np.testing.assert_allclose(amp_out, amp_in, rtol=1e-3, atol=1e-3)
    # the box no longer sits where it was: correlation with the original is small
    for a, b in zip(vol, out):
        a0, b0 = a - a.mean(), b - b.mean()
        assert abs((a0 * b0).sum() / np.sqrt((a0**2).sum() * (b0**2).sum())) < 0.2
    np.testing.assert_array_equal(out, phase_randomised(vol, seed=3, device=device))
    assert not np.allclose(out, phase_randomised(vol, seed=4, device=device))


def test_noise_fraction_finds_a_weak_class_direction_that_pca_ranks_low(rng):
    """Two classes differ in one column; noise shared by four others makes the direction
    of largest (standardised) variance. PCA's first axis is noise; the noise-fraction
    projection's first principal component (what the clustering sees) separates the
    classes."""
    from tomoclust.cluster import reduce_features

    n, d = 2000, 12
    labels = rng.integers(0, 2, n)
    shared = np.zeros(d)
    shared[:4] = 3.0  # noise common to the first four columns: PCA's first axis

    def noise(m):
        return rng.standard_normal((m, d)) + rng.standard_normal((m, 1)) * shared

    null = noise(3000)
    signal = np.zeros((n, d))
    signal[:, 5] = 2.0 * labels  # the classes: 2 noise s.d. apart in column 5
    feats = (signal + noise(n)).astype(np.float32)
    out, lam = noise_fraction(feats, null, n_components=8, shrinkage=0.1)
    assert out.shape == (n, 8) and out.dtype == np.float32
    assert np.all(np.diff(lam) <= 1e-9)
    var = out.var(axis=0)
    np.testing.assert_allclose(var, var.mean(), rtol=1e-4)  # standardisation changes nothing

    def separation(z):
        return abs(z[labels == 1].mean() - z[labels == 0].mean()) / z.std()

    pca_first = reduce_features(feats, 1)[:, 0]
    nf_first = reduce_features(out, 1)[:, 0]
    assert separation(pca_first) < 0.3
    assert separation(nf_first) > 1.25  # the best possible: 2 / sqrt(2) = 1.41
    # the class direction's ratio: total variance 1 + 1 (class) over noise 1, i.e. 2, less
    # the shrinkage (noise + 0.1 × the null's mean eigenvalue, here ≈ 2: about 1.67)
    assert 1.5 < lam[0] < 2.0
    assert lam[1] < 1.2  # every other direction is noise alone


def test_noise_whitened_invariant_features(rng, monkeypatch):
    import tomoclust.features.invariant as inv

    stack = rng.standard_normal((64, 16, 16, 16)).astype(np.float32)
    plain = invariant_features(stack, 2, 1.0)
    # fewer particles than the whitening needs: the shell spectra as they are
    np.testing.assert_array_equal(invariant_features(stack, 2, 1.0, noise_whitening="phase"),
                                  plain)
    monkeypatch.setattr(inv, "NOISE_MIN_PARTICLES", 32)
    out = invariant_features(stack, 2, 1.0, noise_whitening="phase", seed=1)
    assert out.shape == (64, 16)  # a quarter of the particles, rounded down to a power of 2
    np.testing.assert_array_equal(out, invariant_features(stack, 2, 1.0,
                                                          noise_whitening="phase", seed=1))
    with pytest.raises(ValueError, match="noise_whitening"):
        invariant_features(stack, 2, 1.0, noise_whitening="white")


def test_principal_components_also_applies_the_same_transform(rng):
    x = rng.standard_normal((200, 6)) * np.arange(1, 7)
    scores, again = principal_components(x, 3, also=x[:50])
    np.testing.assert_allclose(again, scores[:50], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(scores, principal_components(x, 3))


def test_noise_whitening_with_reduced_spectra_puts_the_null_through_the_data_axes(
        rng, monkeypatch):
    """With spectrum_components, the phase-randomised boxes' spectra are projected on the
    data's principal axes (a PCA of their own would give unrelated columns)."""
    import tomoclust.features.invariant as inv

    monkeypatch.setattr(inv, "NOISE_MIN_PARTICLES", 32)
    seen = {}
    real = inv.noise_fraction

    def spy(feats, null, *a, **k):
        seen["feats"], seen["null"] = feats, null
        return real(feats, null, *a, **k)

    monkeypatch.setattr(inv, "noise_fraction", spy)
    stack = rng.standard_normal((64, 16, 16, 16)).astype(np.float32)
    invariant_features(stack, 2, 1.0, radial=True, spectrum_components=4,
                       noise_whitening="phase", seed=2)
    full = invariant_features(stack, 2, 1.0, radial=True)
    null_full = invariant_features(inv.phase_randomised(stack, 2), 2, 1.0, radial=True)
    r = 16 // 2 + 1
    spec, null_spec = principal_components(full[:, r:], 4, also=null_full[:, r:])
    np.testing.assert_allclose(seen["feats"], np.concatenate([full[:, :r], spec], 1),
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(seen["null"], np.concatenate([null_full[:, :r], null_spec], 1),
                               rtol=1e-4, atol=1e-4)
