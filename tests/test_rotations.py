"""tomoclust.numerics.rotations: RELION Euler convention, uniform proper rotations, volume
rotation."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial.transform import Rotation
from tomoclust.numerics.rotations import (
    angular_distance_deg,
    random_rotations,
    relion_angles,
    relion_matrix,
    rotate_volume,
)


def _relion_euler_matrix(rot: float, tilt: float, psi: float) -> np.ndarray:
    """RELION's ``Euler_angles2matrix`` (src/euler.cpp), written out independently."""
    a, b, g = np.radians([rot, tilt, psi])
    ca, cb, cg = np.cos([a, b, g])
    sa, sb, sg = np.sin([a, b, g])
    cc, cs, sc, ss = cb * ca, cb * sa, sb * ca, sb * sa
    return np.array([
        [cg * cc - sg * sa, cg * cs + sg * ca, -cg * sb],
        [-sg * cc - cg * sa, -sg * cs + cg * ca, sg * sb],
        [sc, ss, cb],
    ])


def _centroid_xyz(vol: np.ndarray) -> np.ndarray:
    """Centre of mass (positive part) in xyz voxels relative to the centre ``d // 2``."""
    w = np.clip(vol, 0, None).astype(np.float64)
    idx = np.indices(vol.shape).reshape(3, -1)
    com_zyx = (idx * w.ravel()).sum(1) / w.sum()
    return (com_zyx - np.array(vol.shape) // 2)[::-1]


def _blob(shape, centre_zyx, sigma):
    zz, yy, xx = np.indices(shape, dtype=np.float64)
    c = centre_zyx
    r2 = (zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2
    return np.exp(-r2 / (2 * sigma**2)).astype(np.float32)


def test_relion_convention_at_rot_90():
    ang = np.array([90.0, 0.0, 0.0])
    m = relion_matrix(ang)[0]
    expected = Rotation.from_euler("ZYZ", ang, degrees=True).inv().as_matrix()
    np.testing.assert_allclose(m, expected, atol=1e-12)
    # RELION's own formula: rot = 90 maps x to -y (passive rotation of the frame)
    np.testing.assert_allclose(m, [[0, 1, 0], [-1, 0, 0], [0, 0, 1]], atol=1e-12)


def test_relion_matrix_matches_relion_formula(rng):
    angles = np.column_stack([rng.uniform(-180, 180, 50), rng.uniform(0, 180, 50),
                              rng.uniform(-180, 180, 50)])
    mats = relion_matrix(angles)
    assert mats.shape == (50, 3, 3)
    for ang, m in zip(angles, mats):
        np.testing.assert_allclose(m, _relion_euler_matrix(*ang), atol=1e-12)


def test_relion_angles_round_trip(rng):
    mats = random_rotations(200, rng)
    ang = relion_angles(mats)
    assert ang.shape == (200, 3)
    assert np.all((ang[:, 1] >= 0) & (ang[:, 1] <= 180))
    assert np.all((ang[:, [0, 2]] > -180 - 1e-9) & (ang[:, [0, 2]] <= 180 + 1e-9))
    np.testing.assert_allclose(relion_matrix(ang), mats, atol=1e-9)
    # and angles -> matrix -> angles (away from gimbal lock)
    a0 = np.array([[30.0, 40.0, -50.0], [-120.0, 100.0, 170.0]])
    np.testing.assert_allclose(relion_angles(relion_matrix(a0)), a0, atol=1e-9)


def test_random_rotations_are_proper_and_orthonormal(rng):
    mats = random_rotations(500, rng)
    assert mats.shape == (500, 3, 3)
    np.testing.assert_allclose(np.linalg.det(mats), 1.0, atol=1e-9)
    eye = np.einsum("nji,njk->nik", mats, mats)
    np.testing.assert_allclose(eye, np.broadcast_to(np.eye(3), eye.shape), atol=1e-9)


def test_random_rotations_are_haar_uniform(rng):
    n = 20000
    mats = random_rotations(n, rng)
    # a rotated unit vector is uniform on the sphere: mean ~ 0 (sd of each mean ~0.004)
    v = mats @ np.array([0.3, -0.5, 0.8]) / np.linalg.norm([0.3, -0.5, 0.8])
    assert np.abs(v.mean(0)).max() < 0.02
    # rotation angle ω has density (1 - cos ω)/π on [0, π]: CDF (ω - sin ω)/π
    omega = np.sort(np.radians(angular_distance_deg(np.eye(3), mats)))
    cdf = (omega - np.sin(omega)) / np.pi
    emp = np.arange(1, n + 1) / n
    ks = np.max(np.abs(emp - cdf))
    assert ks < 0.015  # KS 5 % critical value at n = 20000 is ~0.0096
    # a wrong (uniform-angle) law would be far off
    assert np.max(np.abs(emp - omega / np.pi)) > 0.1


def test_angular_distance(rng):
    r = random_rotations(5, rng)
    rz = Rotation.from_euler("z", 30, degrees=True).as_matrix()
    np.testing.assert_allclose(angular_distance_deg(r, r @ rz), 30.0, atol=1e-6)
    np.testing.assert_allclose(angular_distance_deg(r, r), 0.0, atol=1e-5)


@pytest.mark.parametrize("order", [1, 3])
def test_rotate_volume_moves_planted_blob_to_R_p_plus_t(rng, order):
    shape = (40, 40, 40)
    centre = np.array(shape) // 2
    p_xyz = np.array([7.0, -4.0, 3.0])
    vol = _blob(shape, centre + p_xyz[::-1], 1.5)
    for mat in random_rotations(4, rng):
        t = np.array([1.5, -2.0, 0.5])
        out = rotate_volume(vol, mat, order=order, shift_xyz=t)
        assert out.shape == shape and out.dtype == np.float32
        np.testing.assert_allclose(_centroid_xyz(out), mat @ p_xyz + t, atol=0.5)
        # without a shift: R p
        out0 = rotate_volume(vol, mat, order=order)
        np.testing.assert_allclose(_centroid_xyz(out0), mat @ p_xyz, atol=0.5)


def test_rotate_volume_axis_convention():
    """A 90° rotation about z (xyz) takes +x to +y: checks the zyx <-> xyz handling."""
    shape = (32, 32, 32)
    c = np.array(shape) // 2
    vol = _blob(shape, c + np.array([0, 0, 6]), 1.2)  # at +6 along x
    rz = Rotation.from_euler("z", 90, degrees=True).as_matrix()
    out = rotate_volume(vol, rz, order=1)
    np.testing.assert_allclose(_centroid_xyz(out), [0.0, 6.0, 0.0], atol=0.3)


def test_rotate_then_inverse_recovers_smooth_volume(rng):
    shape = (36, 36, 36)
    noise = rng.standard_normal(shape)
    smooth = ndimage.gaussian_filter(noise, 2.5)
    zz, yy, xx = np.indices(shape) - np.array(shape)[:, None, None, None] // 2
    r = np.sqrt(zz**2 + yy**2 + xx**2)
    mask = 1.0 / (1.0 + np.exp(r - 12.0))
    vol = (smooth * mask).astype(np.float32)
    inner = r <= 11
    for mat in random_rotations(3, rng):
        t = np.array([1.0, -0.5, 2.0])
        fwd = rotate_volume(vol, mat, order=3, shift_xyz=t)
        back = rotate_volume(fwd, mat.T, order=3, shift_xyz=-mat.T @ t)
        cc = np.corrcoef(back[inner], vol[inner])[0, 1]
        assert cc > 0.98
        # the forward rotation really changed the volume
        assert np.corrcoef(fwd[inner], vol[inner])[0, 1] < 0.9
