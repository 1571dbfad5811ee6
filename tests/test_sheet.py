"""tomoclust.formats.sheet: the tomogram sheet is validated with errors naming the sheet and
line."""

from __future__ import annotations

import re

import pytest
from tomoclust import TomoclustError
from tomoclust.formats.sheet import coordinate_files, load_sheet


@pytest.fixture
def tomos(tmp_path):
    """Three (empty) tomogram files the sheet can point at."""
    paths = []
    for i in range(3):
        p = tmp_path / f"t{i}.mrc"
        p.write_bytes(b"")
        paths.append(p)
    return paths


def _sheet(tmp_path, text, name="tomograms.tsv"):
    path = tmp_path / name
    path.write_text(text)
    return path


def _err(path, then=""):
    return re.escape(f"tomogram sheet {path}") + (f".*{then}" if then else "")


def test_good_sheet_with_defaults(tmp_path, tomos):
    path = _sheet(tmp_path, "name\tpath\n"
                            f"TS_01\t{tomos[0]}\n"
                            "# a comment line\n"
                            f"TS_02\t{tomos[1]}\n")
    df = load_sheet(path)
    assert list(df.index) == ["TS_01", "TS_02"]
    assert df.loc["TS_01", "path"] == str(tomos[0])
    assert df.loc["TS_02", "tilt_min"] == -60.0 and df.loc["TS_02", "tilt_max"] == 60.0
    assert df.loc["TS_01", "voxel_size"] is None


def test_good_sheet_with_optional_columns(tmp_path, tomos):
    path = _sheet(tmp_path, "name\tpath\tvoxel_size\ttilt_min\ttilt_max\n"
                            f"a.1\t{tomos[0]}\t13.48\t-54\t48\n"
                            f"b-2\t{tomos[1]}\t\t\t\n"
                            f" c_3 \t {tomos[2]} \t7\t-30\t\n")
    df = load_sheet(path)
    assert df.loc["a.1", "voxel_size"] == pytest.approx(13.48)
    assert (df.loc["a.1", "tilt_min"], df.loc["a.1", "tilt_max"]) == (-54.0, 48.0)
    assert df.loc["b-2", "voxel_size"] is None
    assert (df.loc["b-2", "tilt_min"], df.loc["b-2", "tilt_max"]) == (-60.0, 60.0)
    assert df.loc["c_3", "path"] == str(tomos[2])  # whitespace stripped
    assert (df.loc["c_3", "tilt_min"], df.loc["c_3", "tilt_max"]) == (-30.0, 60.0)


def test_missing_sheet(tmp_path):
    path = tmp_path / "nope.tsv"
    with pytest.raises(TomoclustError, match=_err(path, "does not exist")):
        load_sheet(path)


def test_missing_column(tmp_path, tomos):
    path = _sheet(tmp_path, f"name\tfile\nTS_01\t{tomos[0]}\n")
    with pytest.raises(TomoclustError, match=_err(path, r"missing column.*'path'")):
        load_sheet(path)


def test_comma_separated_is_a_missing_column(tmp_path, tomos):
    path = _sheet(tmp_path, f"name,path\nTS_01,{tomos[0]}\n")
    with pytest.raises(TomoclustError, match=_err(path, "tab-separated")):
        load_sheet(path)


def test_no_rows(tmp_path):
    path = _sheet(tmp_path, "name\tpath\n")
    with pytest.raises(TomoclustError, match=_err(path, "no rows")):
        load_sheet(path)


def test_duplicate_names(tmp_path, tomos):
    path = _sheet(tmp_path, f"name\tpath\nA\t{tomos[0]}\nB\t{tomos[1]}\nA\t{tomos[2]}\n")
    with pytest.raises(TomoclustError, match=_err(path, r"duplicate name.*'A'")):
        load_sheet(path)


@pytest.mark.parametrize("bad", ["bad name", "-lead", "a/b", "ü"])
def test_bad_name_pattern(tmp_path, tomos, bad):
    path = _sheet(tmp_path, f"name\tpath\nok\t{tomos[0]}\n{bad}\t{tomos[1]}\n")
    with pytest.raises(TomoclustError, match=_err(path, f"line 3.*{re.escape(repr(bad))}")):
        load_sheet(path)


def test_empty_path(tmp_path, tomos):
    path = _sheet(tmp_path, f"name\tpath\nok\t{tomos[0]}\nnopath\t\n")
    with pytest.raises(TomoclustError, match=_err(path, r"line 3 \(nopath\).*empty path")):
        load_sheet(path)


def test_nonexistent_tomogram(tmp_path, tomos):
    missing = tmp_path / "gone.mrc"
    path = _sheet(tmp_path, f"name\tpath\nok\t{tomos[0]}\ngone\t{missing}\n")
    with pytest.raises(TomoclustError, match=_err(path, f"line 3.*{re.escape(str(missing))}")):
        load_sheet(path)
    assert load_sheet(path, check_files=False).loc["gone", "path"] == str(missing)


@pytest.mark.parametrize(("value", "what"), [("abc", "not a number"), ("0", "must be > 0"),
                                              ("-1.5", "must be > 0")])
def test_bad_voxel_size(tmp_path, tomos, value, what):
    path = _sheet(tmp_path, f"name\tpath\tvoxel_size\nok\t{tomos[0]}\t10\n"
                            f"bad\t{tomos[1]}\t{value}\n")
    with pytest.raises(TomoclustError, match=_err(path, f"line 3.*voxel_size.*{what}")):
        load_sheet(path)


def test_non_numeric_tilt(tmp_path, tomos):
    path = _sheet(tmp_path, f"name\tpath\ttilt_min\nok\t{tomos[0]}\tminus sixty\n")
    with pytest.raises(TomoclustError, match=_err(path, "line 2.*tilt_min.*not a number")):
        load_sheet(path)


@pytest.mark.parametrize(("lo", "hi"), [("60", "-60"), ("30", "30"), ("-95", "60"),
                                        ("", "-70")])
def test_bad_tilt_range(tmp_path, tomos, lo, hi):
    path = _sheet(tmp_path, f"name\tpath\ttilt_min\ttilt_max\nok\t{tomos[0]}\t-60\t60\n"
                            f"bad\t{tomos[1]}\t{lo}\t{hi}\n")
    with pytest.raises(TomoclustError, match=_err(path, "line 3.*tilt range")):
        load_sheet(path)


def test_line_numbers_count_comment_and_blank_lines(tmp_path, tomos):
    path = _sheet(tmp_path, "# tomograms of the March session\n"
                            "name\tpath\tvoxel_size\n"
                            f"ok\t{tomos[0]}\t10  # checked\n"
                            "\n"
                            "# the next one has a typo\n"
                            f"bad\t{tomos[1]}\tten\n")
    with pytest.raises(TomoclustError, match=_err(path, "line 6: voxel_size 'ten'")):
        load_sheet(path)


def test_coordinates_columns(tmp_path, tomos):
    """Issue 7: per-tomogram coordinate STAR files (comma-separated) and their voxel size."""
    a, b = tmp_path / "a.star", tmp_path / "b.star"
    a.write_text("data_\n")
    b.write_text("data_\n")
    path = _sheet(tmp_path, "name\tpath\tcoordinates\tcoordinates_voxel_size\n"
                            f"TS_01\t{tomos[0]}\t{a}, {b}\t20\n"
                            f"TS_02\t{tomos[1]}\t\t\n")
    df = load_sheet(path)
    assert coordinate_files(df.loc["TS_01", "coordinates"]) == [str(a), str(b)]
    assert coordinate_files(df.loc["TS_02", "coordinates"]) == []
    assert df.loc["TS_01", "coordinates_voxel_size"] == 20.0
    assert df.loc["TS_02", "coordinates_voxel_size"] is None
    # absent column: empty everywhere
    assert coordinate_files(load_sheet(_sheet(tmp_path, f"name\tpath\nTS_01\t{tomos[0]}\n",
                                              "plain.tsv")).loc["TS_01", "coordinates"]) == []


@pytest.mark.parametrize("cells, then", [
    ("{missing}\t", r"line 2 \(TS_01\): coordinates file .*nope.star does not exist"),
    ("\t0", "line 2: coordinates_voxel_size must be > 0"),
    ("\tbin4", "line 2: coordinates_voxel_size 'bin4' is not a number"),
])
def test_bad_coordinates_columns(tmp_path, tomos, cells, then):
    cells = cells.format(missing=tmp_path / "nope.star")
    path = _sheet(tmp_path, "name\tpath\tcoordinates\tcoordinates_voxel_size\n"
                            f"TS_01\t{tomos[0]}\t{cells}\n")
    with pytest.raises(TomoclustError, match=_err(path, then)):
        load_sheet(path)
