"""Score variants of the ``invariant`` descriptor on the particles of a finished workflow run.

Reads ``results/particles/particles.{star,mrcs}`` and the simulation's
``results/simulation/truth.star`` from a workflow directory (the demo, say), matches picks to
true particles (``evaluation.picking_tolerance`` of the demo, 60 Å), computes each descriptor
variant, clusters it as the workflow does (the run's ``clustering`` settings: automatic
K with merging, and K fixed to the number of true classes), and prints accuracy after
Hungarian matching. Nothing is written::

    .venv/bin/python benchmarks/invariant_variants.py /path/to/demo/run
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import mrcfile
import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))

from tomoclust.cluster import cluster_features  # noqa: E402
from tomoclust.evaluate import truth_classes  # noqa: E402
from tomoclust.features.invariant import invariant_features  # noqa: E402
from tomoclust.formats.star import read_star  # noqa: E402
from tomoclust.numerics.metrics import clustering_metrics  # noqa: E402

VARIANTS = {
    "shell spectra (default)": {},
    "radial + 64 components": {"radial": True, "spectrum_components": 64},
    "radial + 16 components": {"radial": True, "spectrum_components": 16},
    "radial + all spectrum columns": {"radial": True},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("workdir", type=Path, help="workflow directory of a finished simulated run")
    ap.add_argument("--tolerance", type=float, default=60.0, help="Å, pick to truth")
    ap.add_argument("--config", type=Path, default=None,
                    help="the run's config (default: WORKDIR/config.yaml, else the repo's demo)")
    args = ap.parse_args()
    logging.disable(logging.INFO)
    res = args.workdir / "results"
    particles = read_star(res / "particles" / "particles.star")
    truth = read_star(res / "simulation" / "truth.star")
    stack = mrcfile.read(res / "particles" / "particles.mrcs")
    cfg_path = args.config or next(p for p in (args.workdir / "config.yaml", REPO / "config.yaml")
                                   if p.exists())
    cfg = yaml.safe_load(cfg_path.read_text())
    cl = {"pca_components": 8, "k_min": 2, "k_max": 10, "n_init": 3, "seed": 0,
          "merge_ratio": 0.1, "merge_gap": 2.0} | {
        k: v for k, v in cfg.get("clustering", {}).items()
        if k in ("pca_components", "k_min", "k_max", "n_init", "seed", "merge_ratio",
                 "merge_gap")}
    y = truth_classes(particles, truth, args.tolerance)
    ok = y > 0
    k_true = len(np.unique(y[ok]))
    print(f"{len(particles)} particles, {ok.sum()} matched to {k_true} true classes; "
          f"clustering {cl}")
    print("| descriptor | columns | auto K | accuracy (auto K) | accuracy (K fixed) |")
    print("|---|---|---|---|---|")
    for name, kw in VARIANTS.items():
        f = invariant_features(stack, 6, 1.0, **kw)
        auto = cluster_features(f, "gmm", None, stability_seeds=0, **cl)
        fixed = cluster_features(f, "gmm", k_true, stability_seeds=0,
                                 **{k: v for k, v in cl.items() if not k.startswith("merge")})
        a_auto = clustering_metrics(y[ok], auto.labels[ok])["accuracy"]
        a_fix = clustering_metrics(y[ok], fixed.labels[ok])["accuracy"]
        print(f"| {name} | {f.shape[1]} | {auto.k} | {a_auto:.3f} | {a_fix:.3f} |")


if __name__ == "__main__":
    main()
