"""Rule split_coordinates: one coordinate STAR for all tomograms, split per sheet tomogram."""

from tomoclust.external.names import read_particles, split_by_tomogram
from tomoclust.formats.star import write_star
from tomoclust.rule import log, run_rule


def main(smk) -> None:
    df, optics, block = read_particles(smk.input[0], "coordinates")
    parts = split_by_tomogram(df, f"coordinates {smk.input[0]} ({block})", smk.params.names,
                              smk.params.paths)
    for name, out in zip(smk.params.names, smk.output, strict=True):
        part = parts[name].reset_index(drop=True)
        write_star(out, part if optics is None else {"optics": optics, "particles": part})
        log.info("%s: %d rows", name, len(part))


run_rule(snakemake, main)
