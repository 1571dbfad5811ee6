"""tomoclust.ingest: every bad input is a TomoclustError naming the file; binning is exact."""

from __future__ import annotations

import re
import warnings

import mrcfile
import numpy as np
import pytest
from tomoclust import TomoclustError
from tomoclust.formats.mrc import write_mrc
from tomoclust.ingest import ingest_tomogram


def _raw_mrc(path, data, voxel_size=None):
    """Write an MRC file as a user might have one (voxel size possibly absent)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # mrcfile warns about NaN data
        with mrcfile.new(path, overwrite=True) as mrc:
            mrc.set_data(np.asarray(data, dtype=np.float32))
            if voxel_size is not None:
                mrc.voxel_size = voxel_size
    return path


def _names(path, then=""):
    """Regex: the message names the file (then says ``then``)."""
    return re.escape(str(path)) + (f".*{then}" if then else "")


def _blob(shape, centre_zyx, sigma):
    zz, yy, xx = np.indices(shape, dtype=np.float64)
    c = centre_zyx
    return np.exp(-((zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2) / (2 * sigma**2))


def _centroid_zyx(vol):
    w = np.asarray(vol, dtype=np.float64) - np.median(vol)
    w[w < 0.1 * w.max()] = 0
    idx = np.indices(vol.shape).reshape(3, -1)
    return (idx * w.ravel()).sum(1) / w.sum()


# ------------------------------------------------------------------------------ bad inputs
def test_missing_file(tmp_path):
    path = tmp_path / "nowhere" / "t1.mrc"
    with pytest.raises(TomoclustError, match=_names(path)):
        ingest_tomogram(path, 10.0)


def test_not_an_mrc_file(tmp_path):
    path = tmp_path / "t1.mrc"
    path.write_text("name\tpath\nthis is a text file\n" * 50)
    with pytest.raises(TomoclustError, match=_names(path)):
        ingest_tomogram(path, 10.0)


def test_directory_instead_of_file(tmp_path):
    path = tmp_path / "adir.mrc"
    path.mkdir()
    with pytest.raises(TomoclustError, match=_names(path)):
        ingest_tomogram(path, 10.0)


def test_no_voxel_size_and_no_override(tmp_path, rng):
    path = _raw_mrc(tmp_path / "novs.mrc", rng.standard_normal((16, 16, 16)))
    with pytest.raises(TomoclustError, match=_names(path, r"voxel size")):
        ingest_tomogram(path, 10.0, name="novs")
    # the sheet's voxel size makes it usable
    res = ingest_tomogram(path, None, voxel_size_override=10.0, name="novs")
    assert res.voxel_size == pytest.approx(10.0)
    assert res.info["voxel_size_source"] == "sheet"


@pytest.mark.parametrize("bad", [0.0, -5.0, float("nan")])
def test_bad_voxel_size_override(tmp_path, rng, bad):
    path = _raw_mrc(tmp_path / "t.mrc", rng.standard_normal((16, 16, 16)), 10.0)
    with pytest.raises(TomoclustError, match=_names(path)):
        ingest_tomogram(path, 10.0, voxel_size_override=bad)


def test_nan_voxels(tmp_path, rng):
    data = rng.standard_normal((16, 16, 16))
    data[3, 4, 5] = np.nan
    data[7, 7, 7] = np.inf
    path = _raw_mrc(tmp_path / "nan.mrc", data, 10.0)
    msg = _names(path, r"2 voxels are NaN or infinite.*x, y, z = \(5, 4, 3\)")
    with pytest.raises(TomoclustError, match=msg):
        ingest_tomogram(path, 10.0)


def test_constant_volume(tmp_path):
    path = _raw_mrc(tmp_path / "flat.mrc", np.full((16, 16, 16), 3.0), 10.0)
    with pytest.raises(TomoclustError, match=_names(path, r"same value")):
        ingest_tomogram(path, 10.0)


def test_smaller_than_one_box(tmp_path, rng):
    path = _raw_mrc(tmp_path / "small.mrc", rng.standard_normal((20, 64, 64)), 10.0)
    with pytest.raises(TomoclustError, match=_names(path, r"smaller than one extraction box")):
        ingest_tomogram(path, 10.0, min_size_angst=32 * 12.0)
    # the same tomogram is fine for a box that fits
    assert ingest_tomogram(path, 10.0, min_size_angst=16 * 12.0).tomogram.shape == (20, 64, 64)


def test_upsampling_is_refused(tmp_path, rng):
    path = _raw_mrc(tmp_path / "coarse.mrc", rng.standard_normal((16, 16, 16)), 10.0)
    with pytest.raises(TomoclustError, match=_names(path, r"does not upsample")):
        ingest_tomogram(path, 5.0)


def test_not_a_volume(tmp_path, rng):
    path = _raw_mrc(tmp_path / "image.mrc", rng.standard_normal((32, 32)), 10.0)
    with pytest.raises(TomoclustError, match=_names(path, r"3D volume")):
        ingest_tomogram(path, 10.0)


def test_name_in_message(tmp_path):
    path = _raw_mrc(tmp_path / "flat.mrc", np.zeros((16, 16, 16)), 10.0)
    with pytest.raises(TomoclustError, match=r"tomogram 'TS_07'"):
        ingest_tomogram(path, 10.0, name="TS_07")


# ------------------------------------------------------------------------------ good input
def test_fourier_binning_halves_shape_keeps_content(tmp_path, rng):
    shape = (64, 80, 96)
    centre = (20, 30, 40)  # z, y, x at 5 Å
    data = 0.05 * rng.standard_normal(shape) + 2.0 * _blob(shape, centre, 4.0) + 11.0
    path = tmp_path / "t.mrc"
    write_mrc(path, data, 5.0)
    res = ingest_tomogram(path, 10.0, name="t")
    assert res.tomogram.shape == (32, 40, 48)
    assert res.tomogram.dtype == np.float32
    assert res.voxel_size == 10.0
    assert res.tomogram.mean(dtype=np.float64) == pytest.approx(0.0, abs=1e-5)
    assert res.tomogram.std(dtype=np.float64) == pytest.approx(1.0, abs=1e-4)
    # the particle at voxel p (5 Å) is at p / 2 (10 Å): the origin is kept
    np.testing.assert_allclose(_centroid_zyx(res.tomogram), np.array(centre) / 2, atol=0.1)
    info = res.info
    assert info["shape_in_zyx"] == [64, 80, 96] and info["shape_out_zyx"] == [32, 40, 48]
    assert info["cut_to_zyx"] == [64, 80, 96]
    assert info["voxel_size_in"] == pytest.approx(5.0, abs=1e-4)
    assert info["binning"] == pytest.approx(2.0, abs=1e-4)
    assert info["input_mean"] == pytest.approx(data.mean(), rel=1e-3)
    assert info["voxel_size_source"] == "header"


def test_cut_at_high_end_when_extent_is_not_whole(tmp_path, rng, caplog):
    shape = (63, 81, 95)
    centre = (20, 30, 40)
    data = 0.05 * rng.standard_normal(shape) + _blob(shape, centre, 4.0)
    path = tmp_path / "odd.mrc"
    write_mrc(path, data, 5.0)
    with caplog.at_level("WARNING"):
        res = ingest_tomogram(path, 10.0)
    assert res.tomogram.shape == (31, 40, 47)
    assert res.info["cut_to_zyx"] == [62, 80, 94]
    assert "cut from" in caplog.text
    # cutting the high end keeps voxel coordinates: the particle is still at p / 2
    np.testing.assert_allclose(_centroid_zyx(res.tomogram), np.array(centre) / 2, atol=0.1)


def test_non_integer_binning(tmp_path, rng):
    path = tmp_path / "t.mrc"
    write_mrc(path, rng.standard_normal((50, 50, 50)), 8.0)
    res = ingest_tomogram(path, 10.0)
    assert res.tomogram.shape == (40, 40, 40)
    assert res.voxel_size == 10.0
    assert res.info["cut_to_zyx"] == [50, 50, 50]


def test_no_binning_keeps_sampling(tmp_path, rng):
    data = rng.standard_normal((20, 24, 28)) * 4 + 1
    path = tmp_path / "t.mrc"
    write_mrc(path, data, 7.0)
    for working in (None, 7.0):
        res = ingest_tomogram(path, working)
        assert res.tomogram.shape == (20, 24, 28)
        assert res.voxel_size == pytest.approx(7.0, abs=1e-4)
        np.testing.assert_allclose(res.tomogram, (data - data.mean()) / data.std(), atol=1e-4)
