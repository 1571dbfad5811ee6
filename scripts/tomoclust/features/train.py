"""Shared training plumbing: batches from a memory-mapped stack, feature inference, resumable
checkpoints, per-epoch logs and the loud failures of training (GPU out of memory, NaN/Inf).

A checkpoint carries a *fingerprint* of everything that determines the run (parameters and the
input stack's identity); a checkpoint whose fingerprint differs is ignored, so a job resumes
only the run it was part of, never a run with other settings or data. It also carries every
random generator that decides what happens next (numpy's, which draws the data order of each
epoch and the augmentations; torch's CPU generator; and each CUDA device's generator when a
GPU is in use), so a resumed run continues exactly as the uninterrupted run would have.

In a data-parallel run (:mod:`tomoclust.features.distributed`) rank 0 alone writes the
checkpoint and the history; the checkpoint also holds every other rank's torch generators.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from .. import TomoclustError
from ..formats.atomic import atomic_output, write_tsv
from . import distributed

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


#: The exception torch raises when a GPU allocation fails (``torch.cuda.OutOfMemoryError`` is
#: the same class).
OOM_ERRORS: tuple[type[BaseException], ...] = (torch.OutOfMemoryError,)

#: Inference precisions: ``fp32``, or ``bf16`` (autocast to bfloat16 on the data's device).
PRECISIONS = ("fp32", "bf16")


def free_device_memory(device: str | torch.device) -> None:
    """Return cached blocks of a CUDA device to the driver (after an out-of-memory error)."""
    if torch.device(device).type == "cuda" and torch.cuda.is_available():
        torch.cuda.empty_cache()


def halved_batch(batch_size: int, min_batch: int, what: str, device: str | torch.device,
                 exc: BaseException) -> int:
    """The batch size to retry with after ``exc`` (out of memory), logged; raises a clear
    :class:`~tomoclust.TomoclustError` when the batch is already at the floor ``min_batch``."""
    free_device_memory(device)
    if batch_size <= min_batch:
        first = str(exc).splitlines()[0] if str(exc) else repr(exc)
        raise TomoclustError(
            f"{what}: out of memory on {device} even with a batch of {batch_size} (the floor); "
            "free the GPU (other jobs on it?), use a smaller network preset or box, or run on "
            f"the CPU (device: cpu). The error was: {first}") from exc
    new = max(batch_size // 2, min_batch)
    log.warning("%s: out of memory on %s with a batch of %d; retrying with %d", what, device,
                batch_size, new)
    return new


def check_finite(value: float | torch.Tensor | np.ndarray, what: str, method: str,
                 step: str) -> None:
    """Raise a :class:`~tomoclust.TomoclustError` naming ``method`` and ``step`` (e.g.
    ``"epoch 3"``) when ``value`` (a loss or a feature array) holds NaN or Inf."""
    if isinstance(value, torch.Tensor):
        bad = int((~torch.isfinite(value.detach())).sum())
        total = value.numel()
    elif isinstance(value, np.ndarray):
        bad = int((~np.isfinite(value)).sum())
        total = value.size
    else:
        bad, total = (0 if math.isfinite(float(value)) else 1), 1
    if bad:
        raise TomoclustError(
            f"{method}: NaN or Inf in {what} at {step} ({bad} of {total} values); training "
            "diverged (try a lower learning rate) or the input holds NaN/Inf")


class MicroBatches:
    """One optimizer step over a batch, in micro-batches that shrink when the GPU runs out of
    memory.

    ``step(idx, weight)`` computes the loss of rows ``idx``, calls ``backward()`` on
    ``weight · loss`` and returns the float loss; gradients add up over the micro-batches, so
    the optimizer sees the loss of the whole batch, whatever size of micro-batch fits. Out of
    memory, the micro-batch is halved (logged, and kept for the rest of the run) and the step
    redone, down to ``min_batch``; then a clear error. On the CPU the batch is one piece.
    """

    def __init__(self, what: str, device: str | torch.device, min_batch: int = 2):
        self.what, self.device, self.min_batch = what, device, min_batch
        self.size: int | None = None  # current micro-batch size; None: the whole batch

    def __call__(self, optimizer: torch.optim.Optimizer,
                 step: Callable[[np.ndarray, float], float], idx: np.ndarray) -> float:
        if distributed.current().active:  # the processes cannot agree on a retry mid-step
            optimizer.zero_grad()
            try:
                total = step(idx, 1.0)
            except OOM_ERRORS as exc:
                first = str(exc).splitlines()[0] if str(exc) else repr(exc)
                raise TomoclustError(
                    f"{self.what}: out of memory on {self.device} with a global batch of "
                    f"{len(idx)} over {distributed.current().world} processes; lower the "
                    f"batch size (data-parallel runs do not halve it). The error was: "
                    f"{first}") from exc
            optimizer.step()
            return total
        while True:
            size = len(idx) if self.size is None else min(self.size, len(idx))
            optimizer.zero_grad()
            try:
                total = 0.0
                for a in range(0, len(idx), size):
                    part = idx[a:a + size]
                    total += step(part, len(part) / len(idx)) * len(part) / len(idx)
            except OOM_ERRORS as exc:
                optimizer.zero_grad()
                self.size = halved_batch(size, self.min_batch, self.what, self.device, exc)
                continue
            optimizer.step()
            return total


@torch.inference_mode()
def infer(fn: Callable[[torch.Tensor], torch.Tensor], stack: np.ndarray,
          device: str | torch.device, batch_size: int = 256, min_batch: int = 1,
          precision: str = "fp32", what: str = "feature inference") -> np.ndarray:
    """Apply ``fn`` to ``(b, 1, d, d, d)`` batches of the stack; returns ``(n, k)`` float32.

    Out of GPU memory, the batch is halved (logged) and the failed batch retried, down to
    ``min_batch``; then a clear error. ``precision="bf16"`` runs ``fn`` under bfloat16
    autocast on the device's type (outputs are returned as float32 either way).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; use one of {PRECISIONS}")
    dev_type = torch.device(device).type
    out = []
    a, n = 0, len(stack)
    while a < n:
        idx = np.arange(a, min(a + batch_size, n))
        try:
            with torch.autocast(dev_type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                y = fn(to_tensor(stack, idx, device)[:, None])
            out.append(y.float().cpu().numpy())
        except OOM_ERRORS as exc:
            batch_size = halved_batch(batch_size, min_batch, what, device, exc)
            continue
        a += len(idx)
    if not out:
        return np.zeros((0, 0), dtype=np.float32)
    return np.concatenate(out).astype(np.float32, copy=False)


class Checkpoint:
    """Save / load training state atomically at ``path`` (a ``.pt`` file of plain tensors).

    State dicts and python scalars only, loaded with ``weights_only=True``.
    """

    def __init__(self, path: str | Path, fp: str):
        self.path = Path(path)
        self.fp = fp

    def save(self, state: dict[str, Any]) -> None:
        """Write ``state`` (rank 0 of a data-parallel run alone; the others return)."""
        if not distributed.is_main():
            return
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

    def finish(self) -> None:
        """Remove the checkpoint once the job's outputs are written: it exists to resume a
        killed run, and a forced rerun of a finished job must train afresh, not hand back
        the old model."""
        if self.path.exists():
            self.remove()
            log.info("outputs written; checkpoint %s removed", self.path)


def rng_state(rng: np.random.Generator) -> dict[str, Any]:
    """Every generator a training loop draws from, as a weights_only-loadable dict: the numpy
    Generator (JSON text), torch's CPU generator and, when CUDA is initialised, each CUDA
    device's generator; in a data-parallel run, under ``ranks``, each process's torch
    generator and that of its GPU."""
    state: dict[str, Any] = {"numpy": json.dumps(rng.bit_generator.state),
                             "torch": torch.get_rng_state()}
    par = distributed.current()
    if par.active:  # a collective: every rank calls this; rank 0 keeps them all
        own = {"torch": state["torch"]}
        if par.device.startswith("cuda"):  # its own GPU only (no context on the others)
            own["cuda"] = torch.cuda.get_rng_state(torch.device(par.device)).cpu()
        state["ranks"] = par.all_gather_objects(own)
    elif torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = [s.cpu() for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(rng: np.random.Generator, state: dict[str, Any]) -> None:
    rng.bit_generator.state = json.loads(state["numpy"])
    # a checkpoint loaded with map_location="cuda" brings these tensors to the GPU, but
    # torch.set_rng_state takes only a CPU ByteTensor
    torch.set_rng_state(state["torch"].cpu())
    par = distributed.current()
    ranks = state.get("ranks")
    if par.active:
        if ranks is not None and len(ranks) == par.world:
            own = ranks[par.rank]
            torch.set_rng_state(own["torch"].cpu())
            if "cuda" in own and par.device.startswith("cuda"):
                torch.cuda.set_rng_state(own["cuda"].cpu(), torch.device(par.device))
            return
        if par.is_main:
            log.warning("checkpoint of a run with %s process(es) resumed with %d: the "
                        "network's random draws (dropout) continue differently",
                        len(ranks) if ranks else 1, par.world)
        else:  # a stream of its own, derived from the saved one
            par.decorrelate(int(torch.randint(2**31, (1,))))
        return
    cuda = state.get("cuda")
    if cuda:
        if not torch.cuda.is_available():
            log.warning("checkpoint holds CUDA generator states but no GPU is visible; the "
                        "resumed run's GPU random draws cannot continue the saved ones")
        elif len(cuda) != torch.cuda.device_count():
            log.warning("checkpoint holds %d CUDA generator states, %d GPUs are visible; "
                        "restoring the first %d", len(cuda), torch.cuda.device_count(),
                        min(len(cuda), torch.cuda.device_count()))
            for i, s in enumerate(cuda[:torch.cuda.device_count()]):
                torch.cuda.set_rng_state(s.cpu(), i)
        else:
            torch.cuda.set_rng_state_all([s.cpu() for s in cuda])


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
    if path is not None and distributed.is_main():
        write_tsv(path, pd.DataFrame(rows))
