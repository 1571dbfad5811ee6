"""Extracted subtomograms from other tools (ingest, picking and extraction skipped).

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
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import starfile

from .. import TomoclustError
from ..extract import ResamplePlan, plan_resampling, resample_boxes
from ..formats.image_names import image_names, parse_image_name
from ..formats.mrc import open_mrc
from ..formats.stacks import StackWriter
from ..formats.star import optics_table, write_star
from ..formats.starhead import star_labels
from .names import carry_columns, numeric_columns, read_particles, row_label

log = logging.getLogger(__name__)


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
    groups = numeric_columns(df, ["rlnOpticsGroup"], where)[:, 0].astype(int)
    for i, g in enumerate(groups):
        if g not in lut:
            raise TomoclustError(f"{where}, {row_label(i)}: optics group {g} is not in the optics "
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
    df, optics, where = _read_input(star)
    cache = _VolumeCache(where)
    try:
        files, index, meta = _locate(df, star, image_root, cache, where)
        if voxel_size_override is not None:
            vs, vs_src = np.full(len(df), float(voxel_size_override)), "configuration"
        else:
            vs, vs_src = _voxel_sizes(df, optics, [meta[f][2] for f in files], files, where)
        bad = np.flatnonzero(~(np.isfinite(vs) & (vs > 0)))
        if len(bad):
            raise TomoclustError(f"{where}, {row_label(int(bad[0]))}: voxel size {vs[bad[0]]} "
                                 f"({vs_src}) is not > 0")
        boxes = np.array([meta[f][1] for f in files])
        groups, plans = _plan_groups(vs, boxes, voxel_size, box, where)
        for (v, b), rows in sorted(groups.items()):
            log.info("%d subtomograms of %d voxels at %.4g Å (%s) -> %d at %.4g Å", len(rows), b,
                     v, vs_src, box, plans[(v, b)].voxel_size_out)
        with StackWriter(out_stack, len(df), int(box), float(voxel_size)) as w:
            _resample_into(w, groups, plans, files, index, cache, normalise, batch, workers,
                           where)
    finally:
        cache.close()
    table = pd.DataFrame(carry_columns(df))
    table.insert(0, "rlnImageName", image_names(len(df), Path(out_stack).name))
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


# ---------------------------------------------------------- steps of import_subtomograms
def _read_input(star: Path) -> tuple[pd.DataFrame, pd.DataFrame | None, str]:
    """The particle STAR's particles and optics, and how errors name it; it must name
    images, hold particles and not be RELION 5's 2D-stack pseudo-subtomograms."""
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
    return df, optics, where


class _VolumeCache:
    """A few open subtomogram files (not thousands), least recently used closed first."""

    def __init__(self, where: str, size: int = 16) -> None:
        self.where, self.size = where, size
        self.open: OrderedDict[Path, _Volumes] = OrderedDict()

    def __call__(self, p: Path, i: int) -> _Volumes:
        """File ``p``, opened for row ``i`` (which errors name)."""
        if p in self.open:
            self.open.move_to_end(p)
            return self.open[p]
        where = self.where
        try:
            v = _open_volumes(p, f"{where}, {row_label(i)}")
        except TomoclustError as exc:
            msg = str(exc)
            raise TomoclustError(msg if msg.startswith(where) else f"{where}, {row_label(i)}: {msg}"
                                 ) from None
        self.open[p] = v
        if len(self.open) > self.size:
            self.open.popitem(last=False)[1].mrc.close()
        return v

    def close(self) -> None:
        for v in self.open.values():
            v.mrc.close()


def _locate(df: pd.DataFrame, star: Path, image_root: str | Path | None, volumes: _VolumeCache,
            where: str) -> tuple[list[Path], np.ndarray, dict[Path, tuple[int, int, float | None]]]:
    """The file and 0-based volume of every row's ``rlnImageName`` (relative names against
    ``image_root`` or the STAR's directory), and per file (volumes, box, header voxel size)."""
    root = Path(image_root) if image_root else star.parent
    parsed = [parse_image_name(v, f"{where}, {row_label(i)}") for i, v in
              enumerate(df["rlnImageName"])]
    meta: dict[Path, tuple[int, int, float | None]] = {}
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
                raise TomoclustError(f"{where}, {row_label(i)}: image file {p} (from "
                                     f"rlnImageName {df['rlnImageName'].iloc[i]!r}) does not "
                                     f"exist{hint}")
            v = volumes(p, i)
            meta[p] = (v.data.shape[0], v.data.shape[-1], v.header_voxel_size)
        n_in = meta[p][0]
        if idx is None:
            if n_in != 1:
                raise TomoclustError(f"{where}, {row_label(i)}: {p} holds {n_in} volumes; name "
                                     "one as 'N@file'")
            idx = 1
        if not 1 <= idx <= n_in:
            raise TomoclustError(f"{where}, {row_label(i)}: index {idx} out of range: {p} "
                                 f"holds {n_in} volume(s) (indices are 1-based)")
        files.append(p)
        index[i] = idx - 1
    return files, index, meta


def _voxel_sizes(df: pd.DataFrame, optics: pd.DataFrame | None,
                 header: list[float | None], files: list[Path], where: str
                 ) -> tuple[np.ndarray, str]:
    """Each particle's voxel size and where it came from: the optics block, a pixel-size
    column, the detector pixel size and magnification, else the MRC headers (``header``)."""
    got = _optics_voxel_size(optics, df, where)
    if got is None:
        col = next((c for c in ("rlnImagePixelSize", "rlnPixelSize") if c in df.columns), None)
        if col is not None:
            got = numeric_columns(df, [col], where)[:, 0], col
        elif "rlnDetectorPixelSize" in df.columns:  # Warp 1 / RELION 3.0 style
            dps = numeric_columns(df, ["rlnDetectorPixelSize"], where)[:, 0]
            if "rlnMagnification" in df.columns:
                mag = numeric_columns(df, ["rlnMagnification"], where)[:, 0]
                got = dps * 1e4 / mag, "rlnDetectorPixelSize/rlnMagnification"
            else:
                got = dps, "rlnDetectorPixelSize"
    if got is None:
        miss = [i for i, v in enumerate(header) if v is None]
        if miss:
            raise TomoclustError(
                f"{where}, {row_label(miss[0])}: no voxel size (no optics "
                f"rlnImagePixelSize, no pixel-size column, and {files[miss[0]]} has none "
                "in its header); "
                "set 'external.subtomograms_voxel_size'")
        got = np.array(header, dtype=np.float64), "MRC header"
    return got


def _plan_groups(vs: np.ndarray, boxes: np.ndarray, voxel_size: float, box: int, where: str
                 ) -> tuple[dict[tuple[float, int], list[int]],
                            dict[tuple[float, int], ResamplePlan]]:
    """The rows of each (voxel size, box) group and its resampling plan; every input box must
    cover the working box and its voxel size must resample exactly."""
    groups: dict[tuple[float, int], list[int]] = {}
    for i in range(len(vs)):
        groups.setdefault((round(float(vs[i]), 4), int(boxes[i])), []).append(i)
    plans: dict[tuple[float, int], ResamplePlan] = {}
    for (v, b), rows in groups.items():
        plan = plan_resampling(v, float(voxel_size), int(box))
        if plan.box_in > b:
            raise TomoclustError(
                f"{where}, {row_label(rows[0])}: the subtomogram is {b} voxels at {v:.4g} Å "
                f"({b * v:.0f} Å) but the working box of {box} voxels at {voxel_size:.4g} Å "
                f"needs {plan.box_in} input voxels ({plan.box_in * v:.0f} Å); lower "
                f"extraction.box or re-extract larger subtomograms ({len(rows)} such rows)")
        if abs(plan.voxel_size_out - voxel_size) > 1e-3 * voxel_size:
            raise TomoclustError(
                f"{where}, {row_label(rows[0])}: {v:.4g} Å cannot be resampled to exactly "
                f"{voxel_size:.4g} Å with a box of {box} (closest {plan.voxel_size_out:.5g} "
                "Å); choose another extraction.voxel_size or box")
        plans[(v, b)] = plan
    return groups, plans


def _resample_into(writer, groups: dict[tuple[float, int], list[int]],
                   plans: dict[tuple[float, int], ResamplePlan], files: list[Path],
                   index: np.ndarray, volumes: _VolumeCache, normalise: bool, batch: int,
                   workers: int, where: str) -> None:
    """Resample group by group, batch by batch, the central cut of every input box straight
    into the output stack (row ``i`` to ``writer[i]``)."""
    for key, rows in groups.items():
        plan = plans[key]
        b, k = key[1], plan.box_in
        lo = b // 2 - k // 2
        for a in range(0, len(rows), batch):
            chunk = rows[a:a + batch]
            raw = np.empty((len(chunk), k, k, k), dtype=np.float32)
            for j, i in enumerate(chunk):
                raw[j] = volumes(files[i], i).data[index[i], lo:lo + k, lo:lo + k, lo:lo + k]
            bad = ~np.isfinite(raw).reshape(len(chunk), -1).all(axis=1)
            if bad.any():
                i = chunk[int(np.flatnonzero(bad)[0])]
                raise TomoclustError(f"{where}, {row_label(i)}: the subtomogram has NaN or "
                                     "infinite voxels")
            out = resample_boxes(raw, plan, normalise=normalise, workers=workers)
            for j, i in enumerate(chunk):
                writer[i] = out[j]
