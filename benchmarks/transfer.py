"""Transfer-learned encoder benchmark (after Moebel & Kervrann, CMPB 2022).

A classifier is trained on simulated labelled subtomograms of a SOURCE library (12 atomic
models + "no particle" = 13 classes), 32³ at 12 Å, tilt ±60°, 3D CTF, aitom-convention noise
with the SNR drawn log-uniformly per group from ``--snr-range``. Its 32-d penultimate layer is
then computed for fresh simulated test sets (new rotations, shifts and noise) at each
``--snrs``:

1. SOURCE: the 13 training classes (K = 13);
2. TARGET: 5 other structures (K = 5): domain shift. 3cf3 (p97) is in both libraries (16
   models are available, 12 + 5 = 17), and the target's 80S ribosome 6s47 is a relative of the
   source's 30S subunit 4v4r_30S; the other target classes are absent from the source.

k-means with K = number of classes on the raw features (``--kmeans-seeds`` seeds, mean ± std)
gives V-measure, homogeneity, completeness (and accuracy, ARI, NMI); the same for k-means on
the rotation-invariant shell spectra (tomoclust.features.invariant) on the same boxes as a
reference.
Also the classifier's own accuracy on the source test set, and the CPU inference throughput
of the encoder side by side with the invariant features (load average recorded).

    nice -n 19 .venv/bin/python benchmarks/transfer.py --out benchmarks/results/transfer_e16.json
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import torch
from common import REPO, fmt, log, machine_info, machine_line, md_table, write_outputs
from sklearn.cluster import KMeans
from tomoclust.features.invariant import shell_spectra
from tomoclust.features.train import Checkpoint, fingerprint
from tomoclust.features.transfer import simulate_training_set, train_transfer, transfer_features
from tomoclust.features.transfer_settings import TrainingSetSettings, TransferSettings
from tomoclust.numerics.metrics import clustering_metrics
from tomoclust.simulate.density import template_density
from tomoclust.simulate.subtomograms import simulate_subtomograms
from tomoclust.simulate.tomograms import Template

S = "resources/structures/"
SOURCE = {  # the ten SHREC'21 atomic models, then two more
    "1bxn": S + "1bxn.pdb.gz", "1qvr": S + "1qvr.pdb.gz", "1s3x": S + "1s3x.pdb.gz",
    "1u6g": S + "1u6g.pdb.gz", "2cg9": S + "2cg9.pdb.gz", "3cf3": S + "3cf3.pdb.gz",
    "3d2f": S + "3d2f.pdb.gz", "3gl1": S + "3gl1.pdb.gz", "3h84": S + "3h84.pdb.gz",
    "3qm1": S + "3qm1.pdb.gz", "4v4r_30S": S + "4v4r_30S.pdb.gz", "5gjv": S + "5gjv.pdb.gz",
}
TARGET = {"3jb9": S + "3jb9.cif.gz", "6s47": S + "6s47.cif.gz", "3j9i": S + "3j9i.pdb.gz",
          "4v1w": S + "4v1w.cif.gz", "3cf3": S + "3cf3.pdb.gz"}
PUBLISHED_V = 0.96  # Moebel & Kervrann 2022, V-measure of k-means on the source (simulated) set


def kmeans_metrics(feats: np.ndarray, truth: np.ndarray, k: int, seeds: list[int]) -> dict:
    runs = []
    for s in seeds:
        labels = KMeans(k, n_init=10, random_state=s).fit_predict(feats)
        runs.append(clustering_metrics(truth, labels))
    keys = ["v_measure", "homogeneity", "completeness", "accuracy", "ari", "nmi"]
    return {**{key: float(np.mean([r[key] for r in runs])) for key in keys},
            **{key + "_std": float(np.std([r[key] for r in runs])) for key in keys},
            "n": len(truth), "k": k, "runs": runs}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(REPO / "benchmarks/results/transfer.json"))
    ap.add_argument("--n-per-class", type=int, default=300, help="training boxes per class")
    ap.add_argument("--snr-range", type=float, nargs=2, default=[0.05, 1.0])
    ap.add_argument("--snr-groups", type=int, default=10)
    ap.add_argument("--test-per-class", type=int, default=80)
    ap.add_argument("--snrs", type=float, nargs="+", default=[0.1, 1.0])
    ap.add_argument("--epochs", type=int, default=16)
    ap.add_argument("--width", type=int, default=8)
    ap.add_argument("--stages", type=int, default=3)
    ap.add_argument("--input-binning", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--kmeans-seeds", type=int, default=3)
    ap.add_argument("--box", type=int, default=32)
    ap.add_argument("--voxel-size", type=float, default=12.0)
    ap.add_argument("--checkpoint", default="/tmp/tomoclust_transfer_bench.pt")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    machine = machine_info()
    t_start = time.perf_counter()

    def densities(lib: dict[str, str]) -> list[Template]:
        return [Template(nm, i + 1, template_density(REPO / p, args.voxel_size))
                for i, (nm, p) in enumerate(lib.items())]

    src, tgt = densities(SOURCE), densities(TARGET)
    log(f"templates at {args.voxel_size} Å: " + ", ".join(
        f"{t.name} r={t.radius:.1f}" for t in src + tgt))
    set_params = TrainingSetSettings(box=args.box, voxel_size=args.voxel_size,
                                   n_per_class=args.n_per_class, snr_min=args.snr_range[0],
                                   snr_max=args.snr_range[1], snr_groups=args.snr_groups,
                                   seed=args.seed)
    t0 = time.perf_counter()
    ts = simulate_training_set(src, set_params)
    t_trainset = time.perf_counter() - t0
    log(f"training set: {len(ts.stack)} boxes, {len(ts.class_names)} classes "
        f"({t_trainset:.0f} s)")
    params = TransferSettings(width=args.width, stages=args.stages,
                            input_binning=args.input_binning, epochs=args.epochs,
                            batch_size=args.batch_size, lr=args.lr, seed=args.seed)
    ckpt = Checkpoint(args.checkpoint, fingerprint({"set": set_params.as_dict(),
                                                    "train": params.as_dict()}))
    t0 = time.perf_counter()
    res = train_transfer(ts.stack, ts.labels, ts.class_names, params, "cpu", checkpoint=ckpt)
    t_train = time.perf_counter() - t0
    hist = res.history
    log(f"trained: val acc {hist['val_accuracy'].iloc[-1]:.3f} ({t_train:.0f} s)")
    n_train_boxes = len(ts.labels)
    del ts
    model = res.model
    seeds = list(range(args.kmeans_seeds))

    results = []
    for snr in args.snrs:
        for name, lib, empty in (("source", src, True), ("target", tgt, False)):
            data = simulate_subtomograms(lib, args.test_per_class, args.box, args.voxel_size,
                                         snr, "aitom", include_empty=empty, max_shift_vox=1.0,
                                         seed=1000 + args.seed + int(snr * 1000))
            truth = data.truth["rlnClassNumber"].to_numpy()
            k = len(np.unique(truth))
            feats, prob = transfer_features(model, data.stack)
            inv = shell_spectra(data.stack, 6, 1.0)
            row = {"set": name, "snr": snr, "snr_measured": data.info["snr_measured"],
                   "n": len(truth), "k": k,
                   "transfer": kmeans_metrics(feats, truth, k, seeds),
                   "invariant": kmeans_metrics(inv, truth, k, seeds)}
            if name == "source":  # the classifier itself: class 0 = no particle, i = template i
                lib_index = {nm: i for i, nm in enumerate(res.class_names)}
                want = np.array([lib_index["no_particle"] if c == 0 else
                                 lib_index[lib[c - 1].name] for c in truth])
                row["classifier_accuracy"] = float((prob.argmax(1) == want).mean())
            results.append(row)
            log(f"{name} SNR {snr}: transfer V {row['transfer']['v_measure']:.3f} "
                f"(h {row['transfer']['homogeneity']:.3f}, c {row['transfer']['completeness']:.3f})"
                f", invariant V {row['invariant']['v_measure']:.3f}"
                + (f", classifier acc {row['classifier_accuracy']:.3f}"
                   if "classifier_accuracy" in row else ""))

    # CPU inference throughput, side by side with the invariant features on the same boxes
    data = simulate_subtomograms(src[:4], 64, args.box, args.voxel_size, 0.1, "aitom", seed=7)
    tp = {"n": len(data.stack), "threads": torch.get_num_threads(),
          "load_average_before": list(os.getloadavg())}
    for label, fn in (("transfer", lambda: transfer_features(model, data.stack)),
                      ("invariant", lambda: shell_spectra(data.stack, 6, 1.0))):
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        tp[label + "_per_s"] = len(data.stack) / min(times)
        tp[label + "_per_s_median"] = len(data.stack) / float(np.median(times))
    tp["load_average_after"] = list(os.getloadavg())
    log(f"throughput: transfer {tp['transfer_per_s']:.0f}/s, invariant "
        f"{tp['invariant_per_s']:.0f}/s")

    machine["load_average_at_end"] = list(os.getloadavg())
    payload = {
        "benchmark": "transfer", "machine": machine, "args": vars(args),
        "source_classes": ["no_particle", *SOURCE], "target_classes": list(TARGET),
        "overlap": ["3cf3"], "published_v_measure_source": PUBLISHED_V,
        "training": {"n_boxes": n_train_boxes, "n_val_boxes": len(res.val_index),
                     "set_params": set_params.as_dict(), "params": params.as_dict(),
                     "seconds_training_set": t_trainset, "seconds_training": t_train,
                     "history": hist.to_dict(orient="records")},
        "results": results, "throughput": tp,
        "seconds_total": time.perf_counter() - t_start,
    }
    md = render(payload)
    path = write_outputs(args.out, payload, md)
    log(f"wrote {args.out} and {path}")


def render(p: dict) -> str:
    a, tr = p["args"], p["training"]
    hist = tr["history"]
    lines = [
        "# Transfer-learned encoder: k-means on the 32-d features",
        "",
        f"Machine: {machine_line(p['machine'])}.",
        "",
        f"Training: {len(p['source_classes'])} source classes ({', '.join(p['source_classes'])}),"
        f" {a['n_per_class']} boxes per class, {a['box']}³ at {a['voxel_size']} Å, tilt ±60°, "
        f"3D CTF, aitom-convention noise with SNR log-uniform in {a['snr_range'][0]}–"
        f"{a['snr_range'][1]} ({a['snr_groups']} groups); network width {a['width']}, "
        f"{a['stages']} stages, input binned ×{a['input_binning']}; {a['epochs']} epochs on "
        f"the CPU in {tr['seconds_training'] / 60:.0f} min (simulation "
        f"{tr['seconds_training_set']:.0f} s); final train accuracy "
        f"{hist[-1]['train_accuracy']:.3f}, validation accuracy {hist[-1]['val_accuracy']:.3f}. "
        f"One training seed ({a['seed']}).",
        "",
        f"Test sets: fresh simulations ({a['test_per_class']} per class, new rotations, shifts "
        f"≤ 1 voxel and noise). Source K = {len(p['source_classes'])} (the no-particle class is "
        f"pure noise); target K = {len(p['target_classes'])} ({', '.join(p['target_classes'])});"
        f" overlap with the source: {', '.join(p['overlap'])}. k-means (n_init 10) on the raw "
        f"features, mean ± std over {a['kmeans_seeds']} k-means seeds; the shell-spectrum "
        "invariants (l_max 6) on the same boxes for reference.",
        "",
    ]
    header = ["set", "SNR (nominal / measured)", "features", "V-measure", "homogeneity",
              "completeness", "accuracy", "ARI"]
    rows = []
    for r in p["results"]:
        for feat in ("transfer", "invariant"):
            m = r[feat]
            rows.append([f"{r['set']} (K={r['k']})", f"{r['snr']:g} / {r['snr_measured']:.3f}",
                         feat, f"{m['v_measure']:.3f} ± {m['v_measure_std']:.3f}",
                         f"{m['homogeneity']:.3f}", f"{m['completeness']:.3f}",
                         f"{m['accuracy']:.3f}", f"{m['ari']:.3f}"])
    rows.append(["source (Moebel 2022)", "SHREC'21 data", "published", f"{PUBLISHED_V:.2f}",
                 "–", "–", "–", "–"])
    lines.append(md_table(header, rows))
    acc = [f"SNR {r['snr']:g}: {r['classifier_accuracy']:.3f}" for r in p["results"]
           if "classifier_accuracy" in r]
    lines.append("Classifier accuracy on the source test set (argmax of the 13 classes): "
                 + "; ".join(acc) + ".")
    tp = p["throughput"]
    lines += ["", f"CPU inference ({tp['threads']} threads, {tp['n']} boxes of {a['box']}³): "
              f"transfer encoder {fmt(tp['transfer_per_s'])}/s (median "
              f"{fmt(tp['transfer_per_s_median'])}/s), invariant features "
              f"{fmt(tp['invariant_per_s'])}/s in the same process; load average "
              + "/".join(f"{x:.1f}" for x in tp["load_average_before"]) + " before, "
              + "/".join(f"{x:.1f}" for x in tp["load_average_after"]) + " after.", ""]
    lines += ["Training history:", "",
              md_table(["epoch", "loss", "train acc", "val loss", "val acc", "s"],
                       [[h["epoch"], h["loss"], h["train_accuracy"], h["val_loss"],
                         h["val_accuracy"], h["seconds"]] for h in hist])]
    return "\n".join(lines)


if __name__ == "__main__":
    Path(REPO / "benchmarks/results").mkdir(parents=True, exist_ok=True)
    main()
