"""Subtomogram extraction: boxes around picks, Fourier resampling, normalisation, stacking.

To reach a target voxel size ``v_out`` and box ``b`` from a tomogram at ``v_in``, a box of
``b_in`` voxels is cut (``b_in`` chosen so that its extent is a whole number ``n`` of output
voxels, ``n ≥ b``), its spectrum is cropped (or padded) to ``n``, and the centre ``b`` voxels
are kept. With ``v_in == v_out`` this is a plain crop. Boxes are read straight from a
memory-mapped tomogram and written straight into a memory-mapped stack, batch by batch, so
memory does not grow with the number of particles.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.fft

from . import TomoclustError
from .io import StackWriter, open_stack, optics_table, read_star, write_star

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

    Returns
    -------
    ndarray
        ``(n, b, b, b)`` float32 with the particle centre at voxel ``b // 2``.
    """
    c = np.round(np.asarray(coords_zyx)).astype(np.int64).reshape(-1, 3)
    if not boxes_in_bounds(c, tomogram.shape, plan.box_in).all():
        raise ValueError("some boxes extend outside the tomogram")
    b = plan.box_in
    raw = np.empty((len(c), b, b, b), dtype=np.float32)
    for i, (z, y, x) in enumerate(c - b // 2):
        raw[i] = tomogram[z:z + b, y:y + b, x:x + b]
    return resample_boxes(raw, plan, normalise=normalise, workers=workers)


def resample_boxes(raw: np.ndarray, plan: ResamplePlan, normalise: bool = True,
                   workers: int = 1) -> np.ndarray:
    """Resample cubes ``(n, box_in, box_in, box_in)`` cut at ``plan.voxel_size_in`` (centre at
    voxel ``box_in // 2``) to ``(n, box_out, box_out, box_out)`` at ``plan.voxel_size_out``,
    centre at ``box_out // 2``; optionally zero mean and unit variance per box."""
    if plan.plain_crop:
        out = raw
    else:
        res = _fourier_crop_batch(raw, plan.n_fourier, workers)
        lo = plan.n_fourier // 2 - plan.box_out // 2
        sl = slice(lo, lo + plan.box_out)
        out = np.ascontiguousarray(res[:, sl, sl, sl])
    if normalise and len(out):
        mu = out.mean(axis=(1, 2, 3), keepdims=True)
        sd = out.std(axis=(1, 2, 3), keepdims=True)
        out = (out - mu) / np.where(sd > 0, sd, 1.0)
    return out.astype(np.float32, copy=False)


def extract_to_stack(tomogram: np.ndarray, coords_zyx: np.ndarray, plan: ResamplePlan,
                     writer, batch: int = 256, normalise: bool = True, workers: int = 1) -> None:
    """Stream :func:`extract_boxes` into a :class:`tomoclust.io.StackWriter`, batch by batch."""
    n = len(coords_zyx)
    for a in range(0, n, batch):
        writer[a:a + batch] = extract_boxes(tomogram, coords_zyx[a:a + batch], plan,
                                            normalise=normalise, workers=workers)
        log.info("extracted %d / %d", min(a + batch, n), n)


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
    df.insert(0, "rlnImageName", [f"{i + 1}@{name}" for i in range(n)])
    df["tclStackIndex"] = np.arange(n)
    df["rlnOpticsGroup"] = 1
    key = "rlnTomoTiltSeriesPixelSize"
    tomo_vs = float(df[key].iloc[0]) if key in df else vs
    optics = optics_table(tomo_vs, vs, box_shape[0])
    write_star(out_star, {"optics": optics, "particles": df})
    return n
