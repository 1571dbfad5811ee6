"""Rule *_table: a TSV table as a small HTML page for the report."""

from tomoclust.report.tables import read_tsv, write_html_table
from tomoclust.rule import log, run_rule


def main(smk) -> None:
    df = read_tsv(smk.input[0], what=smk.params.title)
    write_html_table(smk.output[0], df, smk.params.title, smk.params.note)
    log.info("%s: %d rows", smk.params.title, len(df))


run_rule(snakemake, main)
