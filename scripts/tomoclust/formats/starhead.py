"""STAR headers without parsing the data: block names and column labels.

Pure Python (no numpy, no starfile) so the Snakefile can call it at DAG time on large files.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from .. import TomoclustError


def star_labels(path: str | Path) -> dict[str, list[str]]:
    """Column labels of every data block (``{block: [labels]}``), from the header only.

    Cheap enough for the Snakefile to call on large files at DAG time.
    """
    p = Path(path)
    if not p.is_file():
        raise TomoclustError(f"STAR file {p}: file does not exist")
    blocks: dict[str, list[str]] = {}
    current = None
    with open(p, errors="replace") as fh:
        for line in fh:
            s = line.strip()
            if s.startswith("data_"):
                current = s[5:]
                blocks[current] = []
            elif s.startswith("_") and current is not None:
                blocks[current].append(s.split()[0][1:])
    if not blocks:
        raise TomoclustError(f"STAR file {p}: contains no data block")
    return blocks


def particle_labels(path: str | Path) -> list[str]:
    """Labels of the block :func:`read_particles` would return."""
    blocks = star_labels(path)
    return blocks["particles"] if "particles" in blocks else list(blocks.values())[-1]


def has_class_numbers(paths: Iterable[str | Path]) -> bool:
    """Whether any of these STAR files has an ``rlnClassNumber`` particle column (header only)."""
    return any("rlnClassNumber" in particle_labels(p) for p in paths)

