"""Rule average_class: gold-standard alignment and averaging of one class of one method."""

import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tomoclust import TomoclustError
from tomoclust.average import AveragingSettings, average_class, fsc_against_truth
from tomoclust.evaluate import truth_classes
from tomoclust.formats.atomic import write_json, write_tsv
from tomoclust.formats.mrc import read_mrc, write_mrc
from tomoclust.formats.stacks import open_stack
from tomoclust.formats.star import read_star, write_star
from tomoclust.numerics.class_maps import (
    ctf_phase_flip,
    dominant_class,
    resolution_at,
    shell_resolution,
)
from tomoclust.numerics.rotations import relion_angles
from tomoclust.report.plots import plot_fsc, plot_slices
from tomoclust.rule import log, resolve_device, run_rule


def stack_rows(table: pd.DataFrame, path: str) -> np.ndarray:
    """0-based stack rows of ``rlnImageName`` (``i@particles.mrcs``) entries."""
    names = table["rlnImageName"].astype(str)
    idx = names.str.split("@").str[0]
    if not idx.str.fullmatch(r"\d+").all():
        bad = names[~idx.str.fullmatch(r"\d+")].iloc[0]
        raise TomoclustError(f"cluster table {path}: rlnImageName {bad!r} is not 'index@stack'")
    return idx.astype(int).to_numpy() - 1


def settings_from_config(cfg: dict, voxel_size: float) -> AveragingSettings:
    return AveragingSettings(
        angular_step=float(cfg["angular_step"]), local_step=float(cfg["local_step"]),
        iterations=int(cfg["iterations"]), max_shift=float(cfg["max_shift"]),
        mask_radius=None if cfg["mask_radius"] is None else cfg["mask_radius"] / voxel_size,
        mask_edge=float(cfg["mask_edge"]),
        initial_resolution=float(cfg["initial_resolution"]) / voxel_size,
        wiener=float(cfg["wiener"]), min_particles=int(cfg["min_particles"]),
        seed=int(cfg["seed"]))


def main(smk) -> None:
    t0 = time.time()
    k = int(smk.wildcards.k)
    method = smk.wildcards.method
    device = resolve_device(smk.params.device)
    torch.set_num_threads(max(int(smk.threads), 1))
    clusters = read_star(smk.input.clusters, what="cluster table")
    try:  # the clustering writes the particles block only; the optics come from the gather
        optics = read_star(smk.input.particles, block="optics", what="particle table")
    except TomoclustError:
        optics = None
    sel = clusters["rlnClassNumber"].to_numpy() == k
    table = clusters[sel].reset_index(drop=True)
    stack, vs = open_stack(smk.input.stack)
    rows = stack_rows(table, smk.input.clusters)
    if len(rows) and rows.max() >= len(stack):
        raise TomoclustError(f"cluster table {smk.input.clusters}: image {rows.max() + 1} is "
                             f"beyond the {len(stack)} subtomograms of {smk.input.stack}")
    settings = settings_from_config(smk.params.averaging, vs)
    log.info("%s class %d: %d particles, %d³ at %.4g Å, tilt range %s, device %s", method, k,
             len(table), stack.shape[-1], vs, smk.params.wedge, device)
    parts = torch.as_tensor(np.asarray(stack[np.sort(rows)], dtype=np.float32))
    parts = parts[np.argsort(np.argsort(rows))].to(device)  # back to table order
    res = average_class(parts, settings, tilt_range=tuple(smk.params.wedge))
    box = res.average.shape[0]
    for name in ("average", "half1", "half2"):
        write_mrc(getattr(smk.output, name), getattr(res, name), vs)

    fsc = pd.DataFrame({"shell": np.arange(box // 2 + 1),
                        "resolution_angst": shell_resolution(box, vs),
                        "fsc_half_maps": res.fsc})
    res_0143 = resolution_at(res.fsc, 0.143, box) * vs
    info = {"method": method, "class": k, "n_particles": len(table), "voxel_size": vs,
            "box": box, "device": device, "resolution_0143_angst": res_0143,
            "history": res.history}
    truth_view = None
    if smk.params.has_truth:
        truth = read_star(smk.input.truth, what="ground truth")
        true_cls = truth_classes(table, truth, smk.params.tolerance)
        cls, count = dominant_class(true_cls)
        info["truth_matched"] = int((true_cls > 0).sum())
        if cls:
            name = smk.params.templates[cls - 1]
            tmap, _ = read_mrc(next(p for p in smk.input.truth_maps if Path(p).stem == name),
                               what="true map")
            ctf = smk.params.ctf
            if ctf:  # the averages are not CTF-corrected: compare with the map as imaged
                tmap = ctf_phase_flip(tmap, vs, **ctf)
            curve, placed, cc = fsc_against_truth(res.average, tmap, settings)
            fsc["fsc_truth"] = curve
            truth_view = placed
            info.update({"template": name, "template_particles": count,
                         "truth_alignment_cc": cc,
                         "fsc_truth_05_angst": resolution_at(curve, 0.5, box) * vs,
                         "fsc_truth_0143_angst": resolution_at(curve, 0.143, box) * vs})
            log.info("dominant template %s (%d of %d particles); FSC vs truth 0.5 at %.1f Å, "
                     "0.143 at %.1f Å", name, count, len(table), info["fsc_truth_05_angst"],
                     info["fsc_truth_0143_angst"])
        else:
            log.info("no particle of this class matches a true particle: no FSC against truth")
    write_tsv(smk.output.fsc, fsc)

    out = table.copy()
    ang = relion_angles(res.rotations)
    out["rlnAngleRot"], out["rlnAngleTilt"], out["rlnAnglePsi"] = ang.T
    origin = -res.shifts * vs  # RELION: the particle's centre is at coordinate - origin
    out["rlnOriginXAngst"], out["rlnOriginYAngst"], out["rlnOriginZAngst"] = origin.T
    out["rlnRandomSubset"] = res.subset
    out["tclAlignmentScore"] = res.scores
    write_star(smk.output.star, {"optics": optics, "particles": out} if optics is not None
               else out)
    title = f"{method} class {k}: {len(table)} particles, FSC 0.143 at {res_0143:.0f} Å"
    plot_slices(res.average, smk.output.slices, title=title, reference=truth_view,
                reference_label=f"truth {info.get('template', '')}")
    plot_fsc(fsc, smk.output.fsc_plot, title=title)
    info["seconds"] = time.time() - t0
    write_json(smk.output.info, info)
    log.info("%s class %d: half-map FSC 0.143 at %.1f Å (%.1f s)", method, k, res_0143,
             info["seconds"])


run_rule(snakemake, main)
