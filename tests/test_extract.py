"""tomoclust.extract: resampling plans, planted particles at the box centre, gathering."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from tomoclust import TomoclustError
from tomoclust.extract import (
    boxes_in_bounds,
    edge_voxels,
    extract_boxes,
    extract_recentred,
    extract_to_stack,
    gather_stacks,
    plan_resampling,
)
from tomoclust.formats.stacks import StackWriter, open_stack
from tomoclust.formats.star import particle_table, read_star, write_star


def _blob(shape, centre_zyx, sigma):
    zz, yy, xx = np.indices(shape, dtype=np.float64)
    c = centre_zyx
    return np.exp(-((zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2) / (2 * sigma**2))


def _centroid_zyx(vol):
    w = np.clip(vol, 0, None).astype(np.float64)
    w[w < 0.05 * w.max()] = 0
    idx = np.indices(vol.shape).reshape(3, -1)
    return (idx * w.ravel()).sum(1) / w.sum()


@pytest.mark.parametrize(
    ("v_in", "v_out", "box", "box_in", "n"),
    [(10.0, 12.0, 32, 42, 35), (10.0, 10.0, 32, 32, 32), (10.0, 20.0, 16, 32, 16),
     (8.0, 10.0, 24, 30, 24), (13.5, 10.0, 32, 40, 54)],
)
def test_plan_resampling_gives_exact_voxel_size(v_in, v_out, box, box_in, n):
    plan = plan_resampling(v_in, v_out, box)
    assert (plan.box_in, plan.n_fourier, plan.box_out) == (box_in, n, box)
    assert plan.voxel_size_out == pytest.approx(v_out, rel=1e-9)
    assert plan.box_in * v_in == pytest.approx(plan.n_fourier * plan.voxel_size_out)
    assert plan.n_fourier >= box
    assert plan.plain_crop == (box_in == n)
    assert edge_voxels(plan) == (box_in + 1) // 2


def test_plan_resampling_awkward_ratio_is_close():
    plan = plan_resampling(10.0, 10.0 * np.sqrt(2), 16)
    assert plan.voxel_size_out == pytest.approx(10.0 * np.sqrt(2), rel=1e-3)


def test_boxes_in_bounds():
    shape = (20, 30, 40)
    c = np.array([[10, 15, 20], [4, 15, 20], [5, 15, 20], [10, 15, 35], [10, 15, 36],
                  [15, 15, 20], [16, 15, 20]])
    np.testing.assert_array_equal(boxes_in_bounds(c, shape, 10),
                                  [True, False, True, True, False, True, False])


@pytest.mark.parametrize(("v_out", "box"), [(10.0, 24), (12.0, 32), (12.0, 24), (20.0, 16),
                                            (15.0, 20)])
def test_planted_particle_ends_at_the_box_centre(v_out, box):
    shape = (80, 80, 80)
    plan = plan_resampling(10.0, v_out, box)
    for centre in ([40, 38, 41], [33, 45, 37]):
        vol = _blob(shape, centre, 2.5).astype(np.float32)
        out = extract_boxes(vol, np.array([centre]), plan, normalise=False)
        assert out.shape == (1, box, box, box) and out.dtype == np.float32
        np.testing.assert_allclose(_centroid_zyx(out[0]), [box // 2] * 3, atol=0.1)
        assert np.unravel_index(np.argmax(out[0]), out[0].shape) == (box // 2,) * 3


def test_resampled_box_keeps_the_physical_size():
    """A Gaussian of σ = 30 Å is σ = 2.5 voxels of 12 Å after extraction from 10 Å."""
    shape = (80, 80, 80)
    c = (40, 40, 40)
    vol = _blob(shape, c, 3.0).astype(np.float32)
    plan = plan_resampling(10.0, 12.0, 32)
    out = extract_boxes(vol, np.array([c]), plan, normalise=False)[0]
    ref = _blob((32, 32, 32), (16, 16, 16), 2.5)
    np.testing.assert_allclose(out, ref, atol=0.01)


def test_normalised_boxes(rng):
    vol = (rng.standard_normal((48, 48, 48)) * 3 + 7).astype(np.float32)
    plan = plan_resampling(10.0, 12.0, 16)
    coords = np.array([[24, 24, 24], [20, 25, 22], [26.4, 23.6, 24.2]])
    out = extract_boxes(vol, coords, plan, normalise=True)
    np.testing.assert_allclose(out.mean(axis=(1, 2, 3)), 0.0, atol=1e-5)
    np.testing.assert_allclose(out.std(axis=(1, 2, 3)), 1.0, atol=1e-4)
    raw = extract_boxes(vol, coords, plan_resampling(10.0, 10.0, 16), normalise=False)
    # plain crop: exactly the voxels of the tomogram (centres rounded)
    np.testing.assert_array_equal(raw[2], vol[18:34, 16:32, 16:32])
    with pytest.raises(ValueError, match="outside"):
        extract_boxes(vol, np.array([[3, 24, 24]]), plan)


def test_extract_to_stack_in_batches(tmp_path, rng):
    vol = rng.standard_normal((40, 40, 40)).astype(np.float32)
    plan = plan_resampling(10.0, 12.0, 16)
    coords = rng.integers(14, 26, size=(7, 3))
    path = tmp_path / "s.mrcs"
    with StackWriter(path, 7, 16, plan.voxel_size_out) as w:
        extract_to_stack(vol, coords, plan, w, batch=3)
    data, vs = open_stack(path)
    assert data.shape == (7, 16, 16, 16)
    assert vs == pytest.approx(12.0, abs=1e-4)
    np.testing.assert_allclose(np.asarray(data), extract_boxes(vol, coords, plan), atol=1e-5)


# --------------------------------------------------------------------------- gather_stacks
def _per_tomo(tmp_path, name, n, box=8, vs=12.0, fill=0.0):
    star, stack = tmp_path / f"{name}.star", tmp_path / f"{name}.mrcs"
    shape = (40, 40, 40)
    df = particle_table(name, np.full((n, 3), 20.0) + np.arange(n)[:, None], shape, 10.0)
    df.insert(0, "rlnImageName", [f"{i + 1}@{name}.mrcs" for i in range(n)])
    df["rlnTomoTiltSeriesPixelSize"] = 10.0
    write_star(star, df)
    with StackWriter(stack, n, box, vs) as w:
        for i in range(n):
            w[i] = np.full((box, box, box), fill + i, dtype=np.float32)
    return str(star), str(stack)


def test_gather_stacks_concatenates_with_aligned_rows(tmp_path):
    s1, m1 = _per_tomo(tmp_path, "tomoA", 3, fill=100.0)
    s0, m0 = _per_tomo(tmp_path, "tomoE", 0)  # a tomogram without picks
    s2, m2 = _per_tomo(tmp_path, "tomoB", 2, fill=200.0)
    out_star, out_stack = tmp_path / "all" / "particles.star", tmp_path / "all" / "particles.mrcs"
    n = gather_stacks([s1, s0, s2], [m1, m0, m2], str(out_star), str(out_stack), batch=2)
    assert n == 5
    df = read_star(out_star)
    data, vs = open_stack(out_stack)
    assert data.shape == (5, 8, 8, 8) and len(df) == 5
    assert vs == pytest.approx(12.0, abs=1e-4)
    assert df["rlnImageName"].tolist() == [f"{i}@particles.mrcs" for i in range(1, 6)]
    assert df["tclStackIndex"].tolist() == list(range(5))
    assert df["tclTomoImageName"].tolist() == ["1@tomoA.mrcs", "2@tomoA.mrcs", "3@tomoA.mrcs",
                                               "1@tomoB.mrcs", "2@tomoB.mrcs"]
    # row i of the table is volume i of the stack
    np.testing.assert_allclose(np.asarray(data)[:, 0, 0, 0], [100, 101, 102, 200, 201])
    assert df["rlnTomoName"].tolist() == ["tomoA"] * 3 + ["tomoB"] * 2
    optics = read_star(out_star, block="optics")
    assert float(optics["rlnImagePixelSize"].iloc[0]) == pytest.approx(12.0)
    assert float(optics["rlnTomoTiltSeriesPixelSize"].iloc[0]) == pytest.approx(10.0)
    assert int(optics["rlnImageSize"].iloc[0]) == 8
    assert (df["rlnOpticsGroup"] == 1).all()


def test_gather_stacks_errors(tmp_path):
    e1, n1 = _per_tomo(tmp_path, "e1", 0)
    e2, n2 = _per_tomo(tmp_path, "e2", 0)
    out = (str(tmp_path / "p.star"), str(tmp_path / "p.mrcs"))
    with pytest.raises(TomoclustError, match="no particles"):
        gather_stacks([e1, e2], [n1, n2], *out)
    a, ma = _per_tomo(tmp_path, "a", 2, box=8)
    b, mb = _per_tomo(tmp_path, "b", 2, box=10)
    with pytest.raises(TomoclustError, match="differ"):
        gather_stacks([a, b], [ma, mb], *out)
    c, mc = _per_tomo(tmp_path, "c", 2, box=8, vs=14.0)
    with pytest.raises(TomoclustError, match="differ"):
        gather_stacks([a, c], [ma, mc], *out)
    # a table that does not match its stack
    bad = tmp_path / "bad.star"
    write_star(bad, pd.concat([read_star(a)] * 2, ignore_index=True))
    with pytest.raises(TomoclustError, match=r"bad\.star"):
        gather_stacks([str(bad)], [ma], *out)
    assert not (tmp_path / "p.star").exists() and not (tmp_path / "p.mrcs").exists()


# --------------------------------------------------------------------------- separable resampling
@pytest.mark.parametrize(("v_out", "box"), [(12.0, 32), (12.0, 24), (20.0, 16), (15.0, 20),
                                            (10.0, 16), (7.5, 24), (8.0, 16)])
def test_resampling_matrix_equals_the_fft_fourier_crop(rng, v_out, box):
    """The separable operator reproduces the FFT crop → ramp → inverse → central crop chain
    of _fourier_crop_batch within 1e-5 relative, for real (odd n_fourier) and complex
    (even n_fourier, padding) operators alike."""
    from tomoclust.extract import _fourier_crop_batch, _resample_chunk, resampling_matrix

    plan = plan_resampling(10.0, v_out, box)
    a = resampling_matrix(plan)
    assert a.shape == (plan.box_out, plan.box_in)
    assert np.iscomplexobj(a) == (not plan.plain_crop and plan.n_fourier % 2 == 0)
    raw = rng.standard_normal((3, plan.box_in, plan.box_in, plan.box_in)).astype(np.float32)
    if plan.plain_crop:
        lo = plan.box_in // 2 - box // 2
        want = raw[:, lo:lo + box, lo:lo + box, lo:lo + box]
    else:
        full = _fourier_crop_batch(raw.astype(np.float64), plan.n_fourier, 1)
        lo = plan.n_fourier // 2 - box // 2
        want = full[:, lo:lo + box, lo:lo + box, lo:lo + box]
    got = _resample_chunk(raw.astype(np.float64), a)
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()
    # float32 as extraction uses it
    got32 = _resample_chunk(raw, a.astype(np.complex64 if np.iscomplexobj(a) else np.float32))
    assert np.abs(got32 - want).max() <= 1e-5 * np.abs(want).max()
    # a constant stays the same constant (mean preserved by the Fourier crop)
    one = _resample_chunk(np.ones((1,) + raw.shape[1:]), a)
    np.testing.assert_allclose(one, 1.0, rtol=1e-9)


@pytest.mark.parametrize("workers", [1, 2])
def test_threaded_extraction_equals_the_fft_reference(rng, workers, tmp_path):
    """extract_boxes / extract_to_stack with threads and chunks give the boxes of the FFT
    reference (normalised box by box), in the order of the centres."""
    from tomoclust.extract import _fourier_crop_batch

    vol = rng.standard_normal((60, 64, 62)).astype(np.float32)
    plan = plan_resampling(10.0, 12.0, 16)
    coords = rng.integers(12, 48, size=(37, 3))  # not a multiple of the chunk
    got = extract_boxes(vol, coords, plan, workers=workers)
    b = plan.box_in
    raw = np.stack([vol[z:z + b, y:y + b, x:x + b] for z, y, x in coords - b // 2])
    ref = _fourier_crop_batch(raw, plan.n_fourier, 1)
    lo = plan.n_fourier // 2 - 8
    ref = ref[:, lo:lo + 16, lo:lo + 16, lo:lo + 16]
    ref = (ref - ref.mean(axis=(1, 2, 3), keepdims=True)) / ref.std(axis=(1, 2, 3),
                                                                    keepdims=True)
    np.testing.assert_allclose(got, ref, atol=2e-5)
    with StackWriter(tmp_path / "s.mrcs", len(coords), 16, plan.voxel_size_out) as w:
        extract_to_stack(vol, coords, plan, w, batch=5, workers=workers)
    np.testing.assert_array_equal(np.asarray(open_stack(tmp_path / "s.mrcs")[0]), got)


def test_recentred_extraction_moves_off_centre_particles_to_the_centre_and_reports_origins(rng):
    shape = (150, 150, 150)
    plan = plan_resampling(10.0, 12.0, 32)
    # far enough apart that no box holds a neighbour
    true = np.array([[40.0, 40.0, 44.0], [40.0, 110.0, 105.0], [108.0, 45.0, 100.0]])
    vol = sum(-_blob(shape, c, 3.0) for c in true).astype(np.float32)  # dark particles
    vol += 0.02 * rng.standard_normal(shape).astype(np.float32)
    picks = np.round(true + np.array([[2.0, -2.0, 1.0], [0.0, 3.0, -2.0], [-3.0, 0.0, 2.0]]))
    out = np.zeros((3, 32, 32, 32), dtype=np.float32)
    origins = extract_recentred(vol, picks, plan, out, normalise=True, workers=1, chunk=2)
    # RELION: centre = coordinate - origin (xyz Å)
    centre_xyz = picks[:, ::-1] * 10.0 - origins
    np.testing.assert_allclose(centre_xyz, true[:, ::-1] * 10.0, atol=3.0)
    plain = extract_boxes(vol, picks, plan, normalise=True)
    for box, raw in zip(out, plain, strict=True):
        np.testing.assert_allclose(_centroid_zyx(-box), [16, 16, 16], atol=0.3)
        assert box.mean() == pytest.approx(0.0, abs=1e-5)  # normalised again
        assert box.std() == pytest.approx(1.0, rel=1e-4)
        assert np.corrcoef(box.ravel(), raw.ravel())[0, 1] < 0.999  # it did move


# ------------------------------------------------------------- one tomogram file (rule step)
def test_extract_tomogram_skips_edge_picks_and_names_the_images(tmp_path, rng):
    from tomoclust.extract import extract_tomogram
    from tomoclust.formats.mrc import write_mrc

    vol = rng.standard_normal((40, 40, 40)).astype(np.float32)
    tomo = tmp_path / "t1" / "tomogram.mrc"
    tomo.parent.mkdir()
    write_mrc(tomo, vol, 10.0)
    xyz = np.array([[20.0, 20.0, 20.0], [2.0, 20.0, 20.0], [18.0, 22.0, 21.0]])
    picks = particle_table("t1", xyz, vol.shape, 10.0, extra={"tclDogScore": [3.0, 2.0, 1.0]})
    stack = tmp_path / "t1.mrcs"
    table = extract_tomogram(tomo, picks, stack, 12.0, 16)
    plan = plan_resampling(10.0, 12.0, 16)
    # the pick 2 voxels from the x = 0 face has no whole box: skipped, not shifted
    assert list(table["tclDogScore"]) == [3.0, 1.0]
    assert list(table["rlnImageName"]) == ["1@t1.mrcs", "2@t1.mrcs"]
    assert (table["rlnTomoTiltSeriesPixelSize"] == 10.0).all()
    assert "rlnOriginXAngst" not in table
    data, vs = open_stack(stack)
    assert vs == pytest.approx(12.0, abs=1e-4)
    np.testing.assert_allclose(np.asarray(data), extract_boxes(vol, xyz[[0, 2], ::-1], plan),
                               atol=1e-5)


def test_extract_tomogram_recentred_records_origins(tmp_path, rng):
    from tomoclust.extract import extract_tomogram
    from tomoclust.formats.mrc import write_mrc

    # a dark particle (negative density, as in raw cryo-ET) off the pick
    vol = (0.05 * rng.standard_normal((40, 40, 40)) - _blob((40, 40, 40), (20, 21, 22), 1.5)
           ).astype(np.float32)
    write_mrc(tmp_path / "tomogram.mrc", vol, 10.0)
    picks = particle_table("t1", np.array([[20.0, 20.0, 20.0]]), vol.shape, 10.0)
    table = extract_tomogram(tmp_path / "tomogram.mrc", picks, tmp_path / "s.mrcs", 10.0, 16,
                             normalise=False, recentre=True)
    origin = table[["rlnOriginXAngst", "rlnOriginYAngst", "rlnOriginZAngst"]].to_numpy()[0]
    # RELION: centre = coordinate - origin; the blob is 2 voxels up in x and 1 in y (10 Å).
    # The centre of mass inside its sphere (d / 5) comes short of an off-centre blob by up to
    # a few tenths of a voxel; 0.4 voxel is allowed, far below the 1-voxel axis steps checked
    np.testing.assert_allclose(20.0 * 10 - origin, [220.0, 210.0, 200.0], atol=4.0)


def test_tomogram_extents_reads_the_headers(tmp_path):
    from tomoclust.extract import tomogram_extents
    from tomoclust.formats.mrc import write_mrc

    paths = []
    for name, shape, vs in (("a", (20, 30, 40), 10.0), ("b", (24, 24, 24), 8.0)):
        p = tmp_path / name / "tomogram.mrc"
        p.parent.mkdir()
        write_mrc(p, np.zeros(shape, np.float32), vs)
        paths.append(str(p))
    shapes, voxel, edge = tomogram_extents(paths, 12.0, 16)
    assert shapes == {"a": (20, 30, 40), "b": (24, 24, 24)}
    assert voxel == {"a": pytest.approx(10.0), "b": pytest.approx(8.0)}
    for name, vs in voxel.items():
        assert edge[name] == pytest.approx(edge_voxels(plan_resampling(vs, 12.0, 16)) * vs)
