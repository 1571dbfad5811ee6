"""Glue shared by the feature rules: load the particle stack, save a method's outputs."""

from __future__ import annotations

import platform
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from . import TomoclustError
from .io import atomic_output, open_stack, read_star, save_npy, write_json


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
    cpu = {k: v.detach().cpu() for k, v in state_dict.items()}
    with atomic_output(path) as tmp:
        torch.save(cpu, tmp)


def save_features(path: str | Path, features: np.ndarray, n_rows: int) -> None:
    if features.shape[0] != n_rows:
        raise RuntimeError(f"{features.shape[0]} feature rows for {n_rows} particles")
    save_npy(path, features.astype(np.float32))


def run_info(device: str, **extra) -> dict:
    info = {"device": device, "torch": torch.__version__, "python": platform.python_version(),
            "cpu": platform.processor() or platform.machine(),
            "threads": torch.get_num_threads()}
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    info.update(extra)
    return info


def write_info(path: str | Path, info: dict) -> None:
    write_json(path, info)
