"""Shared training plumbing: batches from a memory-mapped stack, feature inference, resumable
checkpoints and per-epoch logs.

A checkpoint carries a *fingerprint* of everything that determines the run (parameters and the
input stack's identity); a checkpoint whose fingerprint differs is ignored, so a job resumes
only the run it was part of, never a run with other settings or data.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from ..formats.atomic import atomic_output, write_tsv

log = logging.getLogger(__name__)


def fingerprint(params: dict, stack_path: str | Path | None = None) -> str:
    """A short hash of the parameters and (if given) the stack file's size and mtime."""
    payload: dict[str, Any] = {"params": params}
    if stack_path is not None:
        st = os.stat(stack_path)
        payload["stack"] = [str(Path(stack_path).resolve()), st.st_size, st.st_mtime_ns]
    blob = json.dumps(payload, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def batches(n: int, batch_size: int, rng: np.random.Generator | None = None
            ) -> Iterator[np.ndarray]:
    """Index batches covering ``range(n)``, shuffled when ``rng`` is given, sorted within."""
    order = rng.permutation(n) if rng is not None else np.arange(n)
    for a in range(0, n, batch_size):
        yield np.sort(order[a:a + batch_size])


def to_tensor(stack: np.ndarray, idx: np.ndarray, device: str | torch.device) -> torch.Tensor:
    """Rows ``idx`` of a ``(n, d, d, d)`` array or memory map as a float32 tensor on ``device``."""
    return torch.as_tensor(np.ascontiguousarray(stack[idx], dtype=np.float32), device=device)


@torch.inference_mode()
def infer(fn: Callable[[torch.Tensor], torch.Tensor], stack: np.ndarray,
          device: str | torch.device, batch_size: int = 256) -> np.ndarray:
    """Apply ``fn`` to ``(b, 1, d, d, d)`` batches of the stack; returns ``(n, k)`` float32."""
    out = []
    for idx in batches(len(stack), batch_size):
        out.append(fn(to_tensor(stack, idx, device)[:, None]).float().cpu().numpy())
    if not out:
        return np.zeros((0, 0), dtype=np.float32)
    return np.concatenate(out).astype(np.float32)


class Checkpoint:
    """Save / load training state atomically at ``path`` (a ``.pt`` file of plain tensors).

    State dicts and python scalars only, loaded with ``weights_only=True``.
    """

    def __init__(self, path: str | Path, fp: str):
        self.path = Path(path)
        self.fp = fp

    def save(self, state: dict[str, Any]) -> None:
        with atomic_output(self.path) as tmp:
            torch.save({"fingerprint": self.fp, **state}, tmp)

    def load(self, map_location: str | torch.device = "cpu") -> dict[str, Any] | None:
        if not self.path.exists():
            return None
        try:
            state = torch.load(self.path, map_location=map_location, weights_only=True)
        except Exception as exc:  # a truncated or foreign file: start over, say so
            log.warning("checkpoint %s unreadable (%s); starting from scratch", self.path, exc)
            return None
        if state.get("fingerprint") != self.fp:
            log.info("checkpoint %s belongs to another run (settings or input changed); "
                     "starting from scratch", self.path)
            return None
        return state

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


def rng_state(rng: np.random.Generator) -> dict[str, Any]:
    """A numpy Generator's state as a weights_only-loadable dict (JSON text)."""
    return {"numpy": json.dumps(rng.bit_generator.state), "torch": torch.get_rng_state()}


def set_rng_state(rng: np.random.Generator, state: dict[str, Any]) -> None:
    rng.bit_generator.state = json.loads(state["numpy"])
    # a checkpoint loaded with map_location="cuda" brings this tensor to the GPU, but
    # torch.set_rng_state takes only a CPU ByteTensor
    torch.set_rng_state(state["torch"].cpu())


def resume_epochs(checkpoint: Checkpoint | None, device: str | torch.device,
                  model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                  rng: np.random.Generator, scheduler: Any = None
                  ) -> tuple[int, list[dict], dict[str, Any] | None]:
    """Restore an epoch-based training run from its checkpoint, if there is one.

    Loads the model, optimizer (and scheduler) states and the random generators saved with
    ``model``, ``optimizer``, ``scheduler``, ``rng`` keys; returns the first epoch still to
    run, the history so far and the raw state (for extra items), or ``(0, [], None)``.
    """
    state = checkpoint.load(device) if checkpoint is not None else None
    if state is None:
        return 0, [], None
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None:
        scheduler.load_state_dict(state["scheduler"])
    set_rng_state(rng, state["rng"])
    return int(state["epoch"]) + 1, list(state["history"]), state


def write_history(path: str | Path | None, rows: list[dict]) -> None:
    if path is not None:
        write_tsv(path, pd.DataFrame(rows))
