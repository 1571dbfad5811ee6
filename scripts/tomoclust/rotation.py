"""Rotations: RELION Euler conventions, uniform proper rotations, rotating volumes.

RELION's rotation matrix for ``(rot, tilt, psi)`` (degrees, ZYZ) is
``Rotation.from_euler("ZYZ", [rot, tilt, psi], degrees=True).inv().as_matrix()``. A particle
with these angles is the reference rotated by that matrix. Matrices here act on ``(x, y, z)``
column vectors; volumes are ``(z, y, x)`` arrays rotated about their FFT centre ``d // 2``.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from scipy.spatial.transform import Rotation

_REVERSE = np.eye(3)[::-1]  # xyz <-> zyx permutation (its own inverse)


def relion_matrix(angles: np.ndarray) -> np.ndarray:
    """``(n, 3, 3)`` matrices (xyz) from ``(n, 3)`` RELION ``rot, tilt, psi`` in degrees."""
    ang = np.atleast_2d(np.asarray(angles, dtype=np.float64))
    return Rotation.from_euler("ZYZ", ang, degrees=True).inv().as_matrix()


def relion_angles(matrices: np.ndarray) -> np.ndarray:
    """Inverse of :func:`relion_matrix`: ``(n, 3)`` ``rot, tilt, psi`` (degrees).

    ``tilt`` is in ``[0, 180]``; ``rot`` and ``psi`` in ``(-180, 180]``.
    """
    mats = np.asarray(matrices, dtype=np.float64).reshape(-1, 3, 3)
    with np.errstate(all="ignore"):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # gimbal lock warning at tilt 0/180
            return Rotation.from_matrix(mats).inv().as_euler("ZYZ", degrees=True)


def random_rotations(n: int, rng: np.random.Generator) -> np.ndarray:
    """``(n, 3, 3)`` rotations drawn uniformly (Haar measure) from SO(3): never reflections."""
    return Rotation.random(n, random_state=rng).as_matrix().reshape(n, 3, 3)


def angular_distance_deg(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Geodesic angle (degrees) between rotation matrices ``a`` and ``b`` (broadcast)."""
    rel = np.einsum("...ji,...jk->...ik", a, b)
    cos = (np.trace(rel, axis1=-2, axis2=-1) - 1.0) / 2.0
    return np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))


def rotate_volume(volume: np.ndarray, matrix_xyz: np.ndarray, order: int = 1,
                  shift_xyz: np.ndarray | None = None, cval: float = 0.0) -> np.ndarray:
    """Rotate a ``(z, y, x)`` volume by ``matrix_xyz`` about its centre ``d // 2``, then shift.

    The output satisfies ``out(R p + t) = volume(p)`` for positions ``p`` (xyz, relative to the
    centre), i.e. a feature of the input at ``p`` moves to ``R p + t``.

    Parameters
    ----------
    matrix_xyz
        ``(3, 3)`` proper rotation acting on xyz vectors.
    order
        Spline order of the interpolation (1 = trilinear, 3 = cubic).
    shift_xyz
        Optional translation ``t`` in voxels, xyz order.
    """
    vol = np.asarray(volume, dtype=np.float32)
    r_zyx = _REVERSE @ np.asarray(matrix_xyz, dtype=np.float64) @ _REVERSE
    inv = r_zyx.T
    centre = np.array(vol.shape, dtype=np.float64) // 2
    t = np.zeros(3) if shift_xyz is None else np.asarray(shift_xyz, dtype=np.float64)[::-1]
    # input = inv @ (out - centre - t) + centre
    offset = centre - inv @ (centre + t)
    return ndimage.affine_transform(vol, inv, offset=offset, order=order, mode="constant",
                                    cval=cval, prefilter=order > 1).astype(np.float32)
