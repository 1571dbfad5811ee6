"""CPU inference throughput of the shipped encoder at 32³ (target: ≥ 500 subtomograms/s on
2 cores, so that 100k particles take a few minutes on a CPU node).

    python benchmarks/encoder_throughput.py --threads 1 2 \
        --out benchmarks/results/encoder_throughput.json

Times ``tomoclust.features.encoder.embed`` (the workflow's call) on random 32³ boxes after a
warm-up,
median of ``--repeats`` runs; the machine's load average is recorded beside it because on a
shared machine other processes take part of the cores.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
from common import REPO, log, machine_info, machine_line, md_table, median, write_outputs


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(REPO / "resources/models/encoder-v1.pt"))
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--n", type=int, default=2048)
    ap.add_argument("--batch-size", type=int, nargs="+", default=[64, 256])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=str(REPO / "benchmarks/results/encoder_throughput.json"))
    a = ap.parse_args(argv)

    import torch
    from tomoclust.features.encoder import embed, load_encoder

    machine = machine_info()
    model, man = load_encoder(a.model)
    x = np.random.default_rng(0).standard_normal((a.n, 32, 32, 32)).astype(np.float32)
    rows = []
    for th in a.threads:
        torch.set_num_threads(th)
        for bs in a.batch_size:
            embed(model, x[:bs], batch_size=bs)  # warm-up
            times = []
            for _ in range(a.repeats):
                t0 = time.perf_counter()
                embed(model, x, batch_size=bs)
                times.append(time.perf_counter() - t0)
            rate = a.n / median(times)
            rows.append({"threads": th, "batch_size": bs, "boxes_per_s": rate,
                         "load_average_1min": os.getloadavg()[0]})
            log(f"{th} thread(s), batch {bs}: {rate:.0f} boxes/s")
    machine["load_average_at_end"] = list(os.getloadavg())
    payload = {"model": man["file"], "sha256": man["sha256"], "box": 32, "n": a.n,
               "rows": rows, "machine": machine}
    md = ["# Shipped encoder: CPU inference throughput at 32³\n",
          f"Model `{man['file']}` ({man['parameters']:,} parameters); {a.n} boxes, median of "
          f"{a.repeats} runs.\n", f"Machine: {machine_line(machine)}\n",
          md_table(["threads", "batch", "boxes/s", "load average (1 min)"],
                   [[r["threads"], r["batch_size"], r["boxes_per_s"], r["load_average_1min"]]
                    for r in rows])]
    write_outputs(a.out, payload, "\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
