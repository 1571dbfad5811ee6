"""MRC stacks of subtomograms: streamed, atomic writing (:class:`StackWriter`) and
memory-mapped reading (:func:`open_stack`).
"""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path

import mrcfile
import numpy as np

from .. import TomoclustError
from .atomic import PathLike, atomic_output, check_exists
from .mrc import voxel_size_of


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
    check_exists(p, "particle stack")
    try:
        mrc = mrcfile.mmap(p, mode="r", permissive=False)
    except ValueError:  # an empty stack cannot be memory-mapped
        mrc = mrcfile.open(p, mode="r", permissive=False)
    except (OSError, EOFError) as exc:
        raise TomoclustError(f"particle stack {p}: not a readable MRC file ({exc})") from exc
    vs = voxel_size_of(mrc, p, "particle stack")
    data = mrc.data
    if data.ndim == 3:
        data = data[None]
    return data, vs
