"""Logging and device selection for the rule scripts (never configured at import time)."""

from __future__ import annotations

import logging
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import TomoclustError

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
