"""Rule gather_particles: all tomograms' subtomograms into particles.star + particles.mrcs."""

from tomoclust.extract import gather_stacks
from tomoclust.rule import log, run_rule


def main(smk) -> None:
    n = gather_stacks(list(smk.input.stars), list(smk.input.stacks), smk.output.star,
                      smk.output.stack)
    log.info("%d particles from %d tomograms", n, len(smk.input.stars))


run_rule(snakemake, main)
