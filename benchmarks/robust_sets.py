"""Labelled subtomogram sets for the robustness benchmark (importable on its own).

    import sys; sys.path.insert(0, "benchmarks")
    from robust_sets import make_set
    stack, labels = make_set("similar", "shift2@0.1", n_per_class=200, seed=0)

``make_set(classes, condition, n_per_class, seed) -> (stack, labels)``: ``stack`` is float32
``(N, 32, 32, 32)`` at 12 Å, every box normalised to zero mean and unit variance; ``labels``
int64 ``(N,)``: the 0-based index of the class in ``classes``, or -1 for a false pick (a box
without a particle at its centre). Deterministic for given arguments.

``classes``: ``"similar"`` (five SHREC'21 complexes of ~230–300 kDa, within 1.26x in atom
count: 1bxn RuBisCO L4S4, 1qvr ClpB, 3cf3 p97, 1u6g Cand1-Cul1-Roc1, 3d2f Sse1p-Hsp70),
``"different"`` (the demo's five: 3jb9, 6s47, 3j9i, 4v1w, 3cf3), or a list of entries of
``STRUCTURES``.

``condition``: a name of ``CONDITIONS`` (SNR 0.1), ``"name@SNR"`` (e.g. ``"shift2@100"``) or a
dict of :class:`Condition` fields, optionally with ``"name"`` to start from a named one.

Imaging model (subtomogram mode, as ``tomoclust.simulate.simulate_subtomograms``): the density
is rotated (uniform proper rotations) and shifted, multiplied in Fourier space by a 3-D CTF
(300 kV, Cs 2.7 mm, 7 % amplitude contrast, defocus fixed or drawn per particle) and the
missing wedge of the tilt range (tilt axis y); noise of variance ``var(density) / SNR`` (the
aitom convention), half before the CTF, and half after it, white (``noise="aitom"``) or smooth
and low-frequency followed by a band-pass of the whole box (``noise="coloured"``).
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass, field, replace
from functools import lru_cache
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO / "scripts") not in sys.path:
    sys.path.insert(0, str(REPO / "scripts"))

from tomoclust.numerics.ctf import ctf_grid  # noqa: E402
from tomoclust.numerics.fourier import radial_freq, wedge_mask  # noqa: E402
from tomoclust.numerics.rotations import random_rotations, rotate_volume  # noqa: E402
from tomoclust.simulate.density import (  # noqa: E402
    bounding_radius,
    template_density,
    template_potential,
)

BOX, VOXEL = 32, 12.0

STRUCTURES = {
    "1bxn": "resources/structures/1bxn.pdb.gz", "1qvr": "resources/structures/1qvr.pdb.gz",
    "3cf3": "resources/structures/3cf3.pdb.gz", "1u6g": "resources/structures/1u6g.pdb.gz",
    "3d2f": "resources/structures/3d2f.pdb.gz", "3jb9": "resources/structures/3jb9.cif.gz",
    "6s47": "resources/structures/6s47.cif.gz", "3j9i": "resources/structures/3j9i.pdb.gz",
    "4v1w": "resources/structures/4v1w.cif.gz",
}
CLASS_SETS = {
    "similar": ("1bxn", "1qvr", "3cf3", "1u6g", "3d2f"),
    "different": ("3jb9", "6s47", "3j9i", "4v1w", "3cf3"),
}


@dataclass(frozen=True)
class Condition:
    """One imaging condition. Lengths in voxels of 12 Å unless named otherwise."""

    snr: float = 0.1
    shift: float = 0.0  # uniform in [-shift, shift] per axis
    pick_offsets: bool = False  # offsets of DoG picks matched to truth (overrides shift)
    defocus_um: tuple[float, float] = (5.0, 5.0)  # per-particle uniform range
    tilt: tuple[float, float] = (-60.0, 60.0)
    noise: str = "aitom"  # aitom | coloured
    crowding: float = 0.0  # mean number of neighbours touching each box (Poisson)
    false_picks: float = 0.0  # fraction of boxes without a particle at the centre
    generator: str = "gaussian"  # gaussian (atomic numbers, 24 Å Gaussian) | peng (potential)


CONDITIONS: dict[str, Condition] = {
    "centred": Condition(),
    "shift2": Condition(shift=2.0),
    "shift4": Condition(shift=4.0),
    "picks": Condition(pick_offsets=True),
    "defocus": Condition(shift=2.0, defocus_um=(2.0, 6.0)),
    "tilt45": Condition(shift=2.0, tilt=(-45.0, 45.0)),
    "tilt_asym": Condition(shift=2.0, tilt=(-40.0, 60.0)),
    "coloured": Condition(shift=2.0, noise="coloured"),
    "crowded": Condition(shift=2.0, crowding=1.0),
    "false_picks": Condition(shift=2.0, false_picks=0.15),
    "peng": Condition(shift=2.0, generator="peng"),
    "combined": Condition(pick_offsets=True, defocus_um=(2.0, 6.0), tilt=(-40.0, 60.0),
                          noise="coloured", crowding=1.0, false_picks=0.15),
}


def parse_condition(condition: str | dict | Condition) -> Condition:
    if isinstance(condition, Condition):
        return condition
    if isinstance(condition, str):
        name, _, snr = condition.partition("@")
        if name not in CONDITIONS:
            raise KeyError(f"unknown condition {name!r}; known: {sorted(CONDITIONS)}")
        c = CONDITIONS[name]
        return replace(c, snr=float(snr)) if snr else c
    d = dict(condition)
    base = CONDITIONS[d.pop("name")] if "name" in d else Condition()
    for k in ("defocus_um", "tilt"):
        if k in d:
            d[k] = tuple(d[k])
    return replace(base, **d)


def class_names(classes) -> tuple[str, ...]:
    return CLASS_SETS[classes] if isinstance(classes, str) else tuple(classes)


@lru_cache(maxsize=32)
def template(name: str, generator: str) -> np.ndarray:
    """Density of a structure in a 32³ box at 12 Å by one of the two generators, scaled to
    unit mean over its 98 % mass sphere so both generators give comparable contrast."""
    path = REPO / STRUCTURES[name]
    if generator == "gaussian":
        d = template_density(path, VOXEL, box=BOX)
    elif generator == "peng":
        d = template_potential(path, VOXEL, box=BOX)
    else:
        raise ValueError(f"unknown density generator {generator!r} (gaussian or peng)")
    return (d / d.sum()).astype(np.float32)


def _offsets_file(classes: tuple[str, ...]) -> Path:
    return REPO / "benchmarks" / "results" / f"pick_offsets_{'_'.join(classes)}.json"


def pick_offsets(classes, seed: int = 0) -> dict[str, np.ndarray]:
    """Offsets (xyz, voxels of 12 Å) of DoG picks from the true centres, per class, from a
    simulated tomogram (10 Å, SNR 0.1, the picking defaults of config.yaml) matched within
    60 Å. Computed once and kept in ``benchmarks/results/pick_offsets_<classes>.json``."""
    names = class_names(classes)
    f = _offsets_file(names)
    if f.exists():
        return {k: np.asarray(v) for k, v in json.loads(f.read_text())["offsets"].items()}
    from tomoclust.evaluate import match_points
    from tomoclust.pick import dog_pick, params_from_angst
    from tomoclust.simulate.tomograms import Template, TomogramSettings, simulate_tomogram

    temps = [Template(n, i + 1, template_density(REPO / STRUCTURES[n], 10.0))
             for i, n in enumerate(names)]
    spec = TomogramSettings("offsets", (160, 320, 320), 10.0, {n: 40 for n in names}, snr=0.1,
                        seed=seed)
    sim = simulate_tomogram(temps, spec)
    p = params_from_angst(10.0, 100.0, threshold=3.0, min_distance_angst=170.0,
                          edge_angst=160.0, bin=3)
    picks = dog_pick(sim.tomogram, p)
    truth = sim.truth
    t_xyz = np.stack([truth["rlnCoordinateX"], truth["rlnCoordinateY"],
                      truth["rlnCoordinateZ"]], 1).astype(float)
    p_xyz = picks[["x", "y", "z"]].to_numpy(float)
    ip, it = match_points(p_xyz, t_xyz, 6.0)
    off = (p_xyz[ip] - t_xyz[it]) * 10.0 / VOXEL
    out = {n: off[truth["tclTemplateName"].to_numpy()[it] == n].tolist() for n in names}
    f.parent.mkdir(parents=True, exist_ok=True)
    f.write_text(json.dumps({"classes": names, "seed": seed, "voxel_angst": VOXEL,
                             "n_picks": len(picks), "n_truth": len(truth), "n_matched": len(ip),
                             "offsets": out}, indent=1))
    return {k: np.asarray(v) for k, v in out.items()}


def _band(shape, lo_angst: float, hi_angst: float) -> np.ndarray:
    k = radial_freq(shape, rfft=True) / VOXEL
    hp = 1.0 - np.exp(-(k * lo_angst) ** 2 / 2.0)
    lp = np.exp(-(k * hi_angst) ** 2 / 2.0)
    return (hp * lp).astype(np.float32)


def make_set(classes, condition, n_per_class: int, seed: int, *, info: dict | None = None
             ) -> tuple[np.ndarray, np.ndarray]:
    """Simulated labelled subtomograms (see module docstring). A dict passed as ``info``
    receives the truth behind each box: ``shift_xyz`` (voxels), ``defocus_um``."""
    cond = parse_condition(condition)
    names = class_names(classes)
    rng = np.random.default_rng([seed, 977])
    temps = [template(n, cond.generator) for n in names]
    radii = [bounding_radius(t) for t in temps]
    k = len(names)
    labels = np.repeat(np.arange(k), n_per_class)
    n_false = round(cond.false_picks * len(labels) / max(1.0 - cond.false_picks, 1e-9))
    labels = np.concatenate([labels, np.full(n_false, -1)])
    labels = labels[rng.permutation(len(labels))]
    n = len(labels)
    mats = random_rotations(n, rng)
    if cond.pick_offsets:
        offs = pick_offsets(names)
        pool = np.concatenate([offs[nm] for nm in names])
        shifts = np.empty((n, 3))
        for i, c in enumerate(labels):
            src = offs[names[c]] if c >= 0 and len(offs[names[c]]) else pool
            shifts[i] = src[rng.integers(len(src))] * rng.choice([-1, 1], 3)
    else:
        shifts = rng.uniform(-cond.shift, cond.shift, (n, 3))
    shape = (BOX,) * 3
    raw = np.zeros((n, *shape), dtype=np.float32)
    for i, c in enumerate(labels):
        if c >= 0:
            raw[i] = rotate_volume(temps[c], mats[i], order=3, shift_xyz=shifts[i])
        n_nb = rng.poisson(cond.crowding) if cond.crowding > 0 else 0
        if c < 0:  # a false pick: a fragment of a neighbour, or nothing
            n_nb = max(n_nb, int(rng.random() < 0.5))
        r_self = radii[c] if c >= 0 else 2.0
        for _ in range(n_nb):
            j = int(rng.integers(k))
            d = rng.normal(size=3)
            d /= np.linalg.norm(d)
            dist = r_self + radii[j] + 1.0 + rng.uniform(0, 3)
            raw[i] += rotate_volume(temps[j], random_rotations(1, rng)[0], order=1,
                                    shift_xyz=(shifts[i] if c >= 0 else 0) + d * dist)
    has = labels >= 0
    sigma = np.sqrt(float(raw[has].var(axis=(1, 2, 3)).mean()) / cond.snr)
    wedge = wedge_mask(shape, cond.tilt[0], cond.tilt[1], rfft=True)
    lo, hi = cond.defocus_um
    dfs = np.round(rng.uniform(lo, hi, n), 2) if hi > lo else np.full(n, lo)
    ctfs = {d: ctf_grid(shape, VOXEL, rfft=True, defocus_um=float(d)) for d in np.unique(dfs)}
    if cond.noise == "coloured":
        smooth = np.exp(-(radial_freq(shape, rfft=True) / VOXEL * 80.0) ** 2 / 2.0)
        band = _band(shape, 400.0, 30.0)
    elif cond.noise != "aitom":
        raise ValueError(f"unknown noise model {cond.noise!r} (aitom or coloured)")
    out = np.empty_like(raw)
    for i in range(n):
        pre = rng.standard_normal(shape).astype(np.float32) * (sigma / np.sqrt(2))
        post = rng.standard_normal(shape).astype(np.float32)
        f_sig = np.fft.rfftn(raw[i] + pre) * ctfs[dfs[i]]
        if cond.noise == "coloured":
            low = np.fft.irfftn(np.fft.rfftn(post) * smooth, s=shape)
            low *= (sigma / np.sqrt(2)) / max(float(low.std()), 1e-12)
            spec = (f_sig + np.fft.rfftn(low)) * band
        else:
            spec = f_sig + np.fft.rfftn(post) * (sigma / np.sqrt(2))
        out[i] = np.fft.irfftn(spec * wedge, s=shape)
    if info is not None:
        info.update(shift_xyz=np.where(labels[:, None] >= 0, shifts, np.nan), defocus_um=dfs,
                    condition=asdict(cond), classes=names)
    out -= out.mean(axis=(1, 2, 3), keepdims=True)
    out /= np.maximum(out.std(axis=(1, 2, 3), keepdims=True), 1e-12)
    return out.astype(np.float32), labels.astype(np.int64)


def describe(condition) -> dict:
    return asdict(parse_condition(condition))


__all__ = [
    "CLASS_SETS",
    "CONDITIONS",
    "Condition",
    "describe",
    "field",
    "make_set",
    "parse_condition",
    "pick_offsets",
]
