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
one-job features.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .. import TomoclustError

log = logging.getLogger(__name__)

#: what a chunk holds: the pretrained encoder's embedding ("encoder"), a retrained transfer
#: classifier's features and class probabilities side by side ("transfer"), or a few-shot
#: network's embedding ("protonet3d", "protonet_ce")
KINDS = ("encoder", "transfer", "protonet3d", "protonet_ce")


def share(n: int, jobs: int, index: int) -> tuple[int, int]:
    """Rows ``[a, b)`` of share ``index`` of ``n`` rows over ``jobs`` jobs."""
    if jobs < 1 or not 0 <= index < jobs:
        raise TomoclustError(f"inference share {index} of {jobs} jobs does not exist")
    q, r = divmod(n, jobs)
    a = index * q + min(index, r)
    return a, a + q + (1 if index < r else 0)


def feature_chunk(kind: str, model_path: str | Path, stack: np.ndarray, voxel_size: float,
                  device: str, jobs: int, index: int,
                  training_info: str | Path | None = None) -> np.ndarray:
    """A method's output rows of share ``index`` (see :data:`KINDS`); a few-shot network
    needs its ``training_info`` (training.json: settings, box, voxel size)."""
    a, b = share(len(stack), jobs, index)
    part = stack[a:b]
    log.info("particles %d to %d of %d (share %d of %d), device %s", a, b - 1, len(stack),
             index + 1, jobs, device)
    if kind == "encoder":
        from .encoder import embed, load_encoder, prepare_boxes

        model, _ = load_encoder(model_path, device)
        return embed(model, prepare_boxes(part, voxel_size, model.cfg))
    if kind == "transfer":
        from .transfer import load_model, transfer_features

        model, _, extra = load_model(model_path, device)
        if part.shape[-1] != extra["box"] or not np.isclose(voxel_size, extra["voxel_size"],
                                                           rtol=1e-3):
            raise TomoclustError(
                f"particles are {part.shape[-1]}³ at {voxel_size:g} Å but the transfer model "
                f"{model_path} was trained on {extra['box']}³ at {extra['voxel_size']:g} Å")
        feats, prob = transfer_features(model, part)
        return np.concatenate([feats, prob], axis=1)
    if kind in ("protonet3d", "protonet_ce"):
        import json

        import torch

        from .fewshot import ProtoNet, embed_stack, params_from_config

        if training_info is None:
            raise TomoclustError(f"{kind} chunks need the network's training.json")
        info = json.loads(Path(training_info).read_text())
        if int(info["box"]) != part.shape[-1] or abs(float(info["voxel_size"]) - voxel_size
                                                     ) > 1e-3:
            raise TomoclustError(
                f"{model_path} was trained on {info['box']}³ boxes at {info['voxel_size']} Å "
                f"but the particles are {part.shape[-1]}³ at {voxel_size} Å")
        model = ProtoNet(part.shape[-1], params_from_config(dict(info["params"]), kind))
        model.load_state_dict(torch.load(model_path, map_location=device, weights_only=True))
        return embed_stack(model.to(device), part, device).float().cpu().numpy()
    raise ValueError(f"unknown chunk kind {kind!r}; use one of {KINDS}")


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
