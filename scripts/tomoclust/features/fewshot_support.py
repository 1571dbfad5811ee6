"""Few-shot support sets: a user's support STAR validated against the particle table, and a
support STAR written from a simulation's ground truth (demos, tests). No torch here: the
CPU-only steps import this module.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .. import TomoclustError
from ..formats.image_names import image_key
from ..formats.stacks import open_stack
from ..formats.star import read_star

log = logging.getLogger(__name__)


@dataclass
class SupportSet:
    rows: np.ndarray | None  # indices into the particle table (user STAR), None: simulated
    labels: np.ndarray  # 1-based class numbers
    names: dict[int, str]  # class number -> name
    table: pd.DataFrame  # one row per support example, for the record


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
    df = _read_support(p)
    by_image = "rlnImageName" in df.columns
    cls_arr = _class_numbers(df, p)
    n_cls = _check_classes(cls_arr, p, n_classes)
    if by_image:
        rows = _rows_by_image(df, p, particles)
    else:
        rows = _rows_by_coordinates(df, p, particles, tolerance_angst, tomo_voxel_size)
    cls = cls_arr.tolist()
    _check_no_conflicts(rows, cls, p)
    cnames = _class_names(df, p, names)
    cnames = {c: cnames.get(c, f"class{c}") for c in range(1, n_cls + 1)}
    table = pd.DataFrame({"tclParticleIndex": rows + 1, "rlnClassNumber": cls_arr,
                          "rlnClassName": [cnames[c] for c in cls]})
    if "rlnImageName" in particles.columns:
        table.insert(0, "rlnImageName", particles["rlnImageName"].to_numpy()[rows])
    return SupportSet(rows, cls_arr, cnames, table)


_COORDS = ["rlnTomoName", "rlnCoordinateX", "rlnCoordinateY", "rlnCoordinateZ"]


def _read_support(p: Path) -> pd.DataFrame:
    """The support STAR, with its class column, a particle reference and no empty cell."""
    df = read_star(p, what="few-shot support STAR")
    if "rlnClassNumber" not in df.columns:
        raise TomoclustError(
            f"few-shot support {p}: missing column rlnClassNumber (found {list(df.columns)}); "
            "each row needs rlnClassNumber and rlnImageName, or rlnClassNumber and "
            "rlnTomoName + rlnCoordinateX/Y/Z")
    by_image = "rlnImageName" in df.columns
    if not by_image and not set(_COORDS) <= set(df.columns):
        missing = [c for c in _COORDS if c not in df.columns]
        raise TomoclustError(
            f"few-shot support {p}: no particle reference: needs rlnImageName, or "
            f"rlnTomoName + rlnCoordinateX/Y/Z (missing {missing})")
    if len(df) == 0:
        raise TomoclustError(f"few-shot support {p}: no rows")
    needed = ["rlnClassNumber"] + (["rlnImageName"] if by_image else _COORDS)
    for i in range(len(df)):
        for col in needed:
            v = df[col].iloc[i]
            if v is None or (isinstance(v, float) and not np.isfinite(v)) or \
                    (isinstance(v, str) and v.strip() in ("", "nan", "NaN")):
                raise TomoclustError(f"few-shot support {p}, row {i + 1}: {col} is empty/NaN")
    return df


def _class_numbers(df: pd.DataFrame, p: Path) -> np.ndarray:
    """rlnClassNumber as integers ≥ 1."""
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
    return np.array(cls)


def _check_classes(cls_arr: np.ndarray, p: Path, n_classes: int | None) -> int:
    """The number of classes C; every class 1..C has an example, none is above C."""
    n_cls = int(n_classes) if n_classes else int(cls_arr.max())
    if cls_arr.max() > n_cls:
        row = int(np.argmax(cls_arr > n_cls))
        raise TomoclustError(f"few-shot support {p}, row {row + 1}: class {cls_arr[row]} but "
                             f"only {n_cls} classes are configured")
    empty = sorted(set(range(1, n_cls + 1)) - set(cls_arr.tolist()))
    if empty:
        raise TomoclustError(
            f"few-shot support {p}: class(es) {empty} have no example; every class 1..{n_cls} "
            "needs at least one row (renumber the classes 1..C without gaps)")
    return n_cls


def _rows_by_image(df: pd.DataFrame, p: Path, particles: pd.DataFrame) -> np.ndarray:
    """Rows of the particle table named by the support's ``rlnImageName`` (``i@stack``)."""
    lookup: dict[tuple[int, str], int] = {}
    for j, v in enumerate(particles["rlnImageName"]):
        key = image_key(v)
        if key is not None:
            lookup[key] = j
    rows = np.empty(len(df), dtype=np.int64)
    for i, v in enumerate(df["rlnImageName"]):
        key = image_key(v)
        if key is None:
            raise TomoclustError(f"few-shot support {p}, row {i + 1}: rlnImageName {v!r} "
                                 "is not of the form index@stack.mrcs")
        if key not in lookup:
            raise TomoclustError(f"few-shot support {p}, row {i + 1}: rlnImageName {v!r} "
                                 f"refers to no particle of the particle table "
                                 f"({len(particles)} particles)")
        rows[i] = lookup[key]
    return rows


def _rows_by_coordinates(df: pd.DataFrame, p: Path, particles: pd.DataFrame,
                         tolerance_angst: float, tomo_voxel_size: float | None) -> np.ndarray:
    """Rows of the particle table nearest to the support's coordinates (same tomogram,
    within the tolerance)."""
    if tomo_voxel_size is None:
        raise TomoclustError("few-shot support by coordinates needs the tomogram voxel size")
    tol_vox = tolerance_angst / tomo_voxel_size
    pxyz = particles[["rlnCoordinateX", "rlnCoordinateY", "rlnCoordinateZ"]].to_numpy(float)
    ptomo = particles["rlnTomoName"].astype(str).to_numpy()
    sxyz = df[["rlnCoordinateX", "rlnCoordinateY", "rlnCoordinateZ"]].to_numpy(float)
    rows = np.empty(len(df), dtype=np.int64)
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
    return rows


def _check_no_conflicts(rows: np.ndarray, cls: list[int], p: Path) -> None:
    """No particle is given two different classes."""
    seen: dict[int, tuple[int, int]] = {}
    for i, (r, c) in enumerate(zip(rows.tolist(), cls, strict=True)):
        if r in seen and seen[r][1] != c:
            raise TomoclustError(f"few-shot support {p}, row {i + 1}: particle {r + 1} is also "
                                 f"row {seen[r][0] + 1} with another class ({seen[r][1]} vs {c})")
        seen.setdefault(r, (i, c))


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


# ------------------------------------------------------------------- rule inputs and outputs
def load_training_set(star: str | Path, stack: str | Path
                      ) -> tuple[np.ndarray, float, np.ndarray, dict[int, str]]:
    """A simulated few-shot training set: (stack, voxel size, class numbers, class names)."""
    truth = read_star(star, what="few-shot training set")
    data, vs = open_stack(stack)
    if len(truth) != len(data):
        raise TomoclustError(f"{star} has {len(truth)} rows but {stack} holds {len(data)} "
                             "volumes")
    names = truth.drop_duplicates("rlnClassNumber").set_index("rlnClassNumber")["rlnClassName"]
    return data, vs, truth["rlnClassNumber"].to_numpy(), {int(k): str(v)
                                                           for k, v in names.items()}


def support_examples(particles: pd.DataFrame, stack: np.ndarray, *,
                     class_names: dict | None = None, support_star: str | Path | None = None,
                     particle_star: str | Path | None = None, tolerance_angst: float = 30.0,
                     sim_star: str | Path | None = None, sim_stack: str | Path | None = None
                     ) -> tuple[np.ndarray, SupportSet]:
    """The support volumes and their :class:`SupportSet`: the particles named by a user's
    ``support_star`` (coordinates converted with the tomogram voxel size in the optics of
    ``particle_star``), or a simulated support set (``sim_star`` + ``sim_stack``; its
    ``rows`` are None). ``class_names`` (class number -> name) overrides the names."""
    names = {int(k): str(v) for k, v in (class_names or {}).items()}
    if support_star is not None:
        optics = read_star(particle_star, block="optics", what="particle table")
        sup = load_support_star(support_star, particles, tolerance_angst=float(tolerance_angst),
                                tomo_voxel_size=float(optics["rlnTomoTiltSeriesPixelSize"].iloc[0]),
                                names=names)
        log.info("support: %d particles of the particle table named by %s", len(sup.rows),
                 support_star)
        return np.asarray(stack[sup.rows]), sup
    table = read_star(sim_star, what="simulated support set")
    sstack, _ = open_stack(sim_stack)
    labels = table["rlnClassNumber"].to_numpy(dtype=np.int64)
    cnames = table.drop_duplicates("rlnClassNumber").set_index("rlnClassNumber")["rlnClassName"]
    cnames = {int(k): names.get(int(k), str(v)) for k, v in cnames.items()}
    out = table[["rlnImageName", "rlnClassNumber"]].copy()
    out["rlnClassName"] = [cnames[int(c)] for c in out["rlnClassNumber"]]
    log.info("support: %d simulated particles of %s", len(labels), list(cnames.values()))
    return np.asarray(sstack), SupportSet(None, labels, cnames, out)


def fewshot_labels_table(particles: pd.DataFrame, prediction, support: SupportSet
                         ) -> pd.DataFrame:
    """The few-shot labels of every particle (``prediction``: a features.fewshot.Prediction):
    its image name, tomogram and coordinates, the class number and name, the confidence, the
    probability of every class and ``tclSupport`` (1 for the support examples taken from the
    particle table)."""
    labels, probabilities = prediction.labels, prediction.probabilities
    keep = ("rlnImageName", "rlnTomoName", "rlnCoordinate", "rlnCentered")
    out = particles[[c for c in particles.columns if c.startswith(keep)]].copy()
    out["rlnClassNumber"] = labels
    out["rlnClassName"] = [support.names[int(c)] for c in labels]
    out["tclClassProbability"] = prediction.confidence
    for k in range(probabilities.shape[1]):
        out[f"tclProbabilityClass{k + 1}"] = probabilities[:, k]
    is_support = np.zeros(len(particles), dtype=int)
    if "tclParticleIndex" in support.table.columns:
        is_support[support.table["tclParticleIndex"].to_numpy() - 1] = 1
    out["tclSupport"] = is_support
    return out


def fewshot_summary(prediction, support: SupportSet, variant: str) -> dict:
    """What info.json of a few-shot classification records beside the run information
    (``prediction``: a features.fewshot.Prediction)."""
    counts = {support.names[c]: int((prediction.labels == c).sum())
              for c in sorted(support.names)}
    return {"variant": variant, "n_particles": len(prediction.labels),
            "n_support": len(support.labels), "classes": support.names, "class_sizes": counts,
            "mean_confidence": float(prediction.confidence.mean()),
            "embedding_dim": int(prediction.features.shape[1]),
            "support_source": "simulated" if support.rows is None else "star"}
