"""Rule plot_templates: central slices of the template maps the simulation was made from."""

from pathlib import Path

from tomoclust.formats.mrc import read_mrc
from tomoclust.report.plots import plot_central_slices
from tomoclust.rule import log, run_rule


def main(smk) -> None:
    maps = []
    for path in smk.input:
        vol, vs = read_mrc(path, what="template map")
        maps.append((Path(path).stem, vol, vs))
        log.info("%s: %s voxels at %.3g Å", path, vol.shape, vs)
    plot_central_slices(maps, smk.output[0], title="Simulation templates (density maps)")


run_rule(snakemake, main)
