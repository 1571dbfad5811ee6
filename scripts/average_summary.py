"""Rule average_summary: one row per class of a method (averaged or too small to average)."""

from tomoclust.formats.atomic import write_tsv
from tomoclust.report.tables import averaging_summary
from tomoclust.rule import log, read_json, run_rule


def main(smk) -> None:
    infos = [read_json(p) for p in smk.input.infos if p.endswith("info.json")]
    table = averaging_summary(read_json(smk.input.summary), infos, smk.params.min_particles)
    write_tsv(smk.output[0], table)
    log.info("%s: %d classes averaged, %d too small", smk.wildcards.method,
             int((table["status"] == "averaged").sum()), int((table["status"] != "averaged").sum()))


run_rule(snakemake, main)
