"""Rule transfer_training_set: simulated labelled subtomograms of the transfer template library."""

import pandas as pd
from tomoclust.features.transfer import simulate_training_set
from tomoclust.features.transfer_settings import TrainingSetSettings
from tomoclust.formats.atomic import write_json
from tomoclust.formats.mrc import read_mrc
from tomoclust.formats.stacks import StackWriter
from tomoclust.formats.star import optics_table, write_star
from tomoclust.rule import log, run_rule
from tomoclust.simulate.tomograms import Template


def main(smk) -> None:
    params = TrainingSetSettings(**smk.params.settings)
    templates = []
    for i, (name, path) in enumerate(zip(smk.params.names, smk.input.templates, strict=True)):
        dens, _ = read_mrc(path, what="template")
        templates.append(Template(name, i + 1, dens))
    ts = simulate_training_set(templates, params)
    log.info("%d boxes, classes %s", len(ts.stack), ", ".join(
        f"{nm} ({c})" for nm, c in zip(ts.class_names, ts.info["counts"], strict=True)))
    with StackWriter(smk.output.stack, len(ts.stack), params.box, params.voxel_size) as w:
        w[:] = ts.stack
    stack_name = smk.output.stack.split("/")[-1]
    df = pd.DataFrame({
        "rlnImageName": [f"{i + 1}@{stack_name}" for i in range(len(ts.stack))],
        "rlnClassNumber": ts.labels + 1,  # 1-based: network class index + 1
        "tclClassName": ts.table["class_name"],
        "tclSource": ts.table["source"],
        "tclSnrNominal": ts.table["snr_nominal"],
        "tclSnrMeasured": ts.table["snr_measured"],
        "rlnOpticsGroup": 1,
    })
    optics = optics_table(params.voxel_size, params.voxel_size, params.box)
    write_star(smk.output.star, {"optics": optics, "particles": df})
    write_json(smk.output.info, ts.info)


run_rule(snakemake, main)
