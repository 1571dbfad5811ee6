"""Image names of particle tables: ``N@stack.mrcs`` (1-based slice ``N`` of a stack of
volumes, RELION's convention) or a single volume's file. Written and read only here.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from .. import TomoclustError

_IMAGE = re.compile(r"^\s*(?:(\d+)\s*@\s*)?(.+?)\s*$")


def image_names(n: int, stack: str | Path) -> list[str]:
    """The names ``1@stack.mrcs`` ... ``n@stack.mrcs`` of a stack's rows (by file name, as the
    table sits beside its stack)."""
    name = Path(stack).name
    return [f"{i + 1}@{name}" for i in range(n)]


def parse_image_name(value: object, where: str) -> tuple[str, int | None]:
    """``'N@path'`` → ``(path, N)`` (1-based), ``'path'`` → ``(path, None)``."""
    m = _IMAGE.match(str(value)) if isinstance(value, str) else None
    if m is None or not m.group(2):
        raise TomoclustError(f"{where}: rlnImageName {value!r} is neither 'file.mrc' nor "
                             "'N@stack.mrcs'")
    idx = m.group(1)
    return m.group(2), (int(idx) if idx is not None else None)


def image_key(value: object) -> tuple[int, str] | None:
    """``'12@dir/particles.mrcs'`` → ``(12, 'particles.mrcs')``; None unless it is ``N@file``."""
    text = str(value)
    if "@" not in text:
        return None
    idx, _, path = text.partition("@")
    try:
        return int(idx), Path(path).name
    except ValueError:
        return None


def stack_rows(names, where: str) -> np.ndarray:
    """0-based stack rows of ``N@stack`` names; any other name is an error naming it."""
    rows = []
    for value in names:
        text = str(value)
        idx = text.split("@")[0]
        if not re.fullmatch(r"\d+", idx):
            raise TomoclustError(f"{where}: rlnImageName {text!r} is not 'index@stack'")
        rows.append(int(idx) - 1)
    return np.asarray(rows, dtype=np.int64)
