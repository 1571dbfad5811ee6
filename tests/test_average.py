"""Subtomogram averaging (tomoclust.average): SO(3) grid, FSC invariants, constrained
correlation, conventions shared with tomoclust.numerics.rotations, a planted set averaged back, and
classes too small to average."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import DEVICES
from tomoclust.average import (
    AveragingSettings,
    TooFewParticles,
    _Band,
    _centre_fft,
    _PaddedSpectrum,
    _search,
    average_class,
    fsc_against_truth,
    transform_volumes,
)
from tomoclust.numerics.class_maps import (
    classes_to_average,
    ctf_phase_flip,
    dominant_class,
    fsc,
    resample_map,
    resolution_at,
    soft_sphere,
)
from tomoclust.numerics.fourier import wedge_mask
from tomoclust.numerics.rotations import (
    angular_distance_deg,
    local_grid,
    random_rotations,
    rotate_volume,
    so3_grid,
)


def _phantom(box: int, rng: np.random.Generator, n_blobs: int = 8) -> np.ndarray:
    """An asymmetric density: Gaussian blobs of different sizes at random places."""
    c = box // 2
    zz, yy, xx = np.indices((box,) * 3) - c
    vol = np.zeros((box,) * 3)
    for (x, y, z), s in zip(rng.uniform(-0.25 * box, 0.25 * box, (n_blobs, 3)),
                            rng.uniform(1.0, 2.0, n_blobs), strict=True):
        vol += np.exp(-((xx - x) ** 2 + (yy - y) ** 2 + (zz - z) ** 2) / (2 * s * s))
    return vol.astype(np.float32)


def _planted(box, n, rng, tilt=(-60.0, 60.0), max_shift=2.0, snr=None):
    """Rotated, shifted, wedge-filtered copies of a phantom (noise of variance ratio snr)."""
    truth = _phantom(box, rng)
    rots = random_rotations(n, rng)
    shifts = rng.uniform(-max_shift, max_shift, (n, 3))
    wedge = wedge_mask((box,) * 3, *tilt, rfft=True)
    parts = np.stack([
        np.fft.irfftn(np.fft.rfftn(rotate_volume(truth, r, order=3, shift_xyz=t)) * wedge,
                      s=(box,) * 3, axes=(0, 1, 2))
        for r, t in zip(rots, shifts, strict=True)]).astype(np.float32)
    if snr:
        parts += rng.standard_normal(parts.shape).astype(np.float32) * np.sqrt(parts.var() / snr)
    return truth, parts, rots, shifts


# --------------------------------------------------------------------------- rotations
def test_so3_grid_is_uniform_proper_and_covers_at_the_step(rng):
    grid = so3_grid(30.0)
    assert len(grid) == 551  # ceil(8π² / (π/6)³)
    assert np.allclose(grid @ grid.transpose(0, 2, 1), np.eye(3), atol=1e-9)
    assert np.allclose(np.linalg.det(grid), 1.0)  # proper rotations only
    probe = random_rotations(400, rng)
    nearest = np.array([angular_distance_deg(p[None], grid).min() for p in probe])
    assert nearest.max() < 30.0  # every rotation within one step of the grid
    assert 0.4 * 30 < np.median(nearest) < 0.6 * 30  # measured: 0.50 step
    # no clumps: nearest-neighbour spacing of the grid itself is about the step
    nn = np.array([np.sort(angular_distance_deg(g[None], grid))[1] for g in grid[::10]])
    assert 12.0 < np.median(nn) < 30.0
    assert len(so3_grid(15.0)) == 4401


def test_local_grid_spacing():
    loc = local_grid(10.0)
    assert loc.shape == (27, 3, 3)
    ang = angular_distance_deg(loc, np.eye(3)[None])
    assert np.isclose(ang.min(), 0.0, atol=1e-6)
    assert np.isclose(np.sort(ang)[1], 10.0, atol=1e-6)
    assert ang.max() <= 10.0 * np.sqrt(3) + 1e-6


# ------------------------------------------------------------------------------ FSC
def test_fsc_invariants(rng):
    a = _phantom(32, rng) + 0.1 * rng.standard_normal((32,) * 3)
    same = fsc(a, a)
    assert same.shape == (17,)
    assert np.allclose(same, 1.0, atol=1e-9)
    assert np.allclose(fsc(a, -a), -1.0, atol=1e-9)
    assert np.allclose(fsc(a, 3.0 * a + 0.0), 1.0, atol=1e-9)  # scale-invariant
    n1, n2 = rng.standard_normal((2, 32, 32, 32))
    ind = fsc(n1, n2)
    # independent noise: ≈ 0, within 4σ where σ ≈ 1/sqrt(2π s²) (independent coefficients)
    s = np.arange(1, 17)
    assert np.all(np.abs(ind[1:]) < 4 / np.sqrt(2 * np.pi * s**2))
    assert abs(ind[4:].mean()) < 0.03


def test_resolution_at():
    c = np.array([1.0, 0.9, 0.6, 0.3, 0.1, 0.0])  # shells 0..5 of a box 10
    # 0.5 is crossed between shells 2 (0.6) and 3 (0.3): shell 2 + 1/3
    assert np.isclose(resolution_at(c, 0.5, 10), 10 / (2 + 1 / 3))
    assert resolution_at(np.ones(6), 0.143, 10) == 2.0  # never below: Nyquist
    assert resolution_at(np.array([1.0, 0.0, 0.0]), 0.5, 4) == 4.0  # nothing resolved


# ---------------------------------------------------------- conventions and correlation
def test_transform_volumes_matches_rotation_module(rng):
    b = 24
    vol = _phantom(b, rng)
    r = random_rotations(1, rng)[0]
    t = np.array([1.5, -0.5, 2.0])
    f32 = torch.float32
    got = transform_volumes(torch.as_tensor(vol)[None], torch.as_tensor(r, dtype=f32)[None],
                            torch.as_tensor(t, dtype=f32)[None])[0].numpy()
    # V(p) = X(R p + t) is X rotated by Rᵀ after a shift by -t: rotate_volume(X, Rᵀ, -Rᵀ t)
    want = rotate_volume(vol, r.T, order=1, shift_xyz=-r.T @ t)
    # compared where no sample comes from beyond the box (the two treat edges differently)
    inner = soft_sphere(b, b // 2 - 4, 0) > 0
    assert np.abs(got - want)[inner].max() < 1e-4 * np.abs(vol).max()
    # with 2x Fourier oversampling: the same map, less attenuated by the interpolation
    over = transform_volumes(torch.as_tensor(vol)[None], torch.as_tensor(r, dtype=f32)[None],
                             torch.as_tensor(t, dtype=f32)[None], oversample=2)[0].numpy()
    exact = rotate_volume(vol, r.T, order=3, shift_xyz=-r.T @ t)
    assert np.abs(over - exact)[inner].max() < np.abs(got - exact)[inner].max()


@pytest.mark.parametrize("device", [d if d == "cpu" else pytest.param(d, marks=pytest.mark.gpu)
                                    for d in DEVICES])
def test_constrained_correlation_without_wedge_is_plain_correlation(rng, device):
    b = 16
    x = rng.standard_normal((b,) * 3).astype(np.float32)
    ref = _phantom(b, rng) + 0.5 * x
    xt = torch.as_tensor(x, device=device)[None]
    spec = _centre_fft(xt).reshape(1, -1)
    band = _Band(b, 0.45, torch.device(device))  # (the half-space band leaves out Nyquist)
    eye = torch.eye(3, device=device)[None]
    padded = _PaddedSpectrum(torch.as_tensor(ref, device=device))
    ones = torch.ones(b**3, device=device)
    score, _, shift = _search(spec, ones, padded, eye, band, 0.0, 2**20)
    # plain correlation of the two volumes restricted to 0 < |k| <= 1/2 (Parseval)
    k = np.sqrt(sum(g**2 for g in np.meshgrid(*[np.fft.fftfreq(b)] * 3, indexing="ij")))
    keep = (k > 0) & (k <= 0.45 + 1e-9)
    fx, fr = np.fft.fftn(x) * keep, np.fft.fftn(ref) * keep
    xl, rl = np.fft.ifftn(fx).real, np.fft.ifftn(fr).real
    plain = (xl * rl).sum() / np.sqrt((xl**2).sum() * (rl**2).sum())
    assert abs(float(score[0]) - plain) < 1e-4
    assert torch.allclose(shift, torch.zeros(1, 3, device=device), atol=1e-6)

    # with a wedge the score is the correlation over the measured frequencies only
    wedge = torch.as_tensor(wedge_mask((b,) * 3, -45, 45, rfft=False), device=device)
    wscore, _, _ = _search(spec, wedge.reshape(-1), padded, eye, band, 0.0, 2**20)
    w = wedge_mask((b,) * 3, -45, 45, rfft=False)
    fxw, frw = fx * w, fr * w
    want = (fxw * frw.conj()).real.sum() / np.sqrt((np.abs(fxw) ** 2).sum()
                                                  * (np.abs(frw) ** 2).sum())
    assert abs(float(wscore[0]) - want) < 1e-4
    assert abs(float(wscore[0]) - plain) > 1e-3  # the wedge does change the score


def test_translational_search_finds_a_planted_shift(rng):
    b = 20
    ref = _phantom(b, rng)
    planted = np.array([2, -1, 3])  # xyz voxels
    x = np.roll(ref, shift=tuple(planted[::-1]), axis=(0, 1, 2))
    spec = _centre_fft(torch.as_tensor(x)[None]).reshape(1, -1)
    band = _Band(b, 0.5, torch.device("cpu"))
    score, _, shift = _search(spec, torch.ones(b**3), _PaddedSpectrum(torch.as_tensor(ref)),
                              torch.eye(3)[None], band, 4.0, 2**20)
    assert np.allclose(shift[0].numpy(), planted, atol=0.05)
    assert float(score[0]) > 0.999


# ------------------------------------------------------------------------ planted set
@pytest.fixture(scope="module")
def planted_average():
    rng = np.random.default_rng(7)
    truth, parts, rots, shifts = _planted(24, 24, rng)
    settings = AveragingSettings(angular_step=30.0, local_step=7.5, iterations=2, max_shift=3.0,
                                 initial_resolution=4.0, seed=1)
    return truth, parts, rots, shifts, settings, average_class(parts, settings)


def test_planted_noise_free_set_is_averaged_back(planted_average):
    truth, _, _, _, settings, res = planted_average
    b = truth.shape[0]
    assert res.average.shape == (b, b, b) and np.all(np.isfinite(res.average))
    curve, _, cc = fsc_against_truth(res.average, truth, settings)
    assert cc > 0.9
    assert curve[: b // 4 + 1].min() >= 0.9  # FSC(truth) ≥ 0.9 up to half Nyquist
    assert res.fsc[: b // 4 + 1].min() >= 0.9  # and the half maps agree as well
    assert sorted(set(res.subset)) == [1, 2]
    assert abs(int((res.subset == 1).sum()) - int((res.subset == 2).sum())) <= 1


def test_planted_rotations_recovered_within_the_step(planted_average):
    _, _, rots, shifts, settings, res = planted_average
    n = len(rots)
    # the average comes out in an arbitrary frame: compare relative rotations R_i R_jᵀ
    err = np.array([angular_distance_deg(res.rotations[i] @ res.rotations[j].T,
                                         rots[i] @ rots[j].T)
                    for i in range(n) for j in range(i + 1, n)])
    assert err.max() < settings.angular_step
    assert np.median(err) < 2 * settings.local_step
    # shifts: particle centres relative to each other, t_i - R_i Rⱼᵀ t_j is frame-free
    rel_true = np.array([shifts[i] - rots[i] @ rots[0].T @ shifts[0] for i in range(n)])
    rel = np.array([res.shifts[i] - res.rotations[i] @ res.rotations[0].T @ res.shifts[0]
                    for i in range(n)])
    assert np.median(np.linalg.norm(rel - rel_true, axis=1)) < 1.0


def test_noisy_planted_set(rng):
    truth, parts, _, _ = _planted(20, 40, np.random.default_rng(3), snr=1.0)[:4]
    settings = AveragingSettings(angular_step=30.0, local_step=7.5, iterations=2,
                                 max_shift=3.0, initial_resolution=4.0)
    res = average_class(parts, settings)
    curve, _, _ = fsc_against_truth(res.average, truth, settings)
    assert resolution_at(curve, 0.5, 20) <= 4.0  # FSC(truth) 0.5 at 4 voxels or better
    assert resolution_at(res.fsc, 0.143, 20) <= 4.0


# ---------------------------------------------------------------- small classes
@pytest.mark.parametrize("n", [0, 1, 3])
def test_too_few_particles_is_a_clear_error(n, rng):
    parts = rng.standard_normal((n, 16, 16, 16)).astype(np.float32)
    with pytest.raises(TooFewParticles, match=f"{n} particle.*too few to average"):
        average_class(parts, AveragingSettings(min_particles=4))


def test_classes_to_average():
    kept, skipped = classes_to_average([0, 1, 50, 3, 10], k=6, min_particles=10)
    assert kept == [3, 5]
    assert skipped == {1: 0, 2: 1, 4: 3, 6: 0}  # class 6 is empty (absent from the sizes)
    kept, skipped = classes_to_average([3, 4], k=2, min_particles=4)
    assert kept == [2] and skipped == {1: 3}  # never fewer than 2 per half set


# ------------------------------------------------------------------ truth helpers
def test_dominant_class():
    assert dominant_class(np.array([0, 2, 2, 1, 0, 0])) == (2, 2)
    assert dominant_class(np.array([0, 0])) == (0, 0)


def test_resample_map_scales_a_blob(rng):
    b_in, vs_in, vs_out = 40, 10.0, 12.0
    c = b_in // 2
    zz, yy, xx = np.indices((b_in,) * 3) - c
    sigma = 3.0
    blob = np.exp(-(xx**2 + yy**2 + zz**2) / (2 * sigma**2))
    out = resample_map(blob, vs_in, vs_out, 24)
    assert np.unravel_index(np.argmax(out), out.shape) == (12, 12, 12)  # centre to centre
    # second moment along x: sigma in output voxels = 3 * 10 / 12
    prof = out[12, 12, :]
    x = np.arange(24) - 12
    s_out = np.sqrt((prof * x**2).sum() / prof.sum())
    assert abs(s_out - sigma * vs_in / vs_out) < 0.05


def test_ctf_phase_flip_darkens_protein(rng):
    vol = soft_sphere(24, 5.0, 2.0)
    flipped = ctf_phase_flip(vol, 12.0, defocus_um=5.0)
    assert flipped[12, 12, 12] < 0 < vol[12, 12, 12]  # low frequencies change sign
    assert np.isclose(np.abs(np.fft.rfftn(flipped)), np.abs(np.fft.rfftn(vol)), atol=1e-3).all()


# ------------------------------------------------------------ one class of a method (rule)
AVG_CFG = {"angular_step": 45.0, "local_step": 22.5, "iterations": 1, "max_shift_vox": 2.0,
           "mask_radius": None, "mask_edge_vox": 2.0, "initial_resolution": 50.0,
           "wiener": 0.05, "min_particles": 4, "seed": 0}


def test_settings_from_config_turn_angstrom_into_voxels():
    from tomoclust.average import settings_from_config

    s = settings_from_config({**AVG_CFG, "mask_radius": 60.0}, voxel_size=12.0)
    assert s.mask_radius == pytest.approx(5.0) and s.initial_resolution == pytest.approx(50 / 12)
    assert (s.max_shift, s.mask_edge) == (2.0, 2.0)  # already in voxels
    assert settings_from_config(AVG_CFG, 12.0).mask_radius is None


def _class_files(tmp_path, parts, classes, optics=True):
    from tomoclust.formats.stacks import StackWriter
    from tomoclust.formats.star import optics_table, write_star

    n, box = len(parts), parts.shape[-1]
    with StackWriter(tmp_path / "particles.mrcs", n, box, 12.0) as w:
        w[:] = parts
    table = pd.DataFrame({"rlnImageName": [f"{i + 1}@particles.mrcs" for i in range(n)],
                          "rlnTomoName": "t1", "rlnCenteredCoordinateXAngst": 100.0 * np.arange(n),
                          "rlnCenteredCoordinateYAngst": 0.0, "rlnCenteredCoordinateZAngst": 0.0,
                          "rlnClassNumber": classes})
    write_star(tmp_path / "clusters.star", table)
    write_star(tmp_path / "particles.star", {"optics": optics_table(10.0, 12.0, box),
                                             "particles": table} if optics else table)
    return [str(tmp_path / f) for f in ("clusters.star", "particles.star", "particles.mrcs")]


def test_read_class_keeps_table_order_and_checks_the_stack(tmp_path):
    from tomoclust import TomoclustError
    from tomoclust.average import read_class
    from tomoclust.formats.star import read_star, write_star

    parts = np.stack([np.full((8, 8, 8), i, np.float32) for i in range(6)])
    clusters, particles, stack = _class_files(tmp_path, parts, [1, 2, 1, 2, 1, 2])
    # the class's rows out of stack order: volumes follow the table
    table = read_star(clusters)
    write_star(clusters, table.iloc[[4, 1, 0, 3, 2, 5]])
    cls = read_class(clusters, particles, stack, 1)
    assert cls.rows.tolist() == [4, 0, 2] and cls.voxel_size == pytest.approx(12.0)
    assert cls.optics is not None and len(cls.optics) == 1
    vols = cls.volumes("cpu")
    assert vols[:, 0, 0, 0].tolist() == [4.0, 0.0, 2.0]
    _, particles_no_optics, _ = _class_files(tmp_path, parts, [1] * 6, optics=False)
    assert read_class(clusters, particles_no_optics, stack, 1).optics is None
    table.loc[0, "rlnImageName"] = "9@particles.mrcs"
    write_star(clusters, table)
    with pytest.raises(TomoclustError, match="image 9 is beyond the 6 subtomograms"):
        read_class(clusters, particles, stack, 1)


def test_refined_table_adds_origins_to_extraction_ones():
    from tomoclust.average import AverageResult, refined_table

    table = pd.DataFrame({"rlnImageName": ["1@p", "2@p"], "rlnOriginXAngst": [5.0, 0.0],
                          "rlnOriginYAngst": [0.0, 0.0], "rlnOriginZAngst": [0.0, -5.0]})
    res = AverageResult(average=None, half1=None, half2=None,
                        rotations=np.stack([np.eye(3)] * 2),
                        shifts=np.array([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]]),
                        subset=np.array([1, 2]), scores=np.array([0.5, 0.4]), fsc=None)
    out = refined_table(table, res, voxel_size=10.0)
    # RELION: centre = coordinate - origin, and the alignment's shift t moves the centre by +t
    assert out["rlnOriginXAngst"].tolist() == [-5.0, 0.0]
    assert out["rlnOriginYAngst"].tolist() == [0.0, -20.0]
    assert out["rlnOriginZAngst"].tolist() == [0.0, -5.0]
    np.testing.assert_allclose(out[["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]], 0.0,
                               atol=1e-9)
    assert out["rlnRandomSubset"].tolist() == [1, 2] and "tclAlignmentScore" in out
    no_prior = refined_table(table[["rlnImageName"]], res, 10.0)
    assert no_prior["rlnOriginXAngst"].tolist() == [-10.0, 0.0]


def test_average_method_class_compares_with_the_dominant_template(tmp_path):
    from tomoclust.average import TruthMaps, average_method_class, read_class
    from tomoclust.formats.mrc import write_mrc
    from tomoclust.formats.star import write_star

    truth_map, parts, _, _ = _planted(16, 8, np.random.default_rng(5), max_shift=1.0)
    clusters, particles, stack = _class_files(tmp_path, parts, [1] * 8)
    # 6 of the 8 particles lie on true particles of class 2 (template "b"), 2 on none
    truth = pd.DataFrame({"rlnTomoName": "t1", "rlnCenteredCoordinateXAngst": 100.0 * np.arange(6),
                          "rlnCenteredCoordinateYAngst": 0.0, "rlnCenteredCoordinateZAngst": 0.0,
                          "rlnClassNumber": 2})
    write_star(tmp_path / "truth.star", truth)
    write_mrc(tmp_path / "b.mrc", truth_map, 12.0)
    ref = TruthMaps(str(tmp_path / "truth.star"), [str(tmp_path / "b.mrc")], ["a", "b"], 30.0)
    cls = read_class(clusters, particles, stack, 1)
    out = average_method_class(cls, AVG_CFG, "inv", 1, [-60.0, 60.0], "cpu", ref)
    assert out.info["truth_matched"] == 6 and out.info["template"] == "b"
    assert out.info["template_particles"] == 6 and out.info["n_particles"] == 8
    assert list(out.fsc.columns) == ["shell", "resolution_angst", "fsc_half_maps", "fsc_truth"]
    assert out.truth_view.shape == (16, 16, 16)
    # noise-free copies of the true map: the average agrees with it at low resolution
    assert out.fsc["fsc_truth"].iloc[1] > 0.9
    assert set(out.particles) == {"optics", "particles"}
    assert len(out.particles["particles"]) == 8
    # no truth: no comparison
    plain = average_method_class(cls, AVG_CFG, "inv", 1, [-60.0, 60.0], "cpu")
    assert "truth_matched" not in plain.info and "fsc_truth" not in plain.fsc
    np.testing.assert_array_equal(plain.result.average, out.result.average)
