"""Rule copick_tomogram: one run's tomogram read from a copick project, written as MRC."""

from tomoclust.external.copick_project import get_run, open_project, read_tomogram, tomogram_of
from tomoclust.formats.mrc import write_mrc
from tomoclust.rule import log, run_rule


def main(smk) -> None:
    p = smk.params
    where = f"copick config {p.config}"
    run = get_run(open_project(p.config), smk.wildcards.tomo, where)
    tomo = tomogram_of(run, float(p.voxel_spacing), p.tomo_type, where)
    data, voxel_size = read_tomogram(tomo, f"{where}, run {run.name!r}, {p.tomo_type}")
    log.info("%s: %s tomogram, %s (z, y, x) at %.4g Å", run.name, p.tomo_type, data.shape,
             voxel_size)
    write_mrc(smk.output[0], data, voxel_size)


run_rule(snakemake, main)
