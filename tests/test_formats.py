"""tomoclust.formats: MRC and STAR round trips, atomic writes, coordinate conventions."""

from __future__ import annotations

import warnings

import mrcfile
import numpy as np
import pandas as pd
import pytest
from tomoclust import TomoclustError
from tomoclust.formats.atomic import atomic_output, write_json
from tomoclust.formats.mrc import read_mrc, read_mrc_header_voxel_size, write_mrc
from tomoclust.formats.stacks import StackWriter, open_stack
from tomoclust.formats.star import (
    centered_angst,
    optics_table,
    particle_table,
    read_star,
    voxels_from_centered_angst,
    write_star,
    xyz_to_zyx,
    zyx_to_xyz,
)


def _leftovers(directory):
    """Everything in a directory (temporary ``.part`` files included)."""
    return sorted(p.name for p in directory.iterdir())


# ------------------------------------------------------------------------------------ MRC
def test_mrc_round_trip_keeps_data_shape_and_voxel_size(tmp_path, rng):
    data = rng.standard_normal((7, 9, 11)).astype(np.float32)
    path = tmp_path / "vol.mrc"
    write_mrc(path, data, 7.25)
    back, vs = read_mrc(path)
    assert back.shape == (7, 9, 11)  # (z, y, x) kept, not transposed
    assert back.dtype == np.float32
    np.testing.assert_allclose(back, data, rtol=1e-6, atol=1e-7)
    assert vs == pytest.approx(7.25, abs=1e-4)
    assert read_mrc_header_voxel_size(path) == pytest.approx(7.25, abs=1e-4)
    assert _leftovers(tmp_path) == ["vol.mrc"]


def test_mrc_voxel_size_override_and_missing_header_voxel_size(tmp_path, rng):
    path = tmp_path / "nohdr.mrc"
    with mrcfile.new(path) as mrc:  # header voxel size left at 0
        mrc.set_data(rng.standard_normal((4, 5, 6)).astype(np.float32))
    assert read_mrc_header_voxel_size(path) is None
    with pytest.raises(TomoclustError, match=r"nohdr\.mrc"):
        read_mrc(path)
    _, vs = read_mrc(path, voxel_size=3.5)
    assert vs == pytest.approx(3.5)


def test_read_mrc_errors_name_the_file(tmp_path):
    missing = tmp_path / "missing.mrc"
    with pytest.raises(TomoclustError, match=r"missing\.mrc"):
        read_mrc(missing)
    text = tmp_path / "notes.mrc"
    text.write_text("this is not an MRC file\n" * 100)
    with pytest.raises(TomoclustError, match=r"notes\.mrc"):
        read_mrc(text, voxel_size=1.0)
    nan = tmp_path / "nan.mrc"
    arr = np.zeros((4, 4, 4), dtype=np.float32)
    arr[1, 2, 3] = np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # mrcfile warns about the NaN
        with mrcfile.new(nan) as mrc:
            mrc.set_data(arr)
            mrc.voxel_size = 2.0
    with pytest.raises(TomoclustError, match=r"nan\.mrc.*NaN"):
        read_mrc(nan)


# ---------------------------------------------------------------------------------- stacks
@pytest.mark.parametrize("n", [1, 3])
def test_stack_writer_round_trip(tmp_path, rng, n):
    vols = rng.standard_normal((n, 8, 8, 8)).astype(np.float32)
    path = tmp_path / "stack.mrcs"
    with StackWriter(path, n, 8, 12.5) as w:
        for i in range(n):  # one by one, like extraction batches
            w[i] = vols[i]
    data, vs = open_stack(path)
    assert data.shape == (n, 8, 8, 8)
    np.testing.assert_allclose(np.asarray(data), vols, rtol=1e-6, atol=1e-7)
    assert vs == pytest.approx(12.5, abs=1e-4)
    assert _leftovers(tmp_path) == ["stack.mrcs"]


def test_empty_stack_round_trip(tmp_path):
    path = tmp_path / "empty.mrcs"
    with StackWriter(path, 0, 16, 12.0) as w:
        with pytest.raises(IndexError):
            w[0] = np.zeros((16, 16, 16), dtype=np.float32)
    data, vs = open_stack(path)
    assert data.shape[0] == 0
    assert vs == pytest.approx(12.0, abs=1e-4)
    assert _leftovers(tmp_path) == ["empty.mrcs"]


def test_stack_writer_failure_leaves_nothing(tmp_path):
    path = tmp_path / "stack.mrcs"
    with pytest.raises(RuntimeError, match="boom"):
        with StackWriter(path, 4, 8, 10.0) as w:
            w[0] = np.ones((8, 8, 8), dtype=np.float32)
            raise RuntimeError("boom")
    assert _leftovers(tmp_path) == []


def test_atomic_output_failure_leaves_no_target_and_no_temp(tmp_path):
    target = tmp_path / "out.txt"
    with pytest.raises(ValueError, match="mid-write"):
        with atomic_output(target) as tmp:
            tmp.write_text("half of it")
            assert tmp.exists() and tmp.parent == tmp_path
            raise ValueError("mid-write")
    assert _leftovers(tmp_path) == []


def test_atomic_output_failure_keeps_previous_target(tmp_path):
    target = tmp_path / "out.json"
    write_json(target, {"a": 1})
    # an object json cannot serialise raises while the temporary file is being written
    with pytest.raises(TypeError):
        write_json(target, {"a": object()})
    assert target.read_text().strip().startswith("{")
    assert '"a": 1' in target.read_text()
    assert _leftovers(tmp_path) == ["out.json"]


def test_write_mrc_failure_leaves_nothing(tmp_path, monkeypatch):
    def broken(self):
        raise OSError("disk full")

    monkeypatch.setattr(mrcfile.mrcfile.MrcFile, "update_header_stats", broken)
    with pytest.raises(OSError, match="disk full"):
        write_mrc(tmp_path / "vol.mrc", np.zeros((4, 4, 4)), 1.0)
    assert _leftovers(tmp_path) == []


# ------------------------------------------------------------------------------------ STAR
def test_star_round_trip_with_optics_and_particles(tmp_path, rng):
    shape = (40, 60, 80)
    xyz = rng.uniform(0, 40, size=(5, 3))
    angles = rng.uniform(-180, 180, size=(5, 3))
    parts = particle_table("tomo_1", xyz, shape, 10.0, angles=angles,
                           extra={"rlnClassNumber": [1, 2, 1, 2, 2]})
    optics = optics_table(10.0, 12.0, 32)
    path = tmp_path / "particles.star"
    write_star(path, {"optics": optics, "particles": parts})

    back = read_star(path)  # the particles block by default
    assert list(back.columns) == list(parts.columns)
    assert len(back) == 5
    assert (back["rlnTomoName"] == "tomo_1").all()
    for col in ("rlnCoordinateX", "rlnCenteredCoordinateZAngst", "rlnAnglePsi"):
        np.testing.assert_allclose(back[col].to_numpy(float), parts[col].to_numpy(float),
                                   rtol=1e-6, atol=1e-6)
    assert back["rlnClassNumber"].tolist() == [1, 2, 1, 2, 2]

    opt = read_star(path, block="optics")
    assert len(opt) == 1
    assert float(opt["rlnImagePixelSize"].iloc[0]) == pytest.approx(12.0)
    assert int(opt["rlnImageSize"].iloc[0]) == 32
    assert int(opt["rlnImageDimensionality"].iloc[0]) == 3

    with pytest.raises(TomoclustError, match=r"particles\.star.*data_nothere"):
        read_star(path, block="nothere")


def test_star_single_block_and_errors(tmp_path):
    df = pd.DataFrame({"rlnCoordinateX": [1.0, 2.0], "rlnTomoName": ["a", "b"]})
    path = tmp_path / "one.star"
    write_star(path, df)
    back = read_star(path)
    assert back["rlnTomoName"].tolist() == ["a", "b"]
    with pytest.raises(TomoclustError, match=r"absent\.star"):
        read_star(tmp_path / "absent.star")


# ----------------------------------------------------------------------- coordinate order
def test_zyx_xyz_round_trip(rng):
    zyx = rng.uniform(0, 50, size=(6, 3))
    xyz = zyx_to_xyz(zyx)
    np.testing.assert_allclose(xyz[:, 0], zyx[:, 2])
    np.testing.assert_allclose(xyz[:, 2], zyx[:, 0])
    np.testing.assert_allclose(xyz_to_zyx(xyz), zyx)
    np.testing.assert_allclose(zyx_to_xyz(np.array([3.0, 2.0, 1.0])), [1.0, 2.0, 3.0])


@pytest.mark.parametrize("shape", [(48, 96, 96), (47, 95, 101)])
def test_centered_angst_uses_size_over_two_and_round_trips(rng, shape):
    vs = 13.5
    centre_xyz = np.array(shape[::-1]) / 2.0  # RELION 5: centre is size / 2 (float)
    np.testing.assert_allclose(centered_angst(centre_xyz, shape, vs), 0.0, atol=1e-12)
    one_x = centre_xyz + np.array([1, 0, 0])
    np.testing.assert_allclose(centered_angst(one_x, shape, vs), [vs, 0, 0], atol=1e-9)
    np.testing.assert_allclose(centered_angst(np.zeros(3), shape, vs),
                               -vs * (np.array(shape[::-1]) / 2.0), atol=1e-9)
    xyz = rng.uniform(0, 40, size=(10, 3))
    back = voxels_from_centered_angst(centered_angst(xyz, shape, vs), shape, vs)
    np.testing.assert_allclose(back, xyz, atol=1e-9)


def test_particle_table_columns_and_values():
    shape = (20, 30, 40)
    xyz = np.array([[20.0, 15.0, 10.0], [0.0, 1.0, 2.0]])
    df = particle_table("t01", xyz, shape, 10.0, angles=np.array([[1, 2, 3], [4, 5, 6]]),
                        extra={"tclScore": [0.5, 0.25]})
    assert list(df.columns) == [
        "rlnTomoName", "rlnCoordinateX", "rlnCoordinateY", "rlnCoordinateZ",
        "rlnCenteredCoordinateXAngst", "rlnCenteredCoordinateYAngst",
        "rlnCenteredCoordinateZAngst", "rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi",
        "tclScore",
    ]
    np.testing.assert_allclose(df.iloc[0][["rlnCenteredCoordinateXAngst",
                                           "rlnCenteredCoordinateYAngst",
                                           "rlnCenteredCoordinateZAngst"]].to_numpy(float),
                               [0.0, 0.0, 0.0], atol=1e-12)
    np.testing.assert_allclose(df["rlnCoordinateZ"].to_numpy(), [10.0, 2.0])
    np.testing.assert_allclose(df["rlnAnglePsi"].to_numpy(), [3.0, 6.0])
    empty = particle_table("t01", np.zeros((0, 3)), shape, 10.0)
    assert len(empty) == 0
    assert "rlnCenteredCoordinateXAngst" in empty.columns


@pytest.mark.parametrize("pattern", ["in order", "shuffled chunks", "row rewritten",
                                     "row left empty", "strided and fancy", "threads"])
def test_stack_writer_header_stats_equal_mrcfile(tmp_path, rng, pattern):
    """Header statistics accumulated while writing (or recomputed at close when a row is
    written twice or never) equal mrcfile's own update_header_stats of the final data."""
    n = 7
    vols = (rng.standard_normal((n, 6, 6, 6)) * 2 + 0.5).astype(np.float32)
    path = tmp_path / "stack.mrcs"
    with StackWriter(path, n, 6, 10.0) as w:
        if pattern == "shuffled chunks":
            for a in (4, 0, 2, 6):
                w[a:a + 2] = vols[a:a + 2]
        elif pattern == "strided and fancy":  # through the memory map, float64 input
            w[0:7:2] = vols[0:7:2].astype(np.float64)
            w[[5, 1]] = vols[[5, 1]]
            w[3] = 1.5  # broadcast
            vols[3] = 1.5
        elif pattern == "threads":
            from concurrent.futures import ThreadPoolExecutor

            def put(i):
                w[i:i + 1] = vols[i:i + 1]

            with ThreadPoolExecutor(3) as ex:
                list(ex.map(put, range(n)))
        else:
            for i in range(n):
                if pattern == "row left empty" and i == 3:
                    continue
                w[i] = vols[i]
            if pattern == "row rewritten":
                w[2] = vols[2] * 10  # the running statistics no longer describe the file
    with mrcfile.open(path) as mrc:
        got = [float(mrc.header[k]) for k in ("dmin", "dmax", "dmean", "rms")]
    with mrcfile.open(path, mode="r+") as mrc:
        mrc.update_header_stats()
        want = [float(mrc.header[k]) for k in ("dmin", "dmax", "dmean", "rms")]
    np.testing.assert_allclose(got, want, rtol=1e-5)
    data, _ = open_stack(path)
    if pattern != "row rewritten":
        if pattern == "row left empty":
            vols[3] = 0.0
        np.testing.assert_array_equal(np.asarray(data), vols)
