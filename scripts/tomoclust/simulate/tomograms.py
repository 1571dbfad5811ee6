"""Simulated crowded tomograms with ground truth.

Tomogram mode (:func:`simulate_tomogram`)
    Randomly rotated (uniform on SO(3), proper rotations only) templates are placed without
    overlap using per-class quotas, largest particles first; optional lipid vesicles and gold
    beads. The noise-free volume is projected over the tilt range, each projection gets its CTF,
    and the noise-free and noise-only series are reconstructed separately by weighted
    back-projection, so the noise can be scaled to give exactly the requested SNR:
    ``SNR = var(signal tomogram) / var(noise tomogram)`` over the voxels occupied by particles
    (``snr_region="particles"``, the default, comparable to a subtomogram's SNR) or over the
    whole volume (``snr_region="volume"``, which depends on how crowded the volume is).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from .. import TomoclustError
from ..formats.mrc import read_mrc
from ..formats.star import particle_table
from ..numerics.ctf import ctf_grid
from ..numerics.rotations import random_rotations, relion_angles, rotate_volume
from ..numerics.tilt_geometry import TiltGeometry, tilt_angles
from .density import bounding_radius

log = logging.getLogger(__name__)


@dataclass
class Template:
    """A class of particle: its name, 1-based class number and density at the voxel size."""

    name: str
    class_number: int
    density: np.ndarray  # (z, y, x) cube, centred at d // 2
    radius: float = field(init=False)  # voxels, encloses 98 % of the mass

    def __post_init__(self) -> None:
        self.density = np.asarray(self.density, dtype=np.float32)
        self.radius = bounding_radius(self.density)


def load_templates(names: Sequence[str], paths: Sequence[str]) -> list[Template]:
    """Template densities from MRC maps (as the template_density rules write them), class
    numbers 1, 2, ... in the order given."""
    templates = []
    for i, (name, path) in enumerate(zip(names, paths, strict=True)):
        dens, _ = read_mrc(path, what="template")
        templates.append(Template(name, i + 1, dens))
    return templates


@dataclass
class CtfSettings:
    """Microscope parameters. ``defocus_um`` is positive for underfocus."""

    defocus_um: float = 5.0
    voltage_kv: float = 300.0
    cs_mm: float = 2.7
    amplitude_contrast: float = 0.07
    bfactor: float = 0.0

    def as_kwargs(self) -> dict[str, float]:
        return dict(defocus_um=self.defocus_um, voltage_kv=self.voltage_kv, cs_mm=self.cs_mm,
                    amplitude_contrast=self.amplitude_contrast, bfactor=self.bfactor)


@dataclass
class TomogramSettings:
    """What one simulated tomogram contains and how it is imaged.

    ``counts`` gives the number of particles of each template (by name). ``shape`` is
    ``(z, y, x)`` voxels. Angles in degrees, lengths in Å unless named ``_vox``.
    """

    name: str
    shape: tuple[int, int, int]
    voxel_size: float
    counts: dict[str, int]
    snr: float = 0.1
    tilt_min: float = -60.0
    tilt_max: float = 60.0
    tilt_step: float = 3.0
    ctf: CtfSettings = field(default_factory=CtfSettings)
    defocus_sigma_um: float = 0.0
    gap_angst: float = 10.0
    membranes: int = 0
    membrane_radius_angst: tuple[float, float] = (250.0, 450.0)
    gold_beads: int = 0
    gold_radius_angst: float = 50.0
    snr_region: str = "particles"
    seed: int = 0

    @classmethod
    def from_config(cls, sim: Mapping[str, Any], name: str, template_names: Sequence[str],
                    seed: int) -> TomogramSettings:
        """One tomogram of the ``simulation`` section ``sim``: ``particles_per_class`` of
        every template, its own ``seed``."""
        return cls(
            name=name, shape=tuple(sim["shape"]), voxel_size=float(sim["voxel_size"]),
            counts={t: int(sim["particles_per_class"]) for t in template_names},
            snr=float(sim["snr"]), snr_region=sim["snr_region"],
            tilt_min=float(sim["tilt_min"]), tilt_max=float(sim["tilt_max"]),
            tilt_step=float(sim["tilt_step"]), ctf=CtfSettings(**sim["ctf"]),
            membranes=int(sim["membranes"]), gold_beads=int(sim["gold_beads"]), seed=int(seed))


@dataclass
class SimulatedTomogram:
    tomogram: np.ndarray  # (z, y, x) float32, noisy reconstruction
    labels: np.ndarray  # (z, y, x) uint8: 0 background, class numbers, then membrane, gold
    truth: pd.DataFrame  # RELION-5 style ground-truth particle table
    tilts: np.ndarray
    info: dict


def _place_spheres(radii: Sequence[float], shape: tuple[int, int, int], gap: float,
                   rng: np.random.Generator, obstacles: list[tuple[np.ndarray, float]],
                   max_tries: int = 2000) -> list[np.ndarray | None]:
    """Greedy random sequential placement of non-overlapping spheres inside ``shape``.

    Returns centres (zyx voxels) in the order of ``radii``; ``None`` where no place was found.
    """
    placed_c: list[np.ndarray] = [c for c, _ in obstacles]
    placed_r: list[float] = [r for _, r in obstacles]
    out: list[np.ndarray | None] = []
    shp = np.array(shape, dtype=np.float64)
    for r in radii:
        lo = np.full(3, np.ceil(r) + 1)
        hi = shp - np.ceil(r) - 2
        if np.any(hi < lo):
            out.append(None)
            continue
        found = None
        cs = np.asarray(placed_c).reshape(-1, 3)
        rs = np.asarray(placed_r)
        for _ in range(max_tries):
            c = np.round(rng.uniform(lo, hi))
            if cs.size == 0 or np.all(np.linalg.norm(cs - c, axis=1) >= rs + r + gap):
                found = c
                break
        out.append(found)
        if found is not None:
            placed_c.append(found)
            placed_r.append(r)
    return out


def _add_box(volume: np.ndarray, box: np.ndarray, centre_zyx: np.ndarray,
             labels: np.ndarray | None = None, label: int = 0, mask: np.ndarray | None = None
             ) -> None:
    """Add ``box`` into ``volume`` with the box centre ``d // 2`` at ``centre_zyx`` (clipped)."""
    b = np.array(box.shape)
    start = np.asarray(centre_zyx, dtype=np.int64) - b // 2
    lo = np.maximum(start, 0)
    hi = np.minimum(start + b, volume.shape)
    if np.any(hi <= lo):
        return
    dst = tuple(slice(a, z) for a, z in zip(lo, hi, strict=True))
    src = tuple(slice(a - s, z - s) for a, z, s in zip(lo, hi, start, strict=True))
    volume[dst] += box[src]
    if labels is not None and mask is not None:
        sub = labels[dst]
        sub[(mask[src]) & (sub == 0)] = label


def _vesicle(radius_vox: float, voxel_size: float) -> tuple[np.ndarray, np.ndarray]:
    """A lipid-bilayer vesicle: two Gaussian leaflets 40 Å apart (density, mask)."""
    half = 20.0 / voxel_size
    sigma = max(6.0 / voxel_size, 0.6)
    n = int(2 * np.ceil(radius_vox + half + 3 * sigma) + 2)
    c = n // 2
    zz, yy, xx = np.indices((n, n, n), dtype=np.float32)
    d = np.sqrt((zz - c) ** 2 + (yy - c) ** 2 + (xx - c) ** 2) - radius_vox
    dens = np.exp(-((d - half) ** 2) / (2 * sigma**2)) + np.exp(-((d + half) ** 2) / (2 * sigma**2))
    # headgroup density per voxel of a few electrons/Å³·voxel volume, relative scale only
    dens *= 0.45 * voxel_size**3
    return dens.astype(np.float32), np.abs(d) <= half + 2 * sigma


def _gold(radius_vox: float, voxel_size: float) -> tuple[np.ndarray, np.ndarray]:
    """A gold bead: a smooth solid sphere ~10x denser in scattering than protein."""
    n = int(2 * np.ceil(radius_vox + 3) + 2)
    c = n // 2
    zz, yy, xx = np.indices((n, n, n), dtype=np.float32)
    d = np.sqrt((zz - c) ** 2 + (yy - c) ** 2 + (xx - c) ** 2)
    dens = 1.0 / (1.0 + np.exp((d - radius_vox) / 0.5))
    return (dens * 4.6 * voxel_size**3).astype(np.float32), d <= radius_vox


def simulate_tomogram(templates: Sequence[Template], spec: TomogramSettings) -> SimulatedTomogram:
    """Simulate one crowded tomogram with ground truth (see module docstring)."""
    rng = np.random.default_rng(spec.seed)
    shape = tuple(int(s) for s in spec.shape)
    by_name = {t.name: t for t in templates}
    unknown = set(spec.counts) - set(by_name)
    if unknown:
        raise TomoclustError(f"tomogram {spec.name}: unknown templates {sorted(unknown)}")
    n_classes = max(t.class_number for t in templates)
    label_membrane, label_gold = n_classes + 1, n_classes + 2
    gap = spec.gap_angst / spec.voxel_size

    volume = np.zeros(shape, dtype=np.float32)
    labels = np.zeros(shape, dtype=np.uint8)
    obstacles: list[tuple[np.ndarray, float]] = []

    # vesicles first (large), then particles largest first, then gold beads
    for _ in range(spec.membranes):
        r = rng.uniform(*spec.membrane_radius_angst) / spec.voxel_size
        dens, mask = _vesicle(r, spec.voxel_size)
        outer = dens.shape[0] / 2
        (c,) = _place_spheres([outer], shape, gap, rng, obstacles)
        if c is None:
            log.warning("tomogram %s: no room for a vesicle of radius %.0f Å", spec.name,
                        r * spec.voxel_size)
            continue
        _add_box(volume, dens, c, labels, label_membrane, mask)
        # the vesicle lumen is free space for particles, but keep it simple: block it whole
        obstacles.append((c, outer))

    order = sorted(spec.counts, key=lambda nm: -by_name[nm].radius)
    rows = []
    for nm in order:
        t = by_name[nm]
        count = int(spec.counts[nm])
        centres = _place_spheres([t.radius] * count, shape, gap, rng, obstacles)
        got = [c for c in centres if c is not None]
        if len(got) < count:
            log.warning("tomogram %s: placed %d of %d %s (volume too crowded)", spec.name,
                        len(got), count, nm)
        mats = random_rotations(len(got), rng)
        thr = 0.05 * float(t.density.max())
        for c, m in zip(got, mats, strict=True):
            rot = rotate_volume(t.density, m, order=1)
            _add_box(volume, rot, c, labels, t.class_number, rot > thr)
            obstacles.append((c, t.radius))
            rows.append((c, m, t))

    for _ in range(spec.gold_beads):
        r = spec.gold_radius_angst / spec.voxel_size
        dens, mask = _gold(r, spec.voxel_size)
        (c,) = _place_spheres([dens.shape[0] / 2], shape, gap, rng, obstacles)
        if c is None:
            continue
        _add_box(volume, dens, c, labels, label_gold, mask)
        obstacles.append((c, dens.shape[0] / 2))

    tilts = tilt_angles(spec.tilt_min, spec.tilt_max, spec.tilt_step)
    geom = TiltGeometry(shape, tilts)
    proj = geom.project(volume)
    # per-tilt CTF on the projections (defocus may vary per tilt)
    ny, nu = proj.shape[1:]
    for i in range(len(tilts)):
        params = spec.ctf.as_kwargs()
        params["defocus_um"] = spec.ctf.defocus_um + spec.defocus_sigma_um * rng.normal()
        ctf = ctf_grid((ny, nu), spec.voxel_size, rfft=True, **params)
        proj[i] = np.fft.irfft2(np.fft.rfft2(proj[i]) * ctf, s=(ny, nu))
    signal = geom.reconstruct(proj)
    noise = geom.reconstruct(rng.standard_normal(proj.shape).astype(np.float32))
    if spec.snr_region not in ("particles", "volume"):
        raise TomoclustError(f"snr_region must be 'particles' or 'volume', not {spec.snr_region!r}")
    inside = (labels >= 1) & (labels <= n_classes)
    if not inside.any():
        raise TomoclustError(f"tomogram {spec.name}: no signal (no particle could be placed)")
    region = inside if spec.snr_region == "particles" else np.ones(shape, dtype=bool)
    alpha = np.sqrt(float(signal[region].var()) / (spec.snr * float(noise[region].var())))
    noise *= alpha
    tomogram = signal + noise
    snr_measured = float(signal[region].var() / noise[region].var())
    snr_volume = float(signal.var() / noise.var())

    if rows:
        cz = np.array([r[0] for r in rows])
        mats = np.array([r[1] for r in rows])
        truth = particle_table(
            spec.name, cz[:, ::-1], shape, spec.voxel_size, angles=relion_angles(mats),
            extra={
                "rlnClassNumber": [r[2].class_number for r in rows],
                "tclTemplateName": [r[2].name for r in rows],
                "tclSnrNominal": spec.snr,
                "tclSnrMeasured": snr_measured,
            },
        )
    else:
        truth = particle_table(spec.name, np.zeros((0, 3)), shape, spec.voxel_size,
                               angles=np.zeros((0, 3)),
                               extra={"rlnClassNumber": [], "tclTemplateName": [],
                                      "tclSnrNominal": [], "tclSnrMeasured": []})
    info = {
        "name": spec.name, "shape_zyx": list(shape), "voxel_size": spec.voxel_size,
        "snr_nominal": spec.snr, "snr_measured": snr_measured,
        "snr_measured_whole_volume": snr_volume,
        "snr_region": spec.snr_region,
        "snr_definition": ("var(noise-free WBP tomogram) / var(noise-only WBP tomogram) over "
                           + ("the voxels of particles (1 <= label <= number of classes)"
                              if spec.snr_region == "particles" else "the whole volume")),
        "n_particles": len(rows),
        "counts_requested": dict(spec.counts),
        "counts_placed": {nm: int(sum(1 for r in rows if r[2].name == nm)) for nm in order},
        "labels": {**{t.name: t.class_number for t in templates},
                   "membrane": label_membrane, "gold": label_gold},
        "tilts": tilts.tolist(), "ctf": spec.ctf.as_kwargs(), "seed": spec.seed,
    }
    return SimulatedTomogram(tomogram.astype(np.float32), labels, truth, tilts, info)
