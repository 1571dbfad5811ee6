"""Particle coordinates from other tools (picking skipped for those tomograms).

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
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from .. import TomoclustError
from ..extract import ResamplePlan, boxes_in_bounds
from ..formats.star import particle_table, xyz_to_zyx
from .names import (
    ANGLES,
    CENTRED,
    COORDS,
    ORIGINS,
    PYTOM_COLUMNS,
    carry_columns,
    match_names,
    name_column,
    numeric_columns,
    original_name,
    row_label,
)

log = logging.getLogger(__name__)

SKIPPED_COLUMNS = ["source", "row", "reason", "x", "y", "z", "convention"]


# ------------------------------------------------------------------------------ mode 1
@dataclass
class CoordinateImport:
    particles: pd.DataFrame  # particle_table rows, extra columns carried through
    skipped: pd.DataFrame  # source, row, reason, x/y/z (voxels of the ingested tomogram)
    info: dict = field(default_factory=dict)


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
        dps = numeric_columns(df, ["rlnDetectorPixelSize"], where)[:, 0]
        if "rlnMagnification" in df.columns:
            mag = numeric_columns(df, ["rlnMagnification"], where)[:, 0]
            vs, src = dps * 1e4 / np.where(mag > 0, mag, np.nan), \
                "rlnDetectorPixelSize/rlnMagnification"
        else:
            vs, src = dps, "rlnDetectorPixelSize"
        bad = np.flatnonzero(~(vs > 0))
        if len(bad):
            raise TomoclustError(f"{where}, {row_label(int(bad[0]))}: {src} gives voxel size "
                                 f"{vs[bad[0]]}, not > 0")
        return vs, src
    if optics is not None and "rlnTomoTiltSeriesPixelSize" in optics.columns:
        table = optics.set_index(optics["rlnOpticsGroup"].astype(int)) \
            if "rlnOpticsGroup" in optics.columns else None
        if table is not None and "rlnOpticsGroup" in df.columns:
            groups = numeric_columns(df, ["rlnOpticsGroup"], where)[:, 0].astype(int)
            missing = sorted(set(groups) - set(table.index))
            if missing:
                i = int(np.flatnonzero(groups == missing[0])[0])
                raise TomoclustError(f"{where}, {row_label(i)}: optics group {missing[0]} is not "
                                     "in the optics block")
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
            _check_tomogram_names(df, col, tomo, sheet_names, sheet_paths, where)
        phys, src, applied = _physical_positions(df, optics, conv, shape_in, voxel_size_in,
                                                 coordinates_voxel_size, where)
        vox = phys / float(voxel_size)  # x, y, z voxels of the ingested tomogram
        reason, n_out, n_edge = _skip_reasons(vox, shape_zyx, plan)
        for i in np.flatnonzero(reason != ""):
            skipped.append((label, i + 1, reason[i], *vox[i], conv))
        keep = reason == ""
        if n_out or n_edge:
            log.warning("%s: %d of %d rows outside tomogram %s and %d too close to a face for a "
                        "%d-voxel box: skipped, not shifted (listed in the skipped table)",
                        where, n_out, len(df), tomo, n_edge, plan.box_in)
        log.info("%s: %s convention, %s; %d rows kept", where, conv, src, int(keep.sum()))
        info["sources"].append({"file": label, "rows": len(df), "convention": conv,
                                "conversion": src, "kept": int(keep.sum()),
                                "outside": n_out, "edge": n_edge})
        tables.append(_kept_rows(df, keep, vox, col, applied, label, conv, tomo, shape_zyx,
                                 voxel_size, where))
    cols = ["rlnTomoName", *COORDS, *CENTRED]
    particles = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(columns=cols)
    skipped_df = pd.DataFrame(skipped, columns=SKIPPED_COLUMNS)
    info.update(n_particles=len(particles), n_skipped=len(skipped_df))
    return CoordinateImport(particles, skipped_df, info)


# ------------------------------------------------------------ steps of import_coordinates
def _check_tomogram_names(df: pd.DataFrame, col: str, tomo: str, sheet_names: Sequence[str],
                          sheet_paths: Sequence[str] | None, where: str) -> None:
    """A row naming another tomogram of the sheet, or rows naming several unknown
    tomograms, are errors; one unknown name (e.g. the file a picker ran on) is logged."""
    vals = df[col].astype(str).str.strip().to_numpy()
    mapping = match_names(vals, sheet_names, sheet_paths)
    other = [v for v, n in mapping.items() if n is not None and n != tomo]
    unknown = [v for v, n in mapping.items() if n is None]
    bad = other[:1] or (unknown[1:2] if len(unknown) > 1 else [])
    if bad:
        i = int(np.flatnonzero(vals == bad[0])[0])
        raise TomoclustError(f"{where}, {row_label(i)}: {col} {bad[0]!r} is not tomogram "
                             f"{tomo!r}, which this file is given for (names in the "
                             f"file: {list(mapping)[:5]})")
    if unknown:
        log.warning("%s: %s %r matches no sheet name; its rows are taken as tomogram %s "
                    "because the sheet gives this file for it", where, col, unknown[0], tomo)


def _physical_positions(df: pd.DataFrame, optics: pd.DataFrame | None, conv: str,
                        shape_in: np.ndarray, voxel_size_in: float,
                        coordinates_voxel_size: float | None, where: str
                        ) -> tuple[np.ndarray, str, tuple[str, ...]]:
    """Positions (x, y, z Å from the first voxel's centre of the sheet's tomogram), how they
    were converted, and the origin columns applied (refined particles: centre = position -
    origin)."""
    if conv == "relion5":
        cen = numeric_columns(df, CENTRED, where)
        phys = cen + (shape_in / 2.0) * voxel_size_in
        src = f"centred Å, centre = size/2 of {tuple(int(s) for s in shape_in)} voxels at " \
              f"{voxel_size_in:.4g} Å"
    else:
        xyz = numeric_columns(df, COORDS, where)
        vs, src = coordinate_voxel_size(df, optics, where, coordinates_voxel_size)
        phys = xyz * vs[:, None]
        src = f"voxels at {np.unique(np.round(vs, 4)).tolist()} Å (from {src})"
    applied: tuple[str, ...] = ()
    if set(ORIGINS) <= set(df.columns):
        phys = phys - numeric_columns(df, ORIGINS, where)
        applied = ORIGINS  # kept as tclOriginalOrigin*: not to be applied twice
        src += "; rlnOriginX/Y/ZAngst subtracted"
    elif any(c in df.columns for c in ("rlnOriginX", "rlnOriginY", "rlnOriginZ")):
        log.warning("%s: rlnOriginX/Y/Z (pixels of an unstated size) are not applied; "
                    "only rlnOriginX/Y/ZAngst are", where)
    return phys, src, applied


def _skip_reasons(vox: np.ndarray, shape_zyx: Sequence[int], plan: ResamplePlan
                  ) -> tuple[np.ndarray, int, int]:
    """Why each row (x, y, z voxels of the ingested tomogram) is skipped ("" when kept):
    outside the tomogram, or too close to a face for a whole box; and how many of each."""
    zyx = xyz_to_zyx(vox)
    r = np.round(zyx)
    inside = np.all((r >= 0) & (r < np.asarray(shape_zyx)), axis=1)
    fits = boxes_in_bounds(zyx, tuple(shape_zyx), plan.box_in)
    reason = np.where(~inside, "outside the tomogram",
                      np.where(~fits, f"closer than {(plan.box_in + 1) // 2} voxels to a "
                               "face (box crosses it)", ""))
    return reason, int((~inside).sum()), int((inside & ~fits).sum())


def _kept_rows(df: pd.DataFrame, keep: np.ndarray, vox: np.ndarray, col: str | None,
               applied: tuple[str, ...], label: str, conv: str, tomo: str,
               shape_zyx: Sequence[int], voxel_size: float, where: str) -> pd.DataFrame:
    """The particle table of the kept rows of one source, its other columns carried through
    with where each row came from."""
    angles = (numeric_columns(df, ANGLES, where)[keep] if set(ANGLES) <= set(df.columns)
              else None)
    extra = carry_columns(df[keep], drop=ANGLES if angles is not None else (), rename=applied)
    if col == "rlnTomoName":  # the sheet's name replaces it; keep a differing original
        same = df.loc[keep, col].astype(str).str.strip().eq(tomo).all()
        if same:
            extra.pop(original_name("rlnTomoName"), None)
    extra["tclSourceStar"] = np.full(int(keep.sum()), label, dtype=object)
    extra["tclSourceRow"] = np.flatnonzero(keep) + 1
    extra["tclCoordinateConvention"] = np.full(int(keep.sum()), conv, dtype=object)
    return particle_table(tomo, vox[keep], tuple(shape_zyx), voxel_size, angles=angles,
                          extra=extra)
