"""Rule extract: subtomograms around the picks of one tomogram, as one MRC stack."""

from pathlib import Path

import numpy as np
from tomoclust.extract import boxes_in_bounds, extract_to_stack, plan_resampling
from tomoclust.formats.mrc import open_mrc
from tomoclust.formats.stacks import StackWriter
from tomoclust.formats.star import read_star, write_star, xyz_to_zyx
from tomoclust.rule import log, run_rule


def main(smk) -> None:
    cfg = smk.params.extraction
    picks = read_star(smk.input.picks, what="picks")
    with open_mrc(smk.input.tomogram, "tomogram") as mrc:
        vs = float(mrc.voxel_size.x)
        plan = plan_resampling(vs, float(cfg["voxel_size"]), int(cfg["box"]))
        log.info("box %d at %.4g Å -> Fourier %d -> box %d at %.4g Å", plan.box_in, vs,
                 plan.n_fourier, plan.box_out, plan.voxel_size_out)
        coords = xyz_to_zyx(picks[["rlnCoordinateX", "rlnCoordinateY", "rlnCoordinateZ"]]
                            .to_numpy(dtype=np.float64)) if len(picks) else np.zeros((0, 3))
        inside = boxes_in_bounds(coords, mrc.data.shape, plan.box_in)
        if not inside.all():
            log.warning("%d picks too close to the edge for a %d-voxel box: skipped, not shifted",
                        int((~inside).sum()), plan.box_in)
        picks = picks[inside].reset_index(drop=True)
        coords = coords[inside]
        with StackWriter(smk.output.stack, len(picks), plan.box_out, plan.voxel_size_out) as w:
            extract_to_stack(mrc.data, coords, plan, w, normalise=bool(cfg["normalise"]),
                             workers=smk.threads)
    name = Path(smk.output.stack).name
    picks.insert(0, "rlnImageName", [f"{i + 1}@{name}" for i in range(len(picks))])
    picks["rlnTomoTiltSeriesPixelSize"] = vs
    write_star(smk.output.star, picks)
    log.info("%s: %d subtomograms", smk.wildcards.tomo, len(picks))


run_rule(snakemake, main)
