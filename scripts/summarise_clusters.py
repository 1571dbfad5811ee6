"""Rule summarise_clusters: K, class sizes and stability of every method in one table."""

from tomoclust.io import write_tsv
from tomoclust.logs import log, run_rule
from tomoclust.report import cluster_summary, write_html_table


def main(smk) -> None:
    df = cluster_summary(list(smk.input))
    write_tsv(smk.output.tsv, df)
    write_html_table(smk.output.html, df, "Clustering per method", smk.params.note,
                     digits={"smallest class %": 1})
    log.info("\n%s", df.to_string(index=False))


run_rule(snakemake, main)
