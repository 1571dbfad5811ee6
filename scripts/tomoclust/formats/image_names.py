"""Image names of particle tables: ``N@stack.mrcs`` (1-based slice ``N`` of a stack) or a file.
"""

from __future__ import annotations

import re

from .. import TomoclustError

# ------------------------------------------------------------------------------ mode 2
_IMAGE = re.compile(r"^\s*(?:(\d+)\s*@\s*)?(.+?)\s*$")


def parse_image_name(value: object, where: str) -> tuple[str, int | None]:
    """``'N@path'`` → ``(path, N)`` (1-based), ``'path'`` → ``(path, None)``."""
    m = _IMAGE.match(str(value)) if isinstance(value, str) else None
    if m is None or not m.group(2):
        raise TomoclustError(f"{where}: rlnImageName {value!r} is neither 'file.mrc' nor "
                             "'N@stack.mrcs'")
    idx = m.group(1)
    return m.group(2), (int(idx) if idx is not None else None)
