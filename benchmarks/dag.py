"""DAG construction time of the workflow for a tomogram sheet of 1,000 tomograms.

Run (about a minute)::

    .venv/bin/python benchmarks/dag.py --out benchmarks/results/dag.json

Writes ``--tomograms`` tiny but valid MRC files (8³ voxels; the sheet loader checks that every
path exists, nothing reads them in a dry run) and a sheet listing them, with the demo
configuration (config.yaml) switched to sheet mode (simulation off, every method on), in a
fresh working directory, so every job is pending: ingest, pick and extract per tomogram, then
gather, three feature methods, three clusterings and ``all``. Times, as median of
``--repeats`` runs each, in a fresh process (interpreter start and imports included):

* ``snakemake -n --quiet``: the dry run without the job listing;
* ``snakemake -n``: the dry run printing every job (what a user usually types);
* the same two with a one-tomogram sheet: the fixed cost (start-up, parsing, validation),
  so the difference is the per-tomogram cost.

Then one ``--quiet`` dry run under ``cProfile`` at the full size: the functions with the most
cumulative and own time (import machinery and module bodies left out), to show where the time
goes.
"""

from __future__ import annotations

import argparse
import os
import pstats
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from common import REPO, log, machine_info, machine_line, md_table, median, write_outputs
from tomoclust.formats.mrc import write_mrc

SNAKEMAKE = Path(sys.executable).parent / "snakemake"


def make_workdir(root: Path, n: int) -> tuple[Path, Path]:
    """A working directory with ``n`` tiny tomograms, their sheet and a sheet-mode config."""
    work = root / f"sheet{n}"
    raw = work / "raw"
    raw.mkdir(parents=True)
    vol = np.zeros((8, 8, 8), np.float32)
    rows = []
    for i in range(n):
        path = raw / f"TS_{i + 1:04d}.mrc"
        write_mrc(path, vol, 10.0)
        rows.append(f"TS_{i + 1:04d}\t{path}\n")
    sheet = work / "tomograms.tsv"
    sheet.write_text("name\tpath\n" + "".join(rows))
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    cfg["tomograms"] = str(sheet)
    cfg["simulation"]["enabled"] = False
    config = work / "config.yaml"
    config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return work, config


def dry_run(work: Path, config: Path, quiet: bool, prefix: list[str] | None = None
            ) -> tuple[float, str]:
    cmd = [*(prefix or []), str(SNAKEMAKE), "--snakefile", str(REPO / "Snakefile"),
           "--directory", str(work), "--configfile", str(config), "--cores", "2", "-n"]
    if quiet:
        cmd += ["--quiet", "all"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=work, capture_output=True, text=True)
    dt = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"dry run failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return dt, proc.stdout + proc.stderr


def job_count(text: str) -> int | None:
    m = re.search(r"^total\s+(\d+)\s*$", text, re.M)
    return int(m.group(1)) if m else None


def _plumbing(key: tuple[str, int, str]) -> bool:
    """Import machinery and module bodies: large cumulative times that say nothing."""
    file, _, func = key
    return ("importlib" in file or func in ("<module>", "<built-in method builtins.exec>")
            or (file == "~" and func.startswith("<built-in method _imp.")))


def profile(work: Path, config: Path, out: Path, top: int) -> dict[str, Any]:
    dry_run(work, config, True, [sys.executable, "-m", "cProfile", "-o", str(out)])
    st = pstats.Stats(str(out))
    total = st.total_tt

    def rows(key: str) -> list[dict[str, Any]]:
        items = sorted(((k, v) for k, v in st.stats.items() if not _plumbing(k)),
                       key=lambda kv: kv[1][3 if key == "cum" else 2], reverse=True)
        res = []
        for (file, line, func), (_cc, nc, tt, ct, _) in items[:top]:
            short = file.split("site-packages/")[-1].replace(str(REPO) + "/", "")
            res.append({"function": f"{short}:{line}({func})", "calls": nc,
                        "own_s": tt, "cumulative_s": ct})
        return res

    ours = sorted(((k, v) for k, v in st.stats.items()
                   if k[0].startswith(str(REPO)) and "/.venv/" not in k[0]
                   and "/site-packages/" not in k[0] and k[2] != "<listcomp>"),
                  key=lambda kv: kv[1][3], reverse=True)
    own_code = [{"function": f"{f.replace(str(REPO) + '/', '')}:{line}({func})", "calls": nc,
                 "own_s": tt, "cumulative_s": ct}
                for (f, line, func), (_cc, nc, tt, ct, _) in ours[:top]]
    return {"total_s": total, "by_cumulative": rows("cum"), "by_own": rows("own"),
            "workflow_code": own_code}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tomograms", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--top", type=int, default=15, help="profile rows to keep")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--out", default="benchmarks/results/dag.json")
    ap.add_argument("--quick", action="store_true", help="smoke test: 50 tomograms, 1 run")
    args = ap.parse_args()
    if args.quick:
        args.tomograms, args.repeats = 50, 1

    t_start = time.perf_counter()
    machine = machine_info()
    root = Path(tempfile.mkdtemp(prefix="tomoclust_dag_", dir=args.workdir))
    res: dict[str, Any] = {"machine": machine, "args": vars(args), "timings": []}
    try:
        for n in (1, args.tomograms):
            work, config = make_workdir(root, n)
            for quiet in (True, False):
                times, jobs = [], None
                for r in range(args.repeats):
                    dt, text = dry_run(work, config, quiet)
                    times.append(dt)
                    jobs = job_count(text) if not quiet else jobs
                    log(f"{n} tomograms, quiet={quiet}, run {r + 1}: {dt:.2f} s")
                res["timings"].append({"tomograms": n, "quiet": quiet, "seconds": times,
                                       "median_s": median(times), "jobs": jobs})
        work = root / f"sheet{args.tomograms}"
        log("profiling")
        res["profile"] = profile(work, work / "config.yaml", root / "dag.prof", args.top)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    machine["load_average_at_end"] = list(os.getloadavg())
    res["total_runtime_s"] = time.perf_counter() - t_start

    t = {(x["tomograms"], x["quiet"]): x for x in res["timings"]}
    big = args.tomograms
    rows = [[x["tomograms"], "-n --quiet all" if x["quiet"] else "-n",
             x["jobs"] if x["jobs"] is not None else t[(x["tomograms"], False)]["jobs"],
             f"{x['median_s']:.2f}", " / ".join(f"{s:.2f}" for s in x["seconds"])]
            for x in res["timings"]]
    per_tomo = {q: (t[(big, q)]["median_s"] - t[(1, q)]["median_s"]) / (big - 1) * 1000
                for q in (True, False)}
    res["per_tomogram_ms"] = {"quiet": per_tomo[True], "listing": per_tomo[False]}
    prof = res["profile"]
    prow = [[p["function"], f"{p['calls']:,}", f"{p['own_s']:.2f}", f"{p['cumulative_s']:.2f}"]
            for p in prof["by_cumulative"]]
    orow = [[p["function"], f"{p['calls']:,}", f"{p['own_s']:.2f}", f"{p['cumulative_s']:.2f}"]
            for p in prof["by_own"]]
    wrow = [[p["function"], f"{p['calls']:,}", f"{p['own_s']:.2f}", f"{p['cumulative_s']:.2f}"]
            for p in prof["workflow_code"]]
    md = (
        f"### DAG construction: a sheet of {big:,} tomograms\n\n"
        f"Machine: {machine_line(machine)}\n\n"
        f"Command: `.venv/bin/python benchmarks/dag.py --tomograms {big}` (config.yaml in sheet "
        "mode, every method; fresh working directory, so every job is pending; each run a new "
        f"process, start-up included; median of {args.repeats}).\n\n"
        + md_table(["tomograms", "snakemake", "jobs", "median s", "runs s"], rows)
        + f"\nPer tomogram (difference of the medians / {big - 1}): "
        f"{per_tomo[True]:.2f} ms quiet, {per_tomo[False]:.2f} ms with the job listing.\n\n"
        f"Profile of one `-n --quiet all` run at {big:,} tomograms ({prof['total_s']:.1f} s "
        "under cProfile), by cumulative time:\n\n"
        + md_table(["function", "calls", "own s", "cumulative s"], prow)
        + "\nBy own time:\n\n"
        + md_table(["function", "calls", "own s", "cumulative s"], orow)
        + "\nThe workflow's own code (Snakefile, rules/*.smk, scripts/tomoclust) in the same "
        "profile (a module's cumulative time includes its imports):\n\n"
        + md_table(["function", "calls", "own s", "cumulative s"], wrow)
    )
    path = write_outputs(args.out, res, md)
    log(f"wrote {args.out} and {path} in {res['total_runtime_s']:.0f} s")
    print(md)


if __name__ == "__main__":
    main()
