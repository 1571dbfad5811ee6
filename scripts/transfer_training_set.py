"""Rule transfer_training_set: simulated labelled subtomograms of the transfer template library."""

import pandas as pd
from tomoclust.features.transfer import simulate_training_set
from tomoclust.features.transfer_settings import TrainingSetSettings
from tomoclust.formats.atomic import write_json
from tomoclust.rule import log, run_rule, write_particle_set
from tomoclust.simulate.tomograms import load_templates


def main(smk) -> None:
    params = TrainingSetSettings(**smk.params.settings)
    templates = load_templates(smk.params.names, smk.input.templates)
    ts = simulate_training_set(templates, params)
    log.info("%d boxes, classes %s", len(ts.stack), ", ".join(
        f"{nm} ({c})" for nm, c in zip(ts.class_names, ts.info["counts"], strict=True)))
    df = pd.DataFrame({
        "rlnClassNumber": ts.labels + 1,  # 1-based: network class index + 1
        "tclClassName": ts.table["class_name"],
        "tclSource": ts.table["source"],
        "tclSnrNominal": ts.table["snr_nominal"],
        "tclSnrMeasured": ts.table["snr_measured"],
    })
    write_particle_set(smk.output.star, smk.output.stack, ts.stack, df, params.voxel_size,
                       params.box)
    write_json(smk.output.info, ts.info)


run_rule(snakemake, main)
