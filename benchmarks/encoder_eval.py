"""The shipped encoder on molecules it never saw: the off-centred, similar-sized 5-class set.

Classes: 1bxn, 1qvr, 3cf3, 1u6g, 3d2f (SHREC'21 complexes of ~230-300 kDa), all held out of
pretraining. Every set is imaged like the robustness suite: 32³ boxes at 12 Å, a uniform
shift of up to ±2 voxels per axis, aitom-convention nominal SNR, the defocus of each group
of boxes drawn from 2-6 µm and its tilt range from ±45°..±60° (all five classes in every
group, so that the aitom noise level is shared). Per SNR and seed:

- ``encoder``: shipped encoder embedding → the workflow's clustering (GMM, BIC over K = 2..10,
  component merging, the defaults of config.yaml), and with the true K;
- ``invariant``: the default method's features through the same clustering;
- ``pca_kmeans``: PCA (8 components) of the voxels + k-means with the true K (the floor);
- ``supervised``: the ceiling, the encoder's architecture trained from scratch with labels
  (cross-entropy, wedge-preserving 180° turns) on a separate set of the same conditions.

    python benchmarks/encoder_eval.py --model resources/models/encoder-v1.pt \
        --out benchmarks/results/encoder_heldout.json [--update-manifest]
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
from common import REPO, log, machine_info, machine_line, md_table, write_outputs

HELD_OUT = ["1bxn", "1qvr", "3cf3", "1u6g", "3d2f"]


def simulate_set(densities, n_per_class: int, snr: float, seed: int, groups: int = 5,
                 max_shift: float = 2.0, cache: Path | None = None):
    """Stack, labels (0..4) of the held-out set under the robustness conditions (cached in
    ``cache`` as .npz when given)."""
    from tomoclust.simulate.subtomograms import simulate_subtomograms
    from tomoclust.simulate.tomograms import CtfSettings, Template

    f = None
    if cache is not None:
        f = Path(cache) / f"heldout-{n_per_class}-{snr:g}-{seed}-{groups}-{max_shift:g}.npz"
        if f.exists():
            z = np.load(f)
            return z["x"], z["y"]

    rng = np.random.default_rng([seed, 101])
    lib = [Template(n, i + 1, d) for i, (n, d) in enumerate(densities.items())]
    sizes = np.full(groups, n_per_class // groups)
    sizes[: n_per_class % groups] += 1
    stacks, labels = [], []
    for k in sizes:
        tilt = float(rng.uniform(45, 60))
        res = simulate_subtomograms(
            lib, n_per_class=int(k), box=32, voxel_size=12.0, snr=snr, convention="aitom",
            tilt_min=-tilt, tilt_max=tilt, ctf=CtfSettings(defocus_um=float(rng.uniform(2, 6))),
            max_shift_vox=max_shift, normalise=True, seed=int(rng.integers(2**31)))
        stacks.append(res.stack)
        labels.append(res.truth["rlnClassNumber"].to_numpy() - 1)
    x, y = np.concatenate(stacks), np.concatenate(labels)
    if f is not None:
        f.parent.mkdir(parents=True, exist_ok=True)
        np.savez(f, x=x, y=y)
    return x, y


ROBUST_GEN = """
import sys
import numpy as np
sys.path.insert(0, sys.argv[1] + "/benchmarks")
from robust_sets import make_set
stack, labels = make_set("similar", sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
np.savez(sys.argv[5], x=stack, y=labels)
"""


def robust_set(repo: str, condition: str, n_per_class: int, seed: int, cache: Path):
    """The robustness suite's own set (``robust_sets.make_set("similar", condition, ...)`` of
    the checkout ``repo``), generated in a separate interpreter (that checkout's library) and
    cached as .npz."""
    import subprocess
    import sys

    f = Path(cache) / f"robust-similar-{condition}-{n_per_class}-{seed}.npz"
    if not f.exists():
        f.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-c", ROBUST_GEN, repo, condition, str(n_per_class),
                        str(seed), str(f)], check=True, cwd=repo)
    z = np.load(f)
    return z["x"], z["y"]


def train_ceiling(x: np.ndarray, y: np.ndarray, epochs: int, seed: int):
    """The encoder's architecture + a linear head, trained from scratch with labels."""
    import torch
    import torch.nn.functional as F
    from tomoclust.features.encoder import SubtomoEncoder
    from tomoclust.features.transfer import wedge_preserving_turn

    torch.manual_seed(seed)
    enc = SubtomoEncoder()
    head = torch.nn.Linear(enc.cfg.hidden, int(y.max()) + 1)
    params = list(enc.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=2e-3, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    xt, yt = torch.as_tensor(x), torch.as_tensor(y)
    steps = epochs * math.ceil(len(x) / 64)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 2e-3, total_steps=steps)

    def logits(v):
        h = enc.fc[:3](enc.pooled(v))  # the hidden layer of the MLP
        return head(h)

    for _ in range(epochs):
        enc.train()
        order = rng.permutation(len(x))
        for a in range(0, len(x) - 1, 64):
            b = order[a:a + 64]
            v = wedge_preserving_turn(xt[b][:, None], gen)
            loss = F.cross_entropy(logits(v), yt[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    enc.eval()

    def predict(z: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return np.concatenate([logits(torch.as_tensor(z[a:a + 256])[:, None]).argmax(1)
                                   .numpy() for a in range(0, len(z), 256)])

    return predict


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(REPO / "resources/models/encoder-v1.pt"))
    ap.add_argument("--snr", type=float, nargs="+", default=[100.0, 0.1, 0.05])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--n-per-class", type=int, default=200)
    ap.add_argument("--train-per-class", type=int, default=200)
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cache", default=None, help="directory to keep the simulated sets in")
    ap.add_argument("--simulate-only", action="store_true")
    ap.add_argument("--robust-repo", default=None,
                    help="a checkout with benchmarks/robust_sets.py: use its 'similar' sets "
                         "under condition shift2@SNR instead of this script's simulation")
    ap.add_argument("--ceiling-seeds", type=int, nargs="*", default=None,
                    help="seeds that get the supervised ceiling (default: all)")
    ap.add_argument("--ceiling-only", action="store_true",
                    help="train and score only the supervised ceiling (it needs no encoder)")
    ap.add_argument("--ceiling-from", default=None,
                    help="an earlier output JSON of the same sets: reuse its ceiling rows")
    ap.add_argument("--out", default=str(REPO / "benchmarks/results/encoder_heldout.json"))
    ap.add_argument("--update-manifest", action="store_true",
                    help="write the mean figures into the model's manifest (measured)")
    a = ap.parse_args(argv)

    import torch
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA
    from tomoclust.cluster import cluster_features
    from tomoclust.features.encoder import embed, load_encoder, manifest_path
    from tomoclust.features.invariant import invariant_features
    from tomoclust.numerics.metrics import clustering_metrics
    from tomoclust.simulate.density import template_density

    torch.set_num_threads(a.threads)
    machine = machine_info()
    no_model = a.simulate_only or a.ceiling_only
    model, man = load_encoder(a.model) if not no_model else (None, {"sha256": "none"})
    reused = {}
    if a.ceiling_from:
        for r in json.loads(Path(a.ceiling_from).read_text())["rows"]:
            if r["method"] == "supervised":
                reused[(r["snr"], r["seed"])] = r
    held = set(man.get("corpus", {}).get("held_out", []))
    if held and not set(HELD_OUT) <= held:
        raise SystemExit(f"{a.model}: classes {sorted(set(HELD_OUT) - held)} were in its "
                         "pretraining corpus; this benchmark needs them held out")
    dens = ({} if a.robust_repo else
            {n: template_density(REPO / f"resources/structures/{n}.pdb.gz", 12.0)
             for n in HELD_OUT})
    clus = dict(algorithm="gmm", k_min=2, k_max=10, pca_components=6, n_init=3,
                stability_seeds=0, merge_ratio=0.1, merge_gap=2.0)
    rows = []
    for snr in a.snr:
        for seed in a.seeds:
            t0 = time.time()
            ceiling = ((a.ceiling_seeds is None or seed in a.ceiling_seeds)
                       and not a.ceiling_from)
            xs = ys = None
            if a.robust_repo:
                cond = f"shift2@{snr:g}"
                x, y = robust_set(a.robust_repo, cond, a.n_per_class, seed, a.cache)
                if ceiling:
                    xs, ys = robust_set(a.robust_repo, cond, a.train_per_class, 1000 + seed,
                                        a.cache)
            else:
                x, y = simulate_set(dens, a.n_per_class, snr, seed, cache=a.cache)
                if ceiling:
                    xs, ys = simulate_set(dens, a.train_per_class, snr, 1000 + seed,
                                          cache=a.cache)
            if a.simulate_only:
                continue
            log(f"SNR {snr} seed {seed}: {len(x)} boxes ({time.time() - t0:.0f} s)")
            t1 = time.time()
            feats = {"encoder": embed(model, x)} if not a.ceiling_only else {}
            t_enc = time.time() - t1
            if not a.ceiling_only:
                feats["invariant"] = invariant_features(x)
            for name, f in feats.items():
                auto = cluster_features(f, seed=seed, **clus)
                fixed = cluster_features(f, k=5, seed=seed, **clus)
                m_auto = clustering_metrics(y, auto.labels)
                m_fix = clustering_metrics(y, fixed.labels)
                rows.append({"snr": snr, "seed": seed, "method": name, "k_auto": auto.k,
                             "acc_auto": m_auto["accuracy"], "v_auto": m_auto["v_measure"],
                             "acc_k5": m_fix["accuracy"], "v_k5": m_fix["v_measure"]})
            if not a.ceiling_only:
                z = PCA(8, random_state=seed).fit_transform(x.reshape(len(x), -1))
                km = KMeans(5, n_init=10, random_state=seed).fit_predict(z)
                m = clustering_metrics(y, km)
                rows.append({"snr": snr, "seed": seed, "method": "pca_kmeans", "k_auto": None,
                             "acc_auto": None, "v_auto": None, "acc_k5": m["accuracy"],
                             "v_k5": m["v_measure"]})
            t2 = time.time()
            n_rows = len(feats) + (0 if a.ceiling_only else 1)
            if (snr, seed) in reused:
                rows.append(dict(reused[(snr, seed)]))
                n_rows += 1
            elif ceiling:
                pred = train_ceiling(xs, ys, a.epochs, seed)(x)
                acc = float((pred == y).mean())
                rows.append({"snr": snr, "seed": seed, "method": "supervised", "k_auto": None,
                             "acc_auto": None, "v_auto": None, "acc_k5": acc,
                             "v_k5": clustering_metrics(y, pred)["v_measure"]})
                n_rows += 1
            log(f"SNR {snr} seed {seed}: " + ", ".join(
                f"{r['method']} K={r['k_auto']} acc={r['acc_auto']} acc(K=5)={r['acc_k5']:.3f}"
                for r in rows[-n_rows:]) + f" (encoder {len(x) / t_enc:.0f} boxes/s, ceiling "
                f"{time.time() - t2:.0f} s)")
    if a.simulate_only:
        return 0
    import pandas as pd

    df = pd.DataFrame(rows)
    summary = []
    for (snr, meth), g in df.groupby(["snr", "method"], sort=False):
        ks = g["k_auto"].dropna().astype(int).tolist()
        summary.append({"snr": snr, "method": meth, "k_auto": ks,
                        "acc_auto_mean": float(g["acc_auto"].mean()) if ks else None,
                        "acc_auto_min": float(g["acc_auto"].min()) if ks else None,
                        "acc_k5_mean": float(g["acc_k5"].mean()),
                        "acc_k5_min": float(g["acc_k5"].min())})
    machine["load_average_at_end"] = list(__import__("os").getloadavg())
    if a.robust_repo:
        payload_conditions = ("robustness suite robust_sets.make_set('similar', "
                              "'shift2@SNR'): 32^3 at 12 A, shift U(-2, 2) voxels per axis, "
                              "defocus 5 um, tilt +-60 deg, aitom nominal SNR")
    payload = {"model": Path(a.model).name, "model_sha256": man["sha256"],
               "classes": HELD_OUT, "n_per_class": a.n_per_class,
               "train_per_class": a.train_per_class, "seeds": a.seeds,
               "conditions": "32^3 at 12 A, shift U(-2, 2) voxels per axis, aitom nominal SNR, "
                             "defocus U(2, 6) um and tilt +-U(45, 60) deg per group of 5 x "
                             "n/5 boxes",
               "set_source": "robust_sets" if a.robust_repo else "encoder_eval.simulate_set",
               "ceiling_seeds": a.ceiling_seeds if a.ceiling_seeds is not None else a.seeds,
               "clustering": clus, "rows": rows, "summary": summary, "machine": machine}
    if a.robust_repo:
        payload["conditions"] = payload_conditions
    md = ["# Shipped encoder on held-out classes (off-centred, similar-sized 5-class set)\n",
          f"Model `{Path(a.model).name}` (sha256 {man['sha256'][:12]}…); classes "
          f"{', '.join(HELD_OUT)} (none in pretraining); {a.n_per_class} per class, seeds "
          f"{a.seeds}; ceiling trained on {a.train_per_class} per class of another seed.\n",
          f"Conditions: {payload['conditions']}.\n",
          f"Machine: {machine_line(machine)}\n",
          md_table(["SNR", "method", "K chosen (per seed)", "acc, auto K (mean / min)",
                    "acc, K = 5 (mean / min)"],
                   [[s["snr"], s["method"], ",".join(map(str, s["k_auto"])) or "–",
                     "–" if s["acc_auto_mean"] is None else
                     f"{s['acc_auto_mean']:.3f} / {s['acc_auto_min']:.3f}",
                     f"{s['acc_k5_mean']:.3f} / {s['acc_k5_min']:.3f}"] for s in summary])]
    out = write_outputs(a.out, payload, "\n".join(md))
    log(f"wrote {a.out} and {out}")
    if a.update_manifest:
        from tomoclust.formats.atomic import atomic_output

        mp = manifest_path(a.model)
        man2 = json.loads(mp.read_text())
        man2["measured"]["heldout_5class"] = {
            "benchmark": "benchmarks/encoder_eval.py", "seeds": a.seeds,
            "n_per_class": a.n_per_class, "date": machine["date_utc"],
            "summary": summary}
        with atomic_output(mp) as tmp:
            Path(tmp).write_text(json.dumps(man2, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
