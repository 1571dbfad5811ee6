"""Rule copick_picks: one run's existing copick picks as a coordinate STAR (mode 1 input)."""

from tomoclust.external.copick_project import PicksSpec, get_run, open_project, picks_table
from tomoclust.formats.star import write_star
from tomoclust.rule import log, run_rule


def main(smk) -> None:
    p = smk.params
    where = f"copick config {p.config}"
    run = get_run(open_project(p.config), smk.wildcards.tomo, where)
    spec = PicksSpec(list(p.objects), p.user_id or None, p.session_id or None)
    table = picks_table(run, spec, float(p.voxel_spacing), where)
    write_star(smk.output[0], table)
    log.info("%s: %d picks of %s", run.name, len(table), spec.objects)


run_rule(snakemake, main)
