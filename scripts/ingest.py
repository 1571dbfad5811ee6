"""Rule ingest: validate, Fourier-bin and normalise one tomogram."""

from tomoclust.formats.atomic import write_json
from tomoclust.formats.mrc import write_mrc
from tomoclust.ingest import ingest_tomogram
from tomoclust.rule import log, run_rule


def main(smk) -> None:
    p = smk.params
    # The box only decides whether the tomogram is usable, not what ingest writes, so it is
    # read from the config rather than a param: changing the box must not re-ingest.
    ext = smk.config["extraction"]
    res = ingest_tomogram(
        smk.input[0], working_voxel_size=p.working_voxel_size,
        voxel_size_override=p.voxel_size_override,
        min_size_angst=float(ext["box"]) * float(ext["voxel_size"]), name=smk.wildcards.tomo,
    )
    log.info("%s: %s -> %s (z, y, x) at %.4g Å", smk.wildcards.tomo, res.info["shape_in_zyx"],
             res.info["shape_out_zyx"], res.voxel_size)
    write_mrc(smk.output.tomogram, res.tomogram, res.voxel_size)
    write_json(smk.output.info, res.info)


run_rule(snakemake, main)
