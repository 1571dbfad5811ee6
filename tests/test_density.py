"""tomoclust.simulate.density: atoms and maps to density at a voxel size."""

from __future__ import annotations

import gzip
import shutil

import numpy as np
import pytest
from tomoclust import TomoclustError
from tomoclust.formats.mrc import write_mrc
from tomoclust.simulate.density import (
    atoms_to_density,
    bounding_radius,
    fit_box,
    load_atoms,
    map_to_density,
    template_density,
)


def _com_zyx(vol):
    w = np.asarray(vol, dtype=np.float64)
    idx = np.indices(vol.shape).reshape(3, -1)
    return (idx * w.ravel()).sum(1) / w.sum()


def _gaussian(shape, centre, sigma):
    zz, yy, xx = np.indices(shape, dtype=np.float64)
    r2 = (zz - centre[0]) ** 2 + (yy - centre[1]) ** 2 + (xx - centre[2]) ** 2
    return np.exp(-r2 / (2 * sigma**2))


def test_atoms_to_density_conserves_weight_and_centres_the_mass(rng):
    pos = rng.uniform(-30, 30, size=(400, 3)) + np.array([100.0, -50.0, 7.0])
    w = rng.choice([6.0, 7.0, 8.0, 16.0], size=400)
    vol = atoms_to_density(pos, w, voxel_size=4.0, box=40)
    assert vol.shape == (40, 40, 40) and vol.dtype == np.float32
    assert vol.sum(dtype=np.float64) == pytest.approx(w.sum(), rel=1e-3)
    np.testing.assert_allclose(_com_zyx(vol), [20, 20, 20], atol=0.02)


def test_atoms_to_density_default_box_is_even_and_fits(rng):
    pos = rng.normal(0, 15, size=(300, 3))
    w = np.full(300, 6.0)
    vol = atoms_to_density(pos, w, voxel_size=5.0)
    n = vol.shape[0]
    assert vol.shape == (n, n, n) and n % 2 == 0
    assert vol.sum(dtype=np.float64) == pytest.approx(w.sum(), rel=1e-3)
    np.testing.assert_allclose(_com_zyx(vol), [n // 2] * 3, atol=0.05)


def test_atoms_to_density_resolution_widens():
    pos = np.zeros((1, 3))
    w = np.ones(1)
    sharp = atoms_to_density(pos, w, 2.0, box=32, resolution=4.0)
    soft = atoms_to_density(pos, w, 2.0, box=32, resolution=12.0)
    assert soft.max() < sharp.max()
    assert soft.sum() == pytest.approx(sharp.sum(), rel=1e-3)


@pytest.mark.parametrize("name", ["1s3x.pdb.gz", "3qm1.pdb.gz"])
def test_template_density_from_real_model(repo, name):
    path = repo / "resources" / "structures" / name
    pos, w = load_atoms(path)
    assert pos.shape[1] == 3 and len(pos) == len(w) > 100
    assert np.all(w > 0)
    vol = template_density(path, 10.0)
    n = vol.shape[0]
    assert vol.shape == (n, n, n) and n % 2 == 0
    assert vol.sum(dtype=np.float64) == pytest.approx(w.sum(), rel=1e-3)
    np.testing.assert_allclose(_com_zyx(vol), [n // 2] * 3, atol=0.05)
    # a protein of a few tens of kDa is a few voxels across at 10 Å
    assert 1.5 < bounding_radius(vol) < n / 2


def test_template_density_uncompressed_model(repo, tmp_path):
    src = repo / "resources" / "structures" / "1s3x.pdb.gz"
    dst = tmp_path / "1s3x.pdb"
    with gzip.open(src, "rb") as fin, open(dst, "wb") as fout:
        shutil.copyfileobj(fin, fout)
    a = template_density(src, 12.0, box=16)
    b = template_density(dst, 12.0, box=16)
    np.testing.assert_allclose(a, b, atol=1e-5 * a.max())


def test_map_to_density_resamples_and_conserves_mass(tmp_path):
    shape = (40, 40, 40)
    dens = _gaussian(shape, (20, 20, 20), 3.0).astype(np.float32)  # σ = 15 Å at 5 Å
    path = tmp_path / "map.mrc"
    write_mrc(path, dens, 5.0)
    out = template_density(path, 10.0)
    assert out.shape == (20, 20, 20)
    # mass = Σ density · voxel volume is the same at both samplings
    assert out.sum(dtype=np.float64) * 10.0**3 == pytest.approx(
        dens.sum(dtype=np.float64) * 5.0**3, rel=1e-2)
    np.testing.assert_allclose(_com_zyx(out), [10, 10, 10], atol=0.05)
    # the width in Å is kept: σ = 1.5 voxels of 10 Å
    ref = _gaussian((20, 20, 20), (10, 10, 10), 1.5)
    ref *= out.max() / ref.max()
    np.testing.assert_allclose(out, ref, atol=0.02 * out.max())
    boxed = map_to_density(path, 10.0, box=24)
    assert boxed.shape == (24, 24, 24)
    np.testing.assert_allclose(_com_zyx(boxed), [12, 12, 12], atol=0.05)


def test_map_to_density_non_cubic_map(tmp_path):
    dens = _gaussian((30, 40, 36), (15, 20, 18), 2.5).astype(np.float32)
    path = tmp_path / "box.map"
    write_mrc(path, dens, 6.0)
    out = template_density(path, 12.0)
    assert out.shape == (20, 20, 20)  # padded to the largest side (40) then halved
    np.testing.assert_allclose(_com_zyx(np.clip(out, 0, None)), [10, 10, 10], atol=0.1)


def test_fit_box_keeps_the_centre():
    vol = np.zeros((10, 10, 10), dtype=np.float32)
    vol[5, 5, 5] = 1.0
    for box in (6, 7, 10, 15, 16):
        out = fit_box(vol, box)
        assert out.shape == (box,) * 3
        assert out[box // 2, box // 2, box // 2] == 1.0
        assert out.sum() == 1.0


def test_bounding_radius_of_gaussian():
    sigma = 3.0
    vol = _gaussian((48, 48, 48), (24, 24, 24), sigma)
    # 98 % of a 3D Gaussian lies within 3.136 σ (chi distribution, 3 degrees of freedom)
    assert bounding_radius(vol) == pytest.approx(3.136 * sigma, abs=0.5)
    assert bounding_radius(np.zeros((8, 8, 8))) == 0.0


def test_template_errors_name_the_file(tmp_path):
    odd = tmp_path / "template.xyz"
    odd.write_text("1 2 3\n")
    with pytest.raises(TomoclustError, match=r"template\.xyz.*unknown file type"):
        template_density(odd, 10.0)
    with pytest.raises(TomoclustError, match=r"absent\.pdb"):
        template_density(tmp_path / "absent.pdb", 10.0)
    with pytest.raises(TomoclustError, match=r"absent\.cif\.gz"):
        template_density(tmp_path / "absent.cif.gz", 10.0)
    with pytest.raises(TomoclustError, match=r"absent\.mrc"):
        template_density(tmp_path / "absent.mrc", 10.0)
    garbage = tmp_path / "garbage.pdb"
    garbage.write_text("nothing here\n")
    with pytest.raises(TomoclustError, match=r"garbage\.pdb"):
        template_density(garbage, 10.0)
