"""tomoclust.numerics.ctf: sign convention, zeros, envelope, grids."""

from __future__ import annotations

import numpy as np
import pytest
from tomoclust.numerics.ctf import ctf_1d, ctf_grid, electron_wavelength


def _first_zero(k, values):
    i = int(np.flatnonzero(np.sign(values[:-1]) != np.sign(values[1:]))[0])
    # linear interpolation between the two samples around the sign change
    return k[i] - values[i] * (k[i + 1] - k[i]) / (values[i + 1] - values[i])


def test_electron_wavelength():
    assert electron_wavelength(300.0) == pytest.approx(0.019687, rel=1e-3)
    assert electron_wavelength(200.0) == pytest.approx(0.025079, rel=1e-3)
    assert electron_wavelength(100.0) == pytest.approx(0.037014, rel=1e-3)


@pytest.mark.parametrize("amp", [0.0, 0.07, 0.1])
def test_ctf_at_zero_frequency_is_minus_amplitude_contrast(amp):
    assert ctf_1d(np.array([0.0]), amplitude_contrast=amp)[0] == pytest.approx(-amp, abs=1e-12)
    # and stays negative at low frequency for underfocus: protein looks dark
    assert ctf_1d(np.array([1e-3]), defocus_um=5.0, amplitude_contrast=amp)[0] < 0


@pytest.mark.parametrize(("defocus_um", "kv"), [(5.0, 300.0), (2.0, 300.0), (3.0, 200.0)])
def test_first_zero_at_analytic_position_for_cs_zero(defocus_um, kv):
    lam = electron_wavelength(kv)
    df = defocus_um * 1e4
    k0 = 1.0 / np.sqrt(lam * df)  # chi = pi lam df k^2 = pi
    k = np.linspace(1e-4, 1.5 * k0, 200001)
    zero = _first_zero(k, ctf_1d(k, defocus_um=defocus_um, voltage_kv=kv, cs_mm=0.0,
                                 amplitude_contrast=0.0))
    assert zero == pytest.approx(k0, rel=1e-4)
    # with amplitude contrast A the zero moves in, to chi = pi - asin(A)
    a = 0.07
    k_a = np.sqrt((np.pi - np.arcsin(a)) / (np.pi * lam * df))
    zero_a = _first_zero(k, ctf_1d(k, defocus_um=defocus_um, voltage_kv=kv, cs_mm=0.0,
                                   amplitude_contrast=a))
    assert zero_a == pytest.approx(k_a, rel=1e-4)
    assert zero_a < zero


def test_bfactor_envelope():
    k = np.linspace(0, 0.1, 50)
    plain = ctf_1d(k, bfactor=0.0)
    damped = ctf_1d(k, bfactor=200.0)
    np.testing.assert_allclose(damped, plain * np.exp(-200.0 * k**2 / 4), atol=1e-12)


def test_ctf_grid_2d_and_3d():
    g2 = ctf_grid((32, 40), 10.0, rfft=True, defocus_um=4.0)
    assert g2.shape == (32, 21) and g2.dtype == np.float32
    g3 = ctf_grid((16, 16, 16), 10.0, rfft=False, amplitude_contrast=0.1)
    assert g3.shape == (16, 16, 16)
    assert g3[0, 0, 0] == pytest.approx(-0.1)
    assert np.abs(g3).max() <= 1.0 + 1e-6
    # isotropic: a function of |k| only
    assert g3[0, 0, 3] == pytest.approx(g3[0, 3, 0]) == pytest.approx(g3[3, 0, 0])
    # value at a grid point equals the 1D CTF at that spatial frequency (1/Å)
    assert g2[0, 5] == pytest.approx(ctf_1d(np.array([5 / 40 / 10.0]), defocus_um=4.0)[0],
                                     abs=1e-6)
