"""Rule simulate_tomogram: one crowded tomogram with its ground truth."""

from pathlib import Path

import numpy as np
from tomoclust.formats.atomic import write_json, write_text
from tomoclust.formats.mrc import write_mrc
from tomoclust.formats.star import write_star
from tomoclust.rule import log, run_rule
from tomoclust.simulate.tomograms import TomogramSettings, load_templates, simulate_tomogram


def main(smk) -> None:
    templates = load_templates(smk.params.names, smk.input.templates)
    spec = TomogramSettings.from_config(smk.params.sim, smk.wildcards.tomo,
                                        [t.name for t in templates], smk.params.seed)
    res = simulate_tomogram(templates, spec)
    log.info("placed %s; SNR nominal %.4g, measured %.4g", res.info["counts_placed"],
             spec.snr, res.info["snr_measured"])
    write_mrc(smk.output.tomogram, res.tomogram, spec.voxel_size)
    write_mrc(smk.output.labels, res.labels.astype(np.float32), spec.voxel_size)
    write_star(smk.output.truth, res.truth)
    write_text(smk.output.tilts, "".join(f"{t:.2f}\n" for t in res.tilts))
    write_json(smk.output.info, {**res.info, "tomogram": Path(smk.output.tomogram).name})


run_rule(snakemake, main)
