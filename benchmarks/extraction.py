"""Extraction benchmark: ``tomoclust.extract`` vs naive per-particle crop + ``ndimage.zoom``.

Run (a few minutes on 2 CPU cores; writes ~3 GB of scratch files under ``--workdir``)::

    .venv/bin/python benchmarks/extraction.py --out benchmarks/results/extraction.json

A 200×512×512 float32 tomogram (smoothed noise; speed does not depend on content) is written
with :func:`tomoclust.formats.mrc.write_mrc` and memory-mapped with
:func:`tomoclust.formats.mrc.open_mrc`, as the
extract rule does. Two plans, both with a 32-voxel output box:

* ``crop``: 10 Å → 10 Å (plain crop);
* ``fourier``: 10 Å → 12 Å (a 42-voxel box is cut, its spectrum cropped to 35, the centre 32
  kept), the demo configuration.

Methods, timed interleaved ``--repeats`` times at random centres (seeded, random order):

* ``tomoclust → stack``: :func:`tomoclust.extract.extract_to_stack` into a
  :class:`tomoclust.formats.stacks.StackWriter` on disk (workers = 2, as the rule's ``threads: 2``);
* ``tomoclust in memory``: :func:`tomoclust.extract.extract_boxes` batch by batch, no sink;
* ``naive → stack`` / ``naive in memory``: per particle, a numpy crop of the memory map,
  ``scipy.ndimage.zoom`` (order 3, ``grid_mode=True`` so the voxel size is exactly 12 Å) to the
  same 35³ grid, the centre 32³, zero mean / unit variance, written one by one;
* ``previous FFT path in memory``: the library's extraction before the separable operator
  (batches of 256 boxes gathered, ``_fourier_crop_batch`` with complex FFTs, batch
  normalisation), kept here as a side-by-side reference for the speed-up and the agreement.

Then a profile of ``extract_to_stack`` (where the time goes) and the peak memory of a fresh
subprocess per particle count (``--memory-n``): ``ru_maxrss`` as asked, plus the peaks of
anonymous and file-backed resident memory sampled from ``/proc/self/status``, because pages of
the memory-mapped tomogram and of the memory-mapped output stack are counted in RSS.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import json
import os
import pstats
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from common import REPO, log, machine_info, machine_line, md_table, median, write_outputs
from scipy import ndimage
from tomoclust.extract import (
    ResamplePlan,
    _fourier_crop_batch,
    _normalise_inplace,
    _resample_chunk,
    edge_voxels,
    extract_boxes,
    extract_to_stack,
    plan_resampling,
    resampling_matrix,
)
from tomoclust.formats.mrc import open_mrc, write_mrc
from tomoclust.formats.stacks import StackWriter

SHAPE = (200, 512, 512)
VOXEL = 10.0
BOX = 32
BATCH = 256  # extract_to_stack's default
WORKERS = 2
PLANS = {"crop": 10.0, "fourier": 12.0}  # output voxel size per mode


# ----------------------------------------------------------------------------- inputs
def make_tomogram(path: Path, seed: int) -> float:
    """Smoothed Gaussian noise (σ = 1 voxel), written as MRC; returns seconds to write."""
    rng = np.random.default_rng(seed)
    vol = rng.standard_normal(SHAPE, dtype=np.float32)
    vol = ndimage.gaussian_filter(vol, 1.0, mode="nearest")
    t0 = time.perf_counter()
    write_mrc(path, vol, VOXEL)
    return time.perf_counter() - t0


def centres(plan: ResamplePlan, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    e = edge_voxels(plan)
    return rng.integers(e, np.asarray(SHAPE) - e, size=(n, 3))


# ----------------------------------------------------------------------------- methods
def ours_to_stack(data, coords, plan, path, workers: int = WORKERS) -> None:
    with StackWriter(path, len(coords), plan.box_out, plan.voxel_size_out) as w:
        extract_to_stack(data, coords, plan, w, batch=BATCH, workers=workers)


def ours_in_memory(data, coords, plan) -> None:
    for a in range(0, len(coords), BATCH):
        extract_boxes(data, coords[a:a + BATCH], plan, workers=WORKERS)


def naive_box(data, c, plan: ResamplePlan) -> np.ndarray:
    b = plan.box_in
    z, y, x = np.asarray(c) - b // 2
    box = np.array(data[z:z + b, y:y + b, x:x + b], dtype=np.float32)
    if not plan.plain_crop:
        box = ndimage.zoom(box, plan.n_fourier / b, order=3, grid_mode=True, mode="grid-mirror")
        lo = box.shape[0] // 2 - plan.box_out // 2
        box = box[lo:lo + plan.box_out, lo:lo + plan.box_out, lo:lo + plan.box_out]
    return (box - box.mean()) / box.std()


def naive_in_memory(data, coords, plan) -> None:
    for c in coords:
        naive_box(data, c, plan)


def naive_to_stack(data, coords, plan, path) -> None:
    with StackWriter(path, len(coords), plan.box_out, plan.voxel_size_out) as w:
        for i, c in enumerate(coords):
            w[i] = naive_box(data, c, plan)


def fft_path_in_memory(data, coords, plan) -> list[np.ndarray]:
    """The previous library path (FFT crop of 256-box batches), in memory."""
    out = []
    for a in range(0, len(coords), BATCH):
        out.append(fft_path_batch(data, coords[a:a + BATCH], plan))
    return out


def fft_path_batch(data, coords, plan: ResamplePlan) -> np.ndarray:
    b = plan.box_in
    raw = np.empty((len(coords), b, b, b), dtype=np.float32)
    for i, (z, y, x) in enumerate(np.asarray(coords) - b // 2):
        raw[i] = data[z:z + b, y:y + b, x:x + b]
    if plan.plain_crop:
        out = raw
    else:
        res = _fourier_crop_batch(raw, plan.n_fourier, WORKERS)
        lo = plan.n_fourier // 2 - plan.box_out // 2
        sl = slice(lo, lo + plan.box_out)
        out = np.ascontiguousarray(res[:, sl, sl, sl])
    mu = out.mean(axis=(1, 2, 3), keepdims=True)
    sd = out.std(axis=(1, 2, 3), keepdims=True)
    return ((out - mu) / np.where(sd > 0, sd, 1.0)).astype(np.float32)


# ----------------------------------------------------------------------------- memory child
def _status_kb() -> dict[str, int]:
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key = line.split(":", 1)[0]
        if key in ("VmRSS", "RssAnon", "RssFile", "RssShmem", "VmHWM"):
            out[key] = int(line.split()[1])
    return out


def memory_child(n: int, tomogram: str, mode: str, stack: str, seed: int) -> dict[str, Any]:
    peaks = {"RssAnon": 0, "RssFile": 0, "VmRSS": 0}
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            st = _status_kb()
            for k in peaks:
                peaks[k] = max(peaks[k], st.get(k, 0))
            stop.wait(0.005)

    base = _status_kb()
    th = threading.Thread(target=sample, daemon=True)
    th.start()
    t0 = time.perf_counter()
    with open_mrc(tomogram, "tomogram") as mrc:
        plan = plan_resampling(float(mrc.voxel_size.x), PLANS[mode], BOX)
        coords = centres(plan, n, seed)
        before_close = dict(peaks)
        if n:
            with StackWriter(stack, n, plan.box_out, plan.voxel_size_out) as w:
                extract_to_stack(mrc.data, coords, plan, w, batch=BATCH, workers=WORKERS)
                time.sleep(0.02)  # let the sampler see the state before close
                before_close = dict(peaks)
    dt = time.perf_counter() - t0
    stop.set()
    th.join()
    if not n:
        before_close = dict(peaks)
    ru = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return {"n": n, "seconds": dt, "per_s": n / dt if n else None,
            "ru_maxrss_mb": ru / 1024, "vm_hwm_mb": _status_kb()["VmHWM"] / 1024,
            "baseline_rss_mb": base["VmRSS"] / 1024,
            "peak_rss_anon_mb": peaks["RssAnon"] / 1024,
            "peak_rss_file_mb": peaks["RssFile"] / 1024,
            "peak_rss_anon_before_close_mb": before_close["RssAnon"] / 1024,
            "stack_mb": n * BOX**3 * 4 / 1024**2}


# ----------------------------------------------------------------------------- main
def _cpu_s() -> float:
    """User + system CPU seconds of this process, all threads."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def time_methods(methods: dict, repeats: int, stack: Path
                 ) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Interleaved wall-clock and CPU timings. The previous run's stack is deleted first
    (untimed), as Snakemake deletes a job's outputs: replacing an existing file by rename
    makes ext4 start writing the new one back at once, a cost the workflow never pays.
    CPU time (all threads) does not depend on how much of the machine other processes
    take, so ``2 / CPU-seconds-per-subtomogram`` bounds the rate on 2 dedicated cores."""
    times: dict[str, list[float]] = {k: [] for k in methods}
    cpu: dict[str, list[float]] = {k: [] for k in methods}
    for r in range(repeats):
        for name, (fn, n) in methods.items():
            stack.unlink(missing_ok=True)
            gc.collect()
            c0, t0 = _cpu_s(), time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
            cpu[name].append(_cpu_s() - c0)
            log(f"  repeat {r + 1}: {name}: {n / times[name][-1]:,.0f} / s, "
                f"{1e3 * cpu[name][-1] / n:.3f} CPU ms each")
    return times, cpu


def profile_extract(data, coords, plan, path) -> dict[str, Any]:
    """cProfile of extract_to_stack (→ StackWriter) on one thread (the profiler sees only the
    calling thread), top functions by own time."""
    prof = cProfile.Profile()
    t0 = time.perf_counter()
    prof.enable()
    ours_to_stack(data, coords, plan, path, workers=1)
    prof.disable()
    total = time.perf_counter() - t0
    st = pstats.Stats(prof)
    rows = []
    for (file, line, func), (_cc, nc, tt, _ct, _callers) in st.stats.items():
        rows.append({"function": f"{Path(file).name}:{line}({func})", "calls": nc, "own_s": tt})
    rows.sort(key=lambda r: -r["own_s"])
    for r in rows:
        r["share"] = r["own_s"] / total
    return {"total_s": total, "n": len(coords), "top": rows[:10]}


def stage_breakdown(data, coords, plan, path) -> dict[str, float]:
    """Seconds in each stage of the library's extraction into a StackWriter, one thread,
    timed separately (the same steps and chunk size as extract_to_stack)."""
    from threadpoolctl import threadpool_limits

    b, bo, chunk = plan.box_in, plan.box_out, 8
    a = resampling_matrix(plan).astype(np.float32) if not plan.plain_crop else None
    tomo = np.asarray(data)
    raw = np.empty((chunk, b, b, b), dtype=np.float32)
    t = dict.fromkeys(("gather from memory map", "resampling (3 matrix products)",
                       "normalise", "write into the stack (pwrite + header statistics)",
                       "StackWriter.close (flush, rename)"), 0.0)
    keys = list(t)
    with threadpool_limits(1, user_api="blas"), \
            StackWriter(path, len(coords), bo, plan.voxel_size_out) as w:
        for s in range(0, len(coords), chunk):
            c = coords[s:s + chunk]
            t0 = time.perf_counter()
            r = raw[:len(c)]
            for i, (z, y, x) in enumerate(c - b // 2):
                r[i] = tomo[z:z + b, y:y + b, x:x + b]
            t1 = time.perf_counter()
            out = r.copy() if a is None else _resample_chunk(r, a)
            t2 = time.perf_counter()
            _normalise_inplace(out)
            t3 = time.perf_counter()
            w[s:s + len(c)] = out
            t4 = time.perf_counter()
            for k, d in zip(keys[:4], (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
                t[k] += d
        t5 = time.perf_counter()
    t[keys[4]] = time.perf_counter() - t5
    return t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(REPO / "benchmarks/results/extraction.json"))
    ap.add_argument("--n", type=int, default=5000, help="particles for the speed runs")
    ap.add_argument("--n-naive", type=int, default=500, help="particles for the naive runs")
    ap.add_argument("--memory-n", type=int, nargs="*", default=[1000, 5000, 20000])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", default=None, help="scratch directory (default: a temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the scratch directory")
    ap.add_argument("--quick", action="store_true", help="smoke test: small N, 1 repeat")
    ap.add_argument("--memory-child", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--tomogram", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--mode", default="fourier", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.memory_child is not None:  # fresh subprocess: one memory measurement
        stack = str(Path(args.workdir) / f"mem_{args.memory_child}.mrcs")
        res = memory_child(args.memory_child, args.tomogram, args.mode, stack, args.seed)
        Path(stack).unlink(missing_ok=True)
        print(json.dumps(res))
        return

    if args.quick:
        args.n, args.n_naive, args.repeats, args.memory_n = 600, 60, 1, [200, 1000]
    t_start = time.perf_counter()
    machine = machine_info()
    log(f"machine: {machine_line(machine)}")
    work = Path(tempfile.mkdtemp(prefix="tomoclust-bench-extract-", dir=args.workdir))
    tomo = work / "tomogram.mrc"
    result: dict[str, Any] = {
        "benchmark": "extraction", "command": ".venv/bin/python " + " ".join(sys.argv),
        "machine": machine,
        "setup": {"tomogram_zyx": list(SHAPE), "voxel_size": VOXEL, "box": BOX,
                  "batch": BATCH, "workers": WORKERS, "n_speed": args.n,
                  "n_naive": args.n_naive, "repeats": args.repeats, "seed": args.seed,
                  "scratch_filesystem": os.path.realpath(work),
                  "page_cache": "warm: the tomogram was just written; timings read it from "
                                "the page cache, not the disk"},
        "modes": {},
    }
    try:
        log("writing the tomogram")
        result["setup"]["write_mrc_s"] = make_tomogram(tomo, args.seed)
        mrc = open_mrc(tomo, "tomogram")
        data = mrc.data
        np.asarray(data).sum()  # fault the whole map in once: every method sees a warm cache
        for mode, vout in PLANS.items():
            plan = plan_resampling(VOXEL, vout, BOX)
            log(f"{mode}: {plan}")
            coords = centres(plan, args.n, args.seed + 1)
            cn = coords[:args.n_naive]
            stack = str(work / "stack.mrcs")
            methods = {
                "tomoclust → stack": (partial(ours_to_stack, data, coords, plan, stack), args.n),
                "tomoclust in memory": (partial(ours_in_memory, data, coords, plan), args.n),
                "naive → stack": (partial(naive_to_stack, data, cn, plan, stack), len(cn)),
                "naive in memory": (partial(naive_in_memory, data, cn, plan), len(cn)),
                "previous FFT path in memory": (partial(fft_path_in_memory, data, coords, plan),
                                                args.n),
            }
            load = [os.getloadavg()[0]]
            times, cpu = time_methods(methods, args.repeats, Path(stack))
            load.append(os.getloadavg()[0])
            rates = {k: methods[k][1] / median(v) for k, v in times.items()}
            # agreement on the first particles
            k = min(200, len(cn))
            a = extract_boxes(data, coords[:k], plan)
            nb = np.stack([naive_box(data, c, plan) for c in coords[:k]])
            pb = fft_path_batch(data, coords[:k], plan)
            corr = [float(np.corrcoef(x.ravel(), y.ravel())[0, 1]) for x, y in zip(a, nb)]
            entry = {
                "plan": {"box_in": plan.box_in, "n_fourier": plan.n_fourier,
                         "box_out": plan.box_out, "voxel_size_out": plan.voxel_size_out},
                "seconds": times,
                "per_s": rates,
                "cpu_seconds": cpu,
                "cpu_ms_per_subtomogram": {k: 1e3 * median(v) / methods[k][1]
                                           for k, v in cpu.items()},
                "speedup_vs_naive": {"→ stack": rates["tomoclust → stack"]
                                     / rates["naive → stack"],
                                     "in memory": rates["tomoclust in memory"]
                                     / rates["naive in memory"]},
                "agreement": {"naive_mean_corr": float(np.mean(corr)),
                              "naive_max_abs_diff": float(np.abs(a - nb).max()),
                              "fft_path_max_abs_diff": float(np.abs(a - pb).max())},
                "load_1min_before_after": load,
            }
            log(f"{mode}: profiling")
            Path(stack).unlink(missing_ok=True)
            entry["profile"] = profile_extract(data, coords, plan, stack)
            Path(stack).unlink(missing_ok=True)
            entry["stages_s"] = stage_breakdown(data, coords, plan, stack)
            Path(stack).unlink(missing_ok=True)
            result["modes"][mode] = entry
        mrc.close()

        mem = []
        for n in [0, *args.memory_n]:
            log(f"memory: fresh subprocess, N = {n}")
            cmd = [sys.executable, __file__, "--memory-child", str(n), "--tomogram", str(tomo),
                   "--workdir", str(work), "--mode", "fourier", "--seed", str(args.seed)]
            # Linux carries ru_maxrss over fork + exec (the forked copy of this large process
            # sets the high-water mark), so start the child from a small shell that forks it
            sh = ["/bin/sh", "-c", '"$@"; exit $?', "sh", *cmd]
            out = subprocess.run(sh, capture_output=True, text=True, check=True)
            mem.append(json.loads(out.stdout.strip().splitlines()[-1]))
            log(f"  {mem[-1]}")
        result["memory"] = mem
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    four = result["modes"]["fourier"]["per_s"]["tomoclust → stack"]
    crop = result["modes"]["crop"]["per_s"]["tomoclust → stack"]
    anon = [m["peak_rss_anon_mb"] for m in result["memory"] if m["n"]]
    pre = [m["peak_rss_anon_before_close_mb"] for m in result["memory"] if m["n"]]
    result["targets"] = {
        "ge_2000_per_s": {"crop": crop, "fourier": four, "met": min(crop, four) >= 2000},
        "memory_flat_in_n": {"peak_rss_anon_mb": anon, "before_close_mb": pre,
                             "met": bool(anon) and max(anon) - min(anon) < 0.25 * min(anon)},
    }
    result["total_runtime_s"] = time.perf_counter() - t_start
    machine["load_average_at_end"] = list(os.getloadavg())
    md = render(result)
    path = write_outputs(args.out, result, md)
    log(f"wrote {args.out} and {path} in {result['total_runtime_s']:.0f} s")
    print(md)


def render(res: dict[str, Any]) -> str:
    s = res["setup"]
    lines = [
        "### Extraction: tomoclust.extract vs naive crop + scipy.ndimage.zoom\n",
        f"Machine: {machine_line(res['machine'])}.\n",
        f"Tomogram {'×'.join(map(str, s['tomogram_zyx']))} float32 at {VOXEL:g} Å, "
        f"memory-mapped MRC (warm page cache); output box {BOX}; random centres; "
        f"{s['n_speed']} particles per run ({s['n_naive']} for the naive loop); "
        f"median of {s['repeats']} interleaved runs; batch {s['batch']}, workers {s['workers']}. "
        "\"→ stack\" includes the StackWriter on disk (creation, writes, close); \"in memory\" "
        "returns the boxes only. \"previous FFT path\" = the library's extraction before the "
        "separable operator (reference).\n",
    ]
    rows = []
    for mode, e in res["modes"].items():
        p = e["plan"]
        desc = (f"{mode}: {p['box_in']}³ → {p['n_fourier']}³ → {p['box_out']}³, "
                f"{p['voxel_size_out']:.4g} Å")
        for name, r in e["per_s"].items():
            naive = e["per_s"]["naive → stack" if name.endswith("→ stack")
                               else "naive in memory"]
            c = e["cpu_ms_per_subtomogram"][name]
            rows.append([desc, name, r, r / naive, c, 2e3 / c])
    lines.append(md_table(["plan", "method", "subtomograms / s", "× vs naive (same sink)",
                           "CPU ms / subtomogram (all threads)",
                           "2 ÷ CPU time: / s on 2 dedicated cores"], rows))
    lines.append("\nAgreement (first 200 particles): " + "; ".join(
        f"{m}: naive vs ours mean correlation {e['agreement']['naive_mean_corr']:.3f}, "
        f"previous FFT path vs ours max |Δ| {e['agreement']['fft_path_max_abs_diff']:.1e}"
        for m, e in res["modes"].items()) + " (normalised boxes; the naive zoom puts the box "
        "centre half an input voxel away from the library's, so it is not identical).\n")
    for mode, e in res["modes"].items():
        st = e["stages_s"]
        tot = sum(st.values())
        lines.append(f"\nWhere the time goes, {mode} ({s['n_speed']} particles → stack, "
                     f"{tot:.2f} s):\n")
        lines.append(md_table(["stage", "s", "share"],
                              [[k, v, f"{100 * v / tot:.0f} %"] for k, v in st.items()]))
        lines.append(f"\ncProfile of extract_to_stack ({mode}, one thread), top functions by "
                     "own time:\n")
        lines.append(md_table(["function", "calls", "own s", "share"],
                              [[r["function"], r["calls"], r["own_s"],
                                f"{100 * r['share']:.0f} %"]
                               for r in e["profile"]["top"][:6]]))
    lines.append("\nPeak memory, one fresh process per N (fourier plan, → stack on disk):\n")
    lines.append(md_table(
        ["N", "s", "subtomograms / s", "ru_maxrss MB", "peak anonymous RSS MB",
         "of which before StackWriter.close", "peak file-backed RSS MB", "stack on disk MB"],
        [[m["n"], m["seconds"], m["per_s"], m["ru_maxrss_mb"], m["peak_rss_anon_mb"],
          m["peak_rss_anon_before_close_mb"], m["peak_rss_file_mb"], m["stack_mb"]]
         for m in res["memory"]]))
    lines.append("\nN = 0 is the process after imports and opening the memory map. Anonymous "
                 "RSS is the process's own memory (arrays); file-backed RSS counts pages of the "
                 "mapped tomogram and of the mapped output stack, which the kernel can drop or "
                 "write back at any time; ru_maxrss is their sum at the peak. \"Before "
                 "StackWriter.close\" is the anonymous peak while extracting, i.e. without the "
                 "header statistics computed when the stack is closed.\n")
    t = res["targets"]
    lines.append(
        f"\nTargets: ≥ 2,000 subtomograms/s on 2 cores: "
        f"{'met' if t['ge_2000_per_s']['met'] else 'NOT met'} (crop "
        f"{t['ge_2000_per_s']['crop']:,.0f}/s, Fourier 10→12 Å "
        f"{t['ge_2000_per_s']['fourier']:,.0f}/s, end to end into the stack); memory "
        f"independent of N (anonymous RSS): {'met' if t['memory_flat_in_n']['met'] else 'NOT met'}"
        f" ({', '.join(f'{x:.0f}' for x in t['memory_flat_in_n']['peak_rss_anon_mb'])} MB; "
        "before StackWriter.close "
        f"{', '.join(f'{x:.0f}' for x in t['memory_flat_in_n']['before_close_mb'])} MB).\n")
    lines.append(f"\nTotal benchmark run time {res['total_runtime_s'] / 60:.1f} min.\n")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
