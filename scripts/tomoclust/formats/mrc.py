"""MRC volumes: reading (memory-mapped where possible) and atomic writing, voxel sizes from
the header. Arrays are ``(z, y, x)``.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import mrcfile
import numpy as np

from .. import TomoclustError
from .atomic import PathLike, atomic_output, check_exists


def voxel_size_of(mrc: mrcfile.mrcfile.MrcFile, path: Path, what: str) -> float:
    vs = mrc.voxel_size
    sizes = np.array([float(vs.x), float(vs.y), float(vs.z)])
    if mrc.data is not None and mrc.data.ndim == 2:
        sizes = sizes[:2]
    if not np.all(np.isfinite(sizes)) or np.any(sizes <= 0):
        raise TomoclustError(
            f"{what} {path}: the MRC header has no valid voxel size ({sizes.tolist()} Å); "
            "give it with the 'voxel_size' column of the tomogram sheet"
        )
    if np.ptp(sizes) > 1e-3 * sizes.max():
        raise TomoclustError(
            f"{what} {path}: anisotropic voxel size {sizes.tolist()} Å is not supported"
        )
    return float(sizes[0])


def open_mrc(path: PathLike, what: str = "MRC file") -> mrcfile.mrcfile.MrcFile:
    """Open an MRC file read-only and memory-mapped, with errors that name the file."""
    p = Path(path)
    check_exists(p, what)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return mrcfile.mmap(p, mode="r", permissive=False)
    except (ValueError, OSError, EOFError) as exc:
        raise TomoclustError(f"{what} {p}: not a readable MRC file ({exc})") from exc


def read_mrc_header_voxel_size(path: PathLike, what: str = "MRC file") -> float | None:
    """Return the header voxel size in Å, or ``None`` when the header has none (zero)."""
    with open_mrc(path, what) as mrc:
        try:
            return voxel_size_of(mrc, Path(path), what)
        except TomoclustError:
            return None


def read_mrc(
    path: PathLike,
    voxel_size: float | None = None,
    what: str = "MRC file",
    check_finite: bool = True,
) -> tuple[np.ndarray, float]:
    """Read an MRC volume as a float32 ``(z, y, x)`` array and its voxel size in Å.

    Parameters
    ----------
    path
        MRC file.
    voxel_size
        Override for the header voxel size (Å). When ``None`` the header must have one.
    what
        Word for the file in error messages ("tomogram", "template", ...).
    check_finite
        Raise if any voxel is NaN or infinite.
    """
    p = Path(path)
    with open_mrc(p, what) as mrc:
        vs = float(voxel_size) if voxel_size is not None else voxel_size_of(mrc, p, what)
        if vs <= 0 or not np.isfinite(vs):
            raise TomoclustError(f"{what} {p}: voxel size must be positive, got {vs}")
        data = np.asarray(mrc.data, dtype=np.float32).copy()
    if check_finite and not np.all(np.isfinite(data)):
        bad = int(np.count_nonzero(~np.isfinite(data)))
        raise TomoclustError(f"{what} {p}: {bad} voxels are NaN or infinite")
    return data, vs


def write_mrc(path: PathLike, data: np.ndarray, voxel_size: float) -> None:
    """Write a float32 ``(z, y, x)`` volume (or ``(n, z, y, x)`` stack) with its voxel size."""
    arr = np.ascontiguousarray(data, dtype=np.float32)
    with atomic_output(path) as tmp:
        with mrcfile.new(tmp, overwrite=True) as mrc:
            mrc.set_data(arr)
            if arr.ndim == 4:
                mrc.header.ispg = 401
            mrc.voxel_size = float(voxel_size)
            mrc.update_header_stats()
