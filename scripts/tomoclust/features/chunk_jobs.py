"""Computing one chunk of a method's features (:mod:`tomoclust.features.chunks`): the rule
``features_<method>_chunk`` of a share of the particles. Each method's modules are imported
only for its own kind."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from .. import TomoclustError
from .chunks import share

log = logging.getLogger(__name__)

#: what a chunk holds: the pretrained encoder's embedding ("encoder"), a retrained transfer
#: classifier's features and class probabilities side by side ("transfer"), or a few-shot
#: network's embedding ("protonet3d", "protonet_ce")
KINDS = ("encoder", "transfer", "protonet3d", "protonet_ce")


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


