"""Rule simulate_tomogram: one crowded tomogram with its ground truth."""

from pathlib import Path

import numpy as np
from tomoclust.formats.atomic import write_json, write_text
from tomoclust.formats.mrc import read_mrc, write_mrc
from tomoclust.formats.star import write_star
from tomoclust.rule import log, run_rule
from tomoclust.simulate.tomograms import CtfSettings, Template, TomogramSettings, simulate_tomogram


def main(smk) -> None:
    sim = smk.params.sim
    templates = []
    for i, (name, path) in enumerate(zip(smk.params.names, smk.input.templates, strict=True)):
        dens, _ = read_mrc(path, what="template")
        templates.append(Template(name, i + 1, dens))
    spec = TomogramSettings(
        name=smk.wildcards.tomo,
        shape=tuple(sim["shape"]),
        voxel_size=float(sim["voxel_size"]),
        counts={t.name: int(sim["particles_per_class"]) for t in templates},
        snr=float(sim["snr"]),
        snr_region=sim["snr_region"],
        tilt_min=float(sim["tilt_min"]),
        tilt_max=float(sim["tilt_max"]),
        tilt_step=float(sim["tilt_step"]),
        ctf=CtfSettings(**sim["ctf"]),
        membranes=int(sim["membranes"]),
        gold_beads=int(sim["gold_beads"]),
        seed=int(smk.params.seed),
    )
    res = simulate_tomogram(templates, spec)
    log.info("placed %s; SNR nominal %.4g, measured %.4g", res.info["counts_placed"],
             spec.snr, res.info["snr_measured"])
    write_mrc(smk.output.tomogram, res.tomogram, spec.voxel_size)
    write_mrc(smk.output.labels, res.labels.astype(np.float32), spec.voxel_size)
    write_star(smk.output.truth, res.truth)
    write_text(smk.output.tilts, "".join(f"{t:.2f}\n" for t in res.tilts))
    write_json(smk.output.info, {**res.info, "tomogram": Path(smk.output.tomogram).name})


run_rule(snakemake, main)
