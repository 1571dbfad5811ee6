"""Rule import_subtomograms: another tool's subtomograms, resampled into particles.mrcs."""

from tomoclust.external.subtomograms import import_subtomograms
from tomoclust.formats.atomic import write_json
from tomoclust.rule import log, run_rule


def main(smk) -> None:
    ext = smk.params.extraction
    info = import_subtomograms(
        smk.input[0], smk.output.star, smk.output.stack, voxel_size=float(ext["voxel_size"]),
        box=int(ext["box"]), normalise=bool(ext["normalise"]),
        image_root=smk.params.image_root or None, voxel_size_override=smk.params.voxel_size,
        workers=smk.threads,
    )
    write_json(smk.output.report, info)
    log.info("%d subtomograms from %d file(s) -> %d voxels at %.4g Å", info["n_particles"],
             info["n_files"], info["box_out"], info["voxel_size_out"])


run_rule(snakemake, main)
