"""Rule pick: difference-of-Gaussians picking in one tomogram."""

from tomoclust.formats.star import write_star
from tomoclust.pick import pick_tomogram
from tomoclust.rule import resolve_device, run_rule


def main(smk) -> None:
    ext = smk.params.extraction
    table = pick_tomogram(smk.input[0], smk.wildcards.tomo, smk.params.picking,
                          ext["voxel_size"], ext["box"], resolve_device(smk.params.device))
    write_star(smk.output[0], table)


run_rule(snakemake, main)
