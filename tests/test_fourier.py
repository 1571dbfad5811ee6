"""tomoclust.numerics.fourier: Fourier resampling, exact binning shapes, low-pass, missing wedge."""

from __future__ import annotations

import numpy as np
import pytest
from tomoclust.numerics.fourier import (
    binned_shape,
    fourier_resample,
    freq_grid,
    gaussian_lowpass,
    radial_freq,
    wedge_mask,
)


def _bandlimited(shape, kmax, rng):
    """A real random volume whose spectrum is zero above ``kmax`` cycles/voxel."""
    spec = np.fft.rfftn(rng.standard_normal(shape))
    spec[radial_freq(shape, rfft=True) > kmax] = 0
    return np.fft.irfftn(spec, s=shape, axes=(0, 1, 2))


def test_resample_1d_samples_the_same_function():
    """Downsampling a sum of cosines samples the same continuous function on a coarser grid."""
    n_in, n_out = 40, 25
    x_in = np.arange(n_in)

    def f(x, n):
        return (1.0 + 0.7 * np.cos(2 * np.pi * 3 * x / n + 0.4)
                + 0.3 * np.sin(2 * np.pi * 5 * x / n))

    sig = f(x_in, n_in)
    out = fourier_resample(sig, (n_out,))
    # the output voxel j sits at input position j * n_in / n_out (origin kept at voxel 0)
    np.testing.assert_allclose(out, f(np.arange(n_out), n_out), atol=1e-5)


def test_resample_down_then_up_recovers_bandlimited_volume(rng):
    shape = (32, 30, 34)
    vol = _bandlimited(shape, 0.18, rng)
    small = fourier_resample(vol, (20, 19, 21))  # new Nyquist ~0.3 of the old grid
    assert small.shape == (20, 19, 21) and small.dtype == np.float32
    back = fourier_resample(small, shape)
    np.testing.assert_allclose(back, vol, atol=1e-4 * np.abs(vol).max())


def test_resample_down_then_up_is_a_lowpass(rng):
    shape = (32, 32, 32)
    vol = rng.standard_normal(shape)
    back = fourier_resample(fourier_resample(vol, (16, 16, 16)), shape)
    spec = np.abs(np.fft.fftn(back))
    k = radial_freq(shape)
    # everything above the coarse grid's Nyquist (0.25 cycles/voxel here) is gone
    kz, ky, kx = np.broadcast_arrays(*freq_grid(shape))
    high = np.maximum(np.maximum(np.abs(kz), np.abs(ky)), np.abs(kx)) > 0.25 + 1e-9
    assert spec[high].max() < 1e-6 * spec.max()
    # and the low band is untouched
    low = k < 0.2
    np.testing.assert_allclose(np.fft.fftn(back)[low], np.fft.fftn(vol)[low],
                               atol=1e-3 * spec.max())


@pytest.mark.parametrize("shape_out", [(17, 18, 19), (45, 40, 41), (30, 31, 32)])
def test_resample_preserves_mean(rng, shape_out):
    vol = rng.standard_normal((30, 31, 32)) + 2.5
    out = fourier_resample(vol, shape_out)
    assert out.shape == shape_out
    assert out.mean(dtype=np.float64) == pytest.approx(vol.mean(), rel=1e-5)


def test_resample_dimension_mismatch():
    with pytest.raises(ValueError):
        fourier_resample(np.zeros((4, 4, 4)), (4, 4))


@pytest.mark.parametrize(
    ("shape", "v_in", "v_out", "crop", "out"),
    [
        ((100, 96, 95), 5.0, 10.0, (100, 96, 94), (50, 48, 47)),
        ((100, 100, 100), 10.0, 12.0, (96, 96, 96), (80, 80, 80)),
        ((64, 64, 64), 8.0, 10.0, (60, 60, 60), (48, 48, 48)),
    ],
)
def test_binned_shape(shape, v_in, v_out, crop, out):
    c, o = binned_shape(shape, v_in, v_out)
    assert c == crop and o == out
    for n, nc, no in zip(shape, c, o):
        assert nc <= n
        assert nc * v_in == pytest.approx(no * v_out, abs=1e-9)  # exact physical extent


def test_binned_shape_impossible():
    with pytest.raises(ValueError):
        binned_shape((3, 3, 3), 10.0, 10.0 * np.pi)


def test_gaussian_lowpass_transfer(rng):
    shape = (32, 32, 32)
    vol = rng.standard_normal(shape)
    sigma = 0.1
    out = gaussian_lowpass(vol, sigma)
    ratio = np.abs(np.fft.rfftn(out)) / np.maximum(np.abs(np.fft.rfftn(vol)), 1e-12)
    k = radial_freq(shape, rfft=True)
    sel = (k > 0.05) & (k < 0.25)
    np.testing.assert_allclose(ratio[sel], np.exp(-k[sel] ** 2 / (2 * sigma**2)), rtol=1e-3,
                               atol=1e-5)
    assert out.mean() == pytest.approx(vol.mean(), abs=1e-5)


# ---------------------------------------------------------------------------- missing wedge
def test_wedge_fraction_two_thirds_for_plus_minus_60():
    shape = (64, 64, 64)
    mask = wedge_mask(shape, -60, 60, rfft=False)
    k = radial_freq(shape)
    shell = (k > 0.05) & (k < 0.45)
    assert mask[shell].mean() == pytest.approx(2 / 3, abs=0.01)
    # and for ±40 it is 80/180 (±45 would put whole grid diagonals on the boundary)
    assert wedge_mask(shape, -40, 40, rfft=False)[shell].mean() == pytest.approx(4 / 9, abs=0.01)


def test_wedge_geometry_by_direction():
    shape = (33, 33, 33)
    mask = wedge_mask(shape, -60, 60, rfft=False)
    kz, ky, kx = (np.broadcast_to(g, shape) for g in freq_grid(shape))
    at = lambda z, y, x: mask[z % 33, y % 33, x % 33]  # noqa: E731  (signed indices)
    assert at(0, 0, 5) == 1  # kx axis: in the tilt-0 plane
    assert at(0, 5, 0) == 1  # ky axis (the tilt axis): always measured
    assert at(5, 0, 0) == 0  # kz axis: the middle of the missing wedge
    assert at(3, 0, 3) == 1  # 45° from kx
    assert at(8, 0, 2) == 0  # 76° from kx
    assert at(0, 0, 0) == 1
    assert kz.shape == ky.shape == kx.shape


def test_wedge_asymmetric_range_sign():
    """Tilt θ measures the plane kx sinθ + kz cosθ = 0, i.e. atan2(-kz, kx) = θ."""
    shape = (33, 33, 33)
    mask = wedge_mask(shape, 20, 70, rfft=False)
    at = lambda z, x: mask[z % 33, 0, x % 33]  # noqa: E731
    assert at(-5, 5) == 1  # atan2(5, 5) = 45°
    assert at(5, 5) == 0  # -45°
    assert at(5, -5) == 1  # Friedel mate of (-5, 5)
    assert at(0, 5) == 0  # 0° not in [20, 70]


@pytest.mark.parametrize("tilts", [(-60, 60), (-50, 65), (-30, 10)])
def test_wedge_friedel_symmetric_odd_grid(tilts):
    shape = (33, 31, 35)
    mask = wedge_mask(shape, *tilts, rfft=False)
    mirrored = np.roll(np.flip(mask), 1, axis=(0, 1, 2))  # value at -k
    np.testing.assert_array_equal(mask, mirrored)


def test_wedge_friedel_symmetric_even_grid_off_nyquist():
    shape = (32, 32, 32)
    mask = wedge_mask(shape, -50, 65, rfft=False)
    mirrored = np.roll(np.flip(mask), 1, axis=(0, 1, 2))
    inner = np.ones(shape, dtype=bool)
    inner[16, :, :] = inner[:, 16, :] = inner[:, :, 16] = False  # Nyquist planes
    np.testing.assert_array_equal(mask[inner], mirrored[inner])


def test_wedge_rfft_layout_matches_full_grid():
    shape = (20, 22, 25)  # odd x: no Nyquist column, where rfftfreq says +0.5, fftfreq -0.5
    full = wedge_mask(shape, -55, 40, rfft=False)
    half = wedge_mask(shape, -55, 40, rfft=True)
    assert half.shape == (20, 22, 13)
    np.testing.assert_array_equal(half, full[:, :, :13])
