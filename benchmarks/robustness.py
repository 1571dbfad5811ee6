"""Robustness benchmark: classification on particles the defaults were not tuned on.

For every condition of ``robust_sets.CONDITIONS`` (off-centring 0 / ±2 / ±4 voxels and the
offsets of real DoG picks, defocus drawn per particle, tilt ranges, coloured noise, crowding,
false picks, a second density generator, all combined), both class sets (five similar-sized
complexes; the demo's five very different ones) and several SNRs, on ``--seeds`` seeds:

* **default**: the workflow's default ``invariant`` method (re-centring and descriptor as in
  config.yaml) with its automatic K;
* **default, K given**: the same features, mixture with the true K;
* **floor**: PCA (on raw voxels) + k-means with the true K;
* **ceiling**: a small supervised 3-D CNN trained with labels on separate data of the same
  condition (for the ``peng`` condition: trained on the other density generator, tested on
  this one), and logistic regression on the shell spectra of that training set;
* **other whitening**: the default with ``invariant.noise_whitening`` switched (phase <->
  none), automatic K and K given.

The default method's settings (centring, whitening, low-pass, clustering) are read from the
workflow's config.yaml; the command-line options override them.

Accuracy after Hungarian matching over the boxes that hold a particle (false picks are
excluded from the accuracy but take part in the clustering). The default's accuracy is printed
beside its ratio to the supervised ceiling. Each finished cell is appended to the JSON at
once; ``--resume`` skips cells already there.

    .venv/bin/python benchmarks/robustness.py                    # default size, ~1 h on 2 cores
    .venv/bin/python benchmarks/robustness.py --full             # 1000 per class
    .venv/bin/python benchmarks/robustness.py --k-seeds 10 --only k   # K over 10 seeds
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
from common import REPO, log, machine_info, machine_line, md_table, write_outputs
from robust_sets import CONDITIONS, make_set, parse_condition
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA
from threadpoolctl import threadpool_limits
from tomoclust.cluster import cluster_features
from tomoclust.features.invariant import invariant_features
from tomoclust.numerics.metrics import clustering_metrics

#: (class set, condition) cells of the default grid, most important first.
GRID = (
    [("similar", f"shift2@{s}") for s in (100, 0.1, 0.05)]
    + [("similar", f"centred@{s}") for s in (100, 0.1)]
    + [("similar", c) for c in ("shift4", "picks", "defocus", "tilt45", "tilt_asym",
                                "coloured", "crowded", "false_picks", "peng", "combined")]
    + [("different", c) for c in ("shift2@100", "shift2", "picks", "combined")]
)


#: principal components of the two BIC + merge columns (the earlier default, kept so those
#: columns stay comparable between runs)
PREVIOUS_PCA = 6


# ------------------------------------------------------------------------------ methods
def default_features(stack: np.ndarray, args, noise_whitening: str | None = None
                     ) -> np.ndarray:
    return invariant_features(stack, 6, args.lowpass, centring=args.centring,
                              noise_whitening=noise_whitening or args.noise_whitening)


def default_cluster(feats: np.ndarray, k: int | None, seed: int, args,
                    unwhitened: np.ndarray | None = None):
    """The workflow's clustering; ``unwhitened``: the features before noise whitening, which
    the consensus pools when ``--consensus-unwhitened``."""
    return cluster_features(feats, "gmm", k=k, k_min=2, k_max=10,
                            pca_components=args.pca_components, seed=seed, stability_seeds=0,
                            merge_ratio=args.merge_ratio, k_selection=args.k_selection,
                            consensus_components=args.consensus_components or None,
                            consensus_also=unwhitened if args.consensus_unwhitened else None)


def config_section(name: str) -> dict:
    """A section of the workflow's config.yaml (the benchmark's defaults)."""
    import yaml

    return yaml.safe_load((REPO / "config.yaml").read_text())[name]


def supervised_features(train_f: np.ndarray, train_y: np.ndarray, test_f: np.ndarray
                        ) -> np.ndarray:
    """Multinomial logistic regression (L2, C = 1) on standardised features."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    with threadpool_limits(limits=2):
        clf = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000))
        return clf.fit(train_f, train_y).predict(test_f)


def pca_kmeans(stack: np.ndarray, k: int, seed: int) -> np.ndarray:
    x = stack.reshape(len(stack), -1)
    with threadpool_limits(limits=2):
        z = PCA(n_components=min(32, len(x) - 1), random_state=seed).fit_transform(x)
        return KMeans(k, n_init=5, random_state=seed).fit_predict(z)


class SmallCnn(torch.nn.Module):
    """The supervised ceiling: a 4³ convolution of stride 2 (8 channels, full-resolution
    input, half-resolution output: the 2-core CPU budget), then two 3³ conv blocks (16, 32
    channels) with max pooling, global average pool, linear classifier (~19 k parameters)."""

    def __init__(self, k: int):
        super().__init__()
        layers = [torch.nn.Conv3d(1, 8, 4, stride=2, padding=1), torch.nn.BatchNorm3d(8),
                  torch.nn.ReLU()]
        c_in = 8
        for c in (16, 32):
            layers += [torch.nn.Conv3d(c_in, c, 3, padding=1), torch.nn.BatchNorm3d(c),
                       torch.nn.ReLU(), torch.nn.MaxPool3d(2)]
            c_in = c
        self.body = torch.nn.Sequential(*layers)
        self.head = torch.nn.Linear(c_in, k)

    def forward(self, x):
        return self.head(self.body(x[:, None]).mean(dim=(2, 3, 4)))


def supervised_ceiling(train_x, train_y, test_x, k: int, seed: int, epochs: int) -> np.ndarray:
    torch.manual_seed(seed)
    keep = train_y >= 0
    x = torch.as_tensor(train_x[keep])
    y = torch.as_tensor(train_y[keep])
    net = SmallCnn(k)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    rng = np.random.default_rng(seed)
    for _ in range(epochs):
        net.train()
        for idx in np.array_split(rng.permutation(len(x)), max(len(x) // 32, 1)):
            xb = x[idx]
            # augmentation that keeps the wedge fixed: flips of x and of z (tilt axis y)
            if rng.random() < 0.5:
                xb = xb.flip(-1)
            if rng.random() < 0.5:
                xb = xb.flip(-3)
            loss = torch.nn.functional.cross_entropy(net(xb), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        sched.step()
    net.eval()
    with torch.inference_mode():
        return torch.cat([net(torch.as_tensor(test_x[a:a + 256])).argmax(1)
                          for a in range(0, len(test_x), 256)]).numpy()


# ------------------------------------------------------------------------------ one cell
def run_cell(classes: str, condition: str, seed: int, args, only_k: bool = False) -> dict:
    cond = parse_condition(condition)
    t0 = time.perf_counter()
    stack, lab = make_set(classes, condition, args.per_class, seed)
    t_sim = time.perf_counter() - t0
    ok = lab >= 0
    k_true = int(lab.max()) + 1
    out = {"classes": classes, "condition": condition, "seed": seed, "n": len(lab),
           "n_false": int((~ok).sum()), "condition_fields": cond.__dict__ | {},
           "seconds_simulation": t_sim, "load_start": os.getloadavg()[0]}
    t0 = time.perf_counter()
    feats = default_features(stack, args)
    out["seconds_features"] = time.perf_counter() - t0
    # the other noise whitening (phase <-> none): with phase, the features before whitening
    other = "none" if args.noise_whitening == "phase" else "phase"
    feats_o = default_features(stack, args, other)
    plain = feats_o if other == "none" else None
    t0 = time.perf_counter()
    auto = default_cluster(feats, None, seed, args, unwhitened=plain)
    out["default_auto"] = {**clustering_metrics(lab[ok], auto.labels[ok]), "k": auto.k,
                           "k_components": auto.k_components,
                           "seconds": time.perf_counter() - t0}
    if plain is not None and args.consensus_unwhitened:
        # the consensus on the whitened features alone
        alone = default_cluster(feats, None, seed, args)
        out["whitened_only"] = {**clustering_metrics(lab[ok], alone.labels[ok]),
                                "k": alone.k}
    auto_o = default_cluster(feats_o, None, seed, args)
    out["other_whitening"] = {"noise_whitening": other,
                              **clustering_metrics(lab[ok], auto_o.labels[ok]), "k": auto_o.k}
    if not only_k:
        fixed_o = default_cluster(feats_o, k_true, seed, args)
        out["other_whitening_fixed"] = clustering_metrics(lab[ok], fixed_o.labels[ok])
    # the previous defaults: no centring, lowest BIC + merging of touching components
    old_feats = invariant_features(stack, 6, args.lowpass)
    old = cluster_features(old_feats, "gmm", k_min=2, k_max=10,
                           pca_components=PREVIOUS_PCA, seed=seed, stability_seeds=0,
                           merge_ratio=0.1, merge_gap=2.0, k_selection="bic")
    out["previous_auto"] = {**clustering_metrics(lab[ok], old.labels[ok]), "k": old.k}
    # this release's features with the previous K rule, and the reverse
    bic_new = cluster_features(feats, "gmm", k_min=2, k_max=10,
                               pca_components=PREVIOUS_PCA, seed=seed,
                               stability_seeds=0, merge_ratio=0.1, merge_gap=2.0,
                               k_selection="bic")
    out["centred_bic_merge"] = {**clustering_metrics(lab[ok], bic_new.labels[ok]),
                                "k": bic_new.k}
    if not only_k:
        fixed = default_cluster(feats, k_true, seed, args)
        out["default_fixed"] = clustering_metrics(lab[ok], fixed.labels[ok])
        km = pca_kmeans(stack, k_true, seed)
        out["pca_kmeans"] = clustering_metrics(lab[ok], km[ok])
        t0 = time.perf_counter()
        if cond.generator == "peng":  # train on the other generator, test on this one
            train_cond = cond.__class__(**{**cond.__dict__, "generator": "gaussian"})
        else:
            train_cond = cond
        tx, ty = make_set(classes, train_cond, args.per_class, seed + 10_000)
        pred = supervised_ceiling(tx, ty, stack[ok], k_true, seed, args.cnn_epochs)
        out["supervised"] = {"accuracy": float(np.mean(pred == lab[ok])),
                             "seconds": time.perf_counter() - t0}
        out["ratio"] = out["default_auto"]["accuracy"] / max(out["supervised"]["accuracy"],
                                                            1e-9)
        # a second supervised reference: logistic regression on the shell spectra (centred,
        # not whitened) of the same training set: what labels get out of these features
        unwh = feats_o if other == "none" else feats  # the unwhitened features of the set
        pred = supervised_features(default_features(tx[ty >= 0], args, "none"), ty[ty >= 0],
                                   unwh[ok])
        out["supervised_features"] = {"accuracy": float(np.mean(pred == lab[ok]))}
    out["load_end"] = os.getloadavg()[0]
    msg = (f"{classes} {condition} seed {seed}: default auto K={auto.k} acc "
           f"{out['default_auto']['accuracy']:.3f} (BIC+merge on the same features K="
           f"{bic_new.k} {out['centred_bic_merge']['accuracy']:.3f}; previous default K="
           f"{old.k} {out['previous_auto']['accuracy']:.3f})")
    if not only_k:
        msg += (f", K given {out['default_fixed']['accuracy']:.3f}, PCA+k-means "
                f"{out['pca_kmeans']['accuracy']:.3f}, supervised "
                f"{out['supervised']['accuracy']:.3f}")
    log(msg)
    return out


# ------------------------------------------------------------------------------ report
def _ms(v):
    return f"{np.mean(v):.3f} ± {np.std(v):.3f}"


def _opt(rs: list[dict], key: str) -> str:
    """Mean ± std of an accuracy only some runs have (older runs lack the newer columns)."""
    v = [r[key]["accuracy"] for r in rs if key in r]
    return _ms(v) if v else "–"


def render(payload: dict) -> str:
    runs = payload["runs"]
    md = [f"Machine: {machine_line(payload['machine'])}\n", f"Command: `{payload['command']}`\n",
          "Accuracy (Hungarian, boxes with a particle), mean ± std over seeds. *ratio* = "
          "default (auto K) / supervised CNN. *supervised, on the features*: logistic "
          "regression on the (centred, not whitened) shell spectra, trained with labels on "
          "the same separate set as the CNN. *other whitening*: the default with "
          f"`invariant.noise_whitening` {payload['args'].get('noise_whitening')!r} switched "
          "(phase <-> none). *whitened only*: the default's consensus K without the "
          "features before whitening pooled in (`clustering.consensus_unwhitened` false).\n"]
    cells = []
    for r in runs:
        key = (r["classes"], r["condition"])
        if key not in cells:
            cells.append(key)
    header = ["classes", "condition", "seeds", "default, auto K", "K found", "ratio to ceiling",
              "default, true K", "PCA + k-means (true K)", "supervised CNN (ceiling)",
              "supervised, on the features", "whitened only, auto K", "K (whitened only)",
              "other whitening, auto K", "K (other)",
              "other whitening, true K", "same features, BIC + merge", "K (BIC + merge)",
              "previous default, auto K", "K (previous)"]
    rows = []
    for cl, co in cells:
        rs = [r for r in runs if r["classes"] == cl and r["condition"] == co]
        full = [r for r in rs if "supervised" in r]
        row = [cl, co, len(rs), _ms([r["default_auto"]["accuracy"] for r in rs]),
               ",".join(str(r["default_auto"]["k"]) for r in rs)]
        if full:
            row += [_ms([r["ratio"] for r in full]),
                    _ms([r["default_fixed"]["accuracy"] for r in full]),
                    _ms([r["pca_kmeans"]["accuracy"] for r in full]),
                    _ms([r["supervised"]["accuracy"] for r in full]),
                    _opt(full, "supervised_features")]
        else:
            row += ["–"] * 5
        row += [_opt(rs, "whitened_only"),
                ",".join(str(r["whitened_only"]["k"]) for r in rs if "whitened_only" in r)
                or "–"]
        row += [_opt(rs, "other_whitening"),
                ",".join(str(r["other_whitening"]["k"]) for r in rs if "other_whitening" in r)
                or "–", _opt(full, "other_whitening_fixed")]
        row += [_ms([r["centred_bic_merge"]["accuracy"] for r in rs]),
                ",".join(str(r["centred_bic_merge"]["k"]) for r in rs),
                _ms([r["previous_auto"]["accuracy"] for r in rs]),
                ",".join(str(r["previous_auto"]["k"]) for r in rs)]
        rows.append(row)
    md.append(md_table(header, rows))
    return "\n".join(md)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    clu, inv = config_section("clustering"), config_section("invariant")
    ap.add_argument("--per-class", type=int, default=200)
    ap.add_argument("--full", action="store_true", help="1000 per class")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--cells", nargs="+", default=None,
                    help="class_set:condition[@snr] cells (default: the built-in grid)")
    ap.add_argument("--only", choices=["all", "k"], default="all",
                    help="k: only the default method's automatic K (no ceiling, no floor)")
    ap.add_argument("--centring", default=inv["centring"],
                    help="invariant centring (none|com|align)")
    ap.add_argument("--noise-whitening", default=inv.get("noise_whitening", "none"),
                    help="invariant noise whitening (phase|none); the table also shows the "
                         "other")
    ap.add_argument("--lowpass", type=float, default=inv["lowpass_vox"])
    ap.add_argument("--pca-components", type=int, default=clu["pca_components"])
    ap.add_argument("--consensus-components", nargs="*", type=int,
                    default=clu.get("consensus_components") or [],
                    help="principal components the consensus pools (none: --pca-components)")
    ap.add_argument("--consensus-unwhitened", action=argparse.BooleanOptionalAction,
                    default=clu.get("consensus_unwhitened", False),
                    help="with noise whitening, the consensus also pools the features before "
                         "whitening")
    ap.add_argument("--merge-ratio", type=float, default=clu["merge_ratio"])
    ap.add_argument("--k-selection", default=clu["k_selection"], help="bic | consensus")
    ap.add_argument("--cnn-epochs", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--out", default="benchmarks/results/robustness.json")
    args = ap.parse_args()
    if args.full:
        args.per_class = 1000
    torch.set_num_threads(args.threads)
    cells = GRID if args.cells is None else [tuple(c.split(":", 1)) for c in args.cells]
    for _, c in cells:
        parse_condition(c)  # fail early on a typo
    out = Path(args.out)
    payload = {"machine": machine_info(), "args": vars(args),
               "command": "benchmarks/robustness.py " + " ".join(
                   f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}"
                   for k, v in vars(args).items()
                   if k not in ("resume", "out", "threads", "full") and v is not None),
               "conditions": {k: v.__dict__ for k, v in CONDITIONS.items()}, "runs": []}
    if args.resume and out.exists():
        payload["runs"] = json.loads(out.read_text())["runs"]
    done = {(r["classes"], r["condition"], r["seed"]) for r in payload["runs"]}
    for seed in args.seeds:
        for cl, co in cells:
            if (cl, co, seed) in done:
                continue
            payload["runs"].append(run_cell(cl, co, seed, args, only_k=args.only == "k"))
            payload["machine"]["load_average_at_end"] = list(os.getloadavg())
            write_outputs(out, payload, render(payload))
    log(f"wrote {out} and {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
