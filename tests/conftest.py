"""Shared fixtures: seeded RNG, devices to run on, small planted volumes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


def _devices() -> list[str]:
    try:
        import torch
    except ImportError:
        return ["cpu"]
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


DEVICES = _devices()


class Interrupt(Exception):
    """Raised by :func:`interrupt_after` to kill a training loop in a resume test."""


def interrupt_after(stop: int):
    """An epoch/iteration hook that raises :class:`Interrupt` once it is called with ``stop``."""
    def hook(i: int) -> None:
        if i == stop:
            raise Interrupt(f"killed after step {i}")
    return hook


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(12345)


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO
