"""Rule truth_map: a simulation template resampled to the extraction voxel size and box."""

from tomoclust.formats.mrc import read_mrc, write_mrc
from tomoclust.numerics.class_maps import resample_map
from tomoclust.rule import log, run_rule


def main(smk) -> None:
    vol, vs = read_mrc(smk.input[0], what="template map")
    vs_out, box = float(smk.params.voxel_size), int(smk.params.box)
    out = resample_map(vol, vs, vs_out, box)
    write_mrc(smk.output[0], out, vs_out)
    log.info("%s: %s voxels at %.4g Å -> %d³ at %.4g Å", smk.input[0], vol.shape, vs, box, vs_out)


run_rule(snakemake, main)
