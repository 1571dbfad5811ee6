"""Atomic writes: every output goes through :func:`atomic_output`.

Data is written to a temporary file beside the target and renamed over it only when complete,
so a failed or killed step never leaves a half-written output behind. Small writers (JSON, TSV,
text, ``.npy``) and the existence check every reader makes live here too.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .. import TomoclustError

PathLike = str | os.PathLike[str]


# --------------------------------------------------------------------------- atomic writes
@contextlib.contextmanager
def atomic_output(path: PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` on success.

    On any exception the temporary file is removed and the exception propagates, so the
    target is either the complete new file or untouched.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    # a job killed outright (SIGKILL) cannot clean up: remove its leftovers for this target
    for stale in target.parent.glob(f".{glob.escape(target.name)}.*.part"):
        stale.unlink(missing_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json(path: PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def write_tsv(path: PathLike, df: pd.DataFrame) -> None:
    """Write a table as tab-separated text, atomically."""
    with atomic_output(path) as tmp:
        df.to_csv(tmp, sep="\t", index=False)


def write_text(path: PathLike, text: str) -> None:
    """Write text, atomically."""
    with atomic_output(path) as tmp:
        tmp.write_text(text)


def save_npy(path: PathLike, array: np.ndarray) -> None:
    """Save a numpy array (``.npy``), atomically."""
    with atomic_output(path) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, array)


# --------------------------------------------------------------------------------- MRC
def check_exists(path: Path, what: str) -> None:
    if not path.exists():
        raise TomoclustError(f"{what} {path}: file does not exist")
    if not path.is_file():
        raise TomoclustError(f"{what} {path}: not a regular file")
