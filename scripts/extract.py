"""Rule extract: subtomograms around the picks of one tomogram, as one MRC stack."""

from tomoclust.extract import extract_tomogram
from tomoclust.formats.star import read_star, write_star
from tomoclust.rule import log, run_rule


def main(smk) -> None:
    cfg = smk.params.extraction
    picks = read_star(smk.input.picks, what="picks")
    table = extract_tomogram(smk.input.tomogram, picks, smk.output.stack, cfg["voxel_size"],
                             cfg["box"], normalise=cfg["normalise"], recentre=cfg["recentre"],
                             workers=smk.threads)
    write_star(smk.output.star, table)
    log.info("%s: %d subtomograms", smk.wildcards.tomo, len(table))


run_rule(snakemake, main)
