"""Phase-contrast transfer function (weak-phase approximation), in 2D and 3D.

Convention: ``defocus_um`` is positive for underfocus. With this sign the CTF is negative at
low frequency, so a protein (positive potential) appears *dark*, as in raw cryo-ET data.
"""

from __future__ import annotations

import numpy as np

from .fourier import radial_freq


def electron_wavelength(voltage_kv: float) -> float:
    """Relativistic electron wavelength in Å for an acceleration voltage in kV."""
    v = voltage_kv * 1e3
    return 12.2643 / np.sqrt(v * (1.0 + 0.978466e-6 * v))


def ctf_1d(k_per_angst: np.ndarray, defocus_um: float = 5.0, voltage_kv: float = 300.0,
           cs_mm: float = 2.7, amplitude_contrast: float = 0.07, bfactor: float = 0.0
           ) -> np.ndarray:
    """CTF at spatial frequencies ``k`` (1/Å).

    ``-(sqrt(1 - A²) sin χ + A cos χ) · exp(-B k² / 4)`` with
    ``χ = π λ Δf k² − π/2 Cs λ³ k⁴``.
    """
    k = np.asarray(k_per_angst, dtype=np.float64)
    lam = electron_wavelength(voltage_kv)
    df = defocus_um * 1e4
    cs = cs_mm * 1e7
    chi = np.pi * lam * df * k**2 - 0.5 * np.pi * cs * lam**3 * k**4
    a = amplitude_contrast
    ctf = -(np.sqrt(1.0 - a * a) * np.sin(chi) + a * np.cos(chi))
    if bfactor:
        ctf = ctf * np.exp(-bfactor * k**2 / 4.0)
    return ctf


def ctf_grid(shape: tuple[int, ...], voxel_size: float, rfft: bool = True, **params: float
             ) -> np.ndarray:
    """CTF on an ``fftn``/``rfftn`` grid of ``shape`` (2D image or 3D volume, isotropic).

    The 3D form (CTF of the radial frequency) is the subtomogram-mode model used by aitom.
    """
    k = radial_freq(shape, rfft=rfft) / float(voxel_size)
    return ctf_1d(k, **params).astype(np.float32)
