"""Averaging benchmark: speed per 100 particles and FSC against the truth at SNR 0.1.

Run (≈ 5–15 min on 2 shared CPU cores; use ``nice -n 19``)::

    .venv/bin/python benchmarks/averaging.py --out benchmarks/results/averaging.json

Data: :func:`tomoclust.simulate.subtomograms.simulate_subtomograms` (subtomogram mode, aitom SNR
convention,
SNR 0.1, CTF 5 µm underfocus at 300 kV, missing wedge ±60°, random proper rotations, random
shifts of up to ``--max-shift-sim`` voxels per axis, boxes normalised) of ONE template
(default 6s47, the 80S ribosome: asymmetric) at 32³ and 12 Å, ``--n`` particles (500).

Accuracy: :func:`tomoclust.average.average_class` with the library defaults
(:class:`~tomoclust.average.AveragingSettings`, initial low-pass 50 Å); FSC of the average
against the true map (the template density at 12 Å, phase-flipped by the CTF because the
averages are not CTF-corrected, aligned to the average with proper rotations only, both under
the soft spherical mask), and the resolution where it crosses 0.5, in voxels and Å (target
≤ 3 voxels = 36 Å; Nyquist is 2 voxels = 24 Å; the CTF's first zero is at 31.7 Å).
Orientation accuracy: median angle between refined and true relative rotations ``R_i R_jᵀ``
over random pairs (frame-free).

Speed: wall and CPU seconds of the whole ``average_class`` per 100 particles, on ``--n-speed``
particles (100) and on the full set; CPU, and CUDA when torch sees a GPU. Because the machine is
shared, a fixed calibration workload (200 batched 32³ torch FFT round trips) is timed just
before and after each timed run, and the load average recorded: times scale with it.
"""

from __future__ import annotations

import argparse
import os
import resource
import time
from typing import Any

import numpy as np
import torch
from common import REPO, log, machine_info, machine_line, md_table, write_outputs
from tomoclust.average import AveragingSettings, average_class, fsc_against_truth
from tomoclust.numerics.class_maps import ctf_phase_flip, resolution_at
from tomoclust.numerics.rotations import angular_distance_deg, relion_matrix
from tomoclust.simulate.density import fit_box, template_density
from tomoclust.simulate.subtomograms import simulate_subtomograms
from tomoclust.simulate.tomograms import CtfSettings, Template

TEMPLATES = {
    "6s47": "resources/structures/6s47.cif.gz",  # 80S ribosome
    "3jb9": "resources/structures/3jb9.cif.gz",  # spliceosome
    "3cf3": "resources/structures/3cf3.pdb.gz",  # p97/VCP (6-fold)
}


def calibration(device: str) -> float:
    """Seconds for a fixed torch FFT workload (load indicator)."""
    x = torch.randn(64, 32, 32, 32, device=device)
    t0 = time.perf_counter()
    for _ in range(200 // 64 * 16):
        x = torch.fft.irfftn(torch.fft.rfftn(x, dim=(1, 2, 3)), s=(32, 32, 32), dim=(1, 2, 3))
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def timed_average(parts: np.ndarray, settings: AveragingSettings, device: str
                  ) -> tuple[Any, dict[str, float]]:
    cal0 = calibration(device)
    load0 = os.getloadavg()[0]
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    res = average_class(torch.as_tensor(parts).to(device), settings)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    cal1 = calibration(device)
    n = len(parts)
    return res, {"n": n, "device": device, "wall_s": wall, "cpu_s": cpu,
                 "wall_s_per_100": wall * 100 / n, "cpu_s_per_100": cpu * 100 / n,
                 "calibration_s_before": cal0, "calibration_s_after": cal1,
                 "load_before": load0, "load_after": os.getloadavg()[0]}


def rotation_errors(refined: np.ndarray, true: np.ndarray, rng: np.random.Generator,
                    pairs: int = 4000) -> np.ndarray:
    i = rng.integers(0, len(true), pairs)
    j = rng.integers(0, len(true), pairs)
    keep = i != j
    i, j = i[keep], j[keep]
    return angular_distance_deg(refined[i] @ refined[j].transpose(0, 2, 1),
                                true[i] @ true[j].transpose(0, 2, 1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(REPO / "benchmarks/results/averaging.json"))
    ap.add_argument("--template", default="6s47", choices=sorted(TEMPLATES))
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--n-speed", type=int, default=100)
    ap.add_argument("--snr", type=float, default=0.1)
    ap.add_argument("--max-shift-sim", type=float, default=2.0)
    ap.add_argument("--iterations", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2,
                    help="torch threads (1 on a crowded machine: OpenMP barriers spin when "
                         "the cores are oversubscribed)")
    ap.add_argument("--quick", action="store_true",
                    help="smoke test: 20 particles (10 for speed), one iteration")
    args = ap.parse_args()
    if args.quick:
        args.n, args.n_speed, args.iterations = 20, 10, 1
    torch.set_num_threads(args.threads)
    machine = machine_info()
    box, vs = 32, 12.0
    dens = template_density(REPO / TEMPLATES[args.template], vs, box=box)
    tmpl = Template(args.template, 1, dens)
    ctf = CtfSettings()
    log(f"simulating {args.n} subtomograms of {args.template} at SNR {args.snr} (aitom)")
    data = simulate_subtomograms([tmpl], args.n, box, vs, args.snr, "aitom",
                                 ctf=ctf, max_shift_vox=args.max_shift_sim, seed=args.seed)
    truth_map = ctf_phase_flip(fit_box(dens, box), vs, **ctf.as_kwargs())
    true_rots = relion_matrix(data.truth[["rlnAngleRot", "rlnAngleTilt",
                                          "rlnAnglePsi"]].to_numpy())
    settings = AveragingSettings(initial_resolution=50.0 / vs)
    if args.iterations:
        settings.iterations = args.iterations
    rng = np.random.default_rng(args.seed)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])

    speed_rows, runs = [], {}
    for device in devices:
        for n in (args.n_speed, args.n):
            log(f"averaging {n} particles on {device}")
            res, t = timed_average(data.stack[:n], settings, device)
            curve, _, cc = fsc_against_truth(res.average, truth_map, settings)
            err = rotation_errors(res.rotations, true_rots[:n], rng)
            acc = {"fsc_truth": curve.tolist(), "fsc_half_maps": res.fsc.tolist(),
                   "fsc_truth_05_voxels": resolution_at(curve, 0.5, box),
                   "fsc_truth_0143_voxels": resolution_at(curve, 0.143, box),
                   "half_map_0143_voxels": resolution_at(res.fsc, 0.143, box),
                   "truth_alignment_cc": cc,
                   "rotation_error_median_deg": float(np.median(err)),
                   "rotation_error_p90_deg": float(np.percentile(err, 90)),
                   "history": res.history}
            runs[f"{device}_{n}"] = {**t, **acc}
            log(f"  {t['wall_s']:.1f} s wall, {t['cpu_s']:.1f} s CPU; FSC(truth) 0.5 at "
                f"{acc['fsc_truth_05_voxels']:.2f} voxels; half maps 0.143 at "
                f"{acc['half_map_0143_voxels']:.2f}; rotation error median "
                f"{acc['rotation_error_median_deg']:.1f}°")
            speed_rows.append([device, n, t["wall_s"], t["wall_s_per_100"], t["cpu_s_per_100"],
                               t["calibration_s_before"], t["calibration_s_after"],
                               t["load_before"], t["load_after"]])
    machine["load_average_at_end"] = list(os.getloadavg())
    main_run = runs[f"cpu_{args.n}"]
    acc_rows = [[key, r["n"], r["fsc_truth_05_voxels"], r["fsc_truth_05_voxels"] * vs,
                 r["fsc_truth_0143_voxels"] * vs, r["half_map_0143_voxels"] * vs,
                 r["rotation_error_median_deg"], r["rotation_error_p90_deg"]]
                for key, r in runs.items()]
    shells = np.arange(box // 2 + 1)
    curve_rows = [[int(s), (box * vs / s) if s else float("inf"),
                   main_run["fsc_truth"][s], main_run["fsc_half_maps"][s]] for s in shells]
    target_met = main_run["fsc_truth_05_voxels"] <= 3.0
    md = (
        "# Averaging benchmark\n\n"
        f"Machine: {machine_line(machine)}\n\n"
        f"Data: {args.n} subtomograms of {args.template} (simulate_subtomograms, aitom SNR "
        f"{args.snr}, measured variance SNR {data.info['snr_measured']:.3f}), {box}³ at {vs} Å, "
        f"CTF {ctf.defocus_um} µm, wedge ±60°, shifts ≤ {args.max_shift_sim} voxels per axis. "
        f"Settings: {settings}.\n\n"
        "## Accuracy\n\n"
        + md_table(["run", "particles", "FSC(truth)=0.5 (voxels)", "FSC(truth)=0.5 (Å)",
                    "FSC(truth)=0.143 (Å)", "half maps 0.143 (Å)",
                    "rotation error median (°)", "rotation error p90 (°)"], acc_rows)
        + f"\nTarget FSC(truth) 0.5 at ≤ 3 voxels ({3 * vs:.0f} Å): "
        + ("**met**" if target_met else "**not met**")
        + f" ({main_run['fsc_truth_05_voxels']:.2f} voxels with {args.n} particles on the "
        "CPU).\n\n"
        f"FSC curves of the {args.n}-particle CPU run:\n\n"
        + md_table(["shell", "resolution (Å)", "FSC vs truth", "FSC half maps"], curve_rows)
        + "\n## Speed\n\n"
        + md_table(["device", "particles", "wall s", "wall s / 100 particles",
                    "CPU s / 100 particles", "calibration s before", "calibration s after",
                    "load before", "load after"], speed_rows)
        + "\nThe calibration (a fixed torch FFT workload) shows how much the shared machine "
        "slowed each run down; CPU seconds are less sensitive to the load than wall seconds.\n"
    )
    payload = {"machine": machine, "args": vars(args), "settings": settings.__dict__,
               "snr_measured": data.info["snr_measured"], "runs": runs,
               "target_fsc05_voxels": 3.0, "target_met": bool(target_met)}
    path = write_outputs(args.out, payload, md)
    log(f"wrote {args.out} and {path}")


if __name__ == "__main__":
    main()
