"""Rule evaluate_picking: precision / recall / F1 of the picks against the ground truth."""

import numpy as np
import pandas as pd
from tomoclust.evaluate import evaluate_picking, within_edge
from tomoclust.extract import edge_voxels, plan_resampling
from tomoclust.formats.atomic import write_tsv
from tomoclust.formats.mrc import open_mrc
from tomoclust.formats.star import read_star, write_star
from tomoclust.report.plots import plot_picking
from tomoclust.rule import log, run_rule


def main(smk) -> None:
    picks = pd.concat([read_star(p, what="picks") for p in smk.input.picks], ignore_index=True)
    truth = read_star(smk.input.truth, what="ground truth")
    ext = smk.params.extraction
    shapes, voxel, edge = {}, {}, {}
    for path in smk.input.tomograms:
        with open_mrc(path, "tomogram") as mrc:
            name = path.split("/")[-2]
            shapes[name], voxel[name] = mrc.data.shape, float(mrc.voxel_size.x)
        plan = plan_resampling(voxel[name], float(ext["voxel_size"]), int(ext["box"]))
        edge[name] = edge_voxels(plan) * voxel[name]
    keep = within_edge(truth, shapes, voxel, edge)
    log.info("%d of %d true particles are far enough from every face to be extracted and "
             "are evaluated", int(keep.sum()), len(truth))
    metrics, matched = evaluate_picking(picks, truth[keep], smk.params.tolerance)
    log.info("picking:\n%s", metrics.to_string(index=False))
    write_tsv(smk.output.metrics, metrics)
    write_star(smk.output.matched, matched)
    plot_picking(metrics, smk.output.plot)
    if np.isfinite(metrics.loc[0, "f1"]):
        log.info("overall F1 %.3f", metrics.loc[0, "f1"])


run_rule(snakemake, main)
