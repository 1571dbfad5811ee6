"""Other tools' tables: column and tomogram names, the columns tomoclust keeps under another
name, and their class numbers as ground truth.

Identity: every input column is carried through. Columns tomoclust writes itself are kept under
another name: ``rlnImageName`` → ``rlnImageOriginalName`` (RELION's own label), any other
``rlnX`` → ``tclOriginalX`` (``rlnClassNumber`` → ``tclOriginalClassNumber``, which is the
ground truth of evaluation when present; ``rlnCoordinateX`` → ``tclOriginalCoordinateX``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from .. import TomoclustError
from ..formats.star import read_star_blocks

COORDS = ("rlnCoordinateX", "rlnCoordinateY", "rlnCoordinateZ")
CENTRED = ("rlnCenteredCoordinateXAngst", "rlnCenteredCoordinateYAngst",
           "rlnCenteredCoordinateZAngst")
ANGLES = ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi")
ORIGINS = ("rlnOriginXAngst", "rlnOriginYAngst", "rlnOriginZAngst")
NAME_COLUMNS = ("rlnTomoName", "rlnMicrographName")
PYTOM_COLUMNS = ("rlnLCCmax", "rlnCutOff", "rlnSearchStd")
TRUTH_COLUMN = "tclOriginalClassNumber"
#: suffixes stripped (repeatedly) when matching tomogram names to the sheet
NAME_SUFFIXES = (".mrc", ".rec", ".mrcs", ".st", ".tomostar", ".star", ".map", ".em")
#: columns written by tomoclust's own steps (pick, extract, gather, cluster): input columns of
#: these names are renamed so they survive (see :func:`original_name`)
OWN_COLUMNS = frozenset({
    "rlnTomoName", *COORDS, *CENTRED, "rlnImageName", "rlnTomoTiltSeriesPixelSize",
    "rlnOpticsGroup", "rlnClassNumber", "tclStackIndex", "tclTomoImageName",
    "tclClassProbability", "tclDogScore", "tclDogZScore",
})


def original_name(column: str) -> str:
    """Name under which an input column that tomoclust also writes is kept."""
    if column == "rlnImageName":
        return "rlnImageOriginalName"
    stem = column[3:] if column.startswith("rln") else column[3:] if column.startswith(
        "tcl") else column
    return f"tclOriginal{stem}"


# ------------------------------------------------------------------------------- STAR files
def read_particles(path: str | Path, what: str = "STAR file"
                   ) -> tuple[pd.DataFrame, pd.DataFrame | None, str]:
    """The particle block (``particles``, else the last block), the optics block or ``None``,
    and the particle block's name (for messages)."""
    data = read_star_blocks(path, what)
    name = "particles" if "particles" in data else list(data)[-1]
    df = data[name]
    optics = data.get("optics") if name != "optics" else None
    return df.reset_index(drop=True), optics, f"data_{name}"


def row_label(i: int) -> str:
    return f"row {i + 1}"


def numeric_columns(df: pd.DataFrame, cols: Sequence[str], where: str) -> np.ndarray:
    """``df[cols]`` as float64; a missing, non-numeric or NaN value is an error naming the row."""
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise TomoclustError(f"{where}: missing column(s) {missing}; found {list(df.columns)}")
    out = np.empty((len(df), len(cols)))
    for j, c in enumerate(cols):
        vals = pd.to_numeric(df[c], errors="coerce").to_numpy(dtype=np.float64)
        bad = np.flatnonzero(~np.isfinite(vals))
        if len(bad):
            i = int(bad[0])
            raise TomoclustError(f"{where}, {row_label(i)}: {c} is {df[c].iloc[i]!r}, not a finite "
                                 f"number ({len(bad)} such row(s))")
        out[:, j] = vals
    return out


# --------------------------------------------------------------------------- tomogram names
def name_stem(value: str) -> str:
    """A tomogram name as written by other tools, reduced for matching: directories and known
    file extensions (``.mrc``, ``.rec``, ``.st``, ``.tomostar``, ...) removed."""
    s = str(value).strip().replace("\\", "/").rsplit("/", 1)[-1]
    changed = True
    while changed:
        changed = False
        for suf in NAME_SUFFIXES:
            if s.lower().endswith(suf) and len(s) > len(suf):
                s, changed = s[: -len(suf)], True
    return s


def name_column(df: pd.DataFrame) -> str | None:
    """``rlnTomoName`` when present, else ``rlnMicrographName``, else ``None``."""
    return next((c for c in NAME_COLUMNS if c in df.columns), None)


def match_names(values: Iterable[str], names: Sequence[str], paths: Sequence[str] | None = None
                ) -> dict[str, str | None]:
    """Map each distinct value of a name column to a sheet name (``None`` when none matches).

    A value matches sheet row ``n`` when it equals ``n``; failing that, when its stem (see
    :func:`name_stem`) equals ``n`` or the stem of the row's tomogram path. A value matching
    two sheet rows is an error.
    """
    paths = list(paths) if paths is not None else [""] * len(names)
    out: dict[str, str | None] = {}
    for v in dict.fromkeys(str(x) for x in values):
        if v in names:
            out[v] = v
            continue
        st = name_stem(v)
        hits = [n for n, p in zip(names, paths, strict=True)
                if st == n or (p and st == name_stem(p))]
        hits = list(dict.fromkeys(hits))
        if len(hits) > 1:
            raise TomoclustError(f"tomogram name {v!r} matches several tomograms of the sheet: "
                                 f"{hits}")
        out[v] = hits[0] if hits else None
    return out


def split_by_tomogram(df: pd.DataFrame, source: str, names: Sequence[str],
                      paths: Sequence[str] | None = None) -> dict[str, pd.DataFrame]:
    """Rows of one STAR for all tomograms, per sheet name (every name present, maybe empty).

    Raises naming the first row whose tomogram matches no sheet row.
    """
    col = name_column(df)
    if col is None:
        raise TomoclustError(f"{source}: has neither rlnTomoName nor rlnMicrographName, so its "
                             "rows cannot be assigned to tomograms; give one STAR per tomogram in "
                             "the sheet's 'coordinates' column instead")
    vals = df[col].astype(str).str.strip().to_numpy()
    mapping = match_names(vals, names, paths)
    unknown = [v for v, n in mapping.items() if n is None]
    if unknown:
        i = int(np.flatnonzero(vals == unknown[0])[0])
        shown = f"{list(names)[:10]}{' ...' if len(names) > 10 else ''}"
        raise TomoclustError(f"{source}, {row_label(i)}: {col} {unknown[0]!r} matches no "
                             f"tomogram of the sheet (names {shown}; matching: exact name, or "
                             "the value without directory and extension equal to a name or a "
                             "tomogram file's stem); "
                             f"{len(unknown)} unknown name(s) in all: {unknown[:5]}")
    target = np.array([mapping[v] for v in vals], dtype=object)
    return {n: df[target == n].copy() for n in names}


def carry_columns(df: pd.DataFrame, drop: Iterable[str] = (), rename: Iterable[str] = ()
                  ) -> dict[str, np.ndarray]:
    """Input columns to carry into tomoclust's tables, renamed (:func:`original_name`) where
    tomoclust writes the same name, or where listed in ``rename``."""
    drop, rename = set(drop), set(rename) | OWN_COLUMNS
    out = {}
    for c in df.columns:
        if c in drop:
            continue
        out[original_name(c) if c in rename else c] = df[c].to_numpy()
    return out


# ------------------------------------------------------------------------------ truth
def truth_table(particles: pd.DataFrame, column: str = TRUTH_COLUMN) -> pd.DataFrame:
    """Ground truth aligned to the particle stack: ``tclStackIndex``, ``rlnClassNumber``
    (0 = unlabelled, e.g. a particle picked by tomoclust in a tomogram without labels)."""
    if "tclStackIndex" not in particles.columns:
        raise TomoclustError("particle table has no tclStackIndex column")
    if column not in particles.columns:
        raise TomoclustError(f"particle table has no {column} column: the input STAR carried "
                             "no rlnClassNumber")
    cls = pd.to_numeric(particles[column], errors="coerce").to_numpy(dtype=np.float64)
    bad = np.flatnonzero(np.isfinite(cls) & ((cls < 0) | (cls != np.round(cls))))
    if len(bad):
        i = int(bad[0])
        raise TomoclustError(f"particle {row_label(i)}: class number {particles[column].iloc[i]!r} "
                             "is not a non-negative integer")
    out = pd.DataFrame({"tclStackIndex": particles["tclStackIndex"].to_numpy(dtype=np.int64),
                        "rlnClassNumber": np.nan_to_num(cls, nan=0.0).astype(np.int64)})
    for c in ("rlnTomoName", "rlnImageName", "rlnImageOriginalName"):
        if c in particles.columns:
            out[c] = particles[c].to_numpy()
    return out
