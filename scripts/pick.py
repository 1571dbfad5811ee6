"""Rule pick: difference-of-Gaussians picking in one tomogram."""

from tomoclust.extract import edge_voxels, plan_resampling
from tomoclust.formats.mrc import open_mrc
from tomoclust.formats.star import particle_table, write_star
from tomoclust.pick import dog_pick, params_from_angst
from tomoclust.rule import log, resolve_device, run_rule


def main(smk) -> None:
    cfg = smk.params.picking
    device = resolve_device(smk.params.device)
    with open_mrc(smk.input[0], "tomogram") as mrc:
        vs = float(mrc.voxel_size.x)
        ext = smk.params.extraction
        edge = edge_voxels(plan_resampling(vs, float(ext["voxel_size"]), int(ext["box"])))
        params = params_from_angst(
            vs, cfg["particle_radius"], sigma_scale=cfg["sigma_scale"], ratio=cfg["sigma_ratio"],
            contrast=cfg["contrast"], threshold=cfg["threshold"],
            min_distance_angst=cfg["min_distance"], edge_angst=edge * vs,
            max_count=cfg["max_count"], chunk_z=cfg["chunk_z"], bin=cfg["bin"],
        )
        # the numpy backend on CPU, torch only where it brings a GPU
        picks = dog_pick(mrc.data, params, device=None if device == "cpu" else device)
        shape = mrc.data.shape
    log.info("%s: %d picks (σ1 = %.2f voxels, backend %s)", smk.wildcards.tomo, len(picks),
             params.sigma, "numpy" if device == "cpu" else f"torch/{device}")
    df = particle_table(smk.wildcards.tomo, picks[["x", "y", "z"]].to_numpy(), shape, vs,
                        extra={"tclDogScore": picks["score"].to_numpy(),
                               "tclDogZScore": picks["zscore"].to_numpy()})
    write_star(smk.output[0], df)


run_rule(snakemake, main)
