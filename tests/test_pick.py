"""tomoclust.pick: DoG picking of planted particles, NMS, edges, chunking, torch backend."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import DEVICES
from tomoclust.formats.mrc import open_mrc, write_mrc
from tomoclust.pick import (
    DogSettings,
    dog_pick,
    gaussian_kernel,
    params_from_angst,
    refine_centres,
    refine_picks,
)

SHAPE = (40, 48, 48)
COLUMNS = ["x", "y", "z", "score", "zscore"]


def _blob(centre_zyx, sigma, shape=SHAPE):
    zz, yy, xx = np.indices(shape, dtype=np.float64)
    c = centre_zyx
    r2 = (zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2
    return np.exp(-r2 / (2 * sigma**2))


def _xyz(df):
    return df[["x", "y", "z"]].to_numpy()


def _near(df, centre_zyx, radius):
    """Rows of picks within ``radius`` voxels of a zyx position."""
    d = np.linalg.norm(_xyz(df) - np.asarray(centre_zyx)[::-1], axis=1)
    return df[d <= radius]


@pytest.fixture
def planted(rng):
    """Noise (sd 1) with one dark Gaussian particle (σ 3 voxels) at a known place."""
    centre = (20, 22, 27)
    vol = rng.standard_normal(SHAPE) - 1.5 * _blob(centre, 3.0)
    return vol.astype(np.float32), centre


def _params(**kw):
    return params_from_angst(10.0, 40.0, **{"threshold": 3.0, **kw})


def test_params_from_angst():
    p = params_from_angst(10.0, 100.0, sigma_scale=0.5, ratio=1.2, contrast="bright",
                          threshold=4.0, min_distance_angst=150.0, edge_angst=205.0,
                          max_count=7, chunk_z=32)
    assert p.sigma == pytest.approx(5.0)
    assert p.min_distance == pytest.approx(15.0)
    assert p.edge == 21  # ceil(20.5)
    assert (p.ratio, p.contrast, p.threshold, p.max_count, p.chunk_z) == (1.2, "bright", 4.0,
                                                                          7, 32)
    assert params_from_angst(10.0, 100.0).min_distance == pytest.approx(10.0)  # = radius
    assert params_from_angst(10.0, 5.0).sigma == pytest.approx(0.5)  # floor
    with pytest.raises(ValueError, match="contrast"):
        params_from_angst(10.0, 100.0, contrast="grey")
    with pytest.raises(ValueError):
        params_from_angst(10.0, -1.0)
    with pytest.raises(ValueError):
        params_from_angst(0.0, 100.0)


def test_gaussian_kernel():
    k = gaussian_kernel(2.0)
    assert len(k) == 2 * int(4 * 2.0 + 0.5) + 1
    assert k.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(k, k[::-1])
    x = np.arange(len(k)) - len(k) // 2
    assert (k * x**2).sum() == pytest.approx(4.0, rel=1e-3)  # variance σ²


def test_dark_particle_is_picked_at_its_place(planted):
    vol, centre = planted
    picks = dog_pick(vol, _params())
    assert list(picks.columns) == COLUMNS
    assert len(picks) >= 1
    # strongest first, and the strongest is the planted particle
    assert np.all(np.diff(picks["score"].to_numpy()) <= 0)
    np.testing.assert_allclose(_xyz(picks)[0], np.array(centre)[::-1], atol=1.0)
    assert picks["zscore"].iloc[0] > 5
    assert np.all(picks["zscore"] >= 3.0)


def test_bright_contrast_is_the_sign_flip(planted):
    vol, centre = planted
    dark = dog_pick(vol, _params(contrast="dark"))
    bright = dog_pick(-vol, _params(contrast="bright"))
    np.testing.assert_array_equal(_xyz(bright), _xyz(dark))
    np.testing.assert_allclose(bright["zscore"], dark["zscore"], rtol=1e-5)
    # looking for dark particles in the flipped volume does not find the (now bright) one
    wrong = dog_pick(-vol, _params(contrast="dark"))
    assert len(_near(wrong, centre, 2.0)) == 0


def test_min_distance_suppresses_the_weaker_of_two_close_peaks(rng):
    a, b = (20, 24, 21), (20, 24, 27)  # 6 voxels apart
    vol = (0.2 * rng.standard_normal(SHAPE) - 2.0 * _blob(a, 1.5)
           - 1.5 * _blob(b, 1.5)).astype(np.float32)
    p_close = params_from_angst(10.0, 25.0, threshold=5.0, min_distance_angst=30.0)
    both = dog_pick(vol, p_close)
    assert len(_near(both, a, 1.0)) == 1 and len(_near(both, b, 1.0)) == 1
    p_far = params_from_angst(10.0, 25.0, threshold=5.0, min_distance_angst=100.0)
    one = dog_pick(vol, p_far)
    mid = (20, 24, 24)
    near = _near(one, mid, 8.0)
    assert len(near) == 1
    np.testing.assert_allclose(_xyz(near)[0], np.array(a)[::-1], atol=1.0)  # the stronger
    # no two picks closer than min_distance
    xyz = _xyz(one)
    d = np.linalg.norm(xyz[:, None] - xyz[None], axis=-1)
    assert np.all(d[~np.eye(len(xyz), dtype=bool)] >= 10.0)


def test_edge_exclusion(rng):
    centre = (20, 24, 3)  # 3 voxels from the x = 0 face
    vol = (rng.standard_normal(SHAPE) - 3.0 * _blob(centre, 2.0)).astype(np.float32)
    p = params_from_angst(10.0, 30.0, threshold=3.0)
    assert len(_near(dog_pick(vol, p), centre, 1.0)) == 1
    p_edge = params_from_angst(10.0, 30.0, threshold=3.0, edge_angst=60.0)
    picks = dog_pick(vol, p_edge)
    assert len(_near(picks, centre, 1.5)) == 0
    xyz = _xyz(picks)
    assert np.all(xyz >= 6) and np.all(xyz < np.array(SHAPE[::-1]) - 6)


def test_max_count_keeps_the_strongest(planted):
    vol, _ = planted
    all_picks = dog_pick(vol, _params())
    assert len(all_picks) > 3
    top = dog_pick(vol, _params(max_count=3))
    assert len(top) == 3
    np.testing.assert_array_equal(_xyz(top), _xyz(all_picks)[:3])


@pytest.mark.parametrize("chunk_z", [5, 8, 13])
def test_chunked_equals_unchunked(planted, chunk_z):
    vol, _ = planted
    whole = dog_pick(vol, _params(chunk_z=128))
    slabs = dog_pick(vol, _params(chunk_z=chunk_z))
    assert len(slabs) == len(whole)
    np.testing.assert_array_equal(_xyz(slabs), _xyz(whole))
    np.testing.assert_allclose(slabs["zscore"], whole["zscore"], rtol=1e-5)


def test_picks_from_a_memory_mapped_tomogram(planted, tmp_path):
    vol, centre = planted
    path = tmp_path / "tomo.mrc"
    write_mrc(path, vol, 10.0)
    in_memory = dog_pick(vol, _params(chunk_z=8))
    with open_mrc(path) as mrc:
        mapped = dog_pick(mrc.data, _params(chunk_z=8))
    np.testing.assert_array_equal(_xyz(mapped), _xyz(in_memory))
    np.testing.assert_allclose(_xyz(mapped)[0], np.array(centre)[::-1], atol=1.0)


@pytest.mark.parametrize("device", DEVICES)
def test_torch_backend_matches_numpy(planted, device):
    vol, centre = planted
    ref = dog_pick(vol, _params(chunk_z=16))
    got = dog_pick(vol, _params(chunk_z=16), device=device)
    assert list(got.columns) == COLUMNS
    assert len(got) == len(ref)
    # same picks up to floating-point ties: match each to its nearest numpy pick
    d = np.linalg.norm(_xyz(got)[:, None] - _xyz(ref)[None], axis=-1)
    assert d.min(1).max() <= 1.0
    assert d.min(0).max() <= 1.0
    np.testing.assert_allclose(_xyz(got)[0], np.array(centre)[::-1], atol=1.0)
    np.testing.assert_allclose(np.sort(got["zscore"]), np.sort(ref["zscore"]), rtol=1e-3)


def test_no_picks_gives_empty_table_with_columns(planted):
    vol, _ = planted
    picks = dog_pick(vol, _params(threshold=1e6))
    assert len(picks) == 0
    assert list(picks.columns) == COLUMNS
    # a constant volume has no robust spread: nothing passes
    flat = dog_pick(np.ones(SHAPE, dtype=np.float32), DogSettings(sigma=2.0, threshold=1.0))
    assert len(flat) == 0 and list(flat.columns) == COLUMNS


@pytest.mark.parametrize("b", [2, 3])
def test_coarse_grid_picks_the_planted_particle_to_sub_voxel(rng, b):
    """With ``bin`` > 1 the score map lives on a coarser grid, but the peak is refined by a
    parabola: the planted particle (at an off-grid place) is found within 1 voxel."""
    centre = (21, 23, 26)  # not a multiple of 2 or 3 on every axis
    vol = (0.3 * rng.standard_normal(SHAPE) - 1.5 * _blob(centre, 3.0)).astype(np.float32)
    picks = dog_pick(vol, _params(bin=b))
    assert len(picks) >= 1
    d = np.linalg.norm(_xyz(picks)[0] - np.asarray(centre)[::-1])
    assert d <= 1.0, (d, picks.head())


def test_coarse_grid_chunked_equals_unchunked(planted):
    vol, _ = planted
    whole = dog_pick(vol, _params(bin=2, chunk_z=64))
    chunked = dog_pick(vol, _params(bin=2, chunk_z=9))  # rounded up to a multiple of 2
    assert len(whole) == len(chunked) > 0
    _assert_same_points(_xyz(whole), _xyz(chunked), atol=0.01)  # float32 FFTs of other sizes


@pytest.mark.parametrize("device", DEVICES)
def test_coarse_grid_torch_matches_numpy(planted, device):
    vol, _ = planted
    ref = dog_pick(vol, _params(bin=2))
    got = dog_pick(vol, _params(bin=2), device=device)
    assert len(got) == len(ref) > 0
    # torch subsamples the full-resolution map, numpy crops the spectrum: same grid, and
    # sub-voxel refinement of nearly equal maps
    _assert_same_points(_xyz(got), _xyz(ref), atol=1.0)


def _assert_same_points(a, b, atol):
    """Every point of ``a`` has its own point of ``b`` within ``atol`` (one-to-one)."""
    from scipy.optimize import linear_sum_assignment

    d = np.linalg.norm(a[:, None] - b[None], axis=2)
    r, c = linear_sum_assignment(d)
    assert len(r) == len(a) == len(b)
    assert d[r, c].max() <= atol, d[r, c].max()


def _bin_smooth_reference(vol, b):
    """Direct formula: out[i] = Σ_t w_t · vol[clip(b·i + t − (b − 1))] / b³ on every axis."""
    from tomoclust.pick import _bin_weights

    w = _bin_weights(b).astype(np.float64) / b**3
    out = np.asarray(vol, dtype=np.float64)
    for ax in range(3):
        n = out.shape[ax]
        m = -(-n // b)
        acc = 0.0
        for t, wt in enumerate(w):
            idx = np.clip(b * np.arange(m) + t - (b - 1), 0, n - 1)
            acc = acc + wt * np.take(out, idx, axis=ax)
        out = acc
    return out


@pytest.mark.parametrize("b", [2, 3, 4])
@pytest.mark.parametrize("shape", [(13, 10, 9), (5, 4, 3), (1, 2, 7)])
def test_bin_smooth_matches_the_direct_formula(rng, b, shape):
    from tomoclust.pick import _bin_smooth, _bin_smooth_torch, _bin_weights

    assert _bin_weights(2).tolist() == [1, 3, 3, 1]
    assert _bin_weights(b).sum() == b**3
    vol = rng.standard_normal(shape).astype(np.float32)
    want = _bin_smooth_reference(vol, b)
    got = _bin_smooth(vol, b, block=2)  # blocks of output planes: the edges of every block
    assert got.shape == tuple(-(-n // b) for n in shape) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, atol=1e-6)
    np.testing.assert_allclose(_bin_smooth(vol, b, block=64), want, atol=1e-6)
    np.testing.assert_array_equal(_bin_smooth(vol, b, block=1, workers=3),
                                  _bin_smooth(vol, b, block=1))  # threads over blocks
    # a constant stays constant (the taps sum to 1, edges are "nearest")
    np.testing.assert_allclose(_bin_smooth(np.full(shape, 2.5, np.float32), b), 2.5, rtol=1e-6)
    torch = pytest.importorskip("torch")
    np.testing.assert_allclose(_bin_smooth_torch(torch.from_numpy(vol), b).numpy(), want,
                               atol=1e-6)


def test_bin_smooth_reads_a_memory_map_without_copying_it(rng, tmp_path):
    from tomoclust.pick import _bin_smooth

    vol = rng.standard_normal((20, 18, 16)).astype(np.float32)
    write_mrc(tmp_path / "v.mrc", vol, 10.0)
    with open_mrc(tmp_path / "v.mrc") as mrc:
        np.testing.assert_allclose(_bin_smooth(mrc.data, 2), _bin_smooth(vol, 2), atol=0)


@pytest.mark.parametrize("b", [2, 3])
def test_coarse_score_map_equals_the_full_resolution_one(rng, b):
    """On a smooth volume the coarse-grid DoG at coarse voxel i equals the full-resolution
    DoG at fine position b·i + (b − 1)/2 (the coarse filter's blur is taken off σ)."""
    from scipy import ndimage
    from tomoclust.pick import _dog_numpy

    vol = ndimage.gaussian_filter(rng.standard_normal((48, 60, 54)), 2.0).astype(np.float32)
    p = DogSettings(sigma=4.0, ratio=1.1)
    fine, _, _ = _dog_numpy(vol, p)
    coarse, peaks, mag = _dog_numpy(vol, DogSettings(sigma=4.0, ratio=1.1, bin=b))
    assert mag == pytest.approx(float(np.abs(vol).max()), rel=0.5)
    # fine map at the block centres (linear interpolation for half-voxel centres)
    pos = [b * np.arange(m) + (b - 1) / 2 for m in coarse.shape]
    want = ndimage.map_coordinates(fine, np.meshgrid(*pos, indexing="ij"), order=1)
    inner = (slice(3, -3),) * 3  # away from the faces ("nearest" edges differ by grid)
    err = np.abs(coarse[inner] - want[inner]).max() / np.abs(want[inner]).max()
    # measured 0.032 (b = 2, partly the linear interpolation) and 0.011 (b = 3); without
    # taking the filter's blur off σ it is 0.051 and 0.155, half a voxel off 0.19 and 0.40
    assert err < {2: 0.04, 3: 0.02}[b], err
    assert np.corrcoef(coarse[inner].ravel(), want[inner].ravel())[0, 1] > 0.999
    assert peaks.dtype == bool and peaks.shape == coarse.shape


def _blobs(rng, shape, centres, radius, noise, dark=True):
    """Solid balls (soft edge) at sub-voxel centres (zyx) in Gaussian noise."""
    grid = np.indices(shape, dtype=np.float64)
    vol = np.zeros(shape)
    for c in centres:
        d = np.sqrt(sum((grid[a] - c[a]) ** 2 for a in range(3)))
        vol += 1.0 / (1.0 + np.exp((d - radius) / 0.7))
    vol = -vol if dark else vol
    return (vol + rng.normal(0, noise, shape)).astype(np.float32)


@pytest.mark.parametrize("contrast", ["dark", "bright"])
def test_refined_centres_land_near_the_planted_sub_voxel_centres(rng, contrast):
    """Picks off by up to 3.5 voxels (a coarse DoG grid's error) come back to within 0.5
    voxel of the true sub-voxel centres of radius-5 balls at noise sd 0.5 (signal 1)."""
    centres = [(20.3, 20.7, 20.1), (20.6, 44.2, 23.8), (44.5, 21.4, 45.9), (42.1, 44.9, 43.3)]
    vol = _blobs(rng, (64, 64, 64), centres, 5.0, 0.5, dark=contrast == "dark")
    true = np.array(centres)
    start = true + rng.uniform(-2.0, 2.0, true.shape)
    refined, moved = refine_centres(vol, start, 5.0, contrast=contrast)
    assert moved.all()
    before = np.linalg.norm(start - true, axis=1)
    after = np.linalg.norm(refined - true, axis=1)
    assert np.all(after < 0.5), (before, after)
    assert after.mean() < 0.3 * before.mean()


def test_refinement_keeps_picks_that_would_wander_or_reach_a_face(rng):
    vol = _blobs(rng, (40, 40, 40), [(20.0, 20.0, 8.0)], 4.0, 0.1)
    # one pick 6 voxels from the ball: it would move 6 > max_shift 3, so it stays
    start = np.array([[20.0, 20.0, 14.0], [20.0, 20.0, 9.0]])
    refined, moved = refine_centres(vol, start, 4.0, max_shift=3.0)
    assert not moved[0] and np.array_equal(refined[0], start[0])
    assert moved[1] and abs(refined[1, 2] - 8.0) < 0.3
    # with a 10-voxel margin the ball's centre (x = 8) is too near the face: kept
    refined, moved = refine_centres(vol, start[1:], 4.0, margin=10)
    assert not moved[0] and np.array_equal(refined[0], start[1])
    # no mass at all (a flat volume): nothing moves
    refined, moved = refine_centres(np.zeros((20, 20, 20), np.float32), start[1:] / 2, 4.0)
    assert not moved.any()
    with pytest.raises(Exception, match="contrast"):
        refine_centres(vol, start, 4.0, contrast="grey")


def test_refine_picks_keeps_the_dog_peak_and_merges_converged_picks(rng):
    vol = _blobs(rng, (40, 40, 40), [(20.0, 20.0, 20.0)], 5.0, 0.05)
    picks = pd.DataFrame({"x": [18.0, 22.5], "y": [20.0, 20.0], "z": [20.0, 20.0],
                          "score": [2.0, 1.0], "zscore": [5.0, 4.0]})
    params = DogSettings(sigma=3.0, min_distance=3.0)
    out, moved = refine_picks(vol, picks, params, 5.0)
    assert len(out) == 1 and moved.all()  # both converged on the ball: the stronger stays
    assert out.loc[0, "dog_x"] == 18.0 and abs(out.loc[0, "x"] - 20.0) < 0.2


@pytest.mark.parametrize("refine", [False, True])
def test_pick_tomogram_writes_the_particle_table(planted, tmp_path, refine):
    from tomoclust.pick import pick_tomogram

    vol, centre = planted
    write_mrc(tmp_path / "tomogram.mrc", vol, 10.0)
    cfg = {"particle_radius": 40.0, "sigma_scale": 0.577, "sigma_ratio": 1.1,
           "contrast": "dark", "threshold": 3.0, "min_distance": 40.0, "max_count": None,
           "chunk_z": 32, "bin": 1, "refine": refine}
    table = pick_tomogram(str(tmp_path / "tomogram.mrc"), "t1", cfg, 10.0, 8)
    assert (table["rlnTomoName"] == "t1").all()
    xyz = table[["rlnCoordinateX", "rlnCoordinateY", "rlnCoordinateZ"]].to_numpy()
    best = xyz[table["tclDogScore"].to_numpy().argmax()]
    np.testing.assert_allclose(best, np.asarray(centre)[::-1], atol=1.0)
    dog = table[["tclDogCoordinateX", "tclDogCoordinateY", "tclDogCoordinateZ"]].to_numpy()
    if not refine:  # without refinement the coordinates are the DoG peaks themselves
        np.testing.assert_array_equal(dog, xyz)
    # a box of 8 at 10 Å needs 4 voxels to every face: the picks keep that margin
    assert (xyz >= 4).all() and (xyz < np.asarray(SHAPE[::-1]) - 4).all()
