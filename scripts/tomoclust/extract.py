"""Subtomogram extraction: boxes around picks, Fourier resampling, normalisation, stacking.

To reach a target voxel size ``v_out`` and box ``b`` from a tomogram at ``v_in``, a box of
``b_in`` voxels is cut (``b_in`` chosen so that its extent is a whole number ``n`` of output
voxels, ``n ≥ b``), its spectrum is cropped (or padded) to ``n``, and the centre ``b`` voxels
are kept. With ``v_in == v_out`` this is a plain crop. The chain is linear and separable, so
it is applied as one small matrix per axis (:func:`resampling_matrix`). Boxes are read
straight from a memory-mapped tomogram and written straight into a memory-mapped stack, a
few at a time, so memory does not grow with the number of particles.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.fft
from threadpoolctl import ThreadpoolController

from . import TomoclustError
from .formats.image_names import image_names
from .formats.stacks import StackWriter, open_stack
from .formats.star import optics_table, read_star, write_star

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ResamplePlan:
    box_in: int  # voxels cut from the tomogram
    n_fourier: int  # size after Fourier crop/pad
    box_out: int  # final box
    voxel_size_in: float
    voxel_size_out: float  # exact voxel size of the output

    @property
    def plain_crop(self) -> bool:
        return self.box_in == self.n_fourier


def plan_resampling(voxel_in: float, voxel_out: float, box_out: int, tol: float = 1e-3
                    ) -> ResamplePlan:
    """Choose the extraction box so the output voxel size is ``voxel_out`` (to ``tol``)."""
    ratio = voxel_out / voxel_in
    if abs(ratio - 1) < 1e-9:
        return ResamplePlan(box_out, box_out, box_out, voxel_in, voxel_in)
    best = None
    for n in range(box_out, box_out * 4 + 1):
        b_in = n * ratio
        err = abs(b_in - round(b_in)) / b_in
        if err <= tol:
            best = (round(b_in), n)
            break
    if best is None:  # accept the closest voxel size rather than fail
        n = box_out + (box_out % 2)
        best = (round(n * ratio), n)
    b_in, n = best
    return ResamplePlan(b_in, n, box_out, voxel_in, voxel_in * b_in / n)


def edge_voxels(plan: ResamplePlan) -> int:
    """Distance (voxels of the tomogram) a centre must keep from every face to be extracted."""
    return (plan.box_in + 1) // 2


def boxes_in_bounds(coords_zyx: np.ndarray, shape: tuple[int, ...], box_in: int) -> np.ndarray:
    """Mask of integer box centres whose whole ``box_in`` box lies inside ``shape``."""
    c = np.round(np.asarray(coords_zyx)).astype(np.int64).reshape(-1, 3)
    lo = c - box_in // 2
    hi = lo + box_in
    return np.all((lo >= 0) & (hi <= np.asarray(shape)), axis=1)


def _fourier_crop_batch(boxes: np.ndarray, n: int, workers: int) -> np.ndarray:
    """Crop or pad the centred spectrum of a batch of cubes ``(k, m, m, m)`` to side ``n``.

    Fourier cropping keeps the origin at voxel 0, so input voxel ``m // 2`` would land at
    ``(m // 2) · n / m``, which is not ``n // 2`` when ``n`` or ``m`` is odd (half a voxel off
    for 10 → 12 Å, 42 → 35). A phase ramp shifts the result so the box centre maps to the box
    centre exactly.
    """
    m = boxes.shape[-1]
    spec = scipy.fft.fftshift(scipy.fft.fftn(boxes, axes=(1, 2, 3), workers=workers),
                              axes=(1, 2, 3))
    out = np.zeros((boxes.shape[0], n, n, n), dtype=spec.dtype)
    k = min(m, n)
    lo_in, lo_out = m // 2 - k // 2, n // 2 - k // 2
    s_in, s_out = slice(lo_in, lo_in + k), slice(lo_out, lo_out + k)
    out[:, s_out, s_out, s_out] = spec[:, s_in, s_in, s_in]
    shift = n // 2 - (m // 2) * n / m  # output voxels
    if abs(shift) > 1e-9:
        f = (np.arange(n) - n // 2) / n  # fftshift-ordered frequencies (cycles/voxel)
        ramp = np.exp(-2j * np.pi * f * shift)
        out *= ramp[:, None, None] * ramp[None, :, None] * ramp[None, None, :]
    res = scipy.fft.ifftn(scipy.fft.ifftshift(out, axes=(1, 2, 3)), axes=(1, 2, 3),
                          workers=workers).real
    return (res * (n**3 / m**3)).astype(np.float32)


@lru_cache(maxsize=1)
def _blas_controller() -> ThreadpoolController:
    """Created once: inspecting the loaded BLAS libraries costs milliseconds."""
    return ThreadpoolController()


@lru_cache(maxsize=32)
def resampling_matrix(plan: ResamplePlan) -> np.ndarray:
    """The resampling of a plan along one axis, as a ``(box_out, box_in)`` matrix ``A``.

    Cutting the spectrum of a ``box_in`` box to ``n_fourier``, the centring phase ramp, the
    inverse transform and keeping the central ``box_out`` voxels are linear and separable, so
    a box resamples as ``Re[(A ⊗ A ⊗ A) · box]`` (``A`` applied along z, y and x), which
    equals :func:`_fourier_crop_batch` followed by the central crop. ``A`` is real when the
    kept band is symmetric (odd ``n_fourier`` below ``box_in``, e.g. 42 → 35); otherwise it is
    complex. A plain crop gives the identity. Returned read-only, float64 / complex128.
    """
    m, n, bo = plan.box_in, plan.n_fourier, plan.box_out
    if plan.plain_crop:
        a = np.eye(m)[m // 2 - bo // 2:m // 2 - bo // 2 + bo]
    else:
        spec = np.fft.fftshift(np.fft.fft(np.eye(m), axis=0), axes=0)
        k = min(m, n)
        lo_in, lo_out = m // 2 - k // 2, n // 2 - k // 2
        cut = np.zeros((n, m), dtype=np.complex128)
        cut[lo_out:lo_out + k] = spec[lo_in:lo_in + k]
        shift = n // 2 - (m // 2) * n / m  # as in _fourier_crop_batch
        if abs(shift) > 1e-9:
            f = (np.arange(n) - n // 2) / n
            cut *= np.exp(-2j * np.pi * f * shift)[:, None]
        res = np.fft.ifft(np.fft.ifftshift(cut, axes=0), axis=0) * (n / m)
        lo = n // 2 - bo // 2
        a = res[lo:lo + bo]
        if np.abs(a.imag).max() <= 1e-12 * np.abs(a.real).max():
            a = a.real
    a = np.ascontiguousarray(a)
    a.setflags(write=False)
    return a


def _resample_chunk(raw: np.ndarray, a: np.ndarray) -> np.ndarray:
    """``Re[(A ⊗ A ⊗ A) · box]`` for every box of ``raw`` ``(k, m, m, m)``: one matrix
    product per axis (z, then x on the whole chunk, then y), no transposes."""
    k, m = raw.shape[0], raw.shape[1]
    bo = a.shape[0]
    t = np.matmul(a, raw.reshape(k, m, m * m))  # z: (k, bo, m·m)
    t = (t.reshape(-1, m) @ a.T).reshape(k, bo, m, bo)  # x
    t = np.matmul(a, t)  # y: (k, bo, bo, bo)
    return t.real if np.iscomplexobj(t) else t


def _normalise_inplace(out: np.ndarray) -> None:
    """Zero mean, unit variance per box, in place (boxes of constant value get mean 0)."""
    flat = out.reshape(len(out), -1)
    n = flat.shape[1]
    flat -= (flat.sum(axis=1, keepdims=True) / np.float32(n)).astype(np.float32)  # pairwise
    sd = np.sqrt(np.vecdot(flat, flat).astype(np.float64) / n)
    flat *= (1.0 / np.where(sd > 0, sd, 1.0)).astype(np.float32)[:, None]


class _Extractor:
    """Gather → separable resampling → normalisation, a small chunk of boxes at a time.

    Chunks of ``chunk`` boxes keep the working set in the CPU cache; buffers are reused per
    thread; with ``workers`` > 1, chunks run on threads (numpy releases the GIL in the copies
    and matrix products, whose BLAS is kept to one thread each).
    """

    def __init__(self, tomogram: np.ndarray, plan: ResamplePlan, normalise: bool,
                 chunk: int = 8):
        self.tomo = np.asarray(tomogram)  # a plain view of a memory map: cheap slicing
        self.plan, self.normalise, self.chunk = plan, normalise, chunk
        a = resampling_matrix(plan)
        self.a = None if plan.plain_crop else a.astype(
            np.complex64 if np.iscomplexobj(a) else np.float32)
        self._local = threading.local()

    def boxes(self, c: np.ndarray, sink: np.ndarray) -> None:
        """Boxes around integer centres ``c`` ``(k ≤ chunk, 3)`` into ``sink`` ``(k, b, b, b)``."""
        b = self.plan.box_in
        if self.a is None:  # plain crop: straight into the sink
            raw = sink
        else:
            raw = getattr(self._local, "raw", None)
            if raw is None:
                raw = self._local.raw = np.empty((self.chunk, b, b, b), dtype=np.float32)
            raw = raw[:len(c)]
        t = self.tomo
        for i, (z, y, x) in enumerate(c - b // 2):
            raw[i] = t[z:z + b, y:y + b, x:x + b]
        if self.a is not None:
            sink[...] = _resample_chunk(raw, self.a)
        if self.normalise:
            _normalise_inplace(sink)

    def run(self, c: np.ndarray, put, workers: int) -> None:
        """Every chunk of centres ``c``: ``put(a, boxes)`` for rows ``a .. a + len(boxes)``."""
        def one(a: int) -> None:
            cc = c[a:a + self.chunk]
            buf = getattr(self._local, "out", None)
            if buf is None:
                bo = self.plan.box_out
                buf = self._local.out = np.empty((self.chunk, bo, bo, bo), dtype=np.float32)
            self.boxes(cc, buf[:len(cc)])
            put(a, buf[:len(cc)])

        starts = range(0, len(c), self.chunk)
        if workers <= 1 or len(c) <= self.chunk:
            with _blas_controller().limit(limits=1, user_api="blas"):
                for a in starts:
                    one(a)
            return
        with _blas_controller().limit(limits=1, user_api="blas"), \
                ThreadPoolExecutor(workers) as ex:
            for f in [ex.submit(one, a) for a in starts]:
                f.result()


def _centres(tomogram: np.ndarray, coords_zyx: np.ndarray, plan: ResamplePlan) -> np.ndarray:
    c = np.round(np.asarray(coords_zyx)).astype(np.int64).reshape(-1, 3)
    if not boxes_in_bounds(c, tomogram.shape, plan.box_in).all():
        raise ValueError("some boxes extend outside the tomogram")
    return c


def extract_boxes(tomogram: np.ndarray, coords_zyx: np.ndarray, plan: ResamplePlan,
                  normalise: bool = True, workers: int = 1) -> np.ndarray:
    """Extract, resample and normalise subtomograms around integer-rounded centres.

    Parameters
    ----------
    tomogram
        ``(z, y, x)`` array or memory map at ``plan.voxel_size_in``.
    coords_zyx
        ``(n, 3)`` centres in voxels; every box must be inside (see :func:`boxes_in_bounds`).
    normalise
        Zero mean and unit variance per box.
    workers
        Threads.

    Returns
    -------
    ndarray
        ``(n, b, b, b)`` float32 with the particle centre at voxel ``b // 2``.

    The resampling is :func:`resampling_matrix` applied along each axis, which equals the
    Fourier crop of :func:`_fourier_crop_batch` to float32 rounding.
    """
    c = _centres(tomogram, coords_zyx, plan)
    bo = plan.box_out
    out = np.empty((len(c), bo, bo, bo), dtype=np.float32)

    def put(a: int, boxes: np.ndarray) -> None:
        out[a:a + len(boxes)] = boxes

    _Extractor(tomogram, plan, normalise).run(c, put, workers)
    return out


def resample_boxes(raw: np.ndarray, plan: ResamplePlan, normalise: bool = True,
                   workers: int = 1) -> np.ndarray:
    """Resample cubes ``(n, box_in, box_in, box_in)`` cut at ``plan.voxel_size_in`` (centre at
    voxel ``box_in // 2``) to ``(n, box_out, box_out, box_out)`` at ``plan.voxel_size_out``,
    centre at ``box_out // 2``; optionally zero mean and unit variance per box.

    The same separable operator as :func:`extract_boxes` (:func:`resampling_matrix`), for boxes
    that were cut elsewhere (subtomograms from other tools). ``workers`` is accepted for
    symmetry; chunks run on one thread here.
    """
    raw = np.asarray(raw, dtype=np.float32).reshape(-1, *raw.shape[-3:])
    if raw.shape[1:] != (plan.box_in,) * 3:
        raise ValueError(f"boxes of {raw.shape[1:]} voxels do not match the plan's "
                         f"{plan.box_in}^3")
    a = resampling_matrix(plan)
    a = a.astype(np.complex64 if np.iscomplexobj(a) else np.float32)
    bo = plan.box_out
    out = np.empty((len(raw), bo, bo, bo), dtype=np.float32)
    with _blas_controller().limit(limits=1, user_api="blas"):
        for i in range(0, len(raw), 8):
            out[i:i + 8] = _resample_chunk(raw[i:i + 8], a)
    if normalise and len(out):
        _normalise_inplace(out)
    return out


def extract_to_stack(tomogram: np.ndarray, coords_zyx: np.ndarray, plan: ResamplePlan,
                     writer, batch: int = 256, normalise: bool = True, workers: int = 1) -> None:
    """Extract (as :func:`extract_boxes`) straight into a
    :class:`tomoclust.formats.stacks.StackWriter`.

    Boxes go into the writer in chunks of a few boxes, ``workers`` threads at a time; memory
    does not grow with the number of particles. ``batch`` only sets how often progress is
    logged.
    """
    n = len(coords_zyx)
    c = _centres(tomogram, coords_zyx, plan)
    ex = _Extractor(tomogram, plan, normalise)
    done = [0]
    lock = threading.Lock()

    def put(a: int, boxes: np.ndarray) -> None:
        writer[a:a + len(boxes)] = boxes
        with lock:
            before = done[0]
            done[0] += len(boxes)
            if done[0] // batch > before // batch or done[0] == n:
                log.info("extracted %d / %d", done[0], n)

    ex.run(c, put, workers)


def extract_recentred(tomogram: np.ndarray, coords_zyx: np.ndarray, plan: ResamplePlan,
                      writer, normalise: bool = True, workers: int = 1, chunk: int = 2048
                      ) -> np.ndarray:
    """Extract boxes chunk by chunk (:func:`extract_boxes`), move each particle's centre of
    mass to the box centre (:func:`tomoclust.numerics.centring.recentre_com`, a periodic
    sub-voxel shift: it keeps each box's mean, and its variance up to the energy at the
    Nyquist frequency, so boxes are normalised again when ``normalise``), and write them as
    ``writer[a:b] = boxes`` (a :class:`tomoclust.formats.stacks.StackWriter` or an array).

    Returns the RELION origins ``(n, 3)``, xyz Å at ``plan.voxel_size_out``: the particle's
    centre lies at the pick coordinate minus its origin.
    """
    from .numerics.centring import recentre_com

    origins = np.zeros((len(coords_zyx), 3))
    for a in range(0, len(coords_zyx), chunk):
        boxes = extract_boxes(tomogram, coords_zyx[a:a + chunk], plan, normalise=normalise,
                              workers=workers)
        boxes, off = recentre_com(boxes)
        if normalise:
            _normalise_inplace(boxes)
        writer[a:a + len(boxes)] = boxes
        origins[a:a + len(boxes)] = -off[:, ::-1] * plan.voxel_size_out
    return origins


def gather_stacks(stars: list[str], stacks: list[str], out_star: str, out_stack: str,
                  batch: int = 512) -> int:
    """Concatenate per-tomogram stacks and tables into one stack and one RELION-5 STAR.

    Rows of the output table are in the order of the output stack: ``rlnImageName`` is
    ``i@particles.mrcs`` (1-based), ``tclStackIndex`` the 0-based row, and the per-tomogram
    image name is kept as ``tclTomoImageName``. Copies batch by batch (bounded memory).
    Raises :class:`TomoclustError` when all tomograms together have no particle, or when
    stacks disagree in box or voxel size.
    """
    tables, arrays = [], []
    for star, stack in zip(stars, stacks, strict=True):
        df = read_star(star, what="subtomogram table")
        data, vs = open_stack(stack)
        if len(df) != data.shape[0]:
            raise TomoclustError(f"{star}: {len(df)} rows but {stack} holds {data.shape[0]} "
                                 "volumes")
        tables.append(df)
        arrays.append((data, vs, stack))
    n = sum(len(t) for t in tables)
    if n == 0:
        raise TomoclustError("no particles were picked in any tomogram; lower "
                             "picking.threshold, check picking.contrast and particle_radius")
    shapes = {(a.shape[1:], round(vs, 4)) for a, vs, _ in arrays if a.shape[0]}
    if len(shapes) > 1:
        raise TomoclustError(f"subtomogram stacks differ in box or voxel size: {sorted(shapes)}")
    (box_shape, vs), = shapes
    name = Path(out_stack).name
    with StackWriter(out_stack, n, box_shape[0], vs) as w:
        row = 0
        for data, _, _ in arrays:
            for a in range(0, data.shape[0], batch):
                chunk = np.asarray(data[a:a + batch])
                w[row:row + len(chunk)] = chunk
                row += len(chunk)
    df = pd.concat(tables, ignore_index=True)
    df = df.rename(columns={"rlnImageName": "tclTomoImageName"})
    df.insert(0, "rlnImageName", image_names(n, name))
    df["tclStackIndex"] = np.arange(n)
    df["rlnOpticsGroup"] = 1
    key = "rlnTomoTiltSeriesPixelSize"
    tomo_vs = float(df[key].iloc[0]) if key in df else vs
    optics = optics_table(tomo_vs, vs, box_shape[0])
    write_star(out_star, {"optics": optics, "particles": df})
    return n
