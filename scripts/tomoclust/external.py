"""Starting from what other tools wrote: particle coordinates, or extracted subtomograms.

Mode 1, coordinates in (picking skipped)
    A STAR file of coordinates per tomogram (the sheet's ``coordinates`` column) or one for all
    tomograms (config ``external.coordinates``, split by ``rlnTomoName`` or
    ``rlnMicrographName``). Conventions, detected from the columns:

    ``voxels``
        ``rlnCoordinateX/Y/Z`` in voxels (0-based: voxel ``i`` is centred at ``i``) of the
        tomogram they were picked on: RELION 3 (binned tomogram), RELION 4 (unbinned
        tilt-series pixels), pytom-match-pick (``rlnLCCmax``, ``rlnCutOff``,
        ``rlnSearchStd``, ``rlnDetectorPixelSize`` = voxel size in Å, ``rlnMicrographName``
        = tomogram stem), TomoTwin (``*_relion3.star``: the three coordinate columns only).
        Their voxel size is, in this order: the sheet's ``coordinates_voxel_size``, config
        ``external.coordinates_voxel_size``, a ``rlnDetectorPixelSize`` column (Å; with
        ``rlnMagnification`` the RELION 3.0 form ``10⁴ · DetectorPixelSize / Magnification``),
        the optics block's ``rlnTomoTiltSeriesPixelSize`` (RELION 4). Without any of these the
        import stops: the binning of the picking tomogram is never guessed.
    ``relion5``
        ``rlnCenteredCoordinateX/Y/ZAngst``: Å from the tomogram centre. As in RELION 5's
        decentring (``ParticleSet::getParticleCoordDecenteredPixel``: position / pixel size +
        size / 2.0) and pytom-match-pick's ``--relion5-compat`` output, the centre lies
        ``size / 2`` voxels (float division) from the first voxel's centre, ``size`` and voxel
        size being those of the tomogram of the sheet (any binning of the reconstruction
        covers the same extent).

    Refined particles carry ``rlnOriginX/Y/ZAngst``: as in RELION, the centre used is the
    position minus the origin (Å), and the origins are kept as ``tclOriginalOrigin*Angst`` (so
    nothing applies them twice); pixel-unit ``rlnOriginX/Y/Z`` are not applied (logged).
    Positions are taken to a physical distance from the first voxel's centre (Å) and from there
    to voxels of the ingested tomogram (ingest keeps that origin: it Fourier-bins and cuts only
    at the high end). Rows whose centre falls outside the tomogram, or whose box would cross a
    face, are reported (log and a TSV) and skipped, never shifted.

Mode 2, subtomograms in (ingest, picking and extraction skipped)
    A particle STAR whose ``rlnImageName`` is a subtomogram MRC file or ``N@stack`` (1-based
    slice ``N`` of an MRC stack of volumes); relative paths are relative to the STAR file's
    directory, or to config ``external.image_root`` when set (a RELION project directory).
    Voxel size per particle: config ``external.subtomograms_voxel_size``, else the optics
    block (``rlnImagePixelSize``; ``rlnTomoTiltSeriesPixelSize`` × ``rlnTomoSubtomogramBinning``),
    else a particle column ``rlnImagePixelSize`` / ``rlnPixelSize``, else (Warp 1, RELION 3.0)
    ``10⁴ · rlnDetectorPixelSize / rlnMagnification``, else the MRC header.
    Every particle is Fourier-resampled to the working voxel size and box (the code of
    :mod:`tomoclust.extract`), so mixed voxel sizes and boxes are fine as long as every input
    box covers the working box's extent; otherwise the import stops naming the row.

Identity: every input column is carried through. Columns tomoclust writes itself are kept under
another name: ``rlnImageName`` → ``rlnImageOriginalName`` (RELION's own label), any other
``rlnX`` → ``tclOriginalX`` (``rlnClassNumber`` → ``tclOriginalClassNumber``, which is the
ground truth of evaluation when present; ``rlnCoordinateX`` → ``tclOriginalCoordinateX``).
"""

from __future__ import annotations

import logging
import re
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import starfile

from . import TomoclustError
from .evaluate import truth_by_index  # noqa: F401  (re-exported)
from .extract import ResamplePlan, boxes_in_bounds, plan_resampling, resample_boxes
from .io import (
    StackWriter,
    open_mrc,
    optics_table,
    particle_table,
    read_star_blocks,
    write_star,
    xyz_to_zyx,
)
from .starhead import has_class_numbers, particle_labels, star_labels  # noqa: F401

log = logging.getLogger(__name__)

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


def _row(i: int) -> str:
    return f"row {i + 1}"


def _numeric(df: pd.DataFrame, cols: Sequence[str], where: str) -> np.ndarray:
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
            raise TomoclustError(f"{where}, {_row(i)}: {c} is {df[c].iloc[i]!r}, not a finite "
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
        raise TomoclustError(f"{source}, {_row(i)}: {col} {unknown[0]!r} matches no tomogram of "
                             f"the sheet (names {shown}; matching: exact name, or the value "
                             "without directory and extension equal to a name or a tomogram "
                             "file's stem); "
                             f"{len(unknown)} unknown name(s) in all: {unknown[:5]}")
    target = np.array([mapping[v] for v in vals], dtype=object)
    return {n: df[target == n].copy() for n in names}


# ------------------------------------------------------------------------------ mode 1
@dataclass
class CoordinateImport:
    particles: pd.DataFrame  # particle_table rows, extra columns carried through
    skipped: pd.DataFrame  # source, row, reason, x/y/z (voxels of the ingested tomogram)
    info: dict = field(default_factory=dict)


SKIPPED_COLUMNS = ["source", "row", "reason", "x", "y", "z", "convention"]


def detect_convention(columns: Iterable[str]) -> str:
    """``relion5`` (centred Å), ``pytom`` / ``tomotwin`` / ``voxels`` (rlnCoordinate in
    voxels), or raise when the coordinate columns are missing or incomplete."""
    cols = set(columns)
    if cols >= set(CENTRED):
        return "relion5"
    if cols >= set(COORDS):
        if cols >= set(PYTOM_COLUMNS):
            return "pytom"
        if cols == set(COORDS):
            return "tomotwin"
        return "voxels"
    have = sorted(cols & (set(COORDS) | set(CENTRED)))
    need = [c for c in COORDS if c not in cols] if any(c in cols for c in COORDS) else \
        [c for c in CENTRED if c not in cols] if any(c in cols for c in CENTRED) else list(COORDS)
    raise TomoclustError(f"missing coordinate column(s) {need} (found {have or 'none'}; need "
                         f"{list(COORDS)} in voxels or {list(CENTRED)})")


def coordinate_voxel_size(df: pd.DataFrame, optics: pd.DataFrame | None, where: str,
                          explicit: float | None) -> tuple[np.ndarray, str]:
    """Voxel size (Å) of ``rlnCoordinate*`` per row and where it came from (see module doc)."""
    n = len(df)
    if explicit is not None:
        if not (np.isfinite(explicit) and explicit > 0):
            raise TomoclustError(f"{where}: coordinates_voxel_size {explicit} must be > 0")
        return np.full(n, float(explicit)), "configuration"
    if "rlnDetectorPixelSize" in df.columns:
        dps = _numeric(df, ["rlnDetectorPixelSize"], where)[:, 0]
        if "rlnMagnification" in df.columns:
            mag = _numeric(df, ["rlnMagnification"], where)[:, 0]
            vs, src = dps * 1e4 / np.where(mag > 0, mag, np.nan), \
                "rlnDetectorPixelSize/rlnMagnification"
        else:
            vs, src = dps, "rlnDetectorPixelSize"
        bad = np.flatnonzero(~(vs > 0))
        if len(bad):
            raise TomoclustError(f"{where}, {_row(int(bad[0]))}: {src} gives voxel size "
                                 f"{vs[bad[0]]}, not > 0")
        return vs, src
    if optics is not None and "rlnTomoTiltSeriesPixelSize" in optics.columns:
        table = optics.set_index(optics["rlnOpticsGroup"].astype(int)) \
            if "rlnOpticsGroup" in optics.columns else None
        if table is not None and "rlnOpticsGroup" in df.columns:
            groups = _numeric(df, ["rlnOpticsGroup"], where)[:, 0].astype(int)
            missing = sorted(set(groups) - set(table.index))
            if missing:
                i = int(np.flatnonzero(groups == missing[0])[0])
                raise TomoclustError(f"{where}, {_row(i)}: optics group {missing[0]} is not in "
                                     "the optics block")
            vs = table.loc[groups, "rlnTomoTiltSeriesPixelSize"].to_numpy(dtype=np.float64)
        elif len(optics) == 1:
            vs = np.full(n, float(optics["rlnTomoTiltSeriesPixelSize"].iloc[0]))
        else:
            raise TomoclustError(f"{where}: several optics groups but no rlnOpticsGroup column")
        return vs, "optics rlnTomoTiltSeriesPixelSize (RELION 4: unbinned tilt-series pixels)"
    raise TomoclustError(
        f"{where}: coordinates are in voxels (rlnCoordinateX/Y/Z) but their voxel size is not "
        "stated (no rlnDetectorPixelSize column, no optics rlnTomoTiltSeriesPixelSize); set "
        "'coordinates_voxel_size' (Å, the voxel size of the tomogram the picks were made on) in "
        "the sheet or in the config's 'external' section")


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


def import_coordinates(
    sources: Sequence[tuple[str, pd.DataFrame, pd.DataFrame | None]],
    tomo: str,
    *,
    shape_in_zyx: Sequence[int],
    voxel_size_in: float,
    shape_zyx: Sequence[int],
    voxel_size: float,
    plan: ResamplePlan,
    coordinates_voxel_size: float | None = None,
    sheet_names: Sequence[str] | None = None,
    sheet_paths: Sequence[str] | None = None,
) -> CoordinateImport:
    """Convert coordinate tables of one tomogram to a tomoclust particle table.

    Parameters
    ----------
    sources
        ``(label, particle block, optics block or None)`` per STAR file (label for messages
        and the ``tclSourceStar`` column).
    shape_in_zyx, voxel_size_in
        The tomogram of the sheet (before ingest): size and voxel size.
    shape_zyx, voxel_size
        The ingested tomogram the particles are extracted from.
    plan
        Extraction plan: rows whose ``plan.box_in`` box crosses a face are skipped.
    coordinates_voxel_size
        Voxel size (Å) of ``rlnCoordinate*`` when given by the user.
    sheet_names, sheet_paths
        When given, rows naming another tomogram (``rlnTomoName`` / ``rlnMicrographName``)
        are an error.
    """
    shape_in = np.asarray(shape_in_zyx[::-1], dtype=np.float64)  # x, y, z
    tables, skipped, info = [], [], {"tomogram": tomo, "sources": []}
    for label, df, optics in sources:
        where = f"coordinates {label}"
        df = df.reset_index(drop=True)
        if len(df) == 0:
            info["sources"].append({"file": label, "rows": 0})
            continue
        try:
            conv = detect_convention(df.columns)
        except TomoclustError as exc:
            raise TomoclustError(f"{where}: {exc}") from None
        col = name_column(df)
        if col is not None and sheet_names is not None:
            vals = df[col].astype(str).str.strip().to_numpy()
            mapping = match_names(vals, sheet_names, sheet_paths)
            # a row naming another tomogram of the sheet, or rows naming several unknown
            # tomograms, are errors; one unknown name (e.g. the file a picker ran on) is logged
            other = [v for v, n in mapping.items() if n is not None and n != tomo]
            unknown = [v for v, n in mapping.items() if n is None]
            bad = other[:1] or (unknown[1:2] if len(unknown) > 1 else [])
            if bad:
                i = int(np.flatnonzero(vals == bad[0])[0])
                raise TomoclustError(f"{where}, {_row(i)}: {col} {bad[0]!r} is not tomogram "
                                     f"{tomo!r}, which this file is given for (names in the "
                                     f"file: {list(mapping)[:5]})")
            if unknown:
                log.warning("%s: %s %r matches no sheet name; its rows are taken as tomogram %s "
                            "because the sheet gives this file for it", where, col, unknown[0],
                            tomo)
        if conv == "relion5":
            cen = _numeric(df, CENTRED, where)
            phys = cen + (shape_in / 2.0) * voxel_size_in
            src = f"centred Å, centre = size/2 of {tuple(int(s) for s in shape_in)} voxels at " \
                  f"{voxel_size_in:.4g} Å"
        else:
            xyz = _numeric(df, COORDS, where)
            vs, src = coordinate_voxel_size(df, optics, where, coordinates_voxel_size)
            phys = xyz * vs[:, None]
            src = f"voxels at {np.unique(np.round(vs, 4)).tolist()} Å (from {src})"
        applied: tuple[str, ...] = ()
        if set(ORIGINS) <= set(df.columns):  # refined particles: centre = position - origin
            phys = phys - _numeric(df, ORIGINS, where)
            applied = ORIGINS  # kept as tclOriginalOrigin*: not to be applied twice
            src += "; rlnOriginX/Y/ZAngst subtracted"
        elif any(c in df.columns for c in ("rlnOriginX", "rlnOriginY", "rlnOriginZ")):
            log.warning("%s: rlnOriginX/Y/Z (pixels of an unstated size) are not applied; "
                        "only rlnOriginX/Y/ZAngst are", where)
        vox = phys / float(voxel_size)  # x, y, z voxels of the ingested tomogram
        zyx = xyz_to_zyx(vox)
        r = np.round(zyx)
        inside = np.all((r >= 0) & (r < np.asarray(shape_zyx)), axis=1)
        fits = boxes_in_bounds(zyx, tuple(shape_zyx), plan.box_in)
        reason = np.where(~inside, "outside the tomogram",
                          np.where(~fits, f"closer than {(plan.box_in + 1) // 2} voxels to a "
                                   "face (box crosses it)", ""))
        for i in np.flatnonzero(reason != ""):
            skipped.append((label, i + 1, reason[i], *vox[i], conv))
        keep = reason == ""
        n_out, n_edge = int((~inside).sum()), int((inside & ~fits).sum())
        if n_out or n_edge:
            log.warning("%s: %d of %d rows outside tomogram %s and %d too close to a face for a "
                        "%d-voxel box: skipped, not shifted (listed in the skipped table)",
                        where, n_out, len(df), tomo, n_edge, plan.box_in)
        log.info("%s: %s convention, %s; %d rows kept", where, conv, src, int(keep.sum()))
        info["sources"].append({"file": label, "rows": len(df), "convention": conv,
                                "conversion": src, "kept": int(keep.sum()),
                                "outside": n_out, "edge": n_edge})
        angles = _numeric(df, ANGLES, where)[keep] if set(ANGLES) <= set(df.columns) else None
        extra = carry_columns(df[keep], drop=ANGLES if angles is not None else (),
                              rename=applied)
        if col == "rlnTomoName":  # the sheet's name replaces it; keep a differing original
            same = df.loc[keep, col].astype(str).str.strip().eq(tomo).all()
            if same:
                extra.pop(original_name("rlnTomoName"), None)
        extra["tclSourceStar"] = np.full(int(keep.sum()), label, dtype=object)
        extra["tclSourceRow"] = np.flatnonzero(keep) + 1
        extra["tclCoordinateConvention"] = np.full(int(keep.sum()), conv, dtype=object)
        tables.append(particle_table(tomo, vox[keep], tuple(shape_zyx), voxel_size,
                                     angles=angles, extra=extra))
    cols = ["rlnTomoName", *COORDS, *CENTRED]
    particles = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(columns=cols)
    skipped_df = pd.DataFrame(skipped, columns=SKIPPED_COLUMNS)
    info.update(n_particles=len(particles), n_skipped=len(skipped_df))
    return CoordinateImport(particles, skipped_df, info)


# ------------------------------------------------------------------------------ mode 2
_IMAGE = re.compile(r"^\s*(?:(\d+)\s*@\s*)?(.+?)\s*$")


def parse_image_name(value: object, where: str) -> tuple[str, int | None]:
    """``'N@path'`` → ``(path, N)`` (1-based), ``'path'`` → ``(path, None)``."""
    m = _IMAGE.match(str(value)) if isinstance(value, str) else None
    if m is None or not m.group(2):
        raise TomoclustError(f"{where}: rlnImageName {value!r} is neither 'file.mrc' nor "
                             "'N@stack.mrcs'")
    idx = m.group(1)
    return m.group(2), (int(idx) if idx is not None else None)


@dataclass
class _Volumes:
    """An opened subtomogram file: a single volume or a stack of cubic volumes."""
    path: Path
    data: np.ndarray  # (n, b, b, b) view
    header_voxel_size: float | None
    mrc: object


def _open_volumes(path: Path, where: str) -> _Volumes:
    mrc = open_mrc(path, "subtomogram file")
    data = mrc.data
    if data is None or data.ndim not in (3, 4):
        shape = None if data is None else data.shape
        mrc.close()
        raise TomoclustError(f"{where}: {path} holds data of shape {shape}, not 3D volumes")
    if data.ndim == 3:
        z, y, x = data.shape
        if y != x:
            mrc.close()
            raise TomoclustError(f"{where}: {path} is {x}x{y}x{z} voxels, not a cube")
        if z == x:
            data = data[None]
        elif z % x == 0:  # volumes stacked along z without the volume-stack space group
            data = data.reshape(z // x, x, x, x)
        else:
            mrc.close()
            raise TomoclustError(f"{where}: {path} is {x}x{y}x{z} voxels: neither a cubic "
                                 "subtomogram nor a stack of them (2D-stack pseudo-subtomograms "
                                 "of RELION 5 are not supported: extract 3D subtomograms)")
    elif not (data.shape[1] == data.shape[2] == data.shape[3]):
        mrc.close()
        raise TomoclustError(f"{where}: {path} holds volumes of shape {data.shape[1:]}, not "
                             "cubes")
    vs = mrc.voxel_size
    sizes = np.array([float(vs.x), float(vs.y), float(vs.z)])
    hv = float(sizes[0]) if np.all(np.isfinite(sizes)) and np.all(sizes > 0) else None
    return _Volumes(path, data, hv, mrc)


def _optics_voxel_size(optics: pd.DataFrame | None, df: pd.DataFrame, where: str
                       ) -> tuple[np.ndarray, str] | None:
    if optics is None or not len(optics):
        return None
    if "rlnImagePixelSize" in optics.columns:
        col, vals = "rlnImagePixelSize", optics["rlnImagePixelSize"].to_numpy(dtype=np.float64)
    elif {"rlnTomoTiltSeriesPixelSize", "rlnTomoSubtomogramBinning"} <= set(optics.columns):
        col = "rlnTomoTiltSeriesPixelSize × rlnTomoSubtomogramBinning"
        vals = (optics["rlnTomoTiltSeriesPixelSize"].to_numpy(dtype=np.float64)
                * optics["rlnTomoSubtomogramBinning"].to_numpy(dtype=np.float64))
    else:
        return None
    if len(optics) == 1:
        return np.full(len(df), vals[0]), f"optics {col}"
    if "rlnOpticsGroup" not in df.columns or "rlnOpticsGroup" not in optics.columns:
        raise TomoclustError(f"{where}: several optics groups but no rlnOpticsGroup column")
    lut = dict(zip(optics["rlnOpticsGroup"].astype(int), vals, strict=True))
    groups = _numeric(df, ["rlnOpticsGroup"], where)[:, 0].astype(int)
    for i, g in enumerate(groups):
        if g not in lut:
            raise TomoclustError(f"{where}, {_row(i)}: optics group {g} is not in the optics "
                                 "block")
    return np.array([lut[g] for g in groups]), f"optics {col}"


def import_subtomograms(star: str | Path, out_star: str | Path, out_stack: str | Path, *,
                        voxel_size: float, box: int, normalise: bool = True,
                        image_root: str | Path | None = None,
                        voxel_size_override: float | None = None,
                        batch: int = 256, workers: int = 1) -> dict:
    """Mode 2: resample every subtomogram a particle STAR names into one stack and table.

    Writes ``out_stack`` (``(n, box, box, box)`` at ``voxel_size``) and ``out_star``
    (optics + particles blocks, rows aligned with the stack, as the gather step writes them:
    ``rlnImageName`` ``i@<stack>``, ``tclStackIndex``), with the input's columns carried
    through. Returns a summary. Raises :class:`TomoclustError` naming the row for: a missing
    ``rlnImageName`` column, an unreadable or missing file, a stack index out of range, a
    volume that is not a cube, an unknown voxel size, or an input box too small for the
    working box.
    """
    star = Path(star)
    df, optics, block = read_particles(star, "particle STAR")
    where = f"particle STAR {star} ({block})"
    if "rlnImageName" not in df.columns:
        raise TomoclustError(f"{where}: missing column 'rlnImageName'; found {list(df.columns)}")
    if len(df) == 0:
        raise TomoclustError(f"{where}: has no particles")
    if "general" in star_labels(star):  # RELION 5 writes data_general before data_optics
        general = starfile.read(star, always_dict=True).get("general")
        flag = general.get("rlnTomoSubTomosAre2DStacks") if isinstance(general, Mapping) else None
        if flag is not None and str(flag).strip() not in ("0", "0.0", "False"):
            raise TomoclustError(f"{where}: rlnTomoSubTomosAre2DStacks is {flag}: RELION 5 "
                                 "2D-stack pseudo-subtomograms are not supported; extract 3D "
                                 "subtomograms (Extract job, 'Write output as 2D stacks?' No)")
    root = Path(image_root) if image_root else star.parent
    parsed = [parse_image_name(v, f"{where}, {_row(i)}") for i, v in
              enumerate(df["rlnImageName"])]
    meta: dict[Path, tuple[int, int, float | None]] = {}  # volumes, box, header voxel size
    cache: OrderedDict[Path, _Volumes] = OrderedDict()  # a few open files, not thousands

    def volumes(p: Path, i: int) -> _Volumes:
        if p in cache:
            cache.move_to_end(p)
            return cache[p]
        try:
            v = _open_volumes(p, f"{where}, {_row(i)}")
        except TomoclustError as exc:
            msg = str(exc)
            raise TomoclustError(msg if msg.startswith(where) else f"{where}, {_row(i)}: {msg}"
                                 ) from None
        cache[p] = v
        if len(cache) > 16:
            cache.popitem(last=False)[1].mrc.close()
        return v
    try:
        files, index = [], np.zeros(len(df), dtype=np.int64)
        for i, (name, idx) in enumerate(parsed):
            p = Path(name)
            p = p if p.is_absolute() else root / p
            if p not in meta:
                if not p.is_file():
                    hint = ""
                    if not image_root:
                        hint = ("; relative names are resolved against the STAR file's "
                                "directory unless 'external.image_root' is set")
                        if Path(name).is_file():
                            hint += (f" ({name} exists relative to the current directory, "
                                     "as in a RELION project: set 'external.image_root' to it)")
                    raise TomoclustError(f"{where}, {_row(i)}: image file {p} (from "
                                         f"rlnImageName {df['rlnImageName'].iloc[i]!r}) does not "
                                         f"exist{hint}")
                v = volumes(p, i)
                meta[p] = (v.data.shape[0], v.data.shape[-1], v.header_voxel_size)
            n_in = meta[p][0]
            if idx is None:
                if n_in != 1:
                    raise TomoclustError(f"{where}, {_row(i)}: {p} holds {n_in} volumes; name "
                                         "one as 'N@file'")
                idx = 1
            if not 1 <= idx <= n_in:
                raise TomoclustError(f"{where}, {_row(i)}: index {idx} out of range: {p} holds "
                                     f"{n_in} volume(s) (indices are 1-based)")
            files.append(p)
            index[i] = idx - 1
        # voxel size per particle
        if voxel_size_override is not None:
            vs, vs_src = np.full(len(df), float(voxel_size_override)), "configuration"
        else:
            got = _optics_voxel_size(optics, df, where)
            if got is None:
                col = next((c for c in ("rlnImagePixelSize", "rlnPixelSize") if c in df.columns),
                           None)
                if col is not None:
                    got = _numeric(df, [col], where)[:, 0], col
                elif "rlnDetectorPixelSize" in df.columns:  # Warp 1 / RELION 3.0 style
                    dps = _numeric(df, ["rlnDetectorPixelSize"], where)[:, 0]
                    if "rlnMagnification" in df.columns:
                        mag = _numeric(df, ["rlnMagnification"], where)[:, 0]
                        got = dps * 1e4 / mag, "rlnDetectorPixelSize/rlnMagnification"
                    else:
                        got = dps, "rlnDetectorPixelSize"
            if got is None:
                hv = [meta[f][2] for f in files]
                miss = [i for i, v in enumerate(hv) if v is None]
                if miss:
                    raise TomoclustError(
                        f"{where}, {_row(miss[0])}: no voxel size (no optics rlnImagePixelSize, "
                        f"no pixel-size column, and {files[miss[0]]} has none in its header); "
                        "set 'external.subtomograms_voxel_size'")
                got = np.array(hv, dtype=np.float64), "MRC header"
            vs, vs_src = got
        bad = np.flatnonzero(~(np.isfinite(vs) & (vs > 0)))
        if len(bad):
            raise TomoclustError(f"{where}, {_row(int(bad[0]))}: voxel size {vs[bad[0]]} "
                                 f"({vs_src}) is not > 0")
        boxes = np.array([meta[f][1] for f in files])
        # one resampling plan per (voxel size, box) group
        groups: dict[tuple[float, int], list[int]] = {}
        for i in range(len(df)):
            groups.setdefault((round(float(vs[i]), 4), int(boxes[i])), []).append(i)
        plans: dict[tuple[float, int], ResamplePlan] = {}
        for (v, b), rows in groups.items():
            plan = plan_resampling(v, float(voxel_size), int(box))
            if plan.box_in > b:
                raise TomoclustError(
                    f"{where}, {_row(rows[0])}: the subtomogram is {b} voxels at {v:.4g} Å "
                    f"({b * v:.0f} Å) but the working box of {box} voxels at {voxel_size:.4g} Å "
                    f"needs {plan.box_in} input voxels ({plan.box_in * v:.0f} Å); lower "
                    f"extraction.box or re-extract larger subtomograms ({len(rows)} such rows)")
            if abs(plan.voxel_size_out - voxel_size) > 1e-3 * voxel_size:
                raise TomoclustError(
                    f"{where}, {_row(rows[0])}: {v:.4g} Å cannot be resampled to exactly "
                    f"{voxel_size:.4g} Å with a box of {box} (closest {plan.voxel_size_out:.5g} "
                    "Å); choose another extraction.voxel_size or box")
            plans[(v, b)] = plan
        for (v, b), rows in sorted(groups.items()):
            log.info("%d subtomograms of %d voxels at %.4g Å (%s) -> %d at %.4g Å", len(rows), b,
                     v, vs_src, box, plans[(v, b)].voxel_size_out)
        # resample group by group, batch by batch, straight into the output stack
        name = Path(out_stack).name
        with StackWriter(out_stack, len(df), int(box), float(voxel_size)) as w:
            for key, rows in groups.items():
                plan = plans[key]
                b, k = key[1], plan.box_in
                lo = b // 2 - k // 2
                for a in range(0, len(rows), batch):
                    chunk = rows[a:a + batch]
                    raw = np.empty((len(chunk), k, k, k), dtype=np.float32)
                    for j, i in enumerate(chunk):
                        raw[j] = volumes(files[i], i).data[index[i], lo:lo + k, lo:lo + k,
                                                           lo:lo + k]
                    bad = ~np.isfinite(raw).reshape(len(chunk), -1).all(axis=1)
                    if bad.any():
                        i = chunk[int(np.flatnonzero(bad)[0])]
                        raise TomoclustError(f"{where}, {_row(i)}: the subtomogram has NaN or "
                                             "infinite voxels")
                    out = resample_boxes(raw, plan, normalise=normalise, workers=workers)
                    for j, i in enumerate(chunk):
                        w[i] = out[j]
    finally:
        for v in cache.values():
            v.mrc.close()
    table = pd.DataFrame(carry_columns(df))
    table.insert(0, "rlnImageName", [f"{i + 1}@{name}" for i in range(len(df))])
    table["tclStackIndex"] = np.arange(len(df))
    table["rlnOpticsGroup"] = 1
    table["tclOriginalVoxelSize"] = vs
    table["tclOriginalBox"] = boxes
    tomo_vs = float(voxel_size)
    if optics is not None and "rlnTomoTiltSeriesPixelSize" in optics.columns:
        tomo_vs = float(optics["rlnTomoTiltSeriesPixelSize"].iloc[0])
    write_star(out_star, {"optics": optics_table(tomo_vs, float(voxel_size), int(box)),
                          "particles": table})
    info = {"star": str(star), "n_particles": len(df), "n_files": len(meta),
            "voxel_size_source": vs_src,
            "groups": [{"voxel_size_in": v, "box_in": b, "n": len(r),
                        "cut": plans[(v, b)].box_in, "fourier": plans[(v, b)].n_fourier}
                       for (v, b), r in sorted(groups.items())],
            "voxel_size_out": float(voxel_size), "box_out": int(box),
            "has_class_numbers": "rlnClassNumber" in df.columns}
    return info


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
        raise TomoclustError(f"particle {_row(i)}: class number {particles[column].iloc[i]!r} "
                             "is not a non-negative integer")
    out = pd.DataFrame({"tclStackIndex": particles["tclStackIndex"].to_numpy(dtype=np.int64),
                        "rlnClassNumber": np.nan_to_num(cls, nan=0.0).astype(np.int64)})
    for c in ("rlnTomoName", "rlnImageName", "rlnImageOriginalName"):
        if c in particles.columns:
            out[c] = particles[c].to_numpy()
    return out
