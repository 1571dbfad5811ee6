"""Reading and writing volumes (MRC) and tables (STAR, TSV, JSON), atomically.

This is the only module where array axis order ``(z, y, x)`` meets file/table order
``x, y, z``. Every writer goes through :func:`atomic_output`: data is written to a temporary
file beside the target and renamed over it only when complete, so a failed or killed step
never leaves a half-written output behind.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import tempfile
import threading
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import mrcfile
import numpy as np
import pandas as pd
import starfile

from . import TomoclustError

PathLike = str | os.PathLike[str]


# --------------------------------------------------------------------------- atomic writes
@contextlib.contextmanager
def atomic_output(path: PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` on success.

    On any exception the temporary file is removed and the exception propagates, so the
    target is either the complete new file or untouched.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    # a job killed outright (SIGKILL) cannot clean up: remove its leftovers for this target
    for stale in target.parent.glob(f".{glob.escape(target.name)}.*.part"):
        stale.unlink(missing_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json(path: PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def write_tsv(path: PathLike, df: pd.DataFrame, na_rep: str = "") -> None:
    """Write a table as tab-separated text, atomically (missing values as ``na_rep``)."""
    with atomic_output(path) as tmp:
        df.to_csv(tmp, sep="\t", index=False, na_rep=na_rep)


def write_text(path: PathLike, text: str) -> None:
    """Write text, atomically."""
    with atomic_output(path) as tmp:
        tmp.write_text(text)


def save_npy(path: PathLike, array: np.ndarray) -> None:
    """Save a numpy array (``.npy``), atomically."""
    with atomic_output(path) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, array)


# --------------------------------------------------------------------------------- MRC
def _check_exists(path: Path, what: str) -> None:
    if not path.exists():
        raise TomoclustError(f"{what} {path}: file does not exist")
    if not path.is_file():
        raise TomoclustError(f"{what} {path}: not a regular file")


def _voxel_size_of(mrc: mrcfile.mrcfile.MrcFile, path: Path, what: str) -> float:
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
    _check_exists(p, what)
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
            return _voxel_size_of(mrc, Path(path), what)
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
        vs = float(voxel_size) if voxel_size is not None else _voxel_size_of(mrc, p, what)
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


class StackWriter:
    """Write a stack of ``n`` cubic volumes of side ``box`` into one MRC file, in place.

    Memory use does not depend on ``n``: each write goes straight to the file (``pwrite``
    for a row or a run of rows, which costs less than faulting in fresh pages of a memory
    map; a memory map for other indexing). Writes of disjoint rows may come from several
    threads. Header statistics are accumulated as rows arrive; :meth:`close` recomputes them
    from the file only when a row was written twice or never, then writes the header. Like
    every other output of tomoclust, the file is not fsync'ed. It appears at its final path
    only when :meth:`close` succeeds (use as a context manager).
    """

    def __init__(self, path: PathLike, n: int, box: int, voxel_size: float):
        self._target = Path(path)
        self._ctx = atomic_output(self._target)
        self._tmp = self._ctx.__enter__()
        self.n, self.box, self.voxel_size = int(n), int(box), float(voxel_size)
        self._fd: int | None = None
        self._map: np.memmap | None = None
        if self.n == 0:  # an empty stack: header only, still recording box and voxel size
            with mrcfile.new(self._tmp, overwrite=True) as mrc:
                mrc.set_data(np.zeros((0, self.box, self.box, self.box), dtype=np.float32))
                mrc.header.ispg = 401
                mrc.voxel_size = self.voxel_size
            return
        self._shape = (self.n, self.box, self.box, self.box)
        self._rows = np.arange(self.n)
        self._written = np.zeros(self.n, dtype=bool)
        self._stats: tuple[float, float, float, float, int] | None = (np.inf, -np.inf, 0.0,
                                                                      0.0, 0)
        self._lock = threading.Lock()
        # mrcfile lays out the header and sizes the (sparse) file; the data go in by pwrite
        with mrcfile.new_mmap(self._tmp, shape=self._shape, mrc_mode=2, overwrite=True) as mrc:
            mrc.header.ispg = 401
            mrc.voxel_size = self.voxel_size
            self._offset = int(mrc.data.offset)  # bytes before the first voxel
            self._dtype = mrc.data.dtype
            self._header = mrc.header.copy()
        self._fd = os.open(self._tmp, os.O_RDWR)

    def _memmap(self) -> np.memmap:
        if self._map is None:
            self._map = np.memmap(self._tmp, dtype=self._dtype, mode="r+", offset=self._offset,
                                  shape=self._shape)
        return self._map

    def __setitem__(self, index: int | slice, volumes: np.ndarray) -> None:
        if self._fd is None:
            raise IndexError("the stack is empty")
        rows = self._rows[index]
        nrows = int(np.size(rows))
        run = isinstance(index, (int, np.integer)) or (
            isinstance(index, slice) and index.step in (None, 1))
        if run and nrows and self._dtype == np.dtype(np.float32):
            shape = np.shape(rows) + (self.box,) * 3
            v = np.ascontiguousarray(np.broadcast_to(np.asarray(volumes, dtype=np.float32),
                                                     shape))
            self._pwrite(v, int(np.min(rows)))
        else:
            m = self._memmap()
            m[index] = volumes
            v = np.asarray(m[index], dtype=np.float32)
        # header statistics of what was just written, while it is in the CPU cache; a row
        # written twice makes close() recompute them over the whole stack instead
        block = v.reshape(-1, self.box**3) if v.size else v.reshape(0, 1)
        if block.size:  # float32 pairwise sums per volume, added up in float64
            part = (float(block.min()), float(block.max()),
                    float(block.sum(axis=1).sum(dtype=np.float64)),
                    float(np.vecdot(block, block).sum(dtype=np.float64)), block.size)
        with self._lock:
            if np.any(self._written[rows]):
                self._stats = None
            self._written[rows] = True
            if self._stats is not None and block.size:
                lo, hi, total, total_sq, count = self._stats
                self._stats = (min(lo, part[0]), max(hi, part[1]), total + part[2],
                               total_sq + part[3], count + part[4])

    def _pwrite(self, v: np.ndarray, row: int) -> None:
        buf = memoryview(v).cast("B")
        pos = self._offset + row * self.box**3 * 4
        while len(buf):
            k = os.pwrite(self._fd, buf, pos)
            buf, pos = buf[k:], pos + k

    def _release(self) -> None:
        if self._map is not None:
            self._map.flush()
            self._map = None
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def close(self) -> None:
        if self._fd is not None:
            if self._map is not None:
                self._map.flush()
            if self._stats is None or not self._written.all():
                data = np.memmap(self._tmp, dtype=self._dtype, mode="r", offset=self._offset,
                                 shape=self._shape)
                self._stats = _chunked_stats(data)
                del data
            _set_header_stats(self._header, *self._stats)
            head = self._header.tobytes()
            if os.pwrite(self._fd, head, 0) != len(head):
                raise OSError(f"{self._tmp}: short write of the MRC header")
            self._release()
        self._ctx.__exit__(None, None, None)

    def abort(self, exc: BaseException) -> None:
        with contextlib.suppress(BaseException):
            self._release()
        with contextlib.suppress(BaseException):
            self._ctx.__exit__(type(exc), exc, exc.__traceback__)

    def __enter__(self) -> StackWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc is None:
            self.close()
        else:
            self.abort(exc)


def _chunked_stats(data: np.ndarray, chunk: int = 256
                   ) -> tuple[float, float, float, float, int]:
    """Minimum, maximum, sum, sum of squares and count of a stack, ``chunk`` volumes at a time
    (float64 accumulators; memory bounded by ``chunk``)."""
    n = data.shape[0]
    lo, hi, total, total_sq, count = np.inf, -np.inf, 0.0, 0.0, 0
    for a in range(0, n, chunk):
        block = np.asarray(data[a:a + chunk], dtype=np.float64)
        lo, hi = min(lo, float(block.min())), max(hi, float(block.max()))
        total += float(block.sum())
        total_sq += float(np.square(block).sum())
        count += block.size
    return lo, hi, total, total_sq, count


def _header_stats_chunked(mrc: mrcfile.mrcfile.MrcFile, chunk: int = 256) -> None:
    """Set dmin/dmax/dmean/rms like mrcfile's ``update_header_stats``, chunk by chunk.

    mrcfile computes the standard deviation over the whole mapped array at once, which
    allocates a temporary as large as the stack; here memory stays bounded by ``chunk``.
    """
    _set_header_stats(mrc.header, *_chunked_stats(mrc.data, chunk))


def _set_header_stats(header: np.recarray, lo: float, hi: float, total: float,
                      total_sq: float, count: int) -> None:
    """dmin/dmax/dmean/rms from the minimum, maximum, sum and sum of squares of the data."""
    mean = total / count
    header.dmin, header.dmax, header.dmean = lo, hi, mean
    header.rms = float(np.sqrt(max(total_sq / count - mean * mean, 0.0)))


def open_stack(path: PathLike) -> tuple[np.ndarray, float]:
    """Memory-map an MRC stack written by :class:`StackWriter`: ``(n, z, y, x)`` and voxel size.

    A stack of one volume is returned with a leading axis of length one.
    """
    p = Path(path)
    _check_exists(p, "particle stack")
    try:
        mrc = mrcfile.mmap(p, mode="r", permissive=False)
    except ValueError:  # an empty stack cannot be memory-mapped
        mrc = mrcfile.open(p, mode="r", permissive=False)
    except (OSError, EOFError) as exc:
        raise TomoclustError(f"particle stack {p}: not a readable MRC file ({exc})") from exc
    vs = _voxel_size_of(mrc, p, "particle stack")
    data = mrc.data
    if data.ndim == 3:
        data = data[None]
    return data, vs


# -------------------------------------------------------------------------------- STAR
def read_star_blocks(path: PathLike, what: str = "STAR file") -> dict[str, pd.DataFrame]:
    """Every data block of a STAR file, by name, each as a DataFrame (single-row blocks too);
    a missing, unreadable or empty file is a :class:`TomoclustError` naming it."""
    p = Path(path)
    _check_exists(p, what)
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
