"""RELION 5 export (tomoclust.formats.relion5): RELION 5.0.1's centre convention for odd and even
sizes, binning round trips through the tomogram sheet, the tomograms.star, agreement with our
own importer (mode 1) and with copick 1.31's RELION reader."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from tomoclust import TomoclustError
from tomoclust.external.coordinates import import_coordinates
from tomoclust.extract import plan_resampling
from tomoclust.formats.relion5 import (
    SourceTomogram,
    binning,
    centred_angst,
    particles_table,
    position_angst,
    tomogram_centre_angst,
    tomograms_table,
)
from tomoclust.formats.star import read_star_blocks, write_star

OPTICS = {"voltage": 300.0, "spherical_aberration": 2.7, "amplitude_contrast": 0.1}


def test_centre_is_half_the_size_for_odd_and_even_axes():
    """RELION 5.0.1 tomogram_set.cpp: centre = size / 2.0 (float) pixels from the first one."""
    c = tomogram_centre_angst((401, 400, 99), 10.0)
    assert c.tolist() == [2005.0, 2000.0, 495.0]  # 200.5, 200, 49.5 voxels
    t = SourceTomogram("TS", "TS.mrc", (401, 400, 99), 10.0, 10.0)
    # the middle voxel of an odd axis is half a voxel below the centre; an even axis's centre
    # lies between its two middle voxels
    assert centred_angst(np.array([[200.0, 199.5, 49.0]]) * 10, t).tolist() == \
        [[-5.0, -5.0, -5.0]]
    pts = np.random.default_rng(0).uniform(-3000, 3000, (50, 3))
    np.testing.assert_allclose(centred_angst(position_angst(pts, t), t), pts, atol=1e-9)


@pytest.mark.parametrize("shape, vs, working, ts_pixel", [
    ((401, 400, 99), 10.0, 15.0, 2.5),   # odd/even sizes, binning 4, ingested at 15 Å (trimmed)
    ((400, 401, 100), 10.0, 10.0, None),  # no tilt-series pixel size known: binning 1
    ((1000, 1000, 400), 10.0, 15.0, 1.25),  # the README's example, binning 8
])
def test_binning_round_trip(shape, vs, working, ts_pixel):
    """A particle at working voxel j is at j · working Å from the first voxel; RELION's
    decentred tilt-series pixel (centred / ps + TomoSize / 2) is that over ps, and the voxel of
    the sheet tomogram (binned by TomoTomogramBinning) is j · working / vs."""
    t = SourceTomogram("TS_01", "/d/TS_01.mrc", shape, vs, working)
    tomo = tomograms_table([t], ts_pixel, OPTICS)
    row = tomo.iloc[0]
    ps = ts_pixel or vs
    assert row["rlnTomoTiltSeriesPixelSize"] == ps
    assert row["rlnTomoTomogramBinning"] == pytest.approx(vs / ps)
    assert [row[f"rlnTomoSize{a}"] for a in "XYZ"] == [round(n * vs / ps) for n in shape]
    rng = np.random.default_rng(1)
    j = rng.uniform(0, np.asarray(shape) * vs / working - 1, (20, 3))
    parts = pd.DataFrame({"rlnTomoName": "TS_01", "rlnCoordinateX": j[:, 0],
                          "rlnCoordinateY": j[:, 1], "rlnCoordinateZ": j[:, 2],
                          "rlnClassNumber": 1})
    opt, out = particles_table(parts, {"TS_01": t}, tomo, OPTICS)
    assert opt["rlnTomoTiltSeriesPixelSize"].tolist() == [ps]
    cen = out[[f"rlnCenteredCoordinate{a}Angst" for a in "XYZ"]].to_numpy()
    size = np.array([row[f"rlnTomoSize{a}"] for a in "XYZ"], float)
    decentred = cen / ps + size / 2.0  # ParticleSet::getParticleCoordDecenteredPixel
    np.testing.assert_allclose(decentred, j * working / ps, atol=1e-9)
    np.testing.assert_allclose(decentred / row["rlnTomoTomogramBinning"], j * working / vs,
                               atol=1e-9)
    # RELION 4's pixel coordinates: the same positions in tilt-series pixels
    np.testing.assert_allclose(out[[f"rlnCoordinate{a}" for a in "XYZ"]].to_numpy(),
                               j * working / ps, atol=1e-9)


def test_export_reimports_to_the_same_voxels():
    """Our own RELION 5 reader (mode 1) puts the exported particles back on the same voxels
    of the ingested tomogram (1000 × 1000 × 401 at 10 Å, ingested at 15 Å)."""
    t = SourceTomogram("TS_01", "/d/TS_01.mrc", (1000, 1000, 401), 10.0, 15.0)
    tomo = tomograms_table([t], 2.5, OPTICS)
    j = np.array([[200.0, 320.0, 133.3], [100.25, 500.5, 60.0]])
    parts = pd.DataFrame({"rlnTomoName": "TS_01", "rlnCoordinateX": j[:, 0],
                          "rlnCoordinateY": j[:, 1], "rlnCoordinateZ": j[:, 2]})
    opt, out = particles_table(parts, {"TS_01": t}, tomo, OPTICS)
    back = import_coordinates([("x", out, opt)], "TS_01", shape_in_zyx=(401, 1000, 1000),
                              voxel_size_in=10.0, shape_zyx=(267, 666, 666), voxel_size=15.0,
                              plan=plan_resampling(15.0, 15.0, 16))
    got = back.particles[[f"rlnCoordinate{a}" for a in "XYZ"]].to_numpy()
    np.testing.assert_allclose(got, j, atol=1e-6)


def test_tomograms_star_and_bad_binning(tmp_path):
    ts = [SourceTomogram("TS_01", "/d/a.mrc", (64, 64, 33), 10.0, 10.0),
          SourceTomogram("TS_02", "/d/b.mrc", (64, 64, 32), 5.0, 10.0)]
    tab = tomograms_table(ts, 2.5, OPTICS, hand=-1)
    path = tmp_path / "tomograms.star"
    write_star(path, {"global": tab})
    g = read_star_blocks(path)["global"]
    assert g["rlnTomoName"].tolist() == ["TS_01", "TS_02"]
    assert g["rlnTomoSizeZ"].tolist() == [132, 64]
    assert g["rlnTomoTomogramBinning"].tolist() == [4.0, 2.0]
    assert (g["rlnTomoHand"] == -1).all() and (g["rlnVoltage"] == 300).all()
    # two optics groups only if the tilt-series pixel sizes differ: here one
    parts = pd.DataFrame({"rlnTomoName": ["TS_01", "TS_02"], "rlnCoordinateX": [1.0, 2.0],
                          "rlnCoordinateY": [1.0, 2.0], "rlnCoordinateZ": [1.0, 2.0]})
    opt, out = particles_table(parts, {t.name: t for t in ts}, tab, OPTICS)
    assert len(opt) == 1 and (out["rlnOpticsGroup"] == 1).all()
    with pytest.raises(TomoclustError, match="not a binning"):
        binning(ts[0], 3.0)  # 10 / 3: no whole number of tilt-series pixels
    with pytest.raises(TomoclustError, match="unknown tomogram"):
        particles_table(parts.assign(rlnTomoName="TS_09"), {t.name: t for t in ts}, tab, OPTICS)


def test_project_tomograms_star_is_copied_after_a_size_check():
    t = SourceTomogram("TS_01", "/d/a.mrc", (500, 500, 200), 10.0, 10.0)
    project = pd.DataFrame({"rlnTomoName": ["TS_00", "TS_01"],
                            "rlnTomoTiltSeriesPixelSize": [1.25, 1.25],
                            "rlnTomoSizeX": [4000, 4000], "rlnTomoSizeY": [4000, 4000],
                            "rlnTomoSizeZ": [1600, 1600],
                            "rlnTomoTiltSeriesStarFile": ["a.star", "b.star"]})
    out = tomograms_table([t], None, OPTICS, project=project)
    assert out["rlnTomoTiltSeriesStarFile"].tolist() == ["b.star"]
    bad = project.assign(rlnTomoSizeZ=[1600, 2000])
    with pytest.raises(TomoclustError, match="not the same volume"):
        tomograms_table([t], None, OPTICS, project=bad)
    with pytest.raises(TomoclustError, match="no tomogram 'TS_01'"):
        tomograms_table([t], None, OPTICS, project=project.iloc[:1])


def test_copick_reader_agrees(tmp_path):
    """copick 1.31's RELION reader (centred rule with the tomograms.star, and the pixel rule
    with the optics block) gives the same positions, to 1e-6 Å."""
    formats = pytest.importorskip("copick.util.formats")
    t = SourceTomogram("TS_01", "/d/a.mrc", (401, 400, 99), 10.0, 15.0)
    tab = tomograms_table([t], 2.5, OPTICS)
    write_star(tmp_path / "tomograms.star", {"global": tab})
    j = np.random.default_rng(3).uniform(0, 60, (30, 3))
    parts = pd.DataFrame({"rlnTomoName": "TS_01", "rlnCoordinateX": j[:, 0],
                          "rlnCoordinateY": j[:, 1], "rlnCoordinateZ": j[:, 2]})
    opt, out = particles_table(parts, {"TS_01": t}, tab, OPTICS)
    tomos = formats.read_relion_tomograms(str(tmp_path / "tomograms.star"))
    centred = formats.relion_coordinates_to_angstrom(out, tomograms=tomos,
                                                      relion_version="relion5")
    pixel = formats.relion_coordinates_to_angstrom(out, optics=opt, relion_version="relion4")
    np.testing.assert_allclose(centred, j * 15.0, atol=1e-6)
    np.testing.assert_allclose(pixel, j * 15.0, atol=1e-6)


# ------------------------------------------------------------------ one method's export
RELION = {"tilt_series_pixel_size": None, "hand": -1, **OPTICS}
ORIG = ["rlnOriginXAngst", "rlnOriginYAngst", "rlnOriginZAngst"]


def _clusters():
    """Four particles of two classes in one tomogram, boxes re-centred at extraction."""
    return pd.DataFrame({
        "rlnImageName": [f"{i}@particles.mrcs" for i in range(1, 5)],
        "rlnTomoName": "TS_01", "rlnCoordinateX": [10.0, 20, 30, 40],
        "rlnCoordinateY": [5.0, 5, 5, 5], "rlnCoordinateZ": [3.0, 3, 3, 3],
        "rlnOriginXAngst": [1.0, 2, 3, 4], "rlnOriginYAngst": 0.0, "rlnOriginZAngst": 0.0,
        "rlnClassNumber": [1, 2, 1, 2], "tclClassProbability": 0.9, "tclStackIndex": [0, 1, 2, 3],
        "tclDogScore": 5.0})


def test_class_particles_take_refined_origins_where_a_class_was_averaged():
    from tomoclust.formats.relion5 import class_particles

    clusters = _clusters()
    refined = clusters[clusters["rlnClassNumber"] == 1][["tclStackIndex", *ORIG]].copy()
    refined[ORIG] = [[11.0, 1.0, 0.0], [13.0, 1.0, 0.0]]  # extraction's origins included
    for c, v in (("rlnAngleRot", 10.0), ("rlnAngleTilt", 20.0), ("rlnAnglePsi", 30.0),
                 ("rlnRandomSubset", 1)):
        refined[c] = v
    out = class_particles(clusters, [refined])
    assert "tclDogScore" not in out and "rlnImageName" not in out
    # class 1 averaged: the refined origins; class 2: extraction's, no angles
    assert out["rlnOriginXAngst"].tolist() == [11.0, 2.0, 13.0, 4.0]
    assert out["rlnOriginYAngst"].tolist() == [1.0, 0.0, 1.0, 0.0]
    assert out["rlnAngleRot"].isna().tolist() == [False, True, False, True]
    assert not any(c.endswith("_extract") for c in out.columns)
    # no averages: the extraction origins only
    assert class_particles(clusters, [])[ORIG].to_numpy()[:, 0].tolist() == [1.0, 2, 3, 4]


def test_export_classes_writes_the_whole_directory(tmp_path):
    from tomoclust.formats.relion5 import export_classes, export_optics, source_tomogram

    tomo = source_tomogram({"name": "TS_01", "path": "t.mrc", "shape_in_zyx": [50, 100, 100],
                            "voxel_size_in": 10.0, "voxel_size_out": 10.0})
    assert tomo.shape_xyz == (100, 100, 50) and Path(tomo.path).is_absolute()
    out = tmp_path / "relion" / "inv"
    export_classes(out, _clusters(), [], {"TS_01": tomo}, RELION)
    assert sorted(p.name for p in out.iterdir()) == ["README.txt", "class1", "class2",
                                                     "particles.star", "tomograms.star"]
    assert "No tilt series are known here" in (out / "README.txt").read_text()
    blocks = read_star_blocks(out / "class2" / "particles.star")
    assert blocks["particles"]["tclStackIndex"].tolist() == [1, 3]
    assert blocks["optics"]["rlnVoltage"].tolist() == [300.0]
    assert not (tmp_path / "relion" / "inv.tmp").exists()
    # a simulation's own microscope wins over the relion settings
    assert export_optics(RELION, {"voltage_kv": 200.0, "cs_mm": 2.0,
                                  "amplitude_contrast": 0.07})["voltage"] == 200.0


def test_read_project_needs_a_global_block(tmp_path):
    from tomoclust.formats.relion5 import read_project

    path = tmp_path / "tomograms.star"
    write_star(path, {"tomos": pd.DataFrame({"rlnTomoName": ["TS_01"]})})
    with pytest.raises(TomoclustError, match="no data_global block"):
        read_project(path)
    write_star(path, {"global": pd.DataFrame({"rlnTomoName": ["TS_01"]})})
    assert read_project(path)["rlnTomoName"].tolist() == ["TS_01"]
