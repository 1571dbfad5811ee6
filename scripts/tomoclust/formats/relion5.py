"""RELION 5 export: per method and class, a particles.star and a tomograms.star that RELION 5's
tomography programs read.

The centre convention is RELION 5.0.1's (``src/jaz/tomography/tomogram_set.cpp``,
``TomogramSet::loadTomogram``: ``centre = (rlnTomoSizeX / 2.0, rlnTomoSizeY / 2.0,
rlnTomoSizeZ / 2.0)``, float division, in unbinned tilt-series pixels; and
``particle_set.cpp``, ``ParticleSet::getParticleCoordDecenteredPixel``: pixel position =
``rlnCenteredCoordinate*Angst / rlnTomoTiltSeriesPixelSize + centre``). So a particle's
centred coordinate is its distance in Å from the first voxel's centre minus half the
tomogram's physical extent (``size · pixel size / 2``), for odd sizes too: an axis of 401
voxels has its centre at 200.5 voxels.

The physical extent is that of the tomogram in the sheet (its original size and voxel size,
``ingest.json``), not of the working copy, which Fourier binning may trim at the high end:
the export puts particles where RELION's reconstruction of the same tilt series has them.

What this workflow can and cannot know:

- ``rlnTomoTiltSeriesPixelSize`` is the unbinned tilt series' pixel size. Tomograms carry
  only their own voxel size, so it is ``relion.tilt_series_pixel_size`` when given;
  otherwise the sheet tomogram's voxel size (binning 1), which gives the same centred Å
  coordinates and tomogram centres. Give the real one before importing into a RELION project.
- ``rlnTomoSizeX/Y/Z`` are the sheet tomogram's size × its binning (voxel size / tilt-series
  pixel size), which must be a whole number.
- RELION reconstructs subtomograms from the tilt series (``rlnTomoTiltSeriesStarFile``:
  per-tilt images, alignments, CTF, dose), which a tomogram does not carry. Given the RELION
  project's own tomograms.star (``relion.tomograms_star``), its rows are copied (checked
  against the sheet's sizes); without it the tomograms.star describes each tomogram (name,
  size, pixel size, binning, optics, hand, reconstructed tomogram path) and RELION's
  subtomogram reconstruction needs the tilt series added to it.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .. import TomoclustError
from .atomic import write_text
from .star import read_star_blocks, write_star

log = logging.getLogger(__name__)

CENTRED = [f"rlnCenteredCoordinate{a}Angst" for a in "XYZ"]


@dataclass(frozen=True)
class SourceTomogram:
    """A tomogram as the user gave it (before ingest) and its working copy."""

    name: str
    path: str
    shape_xyz: tuple[int, int, int]  # the sheet tomogram's voxels
    voxel_size: float  # Å, the sheet tomogram's
    working_voxel_size: float  # Å, the voxels rlnCoordinateX/Y/Z count


def tomogram_centre_angst(shape_xyz: Sequence[int], voxel_size: float) -> np.ndarray:
    """RELION 5's tomogram centre in Å from the first voxel's centre: ``size / 2.0`` voxels
    (float division; 200.5 for 401 voxels)."""
    return np.asarray(shape_xyz, dtype=np.float64) / 2.0 * float(voxel_size)


def centred_angst(position_angst: np.ndarray, tomo: SourceTomogram) -> np.ndarray:
    """Centred Å coordinates of positions given in Å from the first voxel's centre."""
    return np.asarray(position_angst, np.float64) - tomogram_centre_angst(tomo.shape_xyz,
                                                                          tomo.voxel_size)


def position_angst(centred: np.ndarray, tomo: SourceTomogram) -> np.ndarray:
    """The inverse of :func:`centred_angst`."""
    return np.asarray(centred, np.float64) + tomogram_centre_angst(tomo.shape_xyz,
                                                                   tomo.voxel_size)


def binning(tomo: SourceTomogram, tilt_series_pixel_size: float | None) -> float:
    """The tomogram's binning relative to the tilt series (1 when the pixel size is unknown);
    the size in tilt-series pixels must be whole."""
    ps = tomo.voxel_size if tilt_series_pixel_size is None else float(tilt_series_pixel_size)
    if not ps > 0:
        raise TomoclustError(f"relion.tilt_series_pixel_size must be > 0, got {ps}")
    b = tomo.voxel_size / ps
    size = np.asarray(tomo.shape_xyz, np.float64) * b
    if b < 1 - 1e-6 or np.any(np.abs(size - np.round(size)) > 1e-3 * b):
        raise TomoclustError(
            f"tomogram {tomo.name} ({tomo.path}): voxel size {tomo.voxel_size:g} Å is not a "
            f"binning of the tilt-series pixel size {ps:g} Å (size {tuple(tomo.shape_xyz)} "
            f"voxels would be {tuple(np.round(size, 3))} tilt-series pixels); set "
            f"relion.tilt_series_pixel_size to the unbinned tilt series' pixel size")
    return float(b)


def tomograms_table(tomos: Sequence[SourceTomogram], tilt_series_pixel_size: float | None,
                    optics: Mapping[str, float], hand: float = -1.0,
                    project: pd.DataFrame | None = None) -> pd.DataFrame:
    """The ``global`` block of a RELION 5 tomograms.star for ``tomos``.

    Without ``project``: one row per tomogram with ``rlnTomoName``, ``rlnVoltage``,
    ``rlnSphericalAberration``, ``rlnAmplitudeContrast``, ``rlnTomoHand``,
    ``rlnTomoTiltSeriesPixelSize``, ``rlnTomoSizeX/Y/Z`` (tilt-series pixels),
    ``rlnTomoTomogramBinning`` and ``rlnTomoReconstructedTomogram`` (the sheet's file).
    With ``project`` (the global block of the RELION project's tomograms.star), its rows for
    ``tomos`` are returned as they are, after checking that their sizes and pixel sizes
    describe the same physical volume as the sheet's tomograms.
    """
    if project is not None:
        return _project_rows(tomos, project)
    rows = []
    for t in tomos:
        b = binning(t, tilt_series_pixel_size)
        ps = t.voxel_size / b
        size = np.round(np.asarray(t.shape_xyz, np.float64) * b).astype(int)
        rows.append({
            "rlnTomoName": t.name,
            "rlnVoltage": float(optics["voltage"]),
            "rlnSphericalAberration": float(optics["spherical_aberration"]),
            "rlnAmplitudeContrast": float(optics["amplitude_contrast"]),
            "rlnTomoHand": float(hand),
            "rlnTomoTiltSeriesPixelSize": ps,
            "rlnTomoSizeX": int(size[0]), "rlnTomoSizeY": int(size[1]),
            "rlnTomoSizeZ": int(size[2]),
            "rlnTomoTomogramBinning": b,
            "rlnTomoReconstructedTomogram": t.path,
        })
    return pd.DataFrame(rows)


def _project_rows(tomos: Sequence[SourceTomogram], project: pd.DataFrame) -> pd.DataFrame:
    need = ["rlnTomoName", "rlnTomoTiltSeriesPixelSize", "rlnTomoSizeX", "rlnTomoSizeY",
            "rlnTomoSizeZ"]
    missing = [c for c in need if c not in project.columns]
    if missing:
        raise TomoclustError(f"relion.tomograms_star: no column(s) {', '.join(missing)}")
    by_name = {str(n): i for i, n in enumerate(project["rlnTomoName"])}
    out = []
    for t in tomos:
        if t.name not in by_name:
            raise TomoclustError(f"relion.tomograms_star has no tomogram {t.name!r} "
                                 f"(it has {', '.join(sorted(by_name)[:5])}...)")
        row = project.iloc[by_name[t.name]]
        extent = np.array([row[f"rlnTomoSize{a}"] for a in "XYZ"], np.float64) \
            * float(row["rlnTomoTiltSeriesPixelSize"])
        ours = np.asarray(t.shape_xyz, np.float64) * t.voxel_size
        if np.any(np.abs(extent - ours) > t.voxel_size):
            raise TomoclustError(
                f"tomogram {t.name}: relion.tomograms_star describes {tuple(extent)} Å, the "
                f"sheet's {t.path} is {tuple(ours)} Å (x, y, z): not the same volume, so "
                f"centred coordinates would not agree")
        out.append(row)
    return pd.DataFrame(out).reset_index(drop=True)


def particles_table(particles: pd.DataFrame, tomos: Mapping[str, SourceTomogram],
                    tomograms: pd.DataFrame, optics: Mapping[str, float]
                    ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """RELION 5 ``optics`` and ``particles`` blocks for picked particles.

    ``particles`` has ``rlnTomoName`` and ``rlnCoordinateX/Y/Z`` (voxels of the working
    tomogram, whose first voxel's centre is the sheet tomogram's); other columns (class,
    angles, origins) are kept. In the output, ``rlnCenteredCoordinate*Angst`` are RELION 5's
    and ``rlnCoordinate*`` RELION 4's (tilt-series pixels from the first voxel's centre).
    ``tomograms`` is :func:`tomograms_table`'s: one optics group per tilt-series pixel size.
    """
    df = particles.reset_index(drop=True).copy()
    unknown = sorted(set(df["rlnTomoName"]) - set(tomos))
    if unknown:
        raise TomoclustError(f"particles of unknown tomogram(s) {', '.join(unknown)}")
    ps_of = dict(zip(tomograms["rlnTomoName"], tomograms["rlnTomoTiltSeriesPixelSize"],
                     strict=True))
    pixel_sizes = sorted({float(ps_of[n]) for n in df["rlnTomoName"].unique()})
    group = {ps: i + 1 for i, ps in enumerate(pixel_sizes)}
    cen = np.zeros((len(df), 3))
    pix = np.zeros((len(df), 3))
    names = df["rlnTomoName"].to_numpy()
    pixel = [f"rlnCoordinate{a}" for a in "XYZ"]
    vox = df[pixel].to_numpy(np.float64)
    for name in np.unique(names):
        sel = names == name
        t = tomos[name]
        pos = vox[sel] * t.working_voxel_size
        cen[sel] = centred_angst(pos, t)
        pix[sel] = pos / float(ps_of[name])
    # RELION 5 reads the centred Å; rlnCoordinate* become RELION 4's meaning (tilt-series
    # pixels from the first voxel), which RELION 5 drops and older readers use
    for k, col in enumerate(CENTRED):
        df[col] = cen[:, k]
    for k, col in enumerate(pixel):
        df[col] = pix[:, k]
    df["rlnOpticsGroup"] = [group[float(ps_of[n])] for n in names]
    front = ["rlnTomoName", *CENTRED, *pixel, "rlnOpticsGroup"]
    df = df[front + [c for c in df.columns if c not in front]]
    opt = pd.DataFrame({
        "rlnOpticsGroup": list(group.values()),
        "rlnOpticsGroupName": [f"opticsGroup{g}" for g in group.values()],
        "rlnSphericalAberration": float(optics["spherical_aberration"]),
        "rlnVoltage": float(optics["voltage"]),
        "rlnAmplitudeContrast": float(optics["amplitude_contrast"]),
        "rlnTomoTiltSeriesPixelSize": list(group),
    })
    return opt, df


# ------------------------------------------------------------------ one method's export
#: what goes to RELION from clusters.star (and, for averaged classes, their refinement)
KEEP = ["rlnTomoName", "rlnCoordinateX", "rlnCoordinateY", "rlnCoordinateZ", "rlnClassNumber",
        "tclClassProbability", "tclStackIndex"]
ORIGINS = ["rlnOriginXAngst", "rlnOriginYAngst", "rlnOriginZAngst"]
REFINED = ["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", *ORIGINS, "rlnRandomSubset"]

_README = (
    "RELION 5 tables of one method's classes.\n"
    "tomograms.star: one row per tomogram (rlnTomoSizeX/Y/Z in tilt-series pixels of "
    "rlnTomoTiltSeriesPixelSize).\n"
    "particles.star (all classes) and classK/particles.star: rlnCenteredCoordinate*Angst "
    "from each tomogram's centre at rlnTomoSize / 2 (RELION 5.0.1).\n")
_NO_TILT_SERIES = (
    "No tilt series are known here: add rlnTomoTiltSeriesStarFile (or use your "
    "project's tomograms.star, config relion.tomograms_star) before RELION "
    "reconstructs subtomograms.\n")


def source_tomogram(ingest_info: Mapping) -> SourceTomogram:
    """A tomogram from its ingest.json; the path absolute (RELION reads paths relative to
    its own project directory)."""
    info = ingest_info
    return SourceTomogram(
        name=info["name"], path=str(Path(info["path"]).resolve()),
        shape_xyz=tuple(int(v) for v in info["shape_in_zyx"][::-1]),
        voxel_size=float(info["voxel_size_in"]), working_voxel_size=float(info["voxel_size_out"]))


def read_project(path: str | Path) -> pd.DataFrame:
    """The ``global`` block of a RELION 5 project's tomograms.star."""
    blocks = read_star_blocks(path, what="RELION tomograms.star")
    if "global" not in blocks:
        raise TomoclustError(f"{path}: no data_global block (not a RELION 5 tomograms.star)")
    return blocks["global"]


def export_optics(relion: Mapping, ctf: Mapping | None) -> dict[str, float]:
    """The microscope of the export: a simulation's own (``ctf``), else the ``relion``
    settings'."""
    if ctf:
        return {"voltage": ctf["voltage_kv"], "spherical_aberration": ctf["cs_mm"],
                "amplitude_contrast": ctf["amplitude_contrast"]}
    return {k: relion[k] for k in ("voltage", "spherical_aberration", "amplitude_contrast")}


def class_particles(clusters: pd.DataFrame, refined: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """The columns of ``clusters`` that go to RELION, with the origins of boxes re-centred at
    extraction (centre = coordinate - origin) and, for the particles of averaged classes
    (``refined``: their particles.star blocks), the refined angles, origins (which include
    extraction's) and half sets."""
    table = clusters[[c for c in KEEP if c in clusters.columns]].copy()
    origins = [c for c in ORIGINS if c in clusters.columns]
    if len(origins) == 3:
        table[origins] = clusters[origins].to_numpy()
    if refined:
        ref = pd.concat(refined, ignore_index=True)[["tclStackIndex", *REFINED]]
        table = table.merge(ref, on="tclStackIndex", how="left", suffixes=("_extract", ""))
        for c in ORIGINS:
            if f"{c}_extract" in table.columns:
                table[c] = table[c].fillna(table.pop(f"{c}_extract"))
    return table


def export_classes(out: str | Path, clusters: pd.DataFrame, refined: Sequence[pd.DataFrame],
                   tomos: Mapping[str, SourceTomogram], relion: Mapping,
                   ctf: Mapping | None = None, project: pd.DataFrame | None = None) -> None:
    """Write the directory ``out`` (whole, or not at all): tomograms.star, particles.star of
    every class, classK/particles.star per class and a README.txt. ``relion`` holds the
    ``relion`` settings, ``project`` a RELION project's tomograms.star rows."""
    table = class_particles(clusters, refined)
    optics = export_optics(relion, ctf)
    used = [tomos[n] for n in sorted(set(table["rlnTomoName"]))]
    tomo_table = tomograms_table(used, relion["tilt_series_pixel_size"], optics, relion["hand"],
                                 project=project)
    opt, parts = particles_table(table, tomos, tomo_table, optics)
    out = Path(out)
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    write_star(tmp / "tomograms.star", {"global": tomo_table})
    write_star(tmp / "particles.star", {"optics": opt, "particles": parts})
    for k, sub in parts.groupby("rlnClassNumber"):
        sub = sub.dropna(axis=1, how="all")  # classes too small to average have no angles
        write_star(tmp / f"class{int(k)}" / "particles.star",
                   {"optics": opt[opt["rlnOpticsGroup"].isin(sub["rlnOpticsGroup"])],
                    "particles": sub})
        log.info("class %d: %d particles%s", int(k), len(sub),
                 " with angles and origins" if "rlnOriginXAngst" in sub else "")
    write_text(tmp / "README.txt", _README + ("" if project is not None else _NO_TILT_SERIES))
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    log.info("%d particles of %d tomograms in %d classes -> %s", len(parts), len(used),
             parts["rlnClassNumber"].nunique(), out)
