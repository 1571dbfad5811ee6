"""Rule ingest: validate, Fourier-bin and normalise one tomogram."""

from tomoclust.ingest import ingest_tomogram
from tomoclust.io import write_json, write_mrc
from tomoclust.logs import log, run_rule


def main(smk) -> None:
    p = smk.params
    res = ingest_tomogram(
        smk.input[0], working_voxel_size=p.working_voxel_size,
        voxel_size_override=p.voxel_size_override, min_size_angst=p.min_size_angst,
        name=smk.wildcards.tomo,
    )
    log.info("%s: %s -> %s (z, y, x) at %.4g Å", smk.wildcards.tomo, res.info["shape_in_zyx"],
             res.info["shape_out_zyx"], res.voxel_size)
    write_mrc(smk.output.tomogram, res.tomogram, res.voxel_size)
    write_json(smk.output.info, res.info)


run_rule(snakemake, main)
