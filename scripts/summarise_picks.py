"""Rule summarise_picks: the number of picks of every tomogram, and their DoG z-scores."""

from pathlib import Path

from tomoclust.formats.atomic import write_tsv
from tomoclust.formats.star import read_star
from tomoclust.report.tables import picks_summary, write_html_table
from tomoclust.rule import log, run_rule


def main(smk) -> None:
    tables = {Path(p).name.removesuffix(".star"): read_star(p, what="picks")
              for p in smk.input}
    df = picks_summary(tables)
    write_tsv(smk.output.tsv, df)
    write_html_table(smk.output.html, df, "Picks per tomogram", smk.params.note, digits=2)
    log.info("\n%s", df.to_string(index=False))


run_rule(snakemake, main)
