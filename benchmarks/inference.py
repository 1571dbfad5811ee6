"""Feature-inference throughput (subtomograms/s) of every method, side by side.

The reference is the published-size YOPO network (Zeng et al. 2023) on the same batch, in
the same process. Measures on the CPU (``--threads`` cores) and on CUDA when torch sees it.

    .venv/bin/python benchmarks/inference.py --out benchmarks/results/inference.json
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from common import log, machine_info, machine_line, md_table, write_outputs
from tomoclust.features.invariant import shell_spectra
from tomoclust.features.networks import AutoEncoder3D, Yopo, YopoSettings, count_parameters
from tomoclust.features.train import infer


def rate(fn, stack: np.ndarray, repeats: int) -> float:
    fn(stack[: min(len(stack), 64)])  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(stack)
        times.append(time.perf_counter() - t0)
    return len(stack) / float(np.median(times))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=512, help="subtomograms per timed pass")
    ap.add_argument("--box", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default="benchmarks/results/inference.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    stack = rng.standard_normal((args.n, args.box, args.box, args.box)).astype(np.float32)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    rows, results = [], []
    for dev in devices:
        models = {
            "invariant (l_max 6)": None,
            "YOPO light (default)": Yopo(YopoSettings.from_preset("light"), 5),
            "YOPO published (reference)": Yopo(YopoSettings.from_preset("published"), 5),
            "autoencoder (8 ch)": AutoEncoder3D(args.box, 32, 8),
            "autoencoder (32 ch, paper)": AutoEncoder3D(args.box, 32, 32),
        }
        measured = {}
        for name, model in models.items():
            if model is None:
                def fn(x, dev=dev):
                    return shell_spectra(x, 6, 1.0, device=dev)
                params = 0
            else:
                model = model.to(dev).eval()
                feat = model.features if isinstance(model, Yopo) else model.encode
                def fn(x, feat=feat, dev=dev):
                    out = infer(feat, x, dev)
                    if dev == "cuda":
                        torch.cuda.synchronize()
                    return out
                params = count_parameters(model)
            n = args.n if "published" not in name or dev == "cuda" else min(args.n, 64)
            r = rate(fn, stack[:n], args.repeats)
            measured[name] = r
            log(f"{dev} {name}: {r:.1f}/s")
            results.append({"device": dev, "method": name, "per_second": r, "parameters": params,
                            "n": n})
        ref = measured["YOPO published (reference)"]
        for name, r in measured.items():
            p = next(x["parameters"] for x in results if x["method"] == name and
                     x["device"] == dev)
            rows.append([dev, name, f"{p:,}", f"{r:,.1f}", f"{r / ref:.1f}"])
    m = machine_info()
    md = (f"### Feature inference throughput\n\nMachine: {machine_line(m)}\n\n"
          f"Command: `.venv/bin/python benchmarks/inference.py --threads {args.threads}` "
          f"({args.box}³ subtomograms, median of {args.repeats} passes of {args.n}; the "
          "published-size YOPO on 64 on the CPU).\n\n"
          + md_table(["device", "method", "parameters", "subtomograms/s",
                      "× vs published YOPO"], rows))
    write_outputs(args.out, {"machine": m, "args": vars(args), "results": results}, md)
    print(md)


if __name__ == "__main__":
    main()
