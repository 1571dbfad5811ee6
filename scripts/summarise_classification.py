"""Rule summarise_classification: one table with every method's metrics."""

import pandas as pd
from tomoclust.formats.atomic import write_tsv
from tomoclust.rule import log, run_rule


def main(smk) -> None:
    df = pd.concat([pd.read_csv(p, sep="\t") for p in smk.input], ignore_index=True)
    write_tsv(smk.output[0], df)
    log.info("\n%s", df.to_string(index=False))


run_rule(snakemake, main)
