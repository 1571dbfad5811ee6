"""STAR tables (RELION 5 tomography style) and the coordinate conventions of particle tables.

This is where array axis order ``(z, y, x)`` meets file/table order ``x, y, z``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import starfile

from .. import TomoclustError
from .atomic import PathLike, atomic_output, check_exists


# -------------------------------------------------------------------------------- STAR
def read_star_blocks(path: PathLike, what: str = "STAR file") -> dict[str, pd.DataFrame]:
    """Every data block of a STAR file, by name, each as a DataFrame (single-row blocks too);
    a missing, unreadable or empty file is a :class:`TomoclustError` naming it."""
    p = Path(path)
    check_exists(p, what)
    try:
        data = starfile.read(p, always_dict=True)
    except Exception as exc:  # starfile raises many types on malformed input
        raise TomoclustError(f"{what} {p}: not a readable STAR file ({exc})") from exc
    if not data:
        raise TomoclustError(f"{what} {p}: contains no data block")
    return {name: df if isinstance(df, pd.DataFrame)
            else pd.DataFrame([df]) if isinstance(df, Mapping) else pd.DataFrame(df)
            for name, df in data.items()}


def read_star(path: PathLike, block: str | None = None, what: str = "STAR file") -> pd.DataFrame:
    """Read one data block of a STAR file as a DataFrame.

    Without ``block`` the ``particles`` block is returned if present, else the only (or
    last) block.
    """
    data = read_star_blocks(path, what)
    if block is not None:
        if block not in data:
            raise TomoclustError(f"{what} {path}: has no data_{block} block (found {list(data)})")
        return data[block]
    if "particles" in data:
        return data["particles"]
    return list(data.values())[-1]


def write_star(path: PathLike, blocks: pd.DataFrame | Mapping[str, pd.DataFrame]) -> None:
    """Write one DataFrame (as ``data_particles``) or several named blocks, atomically."""
    if isinstance(blocks, pd.DataFrame):
        blocks = {"particles": blocks}
    with atomic_output(path) as tmp:
        starfile.write(dict(blocks), tmp, overwrite=True)


# ------------------------------------------------------------------- coordinate conventions
def zyx_to_xyz(coords_zyx: np.ndarray) -> np.ndarray:
    """Reverse the last axis: array index order ``(z, y, x)`` to table order ``(x, y, z)``."""
    return np.asarray(coords_zyx, dtype=np.float64)[..., ::-1].copy()


def xyz_to_zyx(coords_xyz: np.ndarray) -> np.ndarray:
    """Reverse the last axis: table order ``(x, y, z)`` to array index order ``(z, y, x)``."""
    return np.asarray(coords_xyz, dtype=np.float64)[..., ::-1].copy()


def centered_angst(coords_xyz_vox: np.ndarray, shape_zyx: tuple[int, ...], voxel_size: float
                   ) -> np.ndarray:
    """RELION 5 centred coordinates (Å) from voxel coordinates of a tomogram.

    RELION 5 puts the origin of ``rlnCenteredCoordinate*Angst`` at the tomogram centre,
    ``size / 2`` voxels (float division) from the first voxel's centre along each axis, as in
    its ``ParticleSet`` decentring; on odd-sized axes that is half a voxel off ``size // 2``.
    """
    centre = np.array(shape_zyx[::-1], dtype=np.float64) / 2.0
    return (np.asarray(coords_xyz_vox, dtype=np.float64) - centre) * float(voxel_size)


def voxels_from_centered_angst(coords_angst: np.ndarray, shape_zyx: tuple[int, ...],
                               voxel_size: float) -> np.ndarray:
    """Inverse of :func:`centered_angst`: centred Å to ``(x, y, z)`` voxel coordinates."""
    centre = np.array(shape_zyx[::-1], dtype=np.float64) / 2.0
    return np.asarray(coords_angst, dtype=np.float64) / float(voxel_size) + centre


def particle_table(
    tomo_name: str,
    coords_xyz_vox: np.ndarray,
    shape_zyx: tuple[int, ...],
    voxel_size: float,
    angles: np.ndarray | None = None,
    extra: Mapping[str, Any] | None = None,
) -> pd.DataFrame:
    """A RELION-5 tomography particle table for one tomogram.

    Parameters
    ----------
    coords_xyz_vox
        ``(n, 3)`` coordinates in voxels of the named tomogram, ``x, y, z`` order.
    angles
        Optional ``(n, 3)`` RELION ``rot, tilt, psi`` in degrees.
    extra
        Further columns (own columns carry the ``tcl`` prefix).
    """
    xyz = np.asarray(coords_xyz_vox, dtype=np.float64).reshape(-1, 3)
    cen = centered_angst(xyz, shape_zyx, voxel_size)
    df = pd.DataFrame({
        "rlnTomoName": [tomo_name] * len(xyz),
        "rlnCoordinateX": xyz[:, 0], "rlnCoordinateY": xyz[:, 1], "rlnCoordinateZ": xyz[:, 2],
        "rlnCenteredCoordinateXAngst": cen[:, 0],
        "rlnCenteredCoordinateYAngst": cen[:, 1],
        "rlnCenteredCoordinateZAngst": cen[:, 2],
    })
    if angles is not None:
        ang = np.asarray(angles, dtype=np.float64).reshape(-1, 3)
        df["rlnAngleRot"], df["rlnAngleTilt"], df["rlnAnglePsi"] = ang[:, 0], ang[:, 1], ang[:, 2]
    for key, val in (extra or {}).items():
        df[key] = val
    return df


def optics_table(voxel_size_tomo: float, voxel_size_image: float, box: int,
                 voltage_kv: float = 300.0, cs_mm: float = 2.7, amplitude_contrast: float = 0.07
                 ) -> pd.DataFrame:
    """A one-group RELION optics block for 3D subtomograms."""
    return pd.DataFrame({
        "rlnOpticsGroup": [1],
        "rlnOpticsGroupName": ["opticsGroup1"],
        "rlnSphericalAberration": [cs_mm],
        "rlnVoltage": [voltage_kv],
        "rlnAmplitudeContrast": [amplitude_contrast],
        "rlnTomoTiltSeriesPixelSize": [voxel_size_tomo],
        "rlnImagePixelSize": [voxel_size_image],
        "rlnImageSize": [box],
        "rlnImageDimensionality": [3],
    })
