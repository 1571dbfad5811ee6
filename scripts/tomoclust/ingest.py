"""Ingest: validate a user's tomogram and bring it to the working voxel size, normalised.

Checks, each a :class:`TomoclustError` naming the file: the file exists and is a readable
MRC volume; a voxel size is known (header or sheet) and positive; no voxel is NaN or infinite;
the volume is not constant; after binning it is at least one box in every dimension.

Binning is done in Fourier space (cropping the spectrum), which is the anti-aliased way to
change the sampling. When the input extent is not a whole number of output voxels, the
volume is first cut at the high end of each axis (logged, and recorded in the ingest report)
so voxel coordinates keep their origin and the output voxel size is exact.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import TomoclustError
from .formats.mrc import open_mrc, read_mrc_header_voxel_size
from .numerics.fourier import binned_shape, fourier_resample

log = logging.getLogger(__name__)


@dataclass
class IngestResult:
    tomogram: np.ndarray  # (z, y, x) float32, zero mean, unit variance
    voxel_size: float
    info: dict


def ingest_tomogram(path: str | Path, working_voxel_size: float | None,
                    voxel_size_override: float | None = None, min_size_angst: float = 0.0,
                    name: str | None = None) -> IngestResult:
    """Read, validate, Fourier-bin and normalise one tomogram.

    Parameters
    ----------
    path
        MRC tomogram.
    working_voxel_size
        Target voxel size in Å; ``None`` keeps the input sampling. Must not be smaller than
        the input voxel size (no upsampling).
    voxel_size_override
        Voxel size in Å to use instead of the header's (from the tomogram sheet).
    min_size_angst
        Smallest allowed extent (Å) of every axis after binning (one extraction box).
    name
        The tomogram's name, for messages.
    """
    p = Path(path)
    what = f"tomogram {name!r} ({p})" if name else f"tomogram {p}"
    header_vs = read_mrc_header_voxel_size(p, what)
    if voxel_size_override is not None:
        if not np.isfinite(voxel_size_override) or voxel_size_override <= 0:
            raise TomoclustError(f"{what}: voxel size override {voxel_size_override} must be > 0")
        vs_in = float(voxel_size_override)
    elif header_vs is None:
        raise TomoclustError(
            f"{what}: the MRC header has no voxel size (0 or missing); add a 'voxel_size' "
            "column for this tomogram to the sheet"
        )
    else:
        vs_in = header_vs
    with open_mrc(p, what) as mrc:
        if mrc.data is None or mrc.data.ndim != 3:
            shape = None if mrc.data is None else mrc.data.shape
            raise TomoclustError(f"{what}: expected a 3D volume, found data of shape {shape}")
        shape_in = tuple(int(s) for s in mrc.data.shape)
        data = np.asarray(mrc.data, dtype=np.float32)
    bad = ~np.isfinite(data)
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0][::-1])
        raise TomoclustError(f"{what}: {int(bad.sum())} voxels are NaN or infinite "
                             f"(first at x, y, z = {first})")
    vs_out = vs_in if working_voxel_size is None else float(working_voxel_size)
    if vs_out < vs_in * (1 - 1e-6):
        raise TomoclustError(f"{what}: working voxel size {vs_out} Å is smaller than the "
                             f"tomogram's {vs_in} Å; tomoclust does not upsample")
    crop = shape_in
    if abs(vs_out - vs_in) > 1e-6 * vs_in:
        try:
            crop, shape_out = binned_shape(shape_in, vs_in, vs_out)
        except ValueError as exc:
            raise TomoclustError(f"{what}: {exc}") from exc
        if crop != shape_in:
            log.warning("%s: cut from %s to %s (z, y, x) at the high end so that it spans a "
                        "whole number of %.4g Å voxels", what, shape_in, crop, vs_out)
        data = fourier_resample(data[: crop[0], : crop[1], : crop[2]], shape_out)
    min_size_vox = int(np.ceil(min_size_angst / vs_out - 1e-9))
    if min(data.shape) < min_size_vox:
        raise TomoclustError(f"{what}: size {data.shape[::-1]} (x, y, z) at {vs_out:.4g} Å is "
                             f"smaller than one extraction box ({min_size_angst:.0f} Å = "
                             f"{min_size_vox} voxels)")
    mean, std = float(data.mean(dtype=np.float64)), float(data.std(dtype=np.float64))
    if not std > 0:
        raise TomoclustError(f"{what}: all voxels have the same value ({mean}); not a tomogram")
    data = (data - mean) / std
    info = {
        "name": name, "path": str(p), "shape_in_zyx": list(shape_in), "voxel_size_in": vs_in,
        "voxel_size_source": "sheet" if voxel_size_override is not None else "header",
        "cut_to_zyx": list(crop), "shape_out_zyx": list(data.shape), "voxel_size_out": vs_out,
        "binning": vs_out / vs_in, "input_mean": mean, "input_std": std,
    }
    return IngestResult(data.astype(np.float32), vs_out, info)
