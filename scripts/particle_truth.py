"""Rule particle_truth: the input STAR's class numbers as ground truth, aligned to the stack."""

import numpy as np
from tomoclust.external.names import truth_table
from tomoclust.formats.star import read_star, write_star
from tomoclust.rule import log, run_rule


def main(smk) -> None:
    particles = read_star(smk.input[0], what="particle table")
    truth = truth_table(particles)
    write_star(smk.output[0], truth)
    counts = np.bincount(truth["rlnClassNumber"].to_numpy())
    log.info("%d particles; per class (0 = unlabelled): %s", len(truth),
             {i: int(c) for i, c in enumerate(counts) if c})


run_rule(snakemake, main)
