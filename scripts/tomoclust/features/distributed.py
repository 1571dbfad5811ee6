"""Data-parallel training on several devices inside one job (torch DistributedDataParallel).

A training function runs in ``N`` processes, one per device: the calling process is rank 0
and starts ranks ``1 .. N-1`` (``torch.multiprocessing``, spawn), joined by a process group
(NCCL on CUDA, gloo on the CPU). Rank 0 alone writes checkpoints, histories, outputs and the
log; the other ranks log warnings only (to stderr, tagged with their rank) and their return
values are dropped. The result is the one-process result: same files, same layout.

How the work is split: the global batch is kept and split
    ``batch_size`` (DISCA, transfer), the episode (few-shot) and the views of a step
    (pretraining) stay what the configuration says: the *global* batch. Every process draws
    the same data order, episodes and augmentations from the same generators and builds the
    whole global batch (reading it and augmenting it: cheap beside the network), then runs the
    network's forward and backward pass on its contiguous share of rows
    (:meth:`Parallel.shard`). Outputs are gathered in row order with gradients
    (:meth:`Parallel.gather`), every process computes the loss of the whole batch, and the
    gradients are all-reduced (DistributedDataParallel). BatchNorm layers use the statistics
    of the whole batch (synchronised over the processes for the duration of
    :meth:`Parallel.wrap`). So N devices train *the same model* as one device, up to float32
    rounding (the order of summation in the reductions differs), with the same learning rate
    and settings: a run can move between one and several GPUs, and a checkpoint of one resumes
    on the other. Random draws inside the network (dropout) are the exception: each process
    draws its own, decorrelated from the others, so with dropout the runs agree in
    distribution, not number by number. The speed-up comes from splitting the network's work;
    a user who wants more samples per step raises ``batch_size`` as for one device. (The
    other choice, a per-process batch and an N times larger global batch, would make the
    optimisation, and so the result, depend on how many GPUs the scheduler gave the job.)
    DISCA's features of every iteration are computed in shares and gathered
    (:meth:`Parallel.infer`); every process then clusters them, rank 0's labels are binding.

Threads
    The rule's ``threads`` are the job's total: each process gets ``threads // N`` (at least 1).

Failures
    Out of GPU memory, a one-process run halves its micro-batch; with several processes the
    processes would have to agree on it mid-step, so the job stops with a clear error instead
    (lower ``batch_size``). A process that dies takes the job down: rank 0 watches the others
    and ends them when it fails itself.

How many processes (:func:`processes_for`): the rule's ``gpu`` resource (``gres: gpu:N``
where the site uses GRES), capped by the GPUs visible; one on the CPU unless
``TOMOCLUST_PROCESSES`` says otherwise (that is how the gloo path is tested on a CPU machine).
"""

from __future__ import annotations

import contextlib
import logging
import mmap
import os
import re
import socket
import sys
import threading
import time
import types
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from .. import TomoclustError

log = logging.getLogger(__name__)

#: environment variable that sets the number of processes (overrides the gpu resource; the
#: only way to get several processes on the CPU, with the gloo backend)
ENV_PROCESSES = "TOMOCLUST_PROCESSES"
#: seconds a collective may wait for a missing process before the job fails
TIMEOUT_S = 1800
#: seconds the other processes get to exit by themselves after rank 0 failed
GRACE_S = 5.0


# ------------------------------------------------------------------------ how many processes
def gpus_requested(gpu: Any = None, gres: Any = None) -> int:
    """GPUs a job asked for: its ``gpu`` resource, or the count in ``gres`` (``gpu:N`` or
    ``gpu:model:N``) where the site uses GRES; at least 1."""
    n = int(gpu or 0)
    if gres:
        m = re.search(r"gpu(?::[^:,\s]+)?:(\d+)", str(gres).strip("'\""))
        if m:
            n = max(n, int(m.group(1)))
    return max(n, 1)


def processes_for(device: str, gpus: int = 1) -> int:
    """The number of training processes for a job on ``device`` that asked for ``gpus``.

    ``TOMOCLUST_PROCESSES`` wins when set. Otherwise: on ``cuda`` the GPUs asked for, capped
    by those visible (a warning says so); one on the CPU or on one named GPU (``cuda:K``).
    """
    env = os.environ.get(ENV_PROCESSES, "").strip()
    if env:
        try:
            n = int(env)
        except ValueError:
            raise TomoclustError(f"{ENV_PROCESSES}={env!r} is not a whole number") from None
        if n < 1:
            raise TomoclustError(f"{ENV_PROCESSES}={env!r}: need at least one process")
        if device.startswith("cuda") and n > torch.cuda.device_count():
            raise TomoclustError(f"{ENV_PROCESSES}={n} but only {torch.cuda.device_count()} "
                                 "GPU(s) are visible")
        return n
    if device != "cuda" or gpus <= 1:
        if gpus > 1:
            log.info("%d GPUs asked for but the device is %s: one process", gpus, device)
        return 1
    visible = torch.cuda.device_count()
    if visible < gpus:
        log.warning("%d GPUs asked for, %d visible: training on %d", gpus, visible, visible)
    return max(min(gpus, visible), 1)


def job_processes(device: str, resources: Any) -> int:
    """:func:`processes_for` a Snakemake job: its ``resources`` (``gpu``, ``gres``)."""
    return processes_for(device, gpus_requested(getattr(resources, "gpu", None),
                                                getattr(resources, "gres", None)))


# ------------------------------------------------------------------------------ the context
@dataclass
class Parallel:
    """Where this process stands: its rank, the number of processes and its device. With one
    process every method is the identity (or the plain call)."""

    rank: int = 0
    world: int = 1
    device: str = "cpu"

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # --- batches
    def bounds(self, n: int) -> tuple[int, int]:
        """This process's contiguous share ``[a, b)`` of ``n`` rows (sizes differ by ≤ 1)."""
        q, r = divmod(n, self.world)
        a = self.rank * q + min(self.rank, r)
        return a, a + q + (1 if self.rank < r else 0)

    def shard(self, x):
        """This process's rows of a global batch (array or tensor, rows first)."""
        if not self.active:
            return x
        a, b = self.bounds(len(x))
        return x[a:b]

    def gather(self, t: torch.Tensor) -> torch.Tensor:
        """The rows of every process in rank order (the global batch's order), keeping the
        gradient: the backward pass sums each row's gradient over the processes' losses."""
        if not self.active:
            return t
        return _GatherRows.apply(t, self.world)

    # --- the model
    @contextlib.contextmanager
    def wrap(self, model: nn.Module) -> Iterator[nn.Module]:
        """``model`` for training: wrapped in DistributedDataParallel (gradients all-reduced,
        parameters broadcast from rank 0 on entry) with BatchNorm statistics taken over the
        whole batch. The module itself is unchanged afterwards (state-dict keys included)."""
        if not self.active or not any(p.requires_grad for p in model.parameters()):
            yield model
            return
        from torch.nn.parallel import DistributedDataParallel

        patched = _sync_batchnorm(model)
        try:
            ids = [torch.device(self.device).index] if self.device.startswith("cuda") else None
            # buffers (BatchNorm statistics) stay equal by construction: no sync per forward
            yield DistributedDataParallel(model, device_ids=ids, forward_sync_buffers=False)
        finally:
            for m in patched:
                del m.forward

    def decorrelate(self, seed: int) -> None:
        """Give each process its own stream of torch's random draws inside the network
        (dropout); rank 0 keeps the one-process stream. Call after building the model and
        before resuming (a checkpoint restores every rank's generator)."""
        if self.active and self.rank > 0:
            torch.manual_seed(int(seed) * 1_000_003 + self.rank)

    def average_gradients(self, params: Sequence[nn.Parameter]) -> None:
        """Average the gradients of parameters outside the wrapped module (after backward)."""
        if not self.active:
            return
        for p in params:
            if p.grad is not None:
                dist.all_reduce(p.grad)
                p.grad /= self.world

    # --- whole-set steps
    def infer(self, fn: Callable[[np.ndarray], np.ndarray], n: int) -> np.ndarray:
        """``fn(rows)`` → ``(len(rows), k)`` on this process's share of ``range(n)``; every
        process gets all ``n`` rows, in order."""
        if not self.active:
            return fn(np.arange(n))
        a, b = self.bounds(n)
        part = np.ascontiguousarray(fn(np.arange(a, b)), dtype=np.float32)
        return self.gather_array(part)

    def gather_array(self, part: np.ndarray) -> np.ndarray:
        """Concatenate every process's ``(rows, k)`` float32 arrays in rank order (no
        gradient); a process with no rows may send ``(0, 0)``."""
        if not self.active:
            return part
        dev = self._comm_device()
        sizes = [torch.zeros(2, dtype=torch.int64, device=dev) for _ in range(self.world)]
        dist.all_gather(sizes, torch.tensor([part.shape[0], part.size], device=dev))
        rows = [int(s[0]) for s in sizes]
        width = max(int(s[1]) // max(int(s[0]), 1) for s in sizes)
        pad = torch.zeros((max(rows), width), dtype=torch.float32, device=dev)
        if part.size:
            pad[:part.shape[0]] = torch.as_tensor(part.reshape(part.shape[0], -1), device=dev)
        bufs = [torch.empty_like(pad) for _ in range(self.world)]
        dist.all_gather(bufs, pad)
        return torch.cat([b[:r] for b, r in zip(bufs, rows, strict=True)]).cpu().numpy()

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every process."""
        if not self.active:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0, device=self._comm_device())
        return box[0]

    def all_gather_objects(self, obj: Any) -> list:
        if not self.active:
            return [obj]
        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def _comm_device(self) -> torch.device:
        return torch.device(self.device) if self.device.startswith("cuda") else torch.device(
            "cpu")


_CURRENT = Parallel()


def current() -> Parallel:
    """The context of this process (one process, rank 0, unless inside :func:`run`)."""
    return _CURRENT


def is_main() -> bool:
    return _CURRENT.is_main


class _GatherRows(torch.autograd.Function):
    """All-gather of rows of possibly different counts (padded), differentiable: backward
    all-reduces (sums) the gradient of the whole gathered tensor and keeps this rank's rows."""

    @staticmethod
    def forward(ctx, t: torch.Tensor, world: int) -> torch.Tensor:
        counts = [torch.zeros(1, dtype=torch.int64, device=t.device) for _ in range(world)]
        dist.all_gather(counts, torch.tensor([t.shape[0]], device=t.device))
        rows = [int(c) for c in counts]
        pad = t.new_zeros((max(rows),) + t.shape[1:])
        pad[:t.shape[0]] = t
        bufs = [torch.empty_like(pad) for _ in range(world)]
        dist.all_gather(bufs, pad.contiguous())
        rank = dist.get_rank()
        ctx.span = (sum(rows[:rank]), sum(rows[:rank + 1]))
        return torch.cat([b[:r] for b, r in zip(bufs, rows, strict=True)])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        g = grad.contiguous().clone()
        dist.all_reduce(g)
        a, b = ctx.span
        return g[a:b], None


class _AllReduceSum(torch.autograd.Function):
    """Sum over the processes, differentiable (its adjoint is again a sum)."""

    @staticmethod
    def forward(ctx, t: torch.Tensor) -> torch.Tensor:
        out = t.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        g = grad.contiguous().clone()
        dist.all_reduce(g)
        return g


def _synced_batchnorm_forward(self: nn.modules.batchnorm._BatchNorm, x: torch.Tensor
                              ) -> torch.Tensor:
    """BatchNorm over the rows of every process (two passes: mean, then centred squares);
    running statistics updated as torch's BatchNorm does, with the global count."""
    if not self.training:
        return type(self).forward(self, x)
    self._check_input_dim(x)
    dims = [0] + list(range(2, x.ndim))
    shape = [1, -1] + [1] * (x.ndim - 2)
    local_n = x.numel() // x.shape[1]
    s = _AllReduceSum.apply(torch.cat([x.sum(dims), x.new_tensor([float(local_n)])]))
    n = s[-1].detach()
    mean = s[:-1] / n
    xc = x - mean.view(shape)
    var = _AllReduceSum.apply((xc * xc).sum(dims)) / n
    y = xc * torch.rsqrt(var + self.eps).view(shape)
    if self.affine:
        y = y * self.weight.view(shape) + self.bias.view(shape)
    if self.track_running_stats and self.running_mean is not None:
        with torch.no_grad():
            self.num_batches_tracked.add_(1)
            m = (1.0 / float(self.num_batches_tracked) if self.momentum is None
                 else self.momentum)
            self.running_mean.mul_(1 - m).add_(mean.detach() * m)
            unbiased = var.detach() * (n / torch.clamp(n - 1, min=1))
            self.running_var.mul_(1 - m).add_(unbiased * m)
    return y


def _sync_batchnorm(model: nn.Module) -> list[nn.Module]:
    """Make every BatchNorm of ``model`` use whole-batch statistics (an instance-level
    ``forward``; deleting it restores the module). Returns the modules changed."""
    patched = []
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and "forward" not in vars(m):
            m.forward = types.MethodType(_synced_batchnorm_forward, m)
            patched.append(m)
    return patched


# ---------------------------------------------------------------------------- the launcher
class _MemmapRef:
    """A picklable handle of a read-only memory-mapped array: the workers map the same file
    instead of receiving a copy of the data."""

    def __init__(self, a: np.memmap):
        base = np.frombuffer(a._mmap, dtype=np.uint8)
        start = a.offset - a.offset % mmap.ALLOCATIONGRANULARITY
        self.offset = start + (a.ctypes.data - base.ctypes.data)
        self.filename, self.dtype, self.shape = a.filename, a.dtype, a.shape

    def open(self) -> np.ndarray:
        return np.memmap(self.filename, dtype=self.dtype, mode="r", offset=self.offset,
                         shape=self.shape)


def _portable(x: Any) -> Any:
    if (isinstance(x, np.memmap) and getattr(x, "_mmap", None) is not None and x.filename
            and x.flags.c_contiguous):
        return _MemmapRef(x)
    return x


def _restore(x: Any) -> Any:
    return x.open() if isinstance(x, _MemmapRef) else x


def _communication_error(exc: BaseException) -> bool:
    """Whether ``exc`` is a collective that failed (a peer gone), not an error of its own."""
    dist_error = getattr(dist, "DistError", ())
    if dist_error and isinstance(exc, dist_error):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and any(
        s in text for s in ("gloo", "NCCL", "Connection reset", "Connection closed", "c10d"))


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _device_of(device: str, rank: int) -> str:
    return f"cuda:{rank}" if device.startswith("cuda") else device


def _init(rank: int, world: int, port: int, device: str) -> Parallel:
    global _CURRENT
    backend = "nccl" if device.startswith("cuda") else "gloo"
    dev = _device_of(device, rank)
    if dev.startswith("cuda"):
        torch.cuda.set_device(torch.device(dev))
    kw = {"device_id": torch.device(dev)} if backend == "nccl" else {}
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world, timeout=timedelta(seconds=TIMEOUT_S), **kw)
    _CURRENT = Parallel(rank, world, dev)
    return _CURRENT


def _finish() -> None:
    global _CURRENT
    _CURRENT = Parallel()
    if dist.is_initialized():
        dist.destroy_process_group()


def _watch_parent(parent: int) -> None:
    """End this worker when the job's main process is gone (killed job, failed node)."""
    while True:
        time.sleep(2.0)
        if os.getppid() != parent:
            os._exit(1)


def _worker(i: int, world: int, port: int, device: str, threads: int, parent: int,
            fn: Callable, args: tuple, kwargs: dict) -> None:
    rank = i + 1
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format=f"%(asctime)s %(levelname)-7s rank {rank} %(name)s: %(message)s")
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()
    torch.set_num_threads(threads)
    ctx = _init(rank, world, port, device)
    try:
        fn(*[_restore(a) for a in args], device=ctx.device,
           **{k: _restore(v) for k, v in kwargs.items()})
    finally:
        _finish()


@contextlib.contextmanager
def _main_module_hidden() -> Iterator[None]:
    """Start workers without re-running the job's main script in them (spawn would import
    it as ``__mp_main__``, and a rule script runs its rule at import): the function they run
    lives in the library."""
    main = sys.modules.get("__main__")
    saved = {k: getattr(main, k) for k in ("__file__", "__spec__") if hasattr(main, k)}
    try:
        for k in saved:
            delattr(main, k) if k == "__file__" else setattr(main, k, None)
        yield
    finally:
        for k, v in saved.items():
            setattr(main, k, v)


def run(fn: Callable[..., Any], processes: int, device: str, *args: Any,
        main_only: Sequence[str] = (), **kwargs: Any) -> Any:
    """``fn(*args, device=..., **kwargs)`` in ``processes`` processes; returns rank 0's result.

    With one process, a plain call. Otherwise this process is rank 0 (on ``device``; device
    ``cuda`` means ``cuda:0 .. cuda:N-1``); the keyword arguments named in ``main_only``
    (output paths, callbacks) reach rank 0 alone, the others get None. Memory-mapped arrays
    travel as file references. Inside ``fn``, :func:`current` tells each process its part.
    """
    if processes <= 1:
        return fn(*args, device=device, **kwargs)
    if _CURRENT.active:
        raise RuntimeError("distributed.run inside a distributed run")
    if device.startswith("cuda:") and processes > 1:
        raise TomoclustError(f"device {device}: several processes use cuda:0 .. cuda:N-1; "
                             "set device: cuda")
    import torch.multiprocessing as tmp

    threads = max(torch.get_num_threads() // processes, 1)
    port = _free_port()
    worker_kwargs = {k: (None if k in main_only else _portable(v)) for k, v in kwargs.items()}
    with _main_module_hidden():
        procs = tmp.start_processes(
            _worker, args=(processes, port, device, threads, os.getpid(), fn,
                           tuple(_portable(a) for a in args), worker_kwargs),
            nprocs=processes - 1, join=False, start_method="spawn")
    log.info("data-parallel training: %d processes (%s backend), %d thread(s) each", processes,
             "nccl" if device.startswith("cuda") else "gloo", threads)
    failed: list[BaseException] = []
    done = threading.Event()

    def watch() -> None:  # a worker that dies would leave rank 0 waiting in a collective
        while not done.is_set():
            try:
                if procs.join(timeout=1.0):
                    return
            except Exception as exc:  # the worker's traceback
                failed.append(exc)
                log.error("a training process failed:\n%s", exc)
                if not done.is_set():
                    for p in procs.processes:
                        if p.is_alive():
                            p.terminate()
                    os._exit(1)
                return

    watcher = threading.Thread(target=watch, daemon=True)
    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    ctx = _init(0, processes, port, device)
    watcher.start()
    try:
        result = fn(*args, device=ctx.device, **kwargs)
    except BaseException as exc:
        done.set()
        watcher.join()
        # a lost connection means another process failed first: give the others a moment
        # to exit and report; after an error of rank 0's own, end them at once
        deadline = time.time() + (GRACE_S if _communication_error(exc) else 0.0)
        try:
            while time.time() < deadline and not procs.join(timeout=0.5):
                pass
        except Exception as wexc:  # a worker's traceback
            failed.append(wexc)
        for p in procs.processes:
            if p.is_alive():
                p.terminate()
        _finish()
        torch.set_num_threads(old_threads)
        raised = [f for f in failed if "terminated with signal" not in str(f)]
        if raised and not isinstance(exc, TomoclustError):
            log.error("a training process failed:\n%s", raised[0])
            raise TomoclustError(f"a training process failed: {raised[0]}") from exc
        raise
    done.set()
    watcher.join()
    _finish()
    torch.set_num_threads(old_threads)
    if failed:
        raise TomoclustError(f"a training process failed: {failed[0]}")
    while not procs.join(timeout=5.0):
        pass
    return result
