"""Unsupervised accuracy benchmark: the published protocol (Zeng et al.; Uddin et al.).

5 classes × ``--per-class`` subtomograms (default 1000), 32³ at 12 Å, tilt ±60°, 3D CTF,
noise in the aitom SNR convention at the nominal SNRs 100, 0.1, 0.05, 0.03, 0.01; every
method's features clustered with K fixed (5, GMM) and automatic (GMM + BIC over 2..10);
accuracy after Hungarian matching, ARI, NMI, V-measure; mean ± std over seeds; wall time and
device. Each finished run is appended to the JSON at once, so an interrupted benchmark keeps
what it measured; ``--resume`` skips runs already there.

With ``--cache-dir``, every simulated (SNR, seed) dataset and every method's features are kept
there as ``.npy`` (a 5000-particle 32³ stack is 655 MB), so several benchmark processes (one per
method) share the simulations, and clustering can be redone on the same features
(``--recluster``: no feature is recomputed; runs whose features are not cached are kept as
they are).

    .venv/bin/python benchmarks/unsupervised.py --out benchmarks/results/unsupervised.json
    .venv/bin/python benchmarks/unsupervised.py --methods disca --per-class 200 --seeds 0 \\
        --out benchmarks/results/unsupervised_disca_reduced.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from common import DEMO_CLASSES, REPO, fmt, log, machine_info, machine_line, md_table, write_outputs
from threadpoolctl import threadpool_limits
from tomoclust.cluster import (
    cluster_features,
    compact_labels,
    gmm_bic,
    merge_components,
    merged_posterior,
    reduce_features,
)
from tomoclust.features.autoencoder import AutoencoderSettings, run_autoencoder
from tomoclust.features.disca import DiscaSettings, run_disca
from tomoclust.features.invariant import invariant_features
from tomoclust.formats.atomic import save_npy, write_json
from tomoclust.numerics.metrics import clustering_metrics
from tomoclust.simulate.density import template_density
from tomoclust.simulate.subtomograms import simulate_subtomograms
from tomoclust.simulate.tomograms import Template

PUBLISHED = {  # Uddin et al. table (accuracy, 5 classes, aitom SNR convention)
    "DISCA (published)": {100: 0.912, 0.1: 0.814, 0.05: 0.806, 0.03: 0.781, 0.01: 0.560},
    "autoencoder + k-means (published)": {100: 0.215, 0.1: 0.214, 0.05: 0.212, 0.03: 0.203,
                                          0.01: 0.20},
}
TARGET = {100: 0.99, 0.1: 0.95, 0.05: 0.93, 0.03: 0.90, 0.01: 0.70}


def features_for(method: str, stack: np.ndarray, seed: int, device: str, args) -> np.ndarray:
    if method == "invariant":
        return invariant_features(stack, 6, 1.0, radial=args.radial,
                                  spectrum_components=args.invariant_components or None,
                                  device=device, centring=args.centring,
                                  noise_whitening=args.noise_whitening, seed=seed)
    if method == "disca":
        p = DiscaSettings(preset=args.disca_preset, iterations=args.disca_iterations, k_max=10,
                        seed=seed, invariant_radial=args.radial,
                        invariant_components=args.invariant_components or None)
        return run_disca(stack, p, device).features
    if method == "autoencoder":
        p = AutoencoderSettings(epochs=args.ae_epochs, channels=args.ae_channels, seed=seed)
        return run_autoencoder(stack, p, device).features
    raise ValueError(method)


def method_tag(method: str, args) -> str:
    """Short hash of the settings that determine a method's features (cache key)."""
    keys = {"invariant": [], "disca": ["disca_preset", "disca_iterations"],
            "autoencoder": ["ae_epochs", "ae_channels"]}[method]
    tag = {k: getattr(args, k) for k in keys} | {"variant": args.variant}
    if method == "invariant" and args.centring != "none":
        tag |= {"centring": args.centring}
    if method == "invariant" and args.noise_whitening != "none":
        tag |= {"noise_whitening": args.noise_whitening}
    if method in ("invariant", "disca") and (args.radial or args.invariant_components):
        # only when not the default descriptor, so that earlier caches keep their keys
        tag |= {"radial": args.radial, "invariant_components": args.invariant_components}
    text = json.dumps(tag, sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()[:8]


MODES = {"fixed": "K=5", "auto": "auto K, BIC", "merged": "auto K, BIC + merge",
         "consensus": "auto K, consensus"}


def cluster_run(out: dict, feats: np.ndarray, truth: np.ndarray, seed: int,
                merge_ratio: float, merge_gap: float, consensus: bool = False,
                consensus_components: list[int] | None = None, pca_components: int = 8,
                consensus_also: np.ndarray | None = None) -> None:
    """Fill ``out["fixed"]`` (GMM, K = 5), ``out["auto"]`` (lowest BIC over 2..10, one class
    per component) and ``out["merged"]`` (the same mixture, touching components merged when
    the mixture has a two-level structure), as :func:`tomoclust.cluster.cluster_features`
    computes them."""
    t0 = time.perf_counter()
    c = cluster_features(feats, "gmm", k=5, seed=seed, stability_seeds=0)
    out["fixed"] = {**clustering_metrics(truth, c.labels), "k": c.k,
                    "seconds_clustering": time.perf_counter() - t0}
    t0 = time.perf_counter()
    z = reduce_features(feats, 8, seed)  # one BIC scan serves both automatic modes
    with threadpool_limits(limits=1, user_api="blas"):
        gm, _ = gmm_bic(z, list(range(2, 11)), n_init=3, seed=seed)
        t_scan = time.perf_counter() - t0
        for mode, ratio in (("auto", None), ("merged", merge_ratio)):
            t1 = time.perf_counter()
            post = merged_posterior(gm, z, ratio, merge_gap, k_min=2)
            labels = compact_labels(post.argmax(axis=1)) + 1
            out[mode] = {**clustering_metrics(truth, labels), "k": int(labels.max()),
                         "k_components": gm.n_components,
                         "seconds_clustering": t_scan + time.perf_counter() - t1}
        out["merged"]["merge"] = merge_components(gm, merge_ratio, merge_gap, k_min=2)[1]
    out["merge_ratio"], out["merge_gap"] = merge_ratio, merge_gap
    if consensus:
        t0 = time.perf_counter()
        c = cluster_features(feats, "gmm", seed=seed, stability_seeds=0,
                             k_selection="consensus", pca_components=pca_components,
                             consensus_components=consensus_components or None,
                             consensus_also=consensus_also)
        out["consensus"] = {**clustering_metrics(truth, c.labels), "k": c.k,
                            "seconds_clustering": time.perf_counter() - t0}


def run_one(method: str, snr: float, seed: int, data, t_sim: float, args, device: str,
            cache: Path | None) -> dict:
    truth = data.truth["rlnClassNumber"].to_numpy()
    load0 = os.getloadavg()
    t0, c0 = time.perf_counter(), time.process_time()
    feats = features_for(method, data.stack, seed, device, args)
    t_feat, c_feat = time.perf_counter() - t0, time.process_time() - c0
    if cache is not None:
        save_npy(feature_path(cache, method, snr, seed, args), feats)
    out = {"method": method, "snr": snr, "seed": seed, "n": len(truth),
           "snr_measured": data.info["snr_measured"], "device": device,
           "seconds_features": t_feat, "seconds_simulation": t_sim,
           "cpu_seconds_features": c_feat,  # all threads of this process; less load-dependent
           "load_average_start": list(load0), "load_average_end": list(os.getloadavg()),
           "finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    also = None
    if (method == "invariant" and args.noise_whitening != "none"
            and args.k_selection == "consensus" and args.consensus_unwhitened):
        also = features_for(method, data.stack, seed, device,
                            argparse.Namespace(**{**vars(args), "noise_whitening": "none"}))
        out["consensus_unwhitened"] = True
    cluster_run(out, feats, truth, seed, args.merge_ratio, args.merge_gap,
                consensus=args.k_selection == "consensus",
                consensus_components=args.consensus_components,
                pca_components=args.pca_components, consensus_also=also)
    log(f"{method} SNR {snr} seed {seed}: fixed acc {out['fixed']['accuracy']:.3f}, "
        f"auto K={out['auto']['k']} acc {out['auto']['accuracy']:.3f}, merged K="
        f"{out['merged']['k']} acc {out['merged']['accuracy']:.3f} ({t_feat:.0f} s wall, "
        f"{c_feat:.0f} s CPU, "
        f"load {load0[0]:.1f} -> {out['load_average_end'][0]:.1f})")
    return out


def dataset_stem(cache: Path, snr: float, seed: int, per_class: int) -> Path:
    return cache / f"data_snr{snr:g}_seed{seed}_n{per_class}"


def feature_path(cache: Path, method: str, snr: float, seed: int, args) -> Path:
    return cache / (f"feat_{method}_{method_tag(method, args)}_snr{snr:g}_seed{seed}"
                    f"_n{args.per_class}.npy")


class Dataset:
    """A simulated set as the benchmark needs it (stack, truth table, info)."""

    def __init__(self, stack, truth, info):
        self.stack, self.truth, self.info = stack, truth, info


def load_or_simulate(templates, snr: float, seed: int, args, cache: Path | None
                     ) -> tuple[Dataset, float]:
    """The (SNR, seed) dataset, from the cache when there (memory-mapped), else simulated."""
    stem = dataset_stem(cache, snr, seed, args.per_class) if cache is not None else None
    if stem is not None and (stem.parent / (stem.name + ".json")).exists():
        meta = json.loads((stem.parent / (stem.name + ".json")).read_text())
        stack = np.load(stem.parent / (stem.name + "_stack.npy"), mmap_mode="r")
        truth = pd.DataFrame({"rlnClassNumber":
                              np.load(stem.parent / (stem.name + "_classes.npy"))})
        return Dataset(stack, truth, meta["info"]), float(meta["seconds_simulation"])
    t0 = time.perf_counter()
    data = simulate_subtomograms(templates, args.per_class, 32, 12.0, snr, "aitom", seed=seed)
    t_sim = time.perf_counter() - t0
    if stem is not None:
        save_npy(stem.parent / (stem.name + "_stack.npy"), data.stack)
        save_npy(stem.parent / (stem.name + "_classes.npy"),
                 data.truth["rlnClassNumber"].to_numpy())
        save_npy(stem.parent / (stem.name + "_angles.npy"),  # rot, tilt, psi (for analyses)
                 data.truth[["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]].to_numpy())
        info = {k: v for k, v in data.info.items() if isinstance(v, (int, float, str))}
        write_json(stem.parent / (stem.name + ".json"),
                   {"info": info, "seconds_simulation": t_sim})  # written last: marks complete
    return Dataset(data.stack, data.truth, data.info), t_sim


def recluster(payload: dict, args, cache: Path) -> None:
    """Redo the clustering of every run whose features are cached (same features), unless
    it was already clustered with these merge settings."""
    for r in payload["runs"]:
        if ("merged" in r and r.get("merge_ratio") == args.merge_ratio
                and r.get("merge_gap") == args.merge_gap):
            continue  # already clustered with these settings
        fp = feature_path(cache, r["method"], r["snr"], r["seed"], args)
        stem = dataset_stem(cache, r["snr"], r["seed"], args.per_class)
        if not fp.exists():
            log(f"no cached features for {r['method']} SNR {r['snr']} seed {r['seed']}; kept")
            continue
        truth = np.load(stem.parent / (stem.name + "_classes.npy"))
        cluster_run(r, np.load(fp), truth, r["seed"], args.merge_ratio, args.merge_gap)
        r["reclustered_utc"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        log(f"reclustered {r['method']} SNR {r['snr']} seed {r['seed']}: auto K="
            f"{r['auto']['k']} acc {r['auto']['accuracy']:.3f}, merged K={r['merged']['k']} "
            f"acc {r['merged']['accuracy']:.3f}, fixed acc {r['fixed']['accuracy']:.3f}")


def summarise(runs: list[dict]) -> list[dict]:
    rows = []
    keys = sorted({(r["method"], r["snr"]) for r in runs}, key=lambda t: (t[0], -t[1]))
    for method, snr in keys:
        rs = [r for r in runs if r["method"] == method and r["snr"] == snr]
        row = {"method": method, "snr": snr, "n_seeds": len(rs), "n": rs[0]["n"],
               "snr_measured": float(np.mean([r["snr_measured"] for r in rs])),
               "seconds": float(np.mean([r["seconds_features"] for r in rs])),
               "cpu_seconds": float(np.mean([r.get("cpu_seconds_features", np.nan)
                                             for r in rs])),
               "load": float(np.mean([r.get("load_average_start", [np.nan])[0] for r in rs])),
               "device": rs[0]["device"]}
        for mode in MODES:
            if not all(mode in r for r in rs):
                continue
            for key in ("accuracy", "ari", "nmi", "v_measure"):
                v = [r[mode][key] for r in rs]
                row[f"{mode}_{key}"] = (float(np.mean(v)), float(np.std(v)))
            row[f"{mode}_k"] = [r[mode]["k"] for r in rs]
        rows.append(row)
    return rows


def render(payload: dict) -> str:
    rows = summarise(payload["runs"])
    snrs = sorted({r["snr"] for r in rows}, reverse=True)
    pm = lambda t: f"{t[0]:.3f} ± {t[1]:.3f}"  # noqa: E731
    md = [f"Machine: {machine_line(payload['machine'])}\n",
          f"Command: `{payload['command']}`\n"]
    md.append("### Accuracy (Hungarian): K fixed = 5 | automatic K (lowest BIC over 2..10, one "
              "class per component) | automatic K with merging of touching components "
              f"(ridgeline ratio ≥ {payload['args'].get('merge_ratio', 0.1)}, gap ≥ "
              f"{payload['args'].get('merge_gap', 2.0)})\n")
    header = ["method", "n/class", "seeds"] + [f"SNR {s:g}" for s in snrs]
    table = []
    for method in sorted({r["method"] for r in rows}):
        for mode, name in MODES.items():
            cells = [f"{method} ({name})", payload["args"]["per_class"], ""]
            seeds = []
            for s in snrs:
                r = next((x for x in rows if x["method"] == method and x["snr"] == s), None)
                if r is None or f"{mode}_accuracy" not in r:
                    cells.append("–")
                    continue
                seeds.append(r["n_seeds"])
                txt = pm(r[f"{mode}_accuracy"])
                if mode != "fixed":
                    txt += f" (K={','.join(map(str, r[f'{mode}_k']))})"
                cells.append(txt)
            cells[2] = ",".join(map(str, seeds)) if len(set(seeds)) > 1 else \
                (seeds[0] if seeds else "")
            table.append(cells)
    for name, vals in PUBLISHED.items():
        table.append([name, 1000, "", *[fmt(vals.get(s)) for s in snrs]])
    table.append(["target (BENCHMARKS.md)", "", "", *[fmt(TARGET.get(s)) for s in snrs]])
    md.append(md_table(header, table))
    md.append("\n### All metrics (mean ± std over seeds)\n")
    header = ["method", "SNR", "measured SNR", "K", "acc", "ARI", "NMI", "V", "s/run (features)",
              "CPU s/run", "load at start", "device"]
    t2 = []
    for r in rows:
        for mode in MODES:
            if f"{mode}_accuracy" not in r:
                continue
            t2.append([r["method"], f"{r['snr']:g}", f"{r['snr_measured']:.4f}",
                       ("5" if mode == "fixed" else ",".join(map(str, r[f"{mode}_k"])))
                       + ("" if mode == "fixed" else f" ({MODES[mode][8:]})"),
                       pm(r[f"{mode}_accuracy"]), pm(r[f"{mode}_ari"]), pm(r[f"{mode}_nmi"]),
                       pm(r[f"{mode}_v_measure"]), f"{r['seconds']:.1f}",
                       f"{r['cpu_seconds']:.1f}", f"{r['load']:.1f}", r["device"]])
    md.append(md_table(header, t2))
    return "\n".join(md)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", nargs="+", default=["invariant"],
                    choices=["invariant", "disca", "autoencoder"])
    ap.add_argument("--snrs", nargs="+", type=float, default=[100, 0.1, 0.05, 0.03, 0.01])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--per-class", type=int, default=1000)
    ap.add_argument("--disca-preset", default="light")
    ap.add_argument("--disca-iterations", type=int, default=5)
    ap.add_argument("--radial", action="store_true",
                    help="invariant features (and DISCA's first labels) with the radial profile")
    ap.add_argument("--invariant-components", type=int, default=0,
                    help="principal components of the shell spectra kept (0: all columns)")
    ap.add_argument("--ae-epochs", type=int, default=5)
    ap.add_argument("--ae-channels", type=int, default=8)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--merge-ratio", type=float, default=0.1,
                    help="ridgeline ratio from which mixture components touch (merged mode)")
    ap.add_argument("--merge-gap", type=float, default=2.0,
                    help="merged groups must be this many times farther apart than their members")
    ap.add_argument("--centring", default="none", choices=["none", "com", "align"],
                    help="invariant: re-centre every box first (the workflow default is com)")
    ap.add_argument("--k-selection", default="bic", choices=["bic", "consensus"],
                    help="consensus: also the consensus choice of K (the workflow default)")
    ap.add_argument("--noise-whitening", default="none", choices=["none", "phase"],
                    help="invariant: noise-fraction whitening (the workflow default is phase)")
    ap.add_argument("--consensus-unwhitened", action="store_true",
                    help="consensus mode with --noise-whitening phase: the consensus also "
                         "pools the features before whitening (the workflow default)")
    ap.add_argument("--pca-components", type=int, default=8,
                    help="consensus mode: the labelling mixture's principal components")
    ap.add_argument("--consensus-components", nargs="*", type=int, default=[],
                    help="consensus mode: the principal components it pools (none: "
                         "--pca-components); the workflow's are in config.yaml")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--variant", default="",
                    help="free text naming a code variant; part of the feature cache key")
    ap.add_argument("--cache-dir", default=None,
                    help="keep simulated datasets and features here (shared between runs)")
    ap.add_argument("--recluster", action="store_true",
                    help="only redo the clustering of the runs in --out from cached features")
    ap.add_argument("--out", default="benchmarks/results/unsupervised.json")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    torch.set_num_threads(args.threads)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" \
        else args.device
    out = Path(args.out)
    cache = Path(args.cache_dir) if args.cache_dir else None
    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)
    skip = ("resume", "out", "threads", "cache_dir", "recluster", "variant")
    payload = {"machine": machine_info(), "args": vars(args),
               "command": "benchmarks/unsupervised.py " + " ".join(
                   f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}"
                   for k, v in vars(args).items() if k not in skip),
               "runs": []}
    if (args.resume or args.recluster) and out.exists():
        old = json.loads(out.read_text())
        payload["runs"] = old["runs"]
        if args.recluster:
            payload["machine"], payload["command"] = old["machine"], old["command"]
            payload["args"] = {**old["args"], "recluster": True}
    if args.recluster:
        if cache is None:
            raise SystemExit("--recluster needs --cache-dir")
        recluster(payload, args, cache)
        write(out, payload)
        return
    done = {(r["method"], r["snr"], r["seed"]) for r in payload["runs"]}
    templates = [Template(name, i + 1, template_density(REPO / path, 12.0, box=32))
                 for i, (name, path) in enumerate(DEMO_CLASSES.items())]
    out.parent.mkdir(parents=True, exist_ok=True)
    for seed in args.seeds:
        for snr in args.snrs:
            todo = [m for m in args.methods if (m, snr, seed) not in done]
            if not todo:
                continue
            data, t_sim = load_or_simulate(templates, snr, seed, args, cache)
            for method in todo:
                payload["runs"].append(run_one(method, snr, seed, data, t_sim, args, device,
                                               cache))
                payload["machine"]["load_average_at_end"] = list(os.getloadavg())
                write(out, payload)
    log(f"wrote {out} and {out.with_suffix('.md')}")


def write(out: Path, payload: dict) -> None:
    write_outputs(out, payload, render(payload))


if __name__ == "__main__":
    main()
