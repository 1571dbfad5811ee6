"""The tomogram sheet: a TSV with one row per tomogram.

Columns: ``name`` (unique ID, letters, digits, ``_ . -``), ``path`` (MRC file; relative paths
are relative to the directory Snakemake runs in), and optionally ``voxel_size`` (Å, overrides
the header), ``tilt_min`` / ``tilt_max`` (degrees, default −60 / 60), ``coordinates`` (STAR
file(s) of particle coordinates from another tool, comma-separated; picking is then skipped for
that tomogram) and ``coordinates_voxel_size`` (Å, voxel size of those coordinates when the STAR
does not state it). Only pandas is needed, so the Snakefile can import this module too.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from .. import TomoclustError

NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.\-]*"
REQUIRED = ("name", "path")
OPTIONAL_FLOAT = ("voxel_size", "tilt_min", "tilt_max", "coordinates_voxel_size")
POSITIVE = ("voxel_size", "coordinates_voxel_size")


def _row_lines(path: Path, n_rows: int) -> list[int]:
    """1-based file line of each data row, skipping the header, blank and ``#`` comment lines
    as ``pandas.read_csv`` does (falls back to ``row + 2`` if the two disagree)."""
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        text = []
    nums = [k for k, line in enumerate(text, 1) if line.split("#", 1)[0].strip(" \r") != ""]
    nums = nums[1:]  # the header
    return nums if len(nums) == n_rows else [i + 2 for i in range(n_rows)]


def load_sheet(path: str | Path, check_files: bool = True) -> pd.DataFrame:
    """Read and validate a tomogram sheet; returns it indexed by ``name``.

    Raises :class:`TomoclustError` naming the sheet and the offending row for: a missing
    required column, an empty or ill-formed name, a duplicated name, a non-numeric or
    non-positive voxel size, tilt_min ≥ tilt_max, or (with ``check_files``) a path that
    does not exist.
    """
    p = Path(path)
    if not p.is_file():
        raise TomoclustError(f"tomogram sheet {p}: file does not exist")
    try:
        df = pd.read_csv(p, sep="\t", dtype=str, comment="#", skip_blank_lines=True)
    except Exception as exc:
        raise TomoclustError(f"tomogram sheet {p}: cannot be read as TSV ({exc})") from exc
    df.columns = [c.strip() for c in df.columns]
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        raise TomoclustError(f"tomogram sheet {p}: missing column(s) {missing}; "
                             f"found {list(df.columns)} (is it tab-separated?)")
    if df.empty:
        raise TomoclustError(f"tomogram sheet {p}: has no rows")
    df = df.fillna("")
    for col in df.columns:
        df[col] = df[col].str.strip()
    lines = _row_lines(p, len(df))  # for messages: comment and blank lines are skipped
    for i, row in df.iterrows():
        line = lines[i]
        if not re.fullmatch(NAME_PATTERN, row["name"]):
            raise TomoclustError(f"tomogram sheet {p}, line {line}: name {row['name']!r} must "
                                 "start with a letter or digit and contain only letters, digits, "
                                 "'_', '.', '-'")
        if not row["path"]:
            raise TomoclustError(f"tomogram sheet {p}, line {line} ({row['name']}): empty path")
        if check_files and not Path(row["path"]).is_file():
            raise TomoclustError(f"tomogram sheet {p}, line {line} ({row['name']}): "
                                 f"file {row['path']} does not exist")
        for star in coordinate_files(row.get("coordinates", "")):
            if check_files and not Path(star).is_file():
                raise TomoclustError(f"tomogram sheet {p}, line {line} ({row['name']}): "
                                     f"coordinates file {star} does not exist")
    if "coordinates" not in df.columns:
        df["coordinates"] = ""
    dup = df["name"][df["name"].duplicated()].unique().tolist()
    if dup:
        raise TomoclustError(f"tomogram sheet {p}: duplicate name(s) {dup}")
    for col in OPTIONAL_FLOAT:
        if col not in df.columns:
            df[col] = None
            continue
        vals = []
        for i, v in enumerate(df[col]):
            if v == "":
                vals.append(None)
                continue
            try:
                f = float(v)
            except ValueError:
                raise TomoclustError(f"tomogram sheet {p}, line {lines[i]}: {col} {v!r} is not a "
                                     "number") from None
            if col in POSITIVE and not f > 0:
                raise TomoclustError(f"tomogram sheet {p}, line {lines[i]}: {col} must be > 0")
            vals.append(f)
        df[col] = pd.Series(vals, dtype=object)
    for i in df.index:
        # not iterrows: with pandas >= 3 a row mixing str and object columns turns None into NaN
        t_lo, t_hi = df.at[i, "tilt_min"], df.at[i, "tilt_max"]
        lo = -60.0 if t_lo is None or pd.isna(t_lo) else float(t_lo)
        hi = 60.0 if t_hi is None or pd.isna(t_hi) else float(t_hi)
        if not (-90 <= lo < hi <= 90):
            raise TomoclustError(f"tomogram sheet {p}, line {lines[i]}: tilt range [{lo}, {hi}] "
                                 "must satisfy -90 <= tilt_min < tilt_max <= 90")
        df.at[i, "tilt_min"], df.at[i, "tilt_max"] = lo, hi
    return df.set_index("name", drop=False)


def coordinate_files(cell: object) -> list[str]:
    """The STAR files of a sheet's ``coordinates`` cell (comma-separated; empty: none)."""
    if cell is None or (isinstance(cell, float) and pd.isna(cell)):
        return []
    return [s.strip() for s in str(cell).split(",") if s.strip()]
