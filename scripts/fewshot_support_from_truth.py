"""Rule fewshot_support_from_truth: a demo/test support STAR of a few truth-labelled picked
particles per class, written exactly as a user's support STAR would be."""

from tomoclust.features.fewshot_support import support_from_truth
from tomoclust.formats.star import read_star, write_star
from tomoclust.rule import log, run_rule


def main(smk) -> None:
    particles = read_star(smk.input.particles, what="particle table")
    truth = read_star(smk.input.truth, what="ground truth")
    df = support_from_truth(particles, truth, int(smk.params.n_per_class),
                            float(smk.params.tolerance), seed=int(smk.params.seed))
    write_star(smk.output[0], df)
    log.info("support STAR with %d particles: %s", len(df),
             df.groupby("rlnClassName").size().to_dict())


run_rule(snakemake, main)
