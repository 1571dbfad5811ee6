"""Rule export_embedding: a method's features with each particle's place, class and
probability, as one TSV table (pandas, napari)."""

import numpy as np
from tomoclust.io import read_star, write_tsv
from tomoclust.logs import log, run_rule
from tomoclust.report import embedding_table


def main(smk) -> None:
    clusters = read_star(smk.input.clusters, what="cluster table")
    table = embedding_table(clusters, np.load(smk.input.features))
    write_tsv(smk.output[0], table)
    log.info("%d particles, %d features -> %s", len(table),
             sum(c.startswith("f") and c[1:].isdigit() for c in table.columns), smk.output[0])


run_rule(snakemake, main)
