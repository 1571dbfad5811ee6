"""Rule export_embedding: a method's features with each particle's place, class and
probability, as one TSV table (pandas, napari)."""

import numpy as np
from tomoclust.formats.atomic import write_tsv
from tomoclust.formats.star import read_star
from tomoclust.report.tables import embedding_table
from tomoclust.rule import log, run_rule


def main(smk) -> None:
    clusters = read_star(smk.input.clusters, what="cluster table")
    table = embedding_table(clusters, np.load(smk.input.features))
    write_tsv(smk.output[0], table)
    log.info("%d particles, %d features -> %s", len(table),
             sum(c.startswith("f") and c[1:].isdigit() for c in table.columns), smk.output[0])


run_rule(snakemake, main)
