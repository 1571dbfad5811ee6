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


# --------------------------------------------------- second convention: Peng et al. potential
def test_peng_parameters_total_and_fallback():
    from tomoclust.simulate.density import PENG_1996, peng_parameters

    a, b = peng_parameters("C", 6)
    assert a.sum() == pytest.approx(2.5092, abs=1e-4)  # f_e(0) of carbon
    assert np.all(np.diff(b) > 0)
    a_fe, b_fe = peng_parameters("FE", 26)  # no entry: carbon scaled by Z
    np.testing.assert_allclose(a_fe, np.asarray(PENG_1996["C"][0]) * 26 / 6)
    np.testing.assert_allclose(b_fe, PENG_1996["C"][1])


def test_atoms_to_potential_conserves_scattering_and_centres_the_mass(rng):
    from tomoclust.simulate.density import atoms_to_potential, peng_parameters

    pos = rng.uniform(-25, 25, size=(300, 3)) + np.array([40.0, -10.0, 3.0])
    el = list(rng.choice(["C", "N", "O", "S"], size=300))
    z = np.array([{"C": 6, "N": 7, "O": 8, "S": 16}[e] for e in el])
    occ = rng.uniform(0.5, 1.0, 300)
    vol = atoms_to_potential(pos, el, z, voxel_size=4.0, box=36, occupancies=occ,
                             bfactors=rng.uniform(20, 80, 300))
    total = sum(o * peng_parameters(e, 6)[0].sum() for e, o in zip(el, occ, strict=True))
    assert vol.dtype == np.float32 and vol.shape == (36, 36, 36)
    assert vol.sum(dtype=np.float64) == pytest.approx(total, rel=1e-4)
    # atoms much narrower than a voxel: the voxel sums' centre of mass is exact only up to
    # each atom's rounding to its voxel, which averages out over 300 atoms
    np.testing.assert_allclose(_com_zyx(vol), [18, 18, 18], atol=0.03)


def test_atoms_to_potential_of_a_symmetric_model_is_symmetric():
    from tomoclust.simulate.density import atoms_to_potential

    base = np.array([[7.0, 3.0, 1.0], [2.0, 9.0, -4.0], [-5.0, 1.0, 6.0]])
    # 4-fold about z through the origin, plus the inversion: symmetric under both
    rz = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    pts = [base @ np.linalg.matrix_power(rz, k).T for k in range(4)]
    pos = np.concatenate(pts + [-p for p in pts])
    el = ["C", "O", "S"] * 8
    vol = atoms_to_potential(pos, el, np.array([6, 8, 16] * 8), voxel_size=2.0, box=20,
                             bfactors=np.full(24, 30.0))
    core = vol[1:, 1:, 1:]  # voxels 1..19: centred on voxel 10, the model's centre
    assert vol[0].max() < 1e-6 * vol.max()
    np.testing.assert_allclose(core, np.rot90(core, 1, axes=(1, 2)), atol=1e-6 * vol.max())
    np.testing.assert_allclose(core, core[::-1, ::-1, ::-1], atol=1e-6 * vol.max())


def test_atoms_to_potential_b_factor_broadens_but_keeps_the_total():
    from tomoclust.simulate.density import atoms_to_potential

    pos = np.zeros((1, 3))
    sharp = atoms_to_potential(pos, ["N"], np.array([7]), 1.0, box=16, bfactors=np.array([5.0]))
    soft = atoms_to_potential(pos, ["N"], np.array([7]), 1.0, box=16, bfactors=np.array([200.0]))
    assert sharp.sum() == pytest.approx(soft.sum(), rel=1e-5)
    assert sharp.max() > 2 * soft.max()


def test_template_potential_of_a_real_model_matches_the_density_convention(repo):
    from tomoclust.simulate.density import template_potential

    pot = template_potential(repo / "resources/structures/3d2f.pdb.gz", 12.0, box=32)
    dens = template_density(repo / "resources/structures/3d2f.pdb.gz", 12.0, box=32)
    # two conventions of the same model: same place and shape, not the same numbers
    np.testing.assert_allclose(_com_zyx(pot), [16, 16, 16], atol=0.05)
    assert np.corrcoef(pot.ravel(), dens.ravel())[0, 1] > 0.95
    assert not np.allclose(pot / pot.sum(), dens / dens.sum(), atol=1e-5)
