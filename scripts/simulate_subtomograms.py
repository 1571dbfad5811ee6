"""Rule simulate_subtomograms: a labelled subtomogram set (subtomogram mode)."""

from tomoclust.formats.atomic import write_json
from tomoclust.rule import log, run_rule, write_particle_set
from tomoclust.simulate.subtomograms import simulate_subtomograms
from tomoclust.simulate.tomograms import CtfSettings, load_templates


def main(smk) -> None:
    s = smk.params.settings
    templates = load_templates(smk.params.names, smk.input.templates)
    res = simulate_subtomograms(
        templates, n_per_class=int(s["n_per_class"]), box=int(s["box"]),
        voxel_size=float(s["voxel_size"]), snr=float(s["snr"]), convention=s["convention"],
        tilt_min=float(s["tilt_min"]), tilt_max=float(s["tilt_max"]),
        ctf=CtfSettings(**smk.params.ctf), include_empty=bool(s["include_empty"]),
        seed=int(s["seed"]),
    )
    log.info("%d subtomograms; SNR nominal %.4g (%s), measured %.4g", res.info["n"],
             res.info["snr_nominal"], res.info["convention"], res.info["snr_measured"])
    write_particle_set(smk.output.star, smk.output.stack, res.stack, res.truth,
                       float(s["voxel_size"]), int(s["box"]))
    write_json(smk.output.info, res.info)


run_rule(snakemake, main)
