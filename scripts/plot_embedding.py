"""Rule plot_embedding: t-SNE of a method's features coloured by cluster (and by true class
when the input is simulated)."""

import numpy as np
from tomoclust.evaluate import truth_by_index, truth_classes
from tomoclust.formats.star import read_star
from tomoclust.report.plots import plot_embedding
from tomoclust.rule import log, run_rule


def main(smk) -> None:
    clusters = read_star(smk.input.clusters, what="cluster table")
    feats = np.load(smk.input.features)
    if len(feats) != len(clusters):
        raise RuntimeError(f"{smk.input.features}: {len(feats)} feature rows for "
                           f"{len(clusters)} particles in {smk.input.clusters}")
    truth = None
    if "truth" in smk.input.keys():
        table = read_star(smk.input.truth, what="ground truth")
        if "tclStackIndex" in table.columns:  # the input STAR's classes, by particle row
            truth = truth_by_index(clusters, table)
        else:  # simulated truth, matched by position
            truth = truth_classes(clusters, table, smk.params.tolerance)
    plot_embedding(feats, clusters["rlnClassNumber"].to_numpy(), truth, smk.output[0],
                   title=smk.wildcards.method, seed=smk.params.seed)
    log.info("t-SNE of %d particles (%d features)%s", len(feats), feats.shape[1],
             " with the true classes" if truth is not None else "")


run_rule(snakemake, main)
