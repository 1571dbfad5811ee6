"""Rule plot_picks: the picks of one tomogram drawn on slabs of it (with the true particles
when the input is simulated)."""

import numpy as np
from tomoclust.formats.mrc import open_mrc
from tomoclust.formats.star import read_star, voxels_from_centered_angst
from tomoclust.report.plots import plot_picks
from tomoclust.rule import log, run_rule

CENTRED = [f"rlnCenteredCoordinate{a}Angst" for a in "XYZ"]


def main(smk) -> None:
    picks = read_star(smk.input.picks, what="picks")
    with open_mrc(smk.input.tomogram, "tomogram") as mrc:
        vs = float(mrc.voxel_size.x)
        shape = mrc.data.shape
        xyz = (voxels_from_centered_angst(picks[CENTRED].to_numpy(), shape, vs)
               if len(picks) else np.zeros((0, 3)))
        truth_xyz = truth_cls = None
        if "truth" in smk.input.keys():
            truth = read_star(smk.input.truth, what="ground truth")
            truth_xyz = voxels_from_centered_angst(truth[CENTRED].to_numpy(), shape, vs)
            truth_cls = truth["rlnClassNumber"].to_numpy()
        shown = plot_picks(mrc.data, vs, xyz, float(smk.params.radius) / vs, smk.output[0],
                           title=smk.wildcards.tomo, truth_xyz=truth_xyz,
                           truth_class=truth_cls, n_slabs=int(smk.params.n_slabs))
    log.info("%s: %d of %d picks drawn%s", smk.wildcards.tomo, shown["picks"], len(picks),
             f", {shown['truth']} of {len(truth_xyz)} true particles"
             if truth_xyz is not None else "")


run_rule(snakemake, main)
