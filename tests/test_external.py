"""Starting from other tools' output: coordinate conventions, subtomogram import, bad inputs.

Every convention is checked the same way: a blob planted at a known voxel of a small tomogram,
given in that convention's STAR layout, must come out at the centre of its extracted box.
"""

from __future__ import annotations

from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import pytest
import starfile
from tomoclust import TomoclustError
from tomoclust.evaluate import truth_by_index
from tomoclust.external.coordinates import detect_convention, import_coordinates
from tomoclust.external.names import (
    TRUTH_COLUMN,
    match_names,
    name_stem,
    original_name,
    read_particles,
    split_by_tomogram,
    truth_table,
)
from tomoclust.external.subtomograms import import_subtomograms
from tomoclust.extract import extract_boxes, plan_resampling
from tomoclust.formats.image_names import parse_image_name
from tomoclust.formats.mrc import write_mrc
from tomoclust.formats.stacks import open_stack
from tomoclust.formats.star import read_star
from tomoclust.formats.starhead import has_class_numbers, star_labels
from tomoclust.ingest import ingest_tomogram

SHAPE = (41, 64, 80)  # z, y, x: an odd z exercises RELION 5's size / 2.0 centre
VS = 10.0
PLANT = (30.0, 25.0, 20.0)  # x, y, z voxels of the sheet tomogram


def _blob(shape, centre_zyx, sigma, amp=1.0):
    zz, yy, xx = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    r2 = sum((g - c) ** 2 for g, c in zip((zz, yy, xx), centre_zyx, strict=True))
    return amp * np.exp(-r2 / (2 * sigma**2))


@pytest.fixture(scope="module")
def tomogram(tmp_path_factory):
    """A small noisy tomogram with one bright blob at PLANT (x, y, z)."""
    d = tmp_path_factory.mktemp("tomo")
    rng = np.random.default_rng(0)
    vol = 0.05 * rng.standard_normal(SHAPE) + _blob(SHAPE, PLANT[::-1], 2.0)
    path = d / "TS_01.mrc"
    write_mrc(path, vol.astype(np.float32), VS)
    return path


def _write_star(path: Path, blocks) -> Path:
    starfile.write(blocks, path, overwrite=True)
    return path


def _import(tomogram, sources, working_vs=VS, box=16, **kw):
    """Ingest at ``working_vs``, import ``sources`` and extract: (result, boxes, ingested)."""
    ing = ingest_tomogram(tomogram, working_vs)
    plan = plan_resampling(ing.voxel_size, ing.voxel_size, box)
    read = []
    for s in sources:
        df, optics, _ = read_particles(s, "coordinates")
        read.append((str(s), df, optics))
    res = import_coordinates(read, "TS_01", shape_in_zyx=ing.info["shape_in_zyx"],
                             voxel_size_in=ing.info["voxel_size_in"],
                             shape_zyx=ing.tomogram.shape, voxel_size=ing.voxel_size,
                             plan=plan, **kw)
    zyx = res.particles[["rlnCoordinateZ", "rlnCoordinateY", "rlnCoordinateX"]].to_numpy()
    boxes = extract_boxes(ing.tomogram, zyx, plan, normalise=False) if len(zyx) else None
    return res, boxes, ing


def _assert_centred(boxes, box=16):
    for b in boxes:
        peak = np.unravel_index(np.argmax(b), b.shape)
        assert peak == (box // 2,) * 3, peak


# ------------------------------------------------------------------- conventions, planted
def test_relion3_voxels_of_a_binned_tomogram(tomogram, tmp_path):
    """RELION 3: rlnCoordinate in voxels of the bin-2 tomogram it was picked on (20 Å)."""
    star = _write_star(tmp_path / "r3.star", pd.DataFrame({
        "rlnCoordinateX": [PLANT[0] / 2], "rlnCoordinateY": [PLANT[1] / 2],
        "rlnCoordinateZ": [PLANT[2] / 2], "rlnMicrographName": ["TS_01.mrc"],
        "rlnAutopickFigureOfMerit": [0.7]}))
    res, boxes, _ = _import(tomogram, [star], coordinates_voxel_size=20.0,
                            sheet_names=["TS_01"], sheet_paths=[str(tomogram)])
    assert len(res.particles) == 1
    np.testing.assert_allclose(res.particles[["rlnCoordinateX", "rlnCoordinateY",
                                              "rlnCoordinateZ"]].to_numpy()[0], PLANT)
    _assert_centred(boxes)
    p = res.particles.iloc[0]
    # identity: original coordinates and every extra column carried through
    assert p["tclOriginalCoordinateX"] == pytest.approx(PLANT[0] / 2)
    assert p["rlnAutopickFigureOfMerit"] == pytest.approx(0.7)
    assert p["rlnMicrographName"] == "TS_01.mrc"
    assert p["tclCoordinateConvention"] == "voxels"


def test_relion3_without_names_and_voxel_size_is_an_error(tomogram, tmp_path):
    star = _write_star(tmp_path / "r3.star", pd.DataFrame({
        "rlnCoordinateX": [15.0], "rlnCoordinateY": [12.5], "rlnCoordinateZ": [10.0]}))
    with pytest.raises(TomoclustError, match="coordinates_voxel_size"):
        _import(tomogram, [star])
    # with it, coordinates at the sheet tomogram's own voxel size
    _, boxes, _ = _import(tomogram, [star], coordinates_voxel_size=20.0)
    _assert_centred(boxes)


def test_relion4_unbinned_tilt_series_pixels(tomogram, tmp_path):
    """RELION 4: coordinates in unbinned tilt-series pixels (optics rlnTomoTiltSeriesPixelSize);
    the sheet tomogram is the bin-4 reconstruction at 10 Å."""
    optics = pd.DataFrame({"rlnOpticsGroup": [1], "rlnOpticsGroupName": ["opticsGroup1"],
                           "rlnTomoTiltSeriesPixelSize": [2.5]})
    parts = pd.DataFrame({"rlnTomoName": ["TS_01"], "rlnOpticsGroup": [1],
                          "rlnCoordinateX": [PLANT[0] * 4], "rlnCoordinateY": [PLANT[1] * 4],
                          "rlnCoordinateZ": [PLANT[2] * 4], "rlnAngleRot": [10.0],
                          "rlnAngleTilt": [20.0], "rlnAnglePsi": [30.0]})
    star = _write_star(tmp_path / "r4.star", {"optics": optics, "particles": parts})
    res, boxes, _ = _import(tomogram, [star], sheet_names=["TS_01"],
                            sheet_paths=[str(tomogram)])
    _assert_centred(boxes)
    p = res.particles.iloc[0]
    assert (p["rlnAngleRot"], p["rlnAngleTilt"], p["rlnAnglePsi"]) == (10.0, 20.0, 30.0)
    assert "tclOriginalTomoName" not in res.particles  # same name: no duplicate kept
    assert p["tclOriginalOpticsGroup"] == 1


def test_relion5_centred_angstrom_uses_size_over_two(tomogram, tmp_path):
    """RELION 5: centred Å, centre at size / 2.0 voxels (z = 41: 20.5) of the sheet tomogram."""
    centre = np.array(SHAPE[::-1]) / 2.0
    cen = (np.array(PLANT) - centre) * VS
    assert cen[2] == pytest.approx(-5.0)  # 20 - 20.5 voxels
    star = _write_star(tmp_path / "r5.star", pd.DataFrame({
        "rlnTomoName": ["TS_01"], "rlnCenteredCoordinateXAngst": [cen[0]],
        "rlnCenteredCoordinateYAngst": [cen[1]], "rlnCenteredCoordinateZAngst": [cen[2]]}))
    res, boxes, _ = _import(tomogram, [star])
    np.testing.assert_allclose(res.particles[["rlnCoordinateX", "rlnCoordinateY",
                                              "rlnCoordinateZ"]].to_numpy()[0], PLANT)
    _assert_centred(boxes)
    assert res.particles.iloc[0]["tclOriginalCenteredCoordinateZAngst"] == pytest.approx(-5.0)


def test_relion5_after_binning_at_ingest(tomogram, tmp_path):
    """Centred Å at 10 Å → a tomogram ingested at 20 Å: the blob lands on voxel PLANT / 2
    (ingest cuts z from 41 to 40 at the high end, which keeps the origin)."""
    cen = (np.array(PLANT) - np.array(SHAPE[::-1]) / 2.0) * VS
    star = _write_star(tmp_path / "r5.star", pd.DataFrame({
        "rlnCenteredCoordinateXAngst": [cen[0]], "rlnCenteredCoordinateYAngst": [cen[1]],
        "rlnCenteredCoordinateZAngst": [cen[2]]}))
    res, boxes, ing = _import(tomogram, [star], working_vs=20.0, box=8)
    assert ing.tomogram.shape == (20, 32, 40)
    np.testing.assert_allclose(res.particles[["rlnCoordinateX", "rlnCoordinateY",
                                              "rlnCoordinateZ"]].to_numpy()[0],
                               np.array(PLANT) / 2)
    _assert_centred(boxes, box=8)


def test_pytom_match_pick_layout(tomogram, tmp_path):
    """pytom-match-pick's documented columns: voxel coordinates, rlnDetectorPixelSize = voxel
    size (Å), rlnMicrographName = tomogram stem; the score columns are carried through."""
    star = _write_star(tmp_path / "TS_01_particles.star", pd.DataFrame({
        "rlnCoordinateX": [PLANT[0]], "rlnCoordinateY": [PLANT[1]], "rlnCoordinateZ": [PLANT[2]],
        "rlnAngleRot": [1.0], "rlnAngleTilt": [2.0], "rlnAnglePsi": [3.0],
        "rlnLCCmax": [0.31], "rlnCutOff": [0.2], "rlnSearchStd": [0.05],
        "rlnDetectorPixelSize": [VS], "rlnMicrographName": ["TS_01"]}))
    assert detect_convention(read_particles(star)[0].columns) == "pytom"
    res, boxes, _ = _import(tomogram, [star], sheet_names=["TS_01"], sheet_paths=[str(tomogram)])
    _assert_centred(boxes)
    p = res.particles.iloc[0]
    assert p["rlnLCCmax"] == pytest.approx(0.31) and p["rlnSearchStd"] == pytest.approx(0.05)
    assert p["tclCoordinateConvention"] == "pytom"


def test_pytom_relion5_compat_layout(tomogram, tmp_path):
    cen = (np.array(PLANT) - np.array(SHAPE[::-1]) / 2.0) * VS
    star = _write_star(tmp_path / "r5pytom.star", pd.DataFrame({
        "rlnCenteredCoordinateXAngst": [cen[0]], "rlnCenteredCoordinateYAngst": [cen[1]],
        "rlnCenteredCoordinateZAngst": [cen[2]], "rlnAngleRot": [0.0], "rlnAngleTilt": [0.0],
        "rlnAnglePsi": [0.0], "rlnLCCmax": [0.3], "rlnCutOff": [0.2], "rlnSearchStd": [0.05],
        "rlnTomoTiltSeriesPixelSize": [VS], "rlnTomoName": ["TS_01"]}))
    res, boxes, _ = _import(tomogram, [star], sheet_names=["TS_01"], sheet_paths=[str(tomogram)])
    _assert_centred(boxes)
    assert res.particles.iloc[0]["tclOriginalTomoTiltSeriesPixelSize"] == VS


def test_tomotwin_layout_two_references(tomogram, tmp_path):
    """TomoTwin's *_relion3.star: only rlnCoordinateX/Y/Z, one file per reference; voxel size
    must be given (TomoTwin works at 10 Å but does not write it)."""
    a = _write_star(tmp_path / "ribo_relion3.star", pd.DataFrame({
        "rlnCoordinateX": [PLANT[0]], "rlnCoordinateY": [PLANT[1]],
        "rlnCoordinateZ": [PLANT[2]]}))
    b = _write_star(tmp_path / "proteasome_relion3.star", pd.DataFrame({
        "rlnCoordinateX": [60.0], "rlnCoordinateY": [40.0], "rlnCoordinateZ": [20.0]}))
    assert detect_convention(read_particles(a)[0].columns) == "tomotwin"
    res, boxes, _ = _import(tomogram, [a, b], coordinates_voxel_size=10.0)
    assert len(res.particles) == 2
    _assert_centred(boxes[:1])
    assert res.particles["tclSourceStar"].tolist() == [str(a), str(b)]


# --------------------------------------------------------------------- skipped, not shifted
def test_outside_and_edge_rows_are_skipped_and_reported(tomogram, tmp_path):
    star = _write_star(tmp_path / "edge.star", pd.DataFrame({
        "rlnCoordinateX": [PLANT[0], 3.0, 500.0, -2.0],
        "rlnCoordinateY": [PLANT[1], 30.0, 30.0, 30.0],
        "rlnCoordinateZ": [PLANT[2], 20.0, 20.0, 20.0]}))
    res, _, _ = _import(tomogram, [star], coordinates_voxel_size=VS)
    assert len(res.particles) == 1 and res.particles["tclSourceRow"].tolist() == [1]
    sk = res.skipped
    assert sk["row"].tolist() == [2, 3, 4]
    assert "face" in sk["reason"].iloc[0]
    assert (sk["reason"].iloc[1:] == "outside the tomogram").all()
    assert sk["x"].tolist() == [3.0, 500.0, -2.0]  # reported where they are, not moved


# --------------------------------------------------------------------------- bad inputs
@pytest.mark.parametrize("cols, match", [
    ({"rlnCoordinateX": [1.0], "rlnCoordinateY": [1.0]}, r"missing coordinate column.*Z"),
    ({"rlnCenteredCoordinateXAngst": [1.0]}, r"missing coordinate column.*YAngst"),
    ({"rlnAnglePsi": [1.0]}, r"missing coordinate column"),
])
def test_missing_columns(tomogram, tmp_path, cols, match):
    star = _write_star(tmp_path / "bad.star", pd.DataFrame(cols))
    with pytest.raises(TomoclustError, match=match) as exc:
        _import(tomogram, [star], coordinates_voxel_size=VS)
    assert str(star) in str(exc.value)


def test_nan_coordinates_name_the_row(tomogram, tmp_path):
    star = tmp_path / "nan.star"
    star.write_text("data_\n\nloop_\n_rlnCoordinateX\n_rlnCoordinateY\n_rlnCoordinateZ\n"
                    "30 25 20\n31 nan 20\n")
    with pytest.raises(TomoclustError, match=r"row 2: rlnCoordinateY is .*nan"):
        _import(tomogram, [star], coordinates_voxel_size=VS)


def test_row_of_another_tomogram_in_a_per_tomogram_file(tomogram, tmp_path):
    star = _write_star(tmp_path / "x.star", pd.DataFrame({
        "rlnTomoName": ["TS_01", "TS_02"], "rlnCoordinateX": [30.0, 30.0],
        "rlnCoordinateY": [25.0, 25.0], "rlnCoordinateZ": [20.0, 20.0]}))
    with pytest.raises(TomoclustError, match=r"row 2: rlnTomoName 'TS_02' is not tomogram"):
        _import(tomogram, [star], coordinates_voxel_size=VS, sheet_names=["TS_01", "TS_02"],
                sheet_paths=["a/TS_01.mrc", "a/TS_02.mrc"])


def test_per_tomogram_file_names(tomogram, tmp_path, caplog):
    """A per-tomogram file may name the file its picker ran on (logged); rows of several
    unknown tomograms are an error."""
    one = _write_star(tmp_path / "one.star", pd.DataFrame({
        "rlnMicrographName": ["TS_01_bin4_denoised"], "rlnCoordinateX": [30.0],
        "rlnCoordinateY": [25.0], "rlnCoordinateZ": [20.0]}))
    res, _, _ = _import(tomogram, [one], coordinates_voxel_size=VS, sheet_names=["TS_01"],
                        sheet_paths=[str(tomogram)])
    assert len(res.particles) == 1 and "matches no sheet name" in caplog.text
    two = _write_star(tmp_path / "two.star", pd.DataFrame({
        "rlnMicrographName": ["a", "b"], "rlnCoordinateX": [30.0, 30.0],
        "rlnCoordinateY": [25.0, 25.0], "rlnCoordinateZ": [20.0, 20.0]}))
    with pytest.raises(TomoclustError, match=r"row 2: rlnMicrographName 'b' is not tomogram"):
        _import(tomogram, [two], coordinates_voxel_size=VS, sheet_names=["TS_01"],
                sheet_paths=[str(tomogram)])


def test_name_matching_rules():
    names, paths = ["TS_01", "TS_02"], ["/d/rec_TS_01.mrc", "/d/TS_02.rec"]
    m = match_names(["TS_01", "/x/TS_02.mrc", "rec_TS_01.mrc", "TS_02.tomostar", "TS_3"],
                    names, paths)
    assert m == {"TS_01": "TS_01", "/x/TS_02.mrc": "TS_02", "rec_TS_01.mrc": "TS_01",
                 "TS_02.tomostar": "TS_02", "TS_3": None}
    assert name_stem("a/b/TS_01.rec.mrc") == "TS_01"
    with pytest.raises(TomoclustError, match="several"):
        match_names(["x.mrc"], ["x", "y"], ["/a/q.mrc", "/b/x.mrc"])


def test_split_one_star_for_all(tmp_path):
    df = pd.DataFrame({"rlnMicrographName": ["TS_01.mrc", "TS_02.mrc", "TS_01.mrc"],
                       "rlnCoordinateX": [1.0, 2.0, 3.0]})
    parts = split_by_tomogram(df, "all.star", ["TS_01", "TS_02", "TS_03"])
    assert parts["TS_01"]["rlnCoordinateX"].tolist() == [1.0, 3.0]
    assert len(parts["TS_03"]) == 0
    df.loc[1, "rlnMicrographName"] = "TS_09.mrc"
    with pytest.raises(TomoclustError, match=r"all.star, row 2: rlnMicrographName 'TS_09.mrc' "
                                             "matches no tomogram"):
        split_by_tomogram(df, "all.star", ["TS_01", "TS_02"])
    with pytest.raises(TomoclustError, match="neither rlnTomoName nor rlnMicrographName"):
        split_by_tomogram(df.drop(columns="rlnMicrographName"), "all.star", ["TS_01"])


def test_star_header_scan(tmp_path):
    star = _write_star(tmp_path / "h.star", {
        "optics": pd.DataFrame({"rlnOpticsGroup": [1]}),
        "particles": pd.DataFrame({"rlnImageName": ["a.mrc"], "rlnClassNumber": [2]})})
    assert star_labels(star) == {"optics": ["rlnOpticsGroup"],
                                 "particles": ["rlnImageName", "rlnClassNumber"]}
    assert has_class_numbers([star])
    assert original_name("rlnClassNumber") == TRUTH_COLUMN
    assert original_name("rlnImageName") == "rlnImageOriginalName"


# ---------------------------------------------------------------------- mode 2: subtomograms
def _subtomo(box, vs, amp=1.0, sigma_angst=25.0, shift_vox=0.0):
    c = box // 2 + shift_vox
    return (amp * _blob((box,) * 3, (c, c, c), sigma_angst / vs)).astype(np.float32)


@pytest.fixture
def subtomo_set(tmp_path):
    """Six subtomograms: three single MRC files (24 voxels at 10 Å, header voxel size) and a
    stack of three (30 voxels at 8 Å, stack header says 8), two classes, extra columns."""
    d = tmp_path / "Subtomograms"
    d.mkdir()
    names = []
    for i in range(3):
        write_mrc(d / f"p{i}.mrc", _subtomo(24, 10.0, sigma_angst=20 + 10 * (i % 2)), 10.0)
        names.append(f"Subtomograms/p{i}.mrc")
    stack = np.stack([_subtomo(30, 8.0, sigma_angst=20 + 10 * (i % 2)) for i in range(3)])
    with mrcfile.new(d / "stack.mrcs") as m:
        m.set_data(stack)
        m.header.ispg = 401
        m.voxel_size = 8.0
    names += [f"{i + 1}@Subtomograms/stack.mrcs" for i in range(3)]
    df = pd.DataFrame({"rlnImageName": names, "rlnClassNumber": [1, 2, 1, 1, 2, 1],
                       "rlnTomoName": ["TS_01"] * 6, "rlnCoordinateX": np.arange(6.0),
                       "rlnOpticsGroup": [1] * 6, "rlnLogLikeliContribution": np.arange(6) * 2.})
    star = _write_star(tmp_path / "particles.star", {"particles": df})
    return star, df


def test_subtomograms_mixed_sizes_resampled_centred(subtomo_set, tmp_path):
    star, df = subtomo_set
    out_star, out_stack = tmp_path / "out" / "particles.star", tmp_path / "out" / "p.mrcs"
    info = import_subtomograms(star, out_star, out_stack, voxel_size=12.0, box=16,
                               normalise=False)
    assert info["n_particles"] == 6 and info["voxel_size_source"] == "MRC header"
    assert sorted((g["voxel_size_in"], g["box_in"]) for g in info["groups"]) == \
        [(8.0, 30), (10.0, 24)]
    data, vs = open_stack(out_stack)
    assert data.shape == (6, 16, 16, 16) and vs == pytest.approx(12.0)
    for b in np.asarray(data):
        assert np.unravel_index(np.argmax(b), b.shape) == (8, 8, 8)
    # the same particle at 10 Å and at 8 Å gives the same 12 Å box (Fourier resampling)
    np.testing.assert_allclose(data[0], data[3], atol=0.02 * float(np.max(data[0])))
    t = read_star(out_star)
    assert t["rlnImageName"].tolist() == [f"{i}@p.mrcs" for i in range(1, 7)]
    assert t["rlnImageOriginalName"].tolist() == df["rlnImageName"].tolist()
    assert t[TRUTH_COLUMN].tolist() == df["rlnClassNumber"].tolist()
    assert t["tclOriginalCoordinateX"].tolist() == df["rlnCoordinateX"].tolist()
    assert t["rlnLogLikeliContribution"].tolist() == df["rlnLogLikeliContribution"].tolist()
    assert t["tclOriginalVoxelSize"].tolist() == [10.0] * 3 + [8.0] * 3
    assert "rlnClassNumber" not in t  # the clustering writes its own
    assert float(read_star(out_star, block="optics")["rlnImagePixelSize"].iloc[0]) == 12.0
    truth = truth_table(t)
    assert truth_by_index(t.iloc[::-1], truth).tolist() == df["rlnClassNumber"].tolist()[::-1]


def test_subtomogram_voxel_size_from_optics_block(subtomo_set, tmp_path):
    star, df = subtomo_set
    optics = pd.DataFrame({"rlnOpticsGroup": [1], "rlnTomoTiltSeriesPixelSize": [2.5],
                           "rlnTomoSubtomogramBinning": [4.0]})
    only_files = df.iloc[:3]
    s2 = _write_star(star.parent / "r5.star", {"optics": optics, "particles": only_files})
    info = import_subtomograms(s2, tmp_path / "o.star", tmp_path / "o.mrcs", voxel_size=10.0,
                               box=16)
    assert info["voxel_size_source"].startswith("optics rlnTomoTiltSeriesPixelSize")
    assert info["groups"][0]["voxel_size_in"] == 10.0


@pytest.mark.parametrize("change, match", [
    (lambda df: df.drop(columns="rlnImageName"), "missing column 'rlnImageName'"),
    (lambda df: df.assign(rlnImageName=df["rlnImageName"].str.replace("p1", "p9")),
     r"row 2: image file .*p9.mrc .* does not exist"),
    (lambda df: df.assign(rlnImageName=df["rlnImageName"].str.replace("3@", "4@")),
     r"row 6: index 4 out of range: .*stack.mrcs holds 3 volume"),
    (lambda df: df.assign(rlnImageName=df["rlnImageName"].str.replace("1@", "0@")),
     r"row 4: index 0 out of range"),
    (lambda df: df.assign(rlnImageName=["Subtomograms/stack.mrcs"] * 6),
     r"row 1: .*holds 3 volumes; name one"),
])
def test_bad_subtomogram_stars_name_the_row(subtomo_set, tmp_path, change, match):
    star, df = subtomo_set
    bad = _write_star(star.parent / "bad.star", {"particles": change(df)})
    with pytest.raises(TomoclustError, match=match) as exc:
        import_subtomograms(bad, tmp_path / "o.star", tmp_path / "o.mrcs", voxel_size=12.0,
                            box=16)
    assert str(bad) in str(exc.value)
    assert not (tmp_path / "o.mrcs").exists() and not (tmp_path / "o.star").exists()


def test_subtomograms_too_small_for_the_working_box(subtomo_set, tmp_path):
    star, _ = subtomo_set
    with pytest.raises(TomoclustError, match=r"row 1: the subtomogram is 24 voxels at 10 Å"):
        import_subtomograms(star, tmp_path / "o.star", tmp_path / "o.mrcs", voxel_size=12.0,
                            box=24)


def test_image_names():
    assert parse_image_name("12@Extract/job3/TS_01.mrcs", "x") == ("Extract/job3/TS_01.mrcs", 12)
    assert parse_image_name("sub/p_1.mrc", "x") == ("sub/p_1.mrc", None)
    with pytest.raises(TomoclustError, match="row 3"):
        parse_image_name(float("nan"), "row 3")


def test_truth_table_rejects_bad_class_numbers():
    t = pd.DataFrame({"tclStackIndex": [0, 1], TRUTH_COLUMN: [1.0, 2.5]})
    with pytest.raises(TomoclustError, match="row 2"):
        truth_table(t)
    t[TRUTH_COLUMN] = [1.0, np.nan]  # e.g. a DoG-picked tomogram beside labelled imports
    assert truth_table(t)["rlnClassNumber"].tolist() == [1, 0]



# ------------------------------------------------------- the README's worked examples, exactly
def _readme_example(df, optics=None, **kw):
    """TS_01: 1000 × 1000 × 400 voxels (x, y, z) at 10 Å, ingested at 15 Å (666 × 666 × 266)."""
    plan = plan_resampling(15.0, 15.0, 32)
    r = import_coordinates([("x", df, optics)], "TS_01", shape_in_zyx=(400, 1000, 1000),
                           voxel_size_in=10.0, shape_zyx=(266, 666, 666), voxel_size=15.0,
                           plan=plan, **kw)
    return r.particles[["rlnCoordinateX", "rlnCoordinateY", "rlnCoordinateZ"]].to_numpy()[0]


def _xyz(x, y, z, **extra):
    return pd.DataFrame({"rlnCoordinateX": [x], "rlnCoordinateY": [y], "rlnCoordinateZ": [z],
                         **{k: [v] for k, v in extra.items()}})


@pytest.mark.parametrize("df, optics, kw", [
    (_xyz(150, 240, 100), None, {"coordinates_voxel_size": 20.0}),  # RELION 3, bin-8 tomogram
    (_xyz(1200, 1920, 800, rlnOpticsGroup=1),
     pd.DataFrame({"rlnOpticsGroup": [1], "rlnTomoTiltSeriesPixelSize": [2.5]}), {}),  # RELION 4
    (pd.DataFrame({"rlnCenteredCoordinateXAngst": [-2000.0],
                   "rlnCenteredCoordinateYAngst": [-200.0],
                   "rlnCenteredCoordinateZAngst": [0.0]}), None, {}),  # RELION 5
    (_xyz(300, 480, 200, rlnLCCmax=0.3, rlnCutOff=0.2, rlnSearchStd=0.05,
          rlnDetectorPixelSize=10.0, rlnMicrographName="TS_01"), None, {}),  # pytom-match-pick
    (_xyz(300, 480, 200), None, {"coordinates_voxel_size": 10.0}),  # TomoTwin
])
def test_readme_worked_examples(df, optics, kw):
    np.testing.assert_allclose(_readme_example(df, optics, **kw), [200.0, 320.0, 400.0 / 3],
                               atol=1e-9)


def test_many_subtomogram_files_few_open_at_once(tmp_path, rng):
    """More files than the reader keeps open: every volume still lands in its own row."""
    vols = rng.standard_normal((40, 8, 8, 8)).astype(np.float32)
    for i, v in enumerate(vols):
        write_mrc(tmp_path / f"s{i}.mrc", v, 10.0)
    order = rng.permutation(40)
    star = _write_star(tmp_path / "p.star", pd.DataFrame(
        {"rlnImageName": [f"s{i}.mrc" for i in order]}))
    info = import_subtomograms(star, tmp_path / "o.star", tmp_path / "o.mrcs", voxel_size=10.0,
                               box=8, normalise=False)
    assert info["n_files"] == 40
    data, _ = open_stack(tmp_path / "o.mrcs")
    np.testing.assert_array_equal(np.asarray(data), vols[order])


def test_warp1_style_pixel_size_columns(subtomo_set, tmp_path):
    """Warp 1 writes rlnMagnification 10000 and rlnDetectorPixelSize = pixel size (Å)."""
    star, df = subtomo_set
    warp = df.iloc[:3].assign(rlnMagnification=10000.0, rlnDetectorPixelSize=10.0,
                              rlnCtfImage="ctf/p.mrc")
    s2 = _write_star(star.parent / "warp.star", warp)  # one unnamed data block, as Warp writes
    info = import_subtomograms(s2, tmp_path / "o.star", tmp_path / "o.mrcs", voxel_size=12.0,
                               box=16)
    assert info["voxel_size_source"] == "rlnDetectorPixelSize/rlnMagnification"
    assert info["groups"][0]["voxel_size_in"] == pytest.approx(10.0)
    assert read_star(tmp_path / "o.star")["rlnCtfImage"].tolist() == ["ctf/p.mrc"] * 3


def test_relion5_2d_stack_pseudo_subtomograms_are_refused(subtomo_set, tmp_path):
    star, df = subtomo_set
    s2 = _write_star(star.parent / "r5_2d.star", {
        "general": {"rlnTomoSubTomosAre2DStacks": 1},
        "optics": pd.DataFrame({"rlnOpticsGroup": [1], "rlnImagePixelSize": [10.0]}),
        "particles": df.iloc[:3]})
    with pytest.raises(TomoclustError, match="rlnTomoSubTomosAre2DStacks is 1"):
        import_subtomograms(s2, tmp_path / "o.star", tmp_path / "o.mrcs", voxel_size=12.0,
                            box=16)
    s3 = _write_star(star.parent / "r5_3d.star", {
        "general": {"rlnTomoSubTomosAre2DStacks": 0},
        "optics": pd.DataFrame({"rlnOpticsGroup": [1], "rlnImagePixelSize": [10.0]}),
        "particles": df.iloc[:3]})
    info = import_subtomograms(s3, tmp_path / "o.star", tmp_path / "o.mrcs", voxel_size=12.0,
                               box=16)
    assert info["voxel_size_source"] == "optics rlnImagePixelSize"


def test_relion_project_relative_paths_need_image_root(subtomo_set, tmp_path, monkeypatch):
    """RELION writes image names relative to its project directory, not to the STAR's."""
    star, df = subtomo_set
    job = star.parent / "Extract" / "job012"
    job.mkdir(parents=True)
    s2 = _write_star(job / "particles.star", {"particles": df.iloc[:3]})
    monkeypatch.chdir(star.parent)
    with pytest.raises(TomoclustError, match=r"row 1: .* does not exist.*set "
                                             r"'external.image_root'"):
        import_subtomograms(s2, tmp_path / "o.star", tmp_path / "o.mrcs", voxel_size=12.0,
                            box=16)
    info = import_subtomograms(s2, tmp_path / "o.star", tmp_path / "o.mrcs", voxel_size=12.0,
                               box=16, image_root=star.parent)
    assert info["n_particles"] == 3


def test_refined_origins_in_angstrom_are_subtracted(tomogram, tmp_path):
    """RELION 4/5 refined particles: the centre is the coordinate minus rlnOrigin*Angst."""
    cen = (np.array(PLANT) - np.array(SHAPE[::-1]) / 2.0) * VS
    star = _write_star(tmp_path / "refined.star", pd.DataFrame({
        "rlnCenteredCoordinateXAngst": [cen[0] + 30.0], "rlnCenteredCoordinateYAngst": [cen[1]],
        "rlnCenteredCoordinateZAngst": [cen[2] - 20.0], "rlnOriginXAngst": [30.0],
        "rlnOriginYAngst": [0.0], "rlnOriginZAngst": [-20.0]}))
    res, boxes, _ = _import(tomogram, [star])
    np.testing.assert_allclose(res.particles[["rlnCoordinateX", "rlnCoordinateY",
                                              "rlnCoordinateZ"]].to_numpy()[0], PLANT)
    _assert_centred(boxes)
    # kept, under another name: the coordinates already include the shift
    assert res.particles.iloc[0]["tclOriginalOriginXAngst"] == 30.0
    assert "rlnOriginXAngst" not in res.particles
