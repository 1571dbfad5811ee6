"""Scale: gather → feature inference → clustering for N = 10k, 100k, 1M synthetic particles.

Run (about 25 min on 2 busy CPU cores; needs ~35 GB of free disk under ``--workdir`` at 1M)::

    .venv/bin/python benchmarks/scale.py --out benchmarks/results/scale.json

For every N, each stage runs in a fresh subprocess (so its peak memory is its own):

* ``write``: per-"tomogram" stacks of 5,000 particles each, written with
  :class:`tomoclust.formats.stacks.StackWriter`, and their RELION-5 tables (as the extract rule
  writes
  them). Particles are three planted shapes (a ball, a dumbbell, an L of three lobes) under
  random rotations, plus Gaussian noise; a pool of 3×128 rotated shapes and a pool of 4,096
  noise volumes are combined at random, so every particle is a distinct sum. Not a workflow
  stage: it only makes the input.
* ``gather``: :func:`tomoclust.extract.gather_stacks` (the gather_particles rule) into one
  ``particles.star`` + ``particles.mrcs``; the per-tomogram stacks are deleted afterwards, to
  keep one copy on disk.
* ``invariant``: the ``invariant`` method's features with its defaults
  (:func:`tomoclust.features.invariant.invariant_features`: centre-of-mass re-centring on shares
  of the stack, then the shell spectra, l_max 6, low-pass 1 voxel) over the stack memory-mapped
  by :func:`tomoclust.formats.stacks.open_stack`; the features are saved with ``np.save``.
* ``yopo``: the YOPO ``light`` network's features (:func:`tomoclust.features.train.infer`, untrained
  weights: the same arithmetic as a trained network). The box is 16 (so 1M particles fit in
  16 GB), below the 26 voxels ``light`` needs at its input binning 2, so ``input_binning`` is 1:
  the network sees 16³, as ``light`` does on the default 32³ box. Above ``--yopo-max``
  particles only the first ``--yopo-subset`` are inferred (a subset, labelled as such), and the
  full-pass time is extrapolated from that rate, also labelled.
* ``cluster``: what the cluster rule does with the invariant features: the constant-column
  and collapse checks, then :func:`tomoclust.cluster.cluster_features` (GMM with a fixed K = 3,
  PCA 8, n_init 3, the default stability check), with the adjusted Rand index against the
  planted classes as a sanity check.
* ``cluster_f64``: the previous clustering path (float64 copies, scikit-learn's PCA) on the
  same features, for its memory and to show whether the labels agree with ``cluster``.

Memory per stage: ``ru_maxrss`` of the child, and the peaks of its anonymous and file-backed
resident memory sampled every 10 ms from ``/proc/self/status``. Pages of a memory-mapped file
count in RSS while mapped (``RssFile``) but are page cache the kernel can drop at any time; the
anonymous part is what the process really holds. A stage whose anonymous memory passes
``--anon-limit-gb`` is ended at once (the benchmark then stops), so it cannot push a shared
machine into OOM.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from common import log, machine_info, machine_line, md_table, write_outputs

PER_TOMOGRAM = 5000
STAGES = ("write", "gather", "invariant", "yopo", "cluster", "cluster_f64")
N_CLASSES = 3
VOXEL = 12.0


# ----------------------------------------------------------------------- memory sampling
def _status_kb() -> dict[str, int]:
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key = line.split(":", 1)[0]
        if key in ("VmRSS", "RssAnon", "RssFile", "VmHWM"):
            out[key] = int(line.split()[1])
    return out


class Sampler:
    """Peaks of RssAnon / RssFile / VmRSS of this process, sampled in a thread. With
    ``anon_limit_kb``, a stage whose anonymous memory passes the limit is ended at once (exit
    status 3, after printing what it saw), so the benchmark cannot push the machine into OOM."""

    def __init__(self, interval: float = 0.01, anon_limit_kb: int | None = None):
        self.peaks = {"RssAnon": 0, "RssFile": 0, "VmRSS": 0}
        self.interval = interval
        self.anon_limit_kb = anon_limit_kb
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            st = _status_kb()
            for k in self.peaks:
                self.peaks[k] = max(self.peaks[k], st.get(k, 0))
            if self.anon_limit_kb and st.get("RssAnon", 0) > self.anon_limit_kb:
                print(json.dumps({"aborted": "anonymous memory over the limit",
                                  "limit_mb": self.anon_limit_kb / 1024,
                                  "peak_rss_anon_mb": st["RssAnon"] / 1024}), flush=True)
                os._exit(3)
            self._stop.wait(self.interval)

    def __enter__(self) -> Sampler:
        self.baseline = _status_kb()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        time.sleep(2 * self.interval)
        self._stop.set()
        self._thread.join()


# ----------------------------------------------------------------------------- stages
def _shapes(box: int) -> np.ndarray:
    """The three planted shapes, ``(3, box, box, box)``, centred at ``box // 2``."""
    z, y, x = np.indices((box,) * 3, dtype=np.float32) - box // 2

    def blob(cz, cy, cx, s):
        return np.exp(-((z - cz) ** 2 + (y - cy) ** 2 + (x - cx) ** 2) / (2 * s * s))

    ball = blob(0, 0, 0, 2.5)
    dumbbell = blob(0, 0, -3, 1.8) + blob(0, 0, 3, 1.8)
    ell = blob(0, -2, -2, 1.6) + blob(0, -2, 2, 1.6) + blob(0, 3, -2, 1.6)
    return np.stack([ball, dumbbell, ell]).astype(np.float32)


def stage_write(d: Path, n: int, box: int, noise: float, seed: int) -> dict[str, Any]:
    from tomoclust.formats.stacks import StackWriter
    from tomoclust.formats.star import particle_table, write_star
    from tomoclust.numerics.rotations import random_rotations, rotate_volume

    rng = np.random.default_rng(seed)
    shapes = _shapes(box)
    rots = random_rotations(128 * N_CLASSES, rng)
    signal = np.stack([rotate_volume(shapes[i // 128], rots[i]) for i in range(len(rots))])
    noise_pool = (noise * rng.standard_normal((4096, box, box, box))).astype(np.float32)
    n_tomo = -(-n // PER_TOMOGRAM)
    truth = np.empty(n, np.int8)
    stars, stacks = [], []
    row = 0
    for t in range(n_tomo):
        m = min(PER_TOMOGRAM, n - row)
        sig = rng.integers(0, len(signal), m)
        vols = signal[sig] + noise_pool[rng.integers(0, len(noise_pool), m)]
        name = f"T{t:04d}"
        stack, star = d / "subtomograms" / f"{name}.mrcs", d / "subtomograms" / f"{name}.star"
        with StackWriter(stack, m, box, VOXEL) as w:
            w[:] = vols
        coords = rng.uniform(20, 480, (m, 3))
        df = particle_table(name, coords, (200, 500, 500), 10.0)
        df.insert(0, "rlnImageName", [f"{i + 1}@{stack.name}" for i in range(m)])
        df["rlnTomoTiltSeriesPixelSize"] = 10.0
        write_star(star, df)
        truth[row:row + m] = sig // 128
        stars.append(str(star))
        stacks.append(str(stack))
        row += m
    np.save(d / "truth.npy", truth)
    (d / "inputs.json").write_text(json.dumps({"stars": stars, "stacks": stacks}))
    return {"tomograms": n_tomo,
            "stack_bytes": sum(Path(s).stat().st_size for s in stacks)}


def stage_gather(d: Path) -> dict[str, Any]:
    from tomoclust.extract import gather_stacks

    inputs = json.loads((d / "inputs.json").read_text())
    t0 = time.perf_counter()
    n = gather_stacks(inputs["stars"], inputs["stacks"], str(d / "particles.star"),
                      str(d / "particles.mrcs"))
    dt = time.perf_counter() - t0
    return {"seconds": dt, "n": n, "stack_bytes": (d / "particles.mrcs").stat().st_size,
            "star_bytes": (d / "particles.star").stat().st_size}


def stage_invariant(d: Path, threads: int) -> dict[str, Any]:
    import torch
    from tomoclust.features.invariant import invariant_features
    from tomoclust.formats.stacks import open_stack
    from tomoclust.settings import InvariantSettings

    torch.set_num_threads(threads)
    stack, _ = open_stack(d / "particles.mrcs")
    inv = InvariantSettings()  # the method's defaults (centre-of-mass re-centring included)
    t0 = time.perf_counter()
    feats = invariant_features(stack, inv.l_max, inv.lowpass_vox, radial=inv.radial,
                               spectrum_components=inv.spectrum_components, device="cpu",
                               centring=inv.centring)
    dt = time.perf_counter() - t0
    np.save(d / "invariant.npy", feats)
    return {"seconds": dt, "n": len(feats), "feature_dim": feats.shape[1],
            "feature_bytes": feats.nbytes, "centring": inv.centring}


def stage_yopo(d: Path, threads: int, n_max: int, n_subset: int) -> dict[str, Any]:
    import torch
    from tomoclust.features.networks import Yopo, YopoSettings
    from tomoclust.features.train import infer
    from tomoclust.formats.stacks import open_stack

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    stack, _ = open_stack(d / "particles.mrcs")
    model = Yopo(YopoSettings.from_preset("light", input_binning=1), N_CLASSES).eval()
    sub = stack if len(stack) <= n_max else stack[:n_subset]
    t0 = time.perf_counter()
    feats = infer(model.features, sub, "cpu")
    dt = time.perf_counter() - t0
    return {"seconds": dt, "n": len(feats), "n_total": len(stack), "subset": len(sub) < len(stack),
            "feature_dim": feats.shape[1], "feature_bytes": feats.nbytes}


def stage_cluster(d: Path, k: int, algorithm: str) -> dict[str, Any]:
    """What the cluster rule does with the features: the constant-column and collapse checks,
    then :func:`tomoclust.cluster.cluster_features`."""
    from sklearn.metrics import adjusted_rand_score
    from tomoclust.cluster import (
        cluster_features,
        collapse_warning,
        constant_columns,
        effective_dimension,
    )

    feats = np.load(d / "invariant.npy")
    t0 = time.perf_counter()
    n_const = constant_columns(feats)
    res = cluster_features(feats, algorithm, k=k, pca_components=8, n_init=3, seed=0)
    sizes = np.bincount(res.labels)[1:].tolist()
    warning = collapse_warning(feats, res.k, k, sizes)
    dim = effective_dimension(feats)
    dt = time.perf_counter() - t0
    np.save(d / "labels.npy", res.labels)
    truth = np.load(d / "truth.npy")
    return {"seconds": dt, "n": len(feats), "k": res.k, "stability_ari": res.stability_ari,
            "ari_vs_planted": float(adjusted_rand_score(truth, res.labels)),
            "feature_bytes": feats.nbytes, "constant_columns": n_const,
            "effective_dimension": dim, "collapse_warning": warning}


def stage_cluster_f64(d: Path, k: int, algorithm: str) -> dict[str, Any]:
    """The previous clustering path, for comparison: standardised float64 copies and
    scikit-learn's PCA, then the same mixture fits; agreement with the ``cluster`` stage."""
    from sklearn.decomposition import PCA
    from sklearn.metrics import adjusted_rand_score
    from threadpoolctl import threadpool_limits
    from tomoclust.cluster import _cluster

    feats = np.load(d / "invariant.npy")
    t0 = time.perf_counter()
    x = np.asarray(feats, dtype=np.float64)
    sd = x.std(axis=0)
    x = (x - x.mean(axis=0)) / np.where(sd > 0, sd, 1.0)
    z = PCA(n_components=8, random_state=0).fit_transform(x)
    del x
    z = z / np.where(z.std(axis=0) > 0, z.std(axis=0), 1.0)
    with threadpool_limits(limits=1, user_api="blas"):
        res = _cluster(z, algorithm, k, 2, 10, 3, 0, 2, None, 2.0)
    dt = time.perf_counter() - t0
    truth = np.load(d / "truth.npy")
    new = np.load(d / "labels.npy")
    return {"seconds": dt, "n": len(feats), "k": res.k, "stability_ari": res.stability_ari,
            "ari_vs_planted": float(adjusted_rand_score(truth, res.labels)),
            "labels_equal_to_cluster_stage": bool(np.array_equal(new, res.labels)),
            "ari_vs_cluster_stage": float(adjusted_rand_score(new, res.labels)),
            "feature_bytes": feats.nbytes}


def synthetic_features(d: Path, n: int, seed: int, dim: int = 196) -> None:
    """``invariant.npy`` (float32) and ``truth.npy`` for ``--cluster-only``: N_CLASSES planted
    classes, class means apart by about one noise σ per column, noise of a different spread
    in every column, some columns correlated (as shell spectra are); written in chunks."""
    rng = np.random.default_rng(seed)
    means = rng.standard_normal((N_CLASSES, dim)) * 0.35
    scale = rng.uniform(0.5, 2.0, dim)
    mix = np.eye(dim) + 0.3 * rng.standard_normal((dim, dim)) / np.sqrt(dim)
    truth = rng.integers(0, N_CLASSES, n)
    out = np.lib.format.open_memmap(d / "invariant.npy", mode="w+", dtype=np.float32,
                                    shape=(n, dim))
    for a in range(0, n, 100_000):
        t = truth[a:a + 100_000]
        x = (rng.standard_normal((len(t), dim)) @ mix) * scale + means[t] * scale
        out[a:a + len(t)] = x
    out.flush()
    del out
    np.save(d / "truth.npy", truth)


def child(args: argparse.Namespace) -> None:
    d = Path(args.dir)
    with Sampler(anon_limit_kb=int(args.anon_limit_gb * 1024**2)) as s:
        t0 = time.perf_counter()
        if args.stage == "write":
            out = stage_write(d, args.n[0], args.box, args.noise, args.seed)
        elif args.stage == "gather":
            out = stage_gather(d)
        elif args.stage == "invariant":
            out = stage_invariant(d, args.threads)
        elif args.stage == "yopo":
            out = stage_yopo(d, args.threads, args.yopo_max, args.yopo_subset)
        elif args.stage == "cluster":
            out = stage_cluster(d, args.k, args.algorithm)
        elif args.stage == "cluster_f64":
            out = stage_cluster_f64(d, args.k, args.algorithm)
        else:
            raise ValueError(args.stage)
        out.setdefault("seconds", time.perf_counter() - t0)
    mb = 1024.0
    out.update({
        "ru_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / mb,
        "vm_hwm_mb": _status_kb()["VmHWM"] / mb,
        "baseline_rss_mb": s.baseline["VmRSS"] / mb,
        "peak_rss_anon_mb": s.peaks["RssAnon"] / mb,
        "peak_rss_file_mb": s.peaks["RssFile"] / mb,
    })
    print(json.dumps(out))


def run_stage(stage: str, d: Path, args: argparse.Namespace, n: int) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--stage", stage, "--dir", str(d), "--n", str(n),
           "--box", str(args.box), "--threads", str(args.threads), "--k", str(args.k),
           "--algorithm", args.algorithm, "--yopo-max", str(args.yopo_max),
           "--yopo-subset", str(args.yopo_subset),
           "--noise", str(args.noise), "--seed", str(args.seed),
           "--anon-limit-gb", str(args.anon_limit_gb)]
    # Linux carries ru_maxrss over fork + exec: start the child from a small shell that forks it
    sh = ["/bin/sh", "-c", '"$@"; exit $?', "sh", *cmd]
    t0 = time.perf_counter()
    proc = subprocess.run(sh, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode == 3:  # the memory guard ended it
        out = json.loads(proc.stdout.strip().splitlines()[-1])
        out["wall_s"] = wall
        return out
    if proc.returncode != 0:
        raise RuntimeError(f"stage {stage} (N={n}) failed:\n{proc.stderr[-5000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["wall_s"] = wall  # including interpreter start and imports
    return out


# ------------------------------------------------------------------------------- main
def render(res: dict[str, Any]) -> str:
    a = res["args"]
    rows = []
    for r in res["runs"]:
        n = r["n"]
        for stage in [st for st in STAGES if st in r["stages"]]:
            s = r["stages"][stage]
            label = stage
            if stage == "yopo" and s["subset"]:
                label = f"yopo (subset: first {s['n']:,})"
            data = ""
            if stage in ("write", "gather"):
                data = f"stack {s['stack_bytes'] / 1e9:.2f} GB"
            if stage == "gather":
                data += f", STAR {s['star_bytes'] / 1e6:.0f} MB"
            if stage in ("invariant", "yopo", "cluster", "cluster_f64"):
                data = f"features {s['feature_bytes'] / 1e6:.1f} MB"
            if stage == "cluster_f64":
                label = "cluster, previous float64 path"
            rate = n / s["seconds"] if stage == "write" else s["n"] / s["seconds"]
            rows.append([f"{n:,}", label, f"{s['seconds']:.1f}", f"{rate:,.0f}",
                         f"{s['ru_maxrss_mb']:,.0f}", f"{s['peak_rss_anon_mb']:,.0f}",
                         f"{s['peak_rss_file_mb']:,.0f}", data])
    extra = []
    for r in res["runs"]:
        y = r["stages"].get("yopo", {"subset": False})
        c = r["stages"]["cluster"]
        line = (f"- N = {r['n']:,}: clustering K = {c['k']}, ARI vs planted classes "
                f"{c['ari_vs_planted']:.3f}, stability ARI {c['stability_ari']:.3f}")
        f64 = r["stages"].get("cluster_f64")
        if f64:
            line += ("; the previous float64 path: labels "
                     + ("identical" if f64["labels_equal_to_cluster_stage"] else
                        f"differ (ARI {f64['ari_vs_cluster_stage']:.4f} between the two)")
                     + f", ARI vs planted {f64['ari_vs_planted']:.3f}")
        if y["subset"]:
            line += (f"; YOPO full pass **extrapolated** from the subset rate: "
                     f"{r['yopo_full_pass_extrapolated_s']:,.0f} s "
                     f"({r['yopo_full_pass_extrapolated_s'] / 60:.0f} min)")
        extra.append(line)
    anon = res["summary"]
    only = " --cluster-only" if a.get("cluster_only") else ""
    title = "clustering" if only else "gather → features → clustering"
    md = (
        f"### Scale: {title}\n\n"
        + f"Machine: {machine_line(res['machine'])}\n\n"
        f"Command: `.venv/bin/python benchmarks/scale.py{only} --n {' '.join(map(str, a['n']))}` "
        + ("(clustering only, on synthetic planted features of the invariant's width; "
           if a.get("cluster_only") else
           f"(box {a['box']} at {VOXEL:g} Å, {PER_TOMOGRAM:,} particles per tomogram, "
           f"{N_CLASSES} planted shapes, noise σ {a['noise']}; ")
        + f"torch/BLAS threads {a['threads']}; "
        f"clustering {a['algorithm']} K = {a['k']}, PCA 8, n_init 3"
        + ("" if a.get("cluster_only") else
           ", on the invariant features (the method's defaults, re-centring included); YOPO "
           "light at input binning 1, untrained")
        + "). Each stage in a fresh process; "
        f"total {res['total_runtime_s'] / 60:.1f} min.\n\n"
        + md_table(["N", "stage", "s", "particles/s", "ru_maxrss MB", "peak anon MB",
                    "peak file-backed MB", "data"], rows)
        + "\n" + "\n".join(extra) + "\n\n"
        "ru_maxrss counts the pages of the memory-mapped stacks the process has touched (page "
        "cache, dropped by the kernel under pressure; sacct's MaxRSS counts them too); the "
        "anonymous peak is the memory the stage really needs. Anonymous peak minus the "
        "features the stage returns (N × dim × 4 bytes; nothing for the gather) per N:\n\n"
        + md_table(["stage"] + [f"N = {r['n']:,}" for r in res["runs"]],
                   [[st] + [("–" if v is None else f"{v:,.0f} MB")
                                            for v in anon[st]] for st in anon])
    )
    return md


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--box", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--k", type=int, default=3)
    ap.add_argument("--algorithm", default="gmm", choices=["gmm", "kmeans"])
    ap.add_argument("--yopo-max", type=int, default=100_000,
                    help="largest N with a full YOPO pass; above it, only --yopo-subset")
    ap.add_argument("--yopo-subset", type=int, default=10_000,
                    help="particles (the first ones) YOPO infers when N > --yopo-max")
    ap.add_argument("--noise", type=float, default=0.6)
    ap.add_argument("--anon-limit-gb", type=float, default=12.0,
                    help="end any stage whose anonymous memory passes this (a guard for a "
                    "shared machine)")
    ap.add_argument("--quick", action="store_true", help="smoke test: N = 2,000 and 6,000")
    ap.add_argument("--cluster-only", action="store_true",
                    help="only the clustering stages, on synthetic planted features of the "
                    "invariant's width (196): minutes instead of the full pipeline's hour")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", default=None, help="scratch (default: a new temp directory)")
    ap.add_argument("--keep", action="store_true", help="keep the scratch files")
    ap.add_argument("--out", default="benchmarks/results/scale.json")
    ap.add_argument("--stage", help=argparse.SUPPRESS)
    ap.add_argument("--dir", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.stage:
        child(args)
        return
    if args.quick:
        args.n, args.yopo_max, args.yopo_subset = [2000, 6000], 3000, 1000

    t_start = time.perf_counter()
    machine = machine_info()
    work = Path(tempfile.mkdtemp(prefix="tomoclust_scale_", dir=args.workdir))
    runs = []
    try:
        for n in args.n:
            d = work / f"n{n}"
            d.mkdir()
            stages: dict[str, Any] = {}
            if args.cluster_only:
                log(f"N = {n:,}: synthetic features")
                synthetic_features(d, n, args.seed)
            for stage in (("cluster", "cluster_f64") if args.cluster_only else STAGES):
                log(f"N = {n:,}: {stage}")
                stages[stage] = run_stage(stage, d, args, n)
                log(f"  {stages[stage]}")
                if "aborted" in stages[stage]:
                    raise RuntimeError(f"N = {n:,}: {stage} {stages[stage]}")
                if stage == "gather" and not args.cluster_only:  # one copy on disk
                    shutil.rmtree(d / "subtomograms")
            y = stages.get("yopo", {"subset": False})
            runs.append({"n": n, "stages": stages,
                         "yopo_full_pass_extrapolated_s":
                             n * y["seconds"] / y["n"] if y["subset"] else None})
            shutil.rmtree(d)
            # partial results survive an interrupted run
            Path(args.out).with_suffix(".partial.json").write_text(
                json.dumps(runs, indent=1, default=str))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    def excess(st: dict[str, Any]) -> float | None:
        if "peak_rss_anon_mb" not in st or "aborted" in st:
            return None
        return st["peak_rss_anon_mb"] - st.get("feature_bytes", 0) / 2**20

    summary = {st: [excess(r["stages"][st]) for r in runs]
               for st in ("gather", "invariant", "yopo", "cluster", "cluster_f64")
               if all(st in r["stages"] for r in runs)}
    machine["load_average_at_end"] = list(os.getloadavg())
    res = {"machine": machine, "args": {k: v for k, v in vars(args).items()
                                        if k not in ("stage", "dir")},
           "runs": runs, "summary": summary,
           "total_runtime_s": time.perf_counter() - t_start}
    md = render(res)
    path = write_outputs(args.out, res, md)
    Path(args.out).with_suffix(".partial.json").unlink(missing_ok=True)
    log(f"wrote {args.out} and {path}")
    print(md)


if __name__ == "__main__":
    main()
