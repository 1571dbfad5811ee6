"""Rule summarise_clusters: K, class sizes and stability of every method in one table."""

from tomoclust.formats.atomic import write_tsv
from tomoclust.report.tables import cluster_summary, write_html_table
from tomoclust.rule import log, run_rule


def main(smk) -> None:
    df = cluster_summary(list(smk.input))
    write_tsv(smk.output.tsv, df)
    write_html_table(smk.output.html, df, "Clustering per method", smk.params.note,
                     digits={"smallest class %": 1})
    log.info("\n%s", df.to_string(index=False))


run_rule(snakemake, main)
