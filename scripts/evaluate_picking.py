"""Rule evaluate_picking: precision / recall / F1 of the picks against the ground truth, and
the cryo-ET picking challenge's F-beta (β = 4, within half the particle radius)."""

import numpy as np
import pandas as pd
from tomoclust.evaluate import evaluate_picking, within_edge
from tomoclust.extract import tomogram_extents
from tomoclust.formats.atomic import write_tsv
from tomoclust.formats.star import read_star, write_star
from tomoclust.report.plots import plot_picking
from tomoclust.rule import log, run_rule


def main(smk) -> None:
    picks = pd.concat([read_star(p, what="picks") for p in smk.input.picks], ignore_index=True)
    truth = read_star(smk.input.truth, what="ground truth")
    ext = smk.params.extraction
    keep = within_edge(truth, *tomogram_extents(smk.input.tomograms, ext["voxel_size"],
                                                ext["box"]))
    log.info("%d of %d true particles are far enough from every face to be extracted and "
             "are evaluated", int(keep.sum()), len(truth))
    metrics, matched = evaluate_picking(picks, truth[keep], smk.params.tolerance,
                                        smk.params.challenge_tolerance)
    log.info("picking:\n%s", metrics.to_string(index=False))
    # "NA", not an empty field, where a value does not exist (a class has no precision), so
    # tools that merge empty fields (column -t) keep every value under its header
    write_tsv(smk.output.metrics, metrics, na_rep="NA")
    write_star(smk.output.matched, matched)
    plot_picking(metrics, smk.output.plot)
    if np.isfinite(metrics.loc[0, "f1"]):
        log.info("overall F1 %.3f; challenge F-beta (β = 4, within %.0f Å) %.3f",
                 metrics.loc[0, "f1"], smk.params.challenge_tolerance,
                 metrics.loc[0, "fbeta4_half_radius"])


run_rule(snakemake, main)
