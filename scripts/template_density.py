"""Rule template_density: an atomic model or map as a density map at the simulation voxel size."""

from tomoclust.formats.mrc import write_mrc
from tomoclust.rule import log, run_rule
from tomoclust.simulate.density import template_density


def main(smk) -> None:
    vs = float(smk.params.voxel_size)
    dens = template_density(smk.input[0], vs)
    log.info("%s: %s voxels at %.3g Å", smk.input[0], dens.shape, vs)
    write_mrc(smk.output[0], dens, vs)


run_rule(snakemake, main)
