"""Score every method on any labelled subtomogram set, with one command (mode 2 of the workflow).

The set is a particle STAR whose ``rlnImageName`` names subtomograms (MRC files or
``N@stack.mrcs``) and whose ``rlnClassNumber`` is the truth, e.g. a RELION/Warp export or a
``subtomogram_sets`` simulation (``results/simulated_subtomograms/<name>/particles.star``). The
script writes a configuration with ``external.subtomograms`` set to the STAR, runs the real
workflow on it (import and resampling → features of every method → clustering → evaluation) in
a working directory, and collects ``results/evaluation/classification.tsv``, the number of
classes chosen, and each method's feature time (Snakemake's per-rule benchmark files) into JSON
and a markdown table.

    .venv/bin/python benchmarks/score_external.py --star path/to/particles.star \\
        --methods invariant disca autoencoder --out benchmarks/results/external_myset.json

Settings: command-line options, over ``--configfile`` (a YAML merged on top), over
``config.yaml``. Box and voxel size default to the set's own (no resampling); ``--box`` /
``--voxel-size`` (or the configfile's ``extraction``) resample; ``--k`` fixes the number of
classes.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import yaml
from common import REPO, log, machine_info, machine_line, md_table, write_outputs
from tomoclust import TomoclustError
from tomoclust.external.names import read_particles
from tomoclust.formats.image_names import parse_image_name
from tomoclust.formats.mrc import open_mrc
from tomoclust.formats.star import read_star
from tomoclust.numerics.metrics import clustering_metrics

SNAKEMAKE = Path(sys.executable).parent / "snakemake"


def _merge(base: dict, extra: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) \
            else v
    return out


def set_geometry(star: Path, image_root: Path | None) -> tuple[int, float, int, list[int]]:
    """Box and voxel size of the set's first subtomogram, particle count, class numbers."""
    df, optics, _ = read_particles(star, "labelled set")
    if "rlnClassNumber" not in df.columns:
        raise TomoclustError(f"{star}: no rlnClassNumber column, nothing to score against")
    name, _ = parse_image_name(df["rlnImageName"].iloc[0], f"{star}, row 1")
    p = Path(name) if Path(name).is_absolute() else (image_root or star.parent) / name
    with open_mrc(p, "subtomogram file") as mrc:
        box = int(mrc.data.shape[-1])
        vs = float(mrc.voxel_size.x)
    if optics is not None and "rlnImagePixelSize" in optics.columns:
        vs = float(optics["rlnImagePixelSize"].iloc[0])
    return box, vs, len(df), sorted(int(c) for c in df["rlnClassNumber"].unique())


def render(payload: dict) -> str:
    """The markdown table of a run (also: ``--render run.json`` rewrites it from the JSON)."""
    cfg, rows = payload["config"], payload["rows"]
    ext, clu = cfg["extraction"], cfg["clustering"]
    k = f"K={clu['k']}" if clu["k"] else f"auto K (BIC, {clu['k_min']}..{clu['k_max']})"
    sec = lambda x: "–" if x is None else f"{x:.1f}"  # noqa: E731
    star = Path(payload["star"])
    star = star.relative_to(REPO) if star.is_relative_to(REPO) else star
    return "\n".join([
        f"Machine: {machine_line(payload['machine'])}\n",
        f"Command: `{payload['command']}`\n",
        f"Set: `{star}`: {payload['n']} subtomograms, classes {payload['classes']}, "
        f"box {payload['box_in']} at {payload['voxel_size_in']:g} Å, worked at box {ext['box']} "
        f"and {ext['voxel_size']:g} Å; clustering {clu['algorithm']} {k}, PCA "
        f"{clu['pca_components']}; whole workflow {payload['seconds_workflow']:.0f} s\n",
        md_table(["method", "K", "accuracy", "ARI", "NMI", "V-measure", "features (s)"],
                 [[r["method"], r["k"], r["accuracy"], r["ari"], r["nmi"], r["v_measure"],
                   sec(r["seconds_features"])] for r in rows])])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--star", type=Path, help="labelled particle STAR")
    ap.add_argument("--render", type=Path, help="only rewrite the markdown of this JSON")
    ap.add_argument("--methods", nargs="+",
                    choices=["invariant", "disca", "autoencoder", "transfer", "protonet3d",
                             "protonet_ce"],
                    help="default: those of config.yaml (or of --configfile); the few-shot "
                    "methods only when a support set (fewshot.support / support_templates) is "
                    "configured")
    ap.add_argument("--average", action="store_true",
                    help="also average every class (off by default: scoring needs no maps)")
    ap.add_argument("--box", type=int, help="working box (default: the set's)")
    ap.add_argument("--voxel-size", type=float, help="working voxel size Å (default: the set's)")
    ap.add_argument("--image-root", type=Path, help="relative image names are relative to this "
                    "(default: the STAR's directory)")
    ap.add_argument("--k", type=int, help="fixed number of classes (default: BIC chooses)")
    ap.add_argument("--configfile", type=Path, help="YAML merged over the generated config "
                    "(method and clustering settings)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--workdir", type=Path, help="default: benchmarks/runs/external/<star stem>")
    ap.add_argument("--out", type=Path, help="default: benchmarks/results/external_<stem>.json")
    args = ap.parse_args()
    if args.render:
        write_outputs(args.render, json.loads(args.render.read_text()),
                      render(json.loads(args.render.read_text())))
        return
    if args.star is None:
        ap.error("--star is required")
    star = args.star.resolve()
    root = args.image_root.resolve() if args.image_root else None
    box, vs, n, classes = set_geometry(star, root)
    label = star.parent.name if star.stem == "particles" else star.stem
    workdir = (args.workdir or REPO / "benchmarks" / "runs" / "external" / label).resolve()
    out = args.out or REPO / "benchmarks" / "results" / f"external_{label}.json"
    workdir.mkdir(parents=True, exist_ok=True)

    # precedence: command-line options > --configfile > config.yaml (and the set's geometry)
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    cfg["extraction"] = {**cfg["extraction"], "box": box, "voxel_size": vs, "normalise": True}
    if args.configfile:
        cfg = _merge(cfg, yaml.safe_load(args.configfile.read_text()) or {})
    cfg.update(tomograms="", templates={}, subtomogram_sets={}, device=args.device)
    if args.methods:
        cfg["methods"] = list(args.methods)
    else:  # the demo's few-shot support comes from the simulation's truth, absent here
        fs = cfg.get("fewshot", {})
        if not (fs.get("support") or fs.get("support_templates")):
            cfg["methods"] = [m for m in cfg["methods"] if m not in ("protonet3d", "protonet_ce")]
    cfg.setdefault("fewshot", {})["support_from_truth"] = 0
    cfg.setdefault("averaging", {})["enabled"] = bool(args.average)
    cfg["simulation"]["enabled"] = False
    cfg["external"] = {**cfg.get("external", {}), "subtomograms": str(star),
                       "image_root": str(root or ""), "coordinates": "", "truth": True}
    if args.box:
        cfg["extraction"]["box"] = args.box
    if args.voxel_size:
        cfg["extraction"]["voxel_size"] = args.voxel_size
    if args.k:
        cfg["clustering"]["k"] = args.k
    cfg_path = workdir / "config.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False))

    machine = machine_info()
    cmd = [str(SNAKEMAKE), "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
           "--cores", str(args.cores), "--configfile", str(cfg_path)]
    log(f"{n} particles, classes {classes}, box {box} at {vs:g} Å -> "
        f"{cfg['extraction']['box']} at {cfg['extraction']['voxel_size']:g} Å; {' '.join(cmd)}")
    t0 = time.perf_counter()
    with open(workdir / "snakemake.log", "w") as fh:
        proc = subprocess.run(cmd, cwd=workdir, stdout=fh, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"the workflow failed; see {workdir / 'snakemake.log'} and {workdir / 'logs'}")
    machine["load_average_at_end"] = list(os.getloadavg())

    res = workdir / "results"
    table = pd.read_csv(res / "evaluation" / "classification.tsv", sep="\t")
    truth = read_star(res / "truth" / "particles_truth.star")["rlnClassNumber"].to_numpy()
    rows = []
    for _, r in table.iterrows():
        m = r["method"]
        summary = json.loads((res / "cluster" / m / "summary.json").read_text())
        bench = workdir / "benchmarks" / "runs" / "features" / f"{m}.tsv"
        seconds = float(pd.read_csv(bench, sep="\t")["s"].iloc[0]) if bench.exists() else None
        pred = read_star(res / "cluster" / m / "clusters.star")["rlnClassNumber"].to_numpy()
        check = clustering_metrics(truth[truth > 0], pred[truth > 0])  # recomputed, must agree
        assert abs(check["accuracy"] - float(r["accuracy"])) < 1e-9, (check, r.to_dict())
        rows.append({"method": m, "n": int(r["n"]), "n_classes": int(r["n_classes"]),
                     "k": int(summary["k"]), "accuracy": float(r["accuracy"]),
                     "ari": float(r["ari"]), "nmi": float(r["nmi"]),
                     "v_measure": float(r["v_measure"]), "seconds_features": seconds,
                     "stability_ari": summary.get("stability_ari")})
        log(f"{m}: K={summary['k']} accuracy {r['accuracy']:.3f} ARI {r['ari']:.3f}")
    payload = {"machine": machine, "star": str(star), "n": n, "classes": classes,
               "box_in": box, "voxel_size_in": vs, "config": cfg, "workdir": str(workdir),
               "seconds_workflow": wall,
               "command": "benchmarks/score_external.py " + " ".join(sys.argv[1:]),
               "rows": rows}
    path = write_outputs(out, payload, render(payload))
    log(f"wrote {out} and {path}")


if __name__ == "__main__":
    main()
