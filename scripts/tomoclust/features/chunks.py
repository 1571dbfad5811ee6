"""Feature inference shared by several jobs: each job computes the features of one contiguous
share of the particles (a *chunk*), and the method's own rule gathers them in particle order.
Methods: transfer (the pretrained encoder, or a retrained classifier) and the few-shot
networks (ProtoNet3D, ProtoNet-CE: the embedding; the gathering rule classifies).

The workflow's ``inference_jobs`` sets the number of shares (a number of jobs, not of
particles: the particle count is known only once the particles are gathered, while the jobs of
a run must be known when it is planned, for a dry run and for the cluster's queue). Share
``i`` of ``n`` particles over ``k`` jobs holds rows ``[i·q + min(i, r), …)`` with
``q, r = divmod(n, k)``: sizes differ by at most one. Inference runs in eval mode, so a
particle's features do not depend on which job computed them; gathered, the chunks equal the
one-job features. Computing a chunk: :mod:`tomoclust.features.chunk_jobs` (this module only
shares and gathers, so the methods that gather import nothing of the others).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .. import TomoclustError

log = logging.getLogger(__name__)


def share(n: int, jobs: int, index: int) -> tuple[int, int]:
    """Rows ``[a, b)`` of share ``index`` of ``n`` rows over ``jobs`` jobs."""
    if jobs < 1 or not 0 <= index < jobs:
        raise TomoclustError(f"inference share {index} of {jobs} jobs does not exist")
    q, r = divmod(n, jobs)
    a = index * q + min(index, r)
    return a, a + q + (1 if index < r else 0)


def gather(paths: Sequence[str | Path], n: int) -> np.ndarray:
    """The chunks ``paths`` (in share order) as one ``(n, k)`` float32 array; each must hold
    exactly its share's rows and the same columns, else a clear error naming the file."""
    parts = []
    for i, p in enumerate(paths):
        try:
            a = np.load(p, mmap_mode="r")
        except (OSError, ValueError) as exc:
            raise TomoclustError(f"{p}: not a readable feature chunk ({exc})") from None
        lo, hi = share(n, len(paths), i)
        if a.ndim != 2 or len(a) != hi - lo:
            raise TomoclustError(f"{p}: {a.shape[0] if a.ndim else 0} rows, but share {i} of "
                                 f"{len(paths)} holds particles {lo}..{hi - 1} ({hi - lo} rows);"
                                 " the particles changed since it was computed")
        if parts and a.shape[1] != parts[0].shape[1]:
            raise TomoclustError(f"{p}: {a.shape[1]} columns, the first chunk has "
                                 f"{parts[0].shape[1]}")
        parts.append(a)
    if not parts:
        raise TomoclustError("no feature chunks to gather")
    log.info("features of %d particles gathered from %d chunks", n, len(parts))
    return np.concatenate(parts).astype(np.float32, copy=False)
