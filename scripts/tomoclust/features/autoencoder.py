"""The 3D convolutional autoencoder baseline (Zeng et al., JSB 2018).

Trained to reconstruct each subtomogram (MSE) with an L1 activity penalty on its ``code_dim``
code; the code is the feature clustered by k-means or a GMM. It is not rotation invariant, so
on randomly oriented particles it stays near chance: it is kept as the honest baseline.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from .networks import AutoEncoder3D
from .train import (
    Checkpoint,
    batches,
    infer,
    resume_epochs,
    rng_state,
    to_tensor,
    write_history,
)

log = logging.getLogger(__name__)


@dataclass
class AutoencoderSettings:
    code_dim: int = 32
    channels: int = 32
    epochs: int = 20
    batch_size: int = 64
    lr: float = 1e-3
    l1_activity: float = 1e-4
    seed: int = 0


@dataclass
class AutoencoderResult:
    features: np.ndarray
    state_dict: dict
    history: pd.DataFrame


def run_autoencoder(stack: np.ndarray, params: AutoencoderSettings, device,
                    checkpoint: Checkpoint | None = None, history_path=None,
                    on_epoch=None) -> AutoencoderResult:
    """Train the autoencoder on a ``(n, d, d, d)`` stack; features are the codes."""
    n, d = len(stack), stack.shape[-1]
    torch.manual_seed(params.seed)
    rng = np.random.default_rng(params.seed)
    model = AutoEncoder3D(d, params.code_dim, params.channels).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=params.lr)
    start, history, state = resume_epochs(checkpoint, device, model, opt, rng)
    if state is not None:
        log.info("resuming autoencoder from checkpoint after epoch %d", start - 1)
    for ep in range(start, params.epochs):
        t0 = time.time()
        model.train()
        tot, cnt = 0.0, 0
        for idx in batches(n, params.batch_size, rng):
            x = to_tensor(stack, idx, device)[:, None]
            opt.zero_grad()
            recon, code = model(x)
            loss = F.mse_loss(recon, x) + params.l1_activity * code.abs().mean()
            loss.backward()
            opt.step()
            tot += float(loss.detach()) * len(idx)
            cnt += len(idx)
        history.append({"epoch": ep, "loss": tot / max(cnt, 1), "seconds": time.time() - t0})
        log.info("autoencoder epoch %d: loss %.4f (%.1f s)", ep, history[-1]["loss"],
                 history[-1]["seconds"])
        write_history(history_path, history)
        if checkpoint is not None:
            checkpoint.save({"epoch": ep, "model": model.state_dict(),
                             "optimizer": opt.state_dict(), "rng": rng_state(rng),
                             "history": history})
        if on_epoch is not None:
            on_epoch(ep)
    write_history(history_path, history)  # also when a resumed run had nothing left to do
    model.eval()
    feats = infer(model.encode, stack, device)
    return AutoencoderResult(feats, model.state_dict(), pd.DataFrame(history))


def describe(params: AutoencoderSettings) -> dict:
    return asdict(params)
