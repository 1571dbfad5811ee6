"""Few-shot support sets: a user's support STAR validated against the particle table, and a
support STAR written from a simulation's ground truth (demos, tests). No torch here: the
CPU-only steps import this module.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .. import TomoclustError
from ..formats.star import read_star


@dataclass
class SupportSet:
    rows: np.ndarray  # indices into the particle table (user STAR), or None for simulated
    labels: np.ndarray  # 1-based class numbers
    names: dict[int, str]  # class number -> name
    table: pd.DataFrame  # one row per support example, for the record


def _image_key(value: object) -> tuple[int, str] | None:
    """``"12@path/particles.mrcs"`` → ``(12, "particles.mrcs")``; None if malformed."""
    text = str(value)
    if "@" not in text:
        return None
    idx, _, path = text.partition("@")
    try:
        return int(idx), Path(path).name
    except ValueError:
        return None


def _class_names(df: pd.DataFrame, path: Path, names: dict | None) -> dict[int, str]:
    out: dict[int, str] = {}
    if "rlnClassName" in df.columns:
        for i, (c, nm) in enumerate(zip(df["rlnClassNumber"], df["rlnClassName"],
                                        strict=True)):
            nm = str(nm)
            if int(c) in out and out[int(c)] != nm:
                raise TomoclustError(
                    f"few-shot support {path}, row {i + 1}: class {int(c)} is named "
                    f"{nm!r} here but {out[int(c)]!r} in an earlier row")
            out[int(c)] = nm
    for c, nm in (names or {}).items():
        out.setdefault(int(c), str(nm))
    return out


def load_support_star(path: str | Path, particles: pd.DataFrame, tolerance_angst: float = 30.0,
                      tomo_voxel_size: float | None = None, n_classes: int | None = None,
                      names: dict | None = None) -> SupportSet:
    """Read and validate a user support STAR against the particle table.

    Every row needs ``rlnClassNumber`` (an integer ≥ 1) and a reference to one particle of
    ``particles`` (results/particles/particles.star), either

    * ``rlnImageName`` (``i@particles.mrcs``: the i-th particle, 1-based; the stack is
      compared by file name, so ``i@results/particles/particles.mrcs`` works too), or
    * ``rlnTomoName`` + ``rlnCoordinateX/Y/Z`` (voxels of the ingested tomogram, as in the
      particle table): the nearest particle of that tomogram within ``tolerance_angst``
      (converted with ``tomo_voxel_size``).

    Classes must be numbered ``1..C`` (``C = n_classes`` when given, else the largest class
    number), each with at least one example. ``rlnClassName`` (optional) or ``names``
    (class number → name) names the classes. Every problem is a :class:`TomoclustError`
    naming the file and the row (1-based, in the data block).
    """
    p = Path(path)
    df = read_star(p, what="few-shot support STAR")
    if "rlnClassNumber" not in df.columns:
        raise TomoclustError(
            f"few-shot support {p}: missing column rlnClassNumber (found {list(df.columns)}); "
            "each row needs rlnClassNumber and rlnImageName, or rlnClassNumber and "
            "rlnTomoName + rlnCoordinateX/Y/Z")
    by_image = "rlnImageName" in df.columns
    coord_cols = ["rlnTomoName", "rlnCoordinateX", "rlnCoordinateY", "rlnCoordinateZ"]
    if not by_image and not set(coord_cols) <= set(df.columns):
        missing = [c for c in coord_cols if c not in df.columns]
        raise TomoclustError(
            f"few-shot support {p}: no particle reference: needs rlnImageName, or "
            f"rlnTomoName + rlnCoordinateX/Y/Z (missing {missing})")
    if len(df) == 0:
        raise TomoclustError(f"few-shot support {p}: no rows")
    needed = ["rlnClassNumber"] + (["rlnImageName"] if by_image else coord_cols)
    for i in range(len(df)):
        for col in needed:
            v = df[col].iloc[i]
            if v is None or (isinstance(v, float) and not np.isfinite(v)) or \
                    (isinstance(v, str) and v.strip() in ("", "nan", "NaN")):
                raise TomoclustError(f"few-shot support {p}, row {i + 1}: {col} is empty/NaN")
    cls = []
    for i, v in enumerate(df["rlnClassNumber"]):
        try:
            f = float(v)
        except (TypeError, ValueError):
            f = float("nan")
        if not np.isfinite(f) or f != int(f) or f < 1:
            raise TomoclustError(f"few-shot support {p}, row {i + 1}: rlnClassNumber must be "
                                 f"an integer ≥ 1, got {v!r}")
        cls.append(int(f))
    cls_arr = np.array(cls)
    n_cls = int(n_classes) if n_classes else int(cls_arr.max())
    if cls_arr.max() > n_cls:
        row = int(np.argmax(cls_arr > n_cls))
        raise TomoclustError(f"few-shot support {p}, row {row + 1}: class {cls_arr[row]} but "
                             f"only {n_cls} classes are configured")
    empty = sorted(set(range(1, n_cls + 1)) - set(cls))
    if empty:
        raise TomoclustError(
            f"few-shot support {p}: class(es) {empty} have no example; every class 1..{n_cls} "
            "needs at least one row (renumber the classes 1..C without gaps)")

    rows = np.empty(len(df), dtype=np.int64)
    if by_image:
        lookup: dict[tuple[int, str], int] = {}
        for j, v in enumerate(particles["rlnImageName"]):
            key = _image_key(v)
            if key is not None:
                lookup[key] = j
        for i, v in enumerate(df["rlnImageName"]):
            key = _image_key(v)
            if key is None:
                raise TomoclustError(f"few-shot support {p}, row {i + 1}: rlnImageName {v!r} "
                                     "is not of the form index@stack.mrcs")
            if key not in lookup:
                raise TomoclustError(f"few-shot support {p}, row {i + 1}: rlnImageName {v!r} "
                                     f"refers to no particle of the particle table "
                                     f"({len(particles)} particles)")
            rows[i] = lookup[key]
    else:
        if tomo_voxel_size is None:
            raise TomoclustError("few-shot support by coordinates needs the tomogram voxel size")
        tol_vox = tolerance_angst / tomo_voxel_size
        pxyz = particles[["rlnCoordinateX", "rlnCoordinateY", "rlnCoordinateZ"]].to_numpy(float)
        ptomo = particles["rlnTomoName"].astype(str).to_numpy()
        sxyz = df[["rlnCoordinateX", "rlnCoordinateY", "rlnCoordinateZ"]].to_numpy(float)
        for i, tomo in enumerate(df["rlnTomoName"].astype(str)):
            cand = np.flatnonzero(ptomo == tomo)
            if len(cand) == 0:
                raise TomoclustError(f"few-shot support {p}, row {i + 1}: tomogram {tomo!r} "
                                     "has no particle in the particle table")
            dist = np.linalg.norm(pxyz[cand] - sxyz[i], axis=1)
            j = int(np.argmin(dist))
            if dist[j] > tol_vox:
                raise TomoclustError(
                    f"few-shot support {p}, row {i + 1}: no particle of {tomo} within "
                    f"{tolerance_angst:g} Å of ({', '.join(f'{x:g}' for x in sxyz[i])}); the "
                    f"nearest is {dist[j] * tomo_voxel_size:.0f} Å away")
            rows[i] = cand[j]
    seen: dict[int, tuple[int, int]] = {}
    for i, (r, c) in enumerate(zip(rows.tolist(), cls, strict=True)):
        if r in seen and seen[r][1] != c:
            raise TomoclustError(f"few-shot support {p}, row {i + 1}: particle {r + 1} is also "
                                 f"row {seen[r][0] + 1} with another class ({seen[r][1]} vs {c})")
        seen.setdefault(r, (i, c))
    cnames = _class_names(df, p, names)
    cnames = {c: cnames.get(c, f"class{c}") for c in range(1, n_cls + 1)}
    table = pd.DataFrame({"tclParticleIndex": rows + 1, "rlnClassNumber": cls_arr,
                          "rlnClassName": [cnames[c] for c in cls]})
    if "rlnImageName" in particles.columns:
        table.insert(0, "rlnImageName", particles["rlnImageName"].to_numpy()[rows])
    return SupportSet(rows, cls_arr, cnames, table)


def support_from_truth(particles: pd.DataFrame, truth: pd.DataFrame, n_per_class: int,
                       tolerance_angst: float, seed: int = 0) -> pd.DataFrame:
    """A support STAR as a user would write it, from the ground truth of a simulation.

    For demos and tests only: ``n_per_class`` picked particles of every true class (those
    matching a true particle within the tolerance), chosen at random, with ``rlnImageName``,
    ``rlnClassNumber`` (the truth's) and ``rlnClassName`` (the template name).
    """
    from ..evaluate import truth_classes

    cls = truth_classes(particles, truth, tolerance_angst)
    names = dict(zip(truth["rlnClassNumber"].astype(int), truth["tclTemplateName"].astype(str),
                     strict=True))
    rng = np.random.default_rng(seed)
    rows = []
    for c in sorted(names):
        idx = np.flatnonzero(cls == c)
        if len(idx) == 0:
            raise TomoclustError(f"support from truth: no picked particle matches class {c} "
                                 f"({names[c]})")
        rows += [(int(j), c) for j in np.sort(rng.choice(idx, min(n_per_class, len(idx)),
                                                         replace=False))]
    return pd.DataFrame({
        "rlnImageName": [particles["rlnImageName"].iloc[j] for j, _ in rows],
        "rlnClassNumber": [c for _, c in rows],
        "rlnClassName": [names[c] for _, c in rows],
    })
