"""tomoclust.features.augment: batch rotation (convention, fill), proper rotations, missing
wedge."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import DEVICES
from scipy import ndimage
from tomoclust.features import augment as aug
from tomoclust.numerics.fourier import wedge_mask
from tomoclust.numerics.rotations import random_rotations, rotate_volume


def _blob(d: int, centre_xyz: np.ndarray, sigma: float) -> np.ndarray:
    zz, yy, xx = np.indices((d, d, d), dtype=np.float64) - d // 2
    x, y, z = centre_xyz
    r2 = (xx - x) ** 2 + (yy - y) ** 2 + (zz - z) ** 2
    return np.exp(-r2 / (2 * sigma**2)).astype(np.float32)


def _centroid_xyz(vol: np.ndarray) -> np.ndarray:
    """Centre of mass (positive part) in xyz voxels relative to the centre ``d // 2``."""
    w = np.clip(vol, 0, None).astype(np.float64)
    idx = np.indices(vol.shape).reshape(3, -1)
    com_zyx = (idx * w.ravel()).sum(1) / w.sum()
    return (com_zyx - np.array(vol.shape) // 2)[::-1]


def _ball(d: int, radius: float) -> np.ndarray:
    zz, yy, xx = np.indices((d, d, d)) - d // 2
    return xx**2 + yy**2 + zz**2 <= radius**2


def _dev(device: str) -> str:
    return torch.device(device).type


@pytest.mark.parametrize("device", DEVICES)
def test_rotate_batch_identity_is_input(device, rng):
    vols = torch.as_tensor(rng.standard_normal((3, 12, 12, 12)), dtype=torch.float32,
                           device=device)
    eye = torch.eye(3).expand(3, 3, 3)
    out = aug.rotate_batch(vols, eye)
    assert out.shape == vols.shape and out.dtype == torch.float32
    assert out.device.type == _dev(device)
    torch.testing.assert_close(out, vols, atol=1e-5, rtol=0)
    # nothing comes from outside the box under the identity, so the fill changes nothing
    filled = aug.rotate_batch(vols, eye, fill_std=torch.full((3,), 5.0, device=device))
    torch.testing.assert_close(filled, vols, atol=1e-5, rtol=0)


@pytest.mark.parametrize("device", DEVICES)
def test_rotate_batch_moves_a_blob_to_r_p(device, rng):
    d = 24
    p = np.array([5.0, -3.0, 2.0])  # xyz, relative to voxel d // 2
    vol = _blob(d, p, 1.5)
    mats = random_rotations(6, rng)
    vols = torch.as_tensor(np.repeat(vol[None], 6, axis=0), device=device)
    out = aug.rotate_batch(vols, torch.as_tensor(mats)).cpu().numpy()
    for m, o in zip(mats, out):
        np.testing.assert_allclose(_centroid_xyz(o), m @ p, atol=0.1)
    # a 90° turn about z maps +x to +y
    rz = np.array([[0.0, -1, 0], [1, 0, 0], [0, 0, 1]])
    o = aug.rotate_batch(vols[:1], torch.as_tensor(rz[None])).cpu().numpy()[0]
    np.testing.assert_allclose(_centroid_xyz(o), [3.0, 5.0, 2.0], atol=0.05)


@pytest.mark.parametrize("device", DEVICES)
def test_rotate_batch_agrees_with_rotate_volume(device, rng):
    d = 24
    vol = ndimage.gaussian_filter(rng.standard_normal((d, d, d)), 1.5).astype(np.float32)
    mats = random_rotations(4, rng)
    out = aug.rotate_batch(torch.as_tensor(np.repeat(vol[None], 4, axis=0), device=device),
                           torch.as_tensor(mats)).cpu().numpy()
    interior = _ball(d, d // 2 - 2)
    for m, o in zip(mats, out):
        ref = rotate_volume(vol, m, order=1)
        corr = np.corrcoef(o[interior], ref[interior])[0, 1]
        assert corr > 0.99, corr
        # both are trilinear with the same convention: nearly the same numbers
        assert np.abs(o[interior] - ref[interior]).max() < 1e-3 * np.abs(ref).max() + 1e-4
    # and a wrong convention (the inverse rotation) does not agree
    wrong = rotate_volume(vol, mats[0].T, order=1)
    assert np.corrcoef(out[0][interior], wrong[interior])[0, 1] < 0.9


@pytest.mark.parametrize("device", DEVICES)
def test_noise_fill_has_the_requested_std(device, rng):
    d = 24
    a = np.radians(45.0)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    mats = np.stack([rz, rx @ rz])
    vols = torch.zeros((2, d, d, d), device=device)
    stds = torch.tensor([0.5, 2.5], device=device)
    gen = torch.Generator(device=device)
    gen.manual_seed(3)
    out = aug.rotate_batch(vols, torch.as_tensor(mats), fill_std=stds, generator=gen)
    assert out.device.type == _dev(device)
    out = out.cpu().numpy()
    # sources outside the box, computed independently: R^T p + c outside [0, d - 1]
    c = d // 2
    zz, yy, xx = np.indices((d, d, d)) - c
    pos = np.stack([xx, yy, zz], -1).reshape(-1, 3).astype(np.float64)
    for m, o, s in zip(mats, out, [0.5, 2.5]):
        src = pos @ m + c  # rows: (R^T p)^T = p^T R
        # (a margin of 0.01 voxel keeps float32 rounding at the faces out of the test)
        inside = ((src > 0.01) & (src < d - 1.01)).all(1).reshape(d, d, d)
        outside = ((src < -0.01) | (src > d - 1 + 0.01)).any(1).reshape(d, d, d)
        assert outside.sum() > 1000
        np.testing.assert_array_equal(o[inside], 0.0)  # zeros rotate to zeros
        assert o[outside].std() == pytest.approx(s, rel=0.06)
        assert abs(o[outside].mean()) < 0.1 * s
    # no fill: corners stay zero
    plain = aug.rotate_batch(vols, torch.as_tensor(mats)).cpu().numpy()
    np.testing.assert_array_equal(plain, 0.0)


@pytest.mark.parametrize("device", DEVICES)
def test_shell_std(device, rng):
    d, w = 12, 2
    vol = np.full((d, d, d), 100.0)
    shell = np.ones((d, d, d), bool)
    shell[w:d - w, w:d - w, w:d - w] = False
    vol[shell] = 2.0 * rng.standard_normal(shell.sum())
    vols = torch.as_tensor(np.stack([vol, 3 * vol]), dtype=torch.float32, device=device)
    out = aug.shell_std(vols, w)
    assert out.shape == (2,) and out.device.type == _dev(device)
    expected = vol[shell].std(ddof=1)
    np.testing.assert_allclose(out.cpu().numpy(), [expected, 3 * expected], rtol=1e-5)
    assert expected == pytest.approx(2.0, rel=0.1)  # the interior (100) does not enter


def test_klein_rotations_are_proper_and_preserve_a_symmetric_wedge():
    d = 16
    mask = wedge_mask((d, d, d), -60.0, 60.0, rfft=False)
    assert 0.2 < 1 - mask.mean() < 0.45  # there is a missing wedge to preserve
    idx = np.arange(d)
    mats = aug._klein_rotations()
    assert len(mats) == 4
    for m in mats:
        np.testing.assert_allclose(m @ m.T, np.eye(3), atol=1e-12)
        assert np.linalg.det(m) == pytest.approx(1.0)
        sx, sy, sz = np.diag(m).astype(int)
        # mask(R k): R is diagonal in xyz; -k on an fftn grid is index (-i) mod d
        rotated = mask[np.ix_((sz * idx) % d, (sy * idx) % d, (sx * idx) % d)]
        np.testing.assert_array_equal(rotated, mask)
    # a 90° turn about x does not preserve the wedge: the check above can fail
    turned = np.transpose(mask, (1, 0, 2))  # kz <-> ky
    assert (turned != mask).mean() > 0.05


@pytest.mark.parametrize("mode", ["wedge_symmetric", "uniform_masked"])
def test_augment_uses_only_proper_rotations(mode, monkeypatch, rng):
    seen = []
    original = aug.rotate_batch

    def spy(vols, mats, *args, **kwargs):
        seen.append(np.asarray(mats))
        return original(vols, mats, *args, **kwargs)

    monkeypatch.setattr(aug, "rotate_batch", spy)
    vols = torch.as_tensor(rng.standard_normal((64, 8, 8, 8)), dtype=torch.float32)
    aug.augment(vols, mode, np.random.default_rng(0), aug.wedge_mask_torch(8, -60, 60, "cpu"))
    mats = np.concatenate(seen)
    assert mats.shape == (64, 3, 3)
    np.testing.assert_allclose(np.linalg.det(mats), 1.0, atol=1e-9)
    np.testing.assert_allclose(np.einsum("nji,njk->nik", mats, mats),
                               np.broadcast_to(np.eye(3), mats.shape), atol=1e-9)
    klein = aug._klein_rotations()
    is_klein = [any(np.allclose(m, k) for k in klein) for m in mats]
    if mode == "wedge_symmetric":
        assert all(is_klein)
        assert len({tuple(np.diag(m)) for m in mats}) == 4  # all four are drawn
    else:
        assert not any(is_klein)


def _missing_power_fraction(vols: torch.Tensor, tilt: float) -> np.ndarray:
    d = vols.shape[-1]
    missing = 1 - wedge_mask((d, d, d), -tilt, tilt, rfft=False)
    missing[0, 0, 0] = 0
    power = np.abs(np.fft.fftn(vols.cpu().numpy().astype(np.float64), axes=(1, 2, 3))) ** 2
    power[:, 0, 0, 0] = 0
    return (power * missing).sum(axis=(1, 2, 3)) / power.sum(axis=(1, 2, 3))


@pytest.mark.parametrize("device", DEVICES)
def test_uniform_masked_has_no_power_in_the_missing_wedge(device, rng):
    d = 16
    vols = torch.as_tensor(rng.standard_normal((6, d, d, d)), dtype=torch.float32,
                           device=device)
    wedge = aug.wedge_mask_torch(d, -60.0, 60.0, device)
    assert wedge.shape == (d, d, d // 2 + 1) and wedge.device.type == _dev(device)
    out = aug.augment(vols, "uniform_masked", np.random.default_rng(1), wedge)
    assert out.shape == vols.shape and out.dtype == torch.float32
    assert out.device.type == _dev(device)
    assert np.all(_missing_power_fraction(vols, 60.0) > 0.2)  # white noise fills the wedge
    assert np.all(_missing_power_fraction(out, 60.0) < 1e-6)
    # renormalised per particle
    np.testing.assert_allclose(out.mean(dim=(1, 2, 3)).cpu().numpy(), 0.0, atol=1e-5)
    np.testing.assert_allclose(out.std(dim=(1, 2, 3)).cpu().numpy(), 1.0, atol=1e-4)
    # without a wedge the rotated copies keep power there
    bare = aug.augment(vols, "uniform_masked", np.random.default_rng(1), None)
    assert np.all(_missing_power_fraction(bare, 60.0) > 0.1)


@pytest.mark.parametrize("device", DEVICES)
def test_augment_modes(device, rng):
    vols = torch.as_tensor(rng.standard_normal((4, 8, 8, 8)), dtype=torch.float32,
                           device=device)
    assert aug.augment(vols, "none", np.random.default_rng(0)) is vols
    a = aug.augment(vols, "wedge_symmetric", np.random.default_rng(5))
    b = aug.augment(vols, "wedge_symmetric", np.random.default_rng(5))
    torch.testing.assert_close(a, b)  # reproducible from the numpy generator
    assert a.device.type == _dev(device)
    with pytest.raises(ValueError, match="unknown augmentation mode"):
        aug.augment(vols, "mirror", np.random.default_rng(0))
