"""Single-axis tilt-series geometry: projection and weighted back-projection (WBP).

Geometry: volumes are ``(z, y, x)``; the tilt axis is ``y``; the beam runs along ``z`` at
tilt 0. At tilt ``θ`` the projection integrates along ``(sin θ, 0, cos θ)`` (xyz) onto the
detector coordinate ``u = x cos θ − z sin θ`` (origins at the centres ``n // 2``). This matches
:func:`tomoclust.numerics.fourier.wedge_mask`. Projections are ``(n_tilts, y, u)`` with the
detector as
wide as the volume.

The projector splats each voxel onto the two nearest detector pixels (linear weights) and the
back-projector is its exact adjoint, so both are one sparse ``(z·x, u)`` matrix per tilt applied
to all ``y`` rows at once.
"""

from __future__ import annotations

import numpy as np
from scipy import sparse


def _tilt_matrix(nz: int, nx: int, width: int, tilt_deg: float) -> sparse.csr_matrix:
    t = np.radians(tilt_deg)
    z = np.arange(nz, dtype=np.float64)[:, None] - nz // 2
    x = np.arange(nx, dtype=np.float64)[None, :] - nx // 2
    u = (x * np.cos(t) - z * np.sin(t) + width // 2).ravel()
    i0 = np.floor(u).astype(np.int64)
    w1 = u - i0
    rows = np.arange(nz * nx)
    rr, cc, vv = [], [], []
    for col, val in ((i0, 1.0 - w1), (i0 + 1, w1)):
        ok = (col >= 0) & (col < width)
        rr.append(rows[ok])
        cc.append(col[ok])
        vv.append(val[ok])
    return sparse.csr_matrix(
        (np.concatenate(vv), (np.concatenate(rr), np.concatenate(cc))), shape=(nz * nx, width)
    )


class TiltGeometry:
    """Projector / back-projector pair for a volume shape and a list of tilt angles.

    Parameters
    ----------
    shape
        Volume shape ``(z, y, x)`` in voxels.
    tilts_deg
        Tilt angles in degrees.
    """

    def __init__(self, shape: tuple[int, int, int], tilts_deg: np.ndarray):
        self.shape = tuple(int(s) for s in shape)
        self.tilts = np.asarray(tilts_deg, dtype=np.float64)
        nz, _, nx = self.shape
        self.width = nx
        self._mats = [_tilt_matrix(nz, nx, self.width, t) for t in self.tilts]

    def project(self, volume: np.ndarray) -> np.ndarray:
        """Line integrals (voxel units): ``(z, y, x)`` volume to ``(n_tilts, y, u)`` images."""
        vol = np.asarray(volume, dtype=np.float32)
        if vol.shape != self.shape:
            raise ValueError(f"volume shape {vol.shape} differs from geometry {self.shape}")
        nz, ny, nx = self.shape
        rows = np.ascontiguousarray(vol.transpose(1, 0, 2)).reshape(ny, nz * nx)
        out = np.empty((len(self.tilts), ny, self.width), dtype=np.float32)
        for i, mat in enumerate(self._mats):
            out[i] = (mat.T @ rows.T).T
        return out

    def backproject(self, projections: np.ndarray) -> np.ndarray:
        """Adjoint of :meth:`project`: ``(n_tilts, y, u)`` images to a ``(z, y, x)`` volume."""
        proj = np.asarray(projections, dtype=np.float32)
        nz, ny, nx = self.shape
        if proj.shape != (len(self.tilts), ny, self.width):
            raise ValueError(f"projections shape {proj.shape} does not fit the geometry")
        acc = np.zeros((nz * nx, ny), dtype=np.float64)
        for i, mat in enumerate(self._mats):
            acc += mat @ proj[i].T
        return acc.T.reshape(ny, nz, nx).transpose(1, 0, 2).astype(np.float32)

    def weight(self, projections: np.ndarray, lowpass: float = 0.5) -> np.ndarray:
        """Radial (ramp) weighting along ``u`` for WBP, scaled for a unit-gain reconstruction.

        Each image is zero-padded to twice its width, multiplied by ``|k| · Δθ`` (``k`` in
        cycles/voxel, ``Δθ`` the mean tilt increment in radians, so that the sum over tilts
        approximates the inverse Radon integral), and optionally rolled off with a cosine edge
        that reaches zero at ``lowpass`` cycles/voxel (0.5 = Nyquist, no roll-off).
        """
        proj = np.asarray(projections, dtype=np.float64)
        n = proj.shape[-1]
        pad = 2 * n
        k = np.abs(np.fft.rfftfreq(pad))
        dtheta = np.radians(np.mean(np.diff(np.sort(self.tilts)))) if len(self.tilts) > 1 else 1.0
        filt = k * dtheta
        if lowpass < 0.5:
            edge = np.clip((k - 0.8 * lowpass) / (0.2 * lowpass), 0.0, 1.0)
            filt = filt * 0.5 * (1.0 + np.cos(np.pi * edge))
        spec = np.fft.rfft(proj, n=pad, axis=-1) * filt
        return np.fft.irfft(spec, n=pad, axis=-1)[..., :n].astype(np.float32)

    def reconstruct(self, projections: np.ndarray, lowpass: float = 0.5) -> np.ndarray:
        """Weighted back-projection of a tilt series: ``(n_tilts, y, u)`` to ``(z, y, x)``."""
        return self.backproject(self.weight(projections, lowpass=lowpass))


def tilt_angles(tilt_min: float, tilt_max: float, step: float) -> np.ndarray:
    """Tilt angles from ``tilt_min`` to ``tilt_max`` inclusive in steps of ``step`` degrees."""
    n = int(np.floor((tilt_max - tilt_min) / step + 1e-6)) + 1
    return tilt_min + step * np.arange(n)
