"""Glue of the rule scripts: logging, device selection, loading the particle stack, writing
particle sets, saving a feature method's outputs and run information.

Logging is never configured at import time. Torch is imported only by the functions that need
it (:func:`_torch`), so CPU-only steps can import this module. Library modules never import it."""

from __future__ import annotations

import json
import logging
import platform
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from . import TomoclustError
from .formats.atomic import atomic_output, save_npy, write_json
from .formats.image_names import image_names
from .formats.stacks import open_stack
from .formats.star import read_star

log = logging.getLogger("tomoclust")


def setup_logging(log_file: str | Path | None, level: int = logging.INFO) -> None:
    """Send log records to ``log_file`` (the rule's ``log:``) and to stderr."""
    fmt = logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s",
                            datefmt="%Y-%m-%d %H:%M:%S")
    root = logging.getLogger()
    root.handlers.clear()
    root.setLevel(level)
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file, mode="w"))
    for h in handlers:
        h.setFormatter(fmt)
        root.addHandler(h)
    logging.captureWarnings(True)


def run_rule(snakemake: Any, main: Callable[[Any], None]) -> None:
    """Run a rule script's ``main(snakemake)`` with logging to ``snakemake.log[0]``.

    A :class:`TomoclustError` is logged as one clear line (no traceback); anything else is
    logged with its traceback. Either way the script exits non-zero.
    """
    setup_logging(snakemake.log[0] if len(snakemake.log) else None)
    t0 = time.time()
    log.info("rule %s: start", snakemake.rule)
    try:
        main(snakemake)
    except TomoclustError as exc:
        log.error("%s", exc)
        sys.exit(1)
    except Exception:
        log.error("unexpected error:\n%s", traceback.format_exc())
        sys.exit(1)
    log.info("rule %s: done in %.1f s", snakemake.rule, time.time() - t0)


def resolve_device(setting: str) -> str:
    """Turn the ``device`` config (``auto``, ``cpu``, ``cuda``, ``cuda:N``) into a device string.

    Called once per script; library functions then follow the device of their inputs.
    ``auto`` picks ``cuda`` when torch sees a GPU and ``cpu`` otherwise (also when torch
    is not installed in the step's environment).
    """
    if setting == "cpu":
        return "cpu"
    try:
        import torch
    except ImportError:
        if setting == "auto":
            return "cpu"
        raise TomoclustError(f"device {setting!r} needs PyTorch, which is not installed") from None
    if setting == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if setting.startswith("cuda") and not torch.cuda.is_available():
        raise TomoclustError(f"device {setting!r} was asked for but torch sees no GPU "
                             "(use device: auto to fall back to the CPU)")
    return setting


def torch_device(smk: Any) -> str:
    """A torch rule's threads (``threads:``, at least 1) and device (``params.device``)."""
    _torch("this step").set_num_threads(max(int(smk.threads), 1))
    return resolve_device(smk.params.device)


def read_json(path: str | Path) -> Any:
    """A JSON file written by an earlier rule."""
    with open(path) as fh:
        return json.load(fh)


# ------------------------------------------------------------------- feature rules
def _torch(what: str):
    """torch, imported when a feature rule needs it (CPU-only steps import this module too)."""
    try:
        import torch
    except ImportError:
        raise TomoclustError(f"{what} needs PyTorch, which is not installed in this step's "
                             "environment") from None
    return torch


def load_particles(star: str, stack: str) -> tuple[pd.DataFrame, np.ndarray, float]:
    """The particle table and memory-mapped stack; raises if they do not line up."""
    df = read_star(star, what="particle table")
    data, vs = open_stack(stack)
    if len(df) != len(data):
        raise TomoclustError(f"{star} has {len(df)} rows but {stack} holds {len(data)} volumes")
    if len(df) < 3:
        raise TomoclustError(f"{star}: only {len(df)} particle(s); feature learning needs more")
    return df, data, vs


def save_state_dict(path: str | Path, state_dict: dict) -> None:
    """Save weights (a state_dict, tensors moved to CPU) atomically."""
    torch = _torch("saving weights")
    cpu = {k: v.detach().cpu() for k, v in state_dict.items()}
    with atomic_output(path) as tmp:
        torch.save(cpu, tmp)


def save_features(path: str | Path, features: np.ndarray, n_rows: int) -> None:
    if features.shape[0] != n_rows:
        raise RuntimeError(f"{features.shape[0]} feature rows for {n_rows} particles")
    save_npy(path, features.astype(np.float32))


def run_info(device: str, **extra) -> dict:
    torch = _torch("run information of a feature rule")
    info = {"device": device, "torch": torch.__version__, "python": platform.python_version(),
            "cpu": platform.processor() or platform.machine(),
            "threads": torch.get_num_threads()}
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    info.update(extra)
    return info


def write_info(path: str | Path, info: dict) -> None:
    write_json(path, info)


def write_run_info(path: str | Path, device: str, **extra) -> None:
    """info.json of a torch rule: :func:`run_info` with ``extra``."""
    write_info(path, run_info(device, **extra))


#: the columns of the particle table that a method's labels table keeps
LABEL_COLUMNS = ("rlnImageName", "rlnTomoName", "rlnCoordinate")


def labels_table(particles: pd.DataFrame, labels: np.ndarray, probability: np.ndarray,
                 prefixes: tuple[str, ...] = LABEL_COLUMNS) -> pd.DataFrame:
    """A method's own classes: the particle table's columns starting with ``prefixes``, then
    ``rlnClassNumber`` and ``tclClassProbability``."""
    out = particles[[c for c in particles.columns if c.startswith(prefixes)]].copy()
    out["rlnClassNumber"] = labels
    out["tclClassProbability"] = probability
    return out


def class_predictions(image_names: pd.Series, names: list[str],
                      probability: np.ndarray) -> pd.DataFrame:
    """predictions.tsv of a library classifier: per particle the most probable class, its
    probability and ``p_<name>`` of every class (``probability``: particles x classes)."""
    if probability.shape != (len(image_names), len(names)):
        raise ValueError(f"probabilities of shape {probability.shape} for {len(image_names)} "
                         f"particles and {len(names)} classes")
    pred = pd.DataFrame({"rlnImageName": image_names,
                         "class": [names[i] for i in probability.argmax(1)],
                         "probability": probability.max(1)})
    for j, nm in enumerate(names):
        pred[f"p_{nm}"] = probability[:, j]
    return pred


# ----------------------------------------------------------------------- particle sets
def write_particle_set(star: str | Path, stack_path: str | Path, stack: np.ndarray,
                       table: pd.DataFrame, voxel_size: float, box: int) -> None:
    """A stack of subtomograms and its RELION table: ``rlnImageName`` ``N@stack`` first, the
    given columns, optics group 1 (both files atomically)."""
    from .formats.stacks import StackWriter
    from .formats.star import optics_table, write_star

    with StackWriter(stack_path, len(stack), box, voxel_size) as w:
        if len(stack):
            w[:] = stack
    table = table.copy()
    table.insert(0, "rlnImageName", image_names(len(table), stack_path))
    table["rlnOpticsGroup"] = 1
    write_star(star, {"optics": optics_table(voxel_size, voxel_size, box), "particles": table})
