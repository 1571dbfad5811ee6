"""Concatenate per-tomogram STAR tables into one (e.g. the simulation ground truth)."""

import pandas as pd
from tomoclust.formats.star import read_star, write_star
from tomoclust.rule import log, run_rule


def main(smk) -> None:
    tables = [read_star(p) for p in smk.input]
    df = pd.concat(tables, ignore_index=True)
    log.info("%d rows from %d tables", len(df), len(tables))
    write_star(smk.output[0], df)


run_rule(snakemake, main)
