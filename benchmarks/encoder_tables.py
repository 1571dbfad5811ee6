"""The published-protocol tables rerun with the shipped encoder (reduced sizes, stated).

1. Few-shot (Li et al. 2020 protocol): the two test classes 4v1w, 3cf3; 2-way 1-shot and
   5-shot, 15 queries per class, ``--episodes`` episodes, with ProtoNet3D on the *frozen*
   shipped encoder (no episodic training at all), per nominal SNR; plus 5-way 5-shot over the
   five demo classes (3jb9, 6s47, 3j9i, 4v1w, 3cf3).
2. Transfer V-measure (after Moebel & Kervrann 2022): k-means with the true K on the shipped
   encoder's embedding of fresh simulated SOURCE (the 12 atomic models of the transfer
   benchmark) and TARGET (the 5 demo classes) sets, beside the rotation-invariant shell
   spectra on the same boxes.
3. DISCA (Zeng et al. 2023 protocol, reduced): the 5 demo classes, DISCA with the shipped
   encoder as its backbone (fine-tuned in the EM loop, automatic K) beside its starting point
   (the pretrained embedding clustered once) and DISCA with the YOPO backbone from scratch.

Imaging: 32³ at 12 Å, tilt ±60°, CTF at 5 µm, aitom-convention nominal SNR, shifts ≤ 1 voxel
(the published protocols centre their particles). Which classes the encoder saw in
pretraining is recorded beside each row (its manifest's corpus).

    python benchmarks/encoder_tables.py --out benchmarks/results/encoder_tables.json
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
from common import DEMO_CLASSES, REPO, log, machine_info, machine_line, md_table, write_outputs

SOURCE = ["1bxn", "1qvr", "1s3x", "1u6g", "2cg9", "3cf3", "3d2f", "3gl1", "3h84", "3qm1",
          "4v4r_30S", "5gjv"]


def structure(name: str) -> Path:
    hits = sorted((REPO / "resources/structures").glob(f"{name}.*.gz"))
    return hits[0]


def simulate(names, n_per_class, snr, seed, cache):
    from tomoclust.simulate.density import template_density
    from tomoclust.simulate.subtomograms import simulate_subtomograms
    from tomoclust.simulate.tomograms import Template

    f = Path(cache) / f"tables-{'-'.join(names)}-{n_per_class}-{snr:g}-{seed}.npz"
    if f.exists():
        z = np.load(f)
        return z["x"], z["y"]
    lib = [Template(n, i + 1, template_density(structure(n), 12.0)) for i, n in enumerate(names)]
    res = simulate_subtomograms(lib, n_per_class=n_per_class, box=32, voxel_size=12.0, snr=snr,
                                max_shift_vox=1.0, seed=seed)
    x, y = res.stack, res.truth["rlnClassNumber"].to_numpy() - 1
    f.parent.mkdir(parents=True, exist_ok=True)
    np.savez(f, x=x, y=y)
    return x, y


def episodes(z: np.ndarray, y: np.ndarray, classes: list[int], shot: int, query: int,
             n: int, seed: int) -> np.ndarray:
    """Accuracies of ``n`` episodes of nearest-prototype classification over ``classes``."""
    rng = np.random.default_rng(seed)
    accs = []
    for _ in range(n):
        protos, qs, qy = [], [], []
        for j, c in enumerate(classes):
            idx = rng.choice(np.flatnonzero(y == c), shot + query, replace=False)
            protos.append(z[idx[:shot]].mean(axis=0))
            qs.append(z[idx[shot:]])
            qy += [j] * query
        p = np.stack(protos)
        q = np.concatenate(qs)
        d = ((q[:, None, :] - p[None]) ** 2).sum(-1)
        accs.append(float((d.argmin(1) == np.array(qy)).mean()))
    return np.array(accs)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(REPO / "resources/models/encoder-v1.pt"))
    ap.add_argument("--snrs", type=float, nargs="+", default=[100.0, 0.1, 0.05, 0.03, 0.01])
    ap.add_argument("--per-class", type=int, default=80)
    ap.add_argument("--episodes", type=int, default=100)
    ap.add_argument("--disca-snrs", type=float, nargs="*", default=[100.0, 0.1])
    ap.add_argument("--disca-per-class", type=int, default=100)
    ap.add_argument("--disca-iterations", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cache", default="/tmp/encoder/sets")
    ap.add_argument("--out", default=str(REPO / "benchmarks/results/encoder_tables.json"))
    a = ap.parse_args(argv)

    import torch
    from sklearn.cluster import KMeans
    from tomoclust.cluster import cluster_features
    from tomoclust.features.disca import DiscaSettings, run_disca
    from tomoclust.features.encoder import embed, load_encoder
    from tomoclust.features.invariant import shell_spectra
    from tomoclust.numerics.metrics import clustering_metrics

    torch.set_num_threads(a.threads)
    machine = machine_info()
    model, man = load_encoder(a.model)
    seen = set(man["corpus"]["atomic_models"])
    demo = list(DEMO_CLASSES)
    fewshot, transfer, disca = [], [], []
    for snr in a.snrs:
        t0 = time.time()
        x, y = simulate(demo, a.per_class, snr, 11, a.cache)
        z = embed(model, x)
        i4, i3 = demo.index("4v1w"), demo.index("3cf3")
        row = {"snr": snr}
        for shot in (5, 1):
            acc = episodes(z, y, [i4, i3], shot, 15, a.episodes, 0)
            row[f"2way_{shot}shot"] = (float(acc.mean()), float(acc.std()))
        acc = episodes(z, y, list(range(5)), 5, 15, a.episodes, 0)
        row["5way_5shot_demo"] = (float(acc.mean()), float(acc.std()))
        fewshot.append(row)
        for name, names, (xx, yy) in (("TARGET", demo, (x, y)),
                                      ("SOURCE", SOURCE, simulate(SOURCE, a.per_class, snr, 12,
                                                                  a.cache))):
            ze = z if name == "TARGET" else embed(model, xx)
            k = len(names)
            r = {"set": name, "snr": snr, "k": k}
            for feat_name, f in (("encoder", ze), ("invariant", shell_spectra(xx))):
                vs = []
                for s in range(3):
                    if feat_name == "invariant":
                        from sklearn.decomposition import PCA
                        from sklearn.preprocessing import StandardScaler

                        f2 = PCA(16, random_state=s).fit_transform(
                            StandardScaler().fit_transform(f))
                    else:
                        f2 = f
                    lab = KMeans(k, n_init=10, random_state=s).fit_predict(f2)
                    vs.append(clustering_metrics(yy, lab)["v_measure"])
                r[feat_name] = float(np.mean(vs))
            transfer.append(r)
        log(f"SNR {snr}: few-shot {row}, transfer {transfer[-2:]} ({time.time() - t0:.0f} s)")
    for snr in a.disca_snrs:
        x, y = simulate(demo, a.disca_per_class, snr, 13, a.cache)
        clus = cluster_features(embed(model, x), k_max=10, pca_components=6, stability_seeds=0,
                                merge_ratio=0.1)
        base = clustering_metrics(y, clus.labels)
        row = {"snr": snr, "pretrained_embedding": (clus.k, base["accuracy"],
                                                    base["v_measure"])}
        for name, kw in (("disca_pretrained", dict(pretrained=a.model, init="network")),
                         ("disca_yopo", dict(init="invariant"))):
            t0 = time.time()
            p = DiscaSettings(iterations=a.disca_iterations, k_max=10, pca_components=6, **kw)
            res = run_disca(x, p, "cpu")
            m = clustering_metrics(y, res.labels)
            row[name] = (int(res.labels.max()), m["accuracy"], m["v_measure"])
            log(f"DISCA {name} SNR {snr}: K={row[name][0]} acc={m['accuracy']:.3f} "
                f"({time.time() - t0:.0f} s)")
        disca.append(row)
    machine["load_average_at_end"] = list(os.getloadavg())
    payload = {"model": man["file"], "sha256": man["sha256"], "seen_in_pretraining":
               sorted(seen), "fewshot": fewshot, "transfer": transfer, "disca": disca,
               "settings": vars(a), "machine": machine}

    def pm(t):
        return f"{t[0]:.3f} ± {t[1]:.3f}"

    md = ["# Published-protocol tables with the shipped encoder\n",
          f"Model `{man['file']}` (sha256 {man['sha256'][:12]}…). Atomic models seen in "
          f"pretraining: {', '.join(sorted(seen))}; held out: "
          f"{', '.join(man['corpus']['held_out'])}.\n", f"Machine: {machine_line(machine)}\n",
          "## Few-shot (frozen encoder, nearest prototype; no episodic training)\n",
          md_table(["SNR", "2-way 5-shot (4v1w/3cf3)", "2-way 1-shot", "5-way 5-shot (demo)"],
                   [[r["snr"], pm(r["2way_5shot"]), pm(r["2way_1shot"]),
                     pm(r["5way_5shot_demo"])] for r in fewshot]),
          "## Transfer V-measure (k-means, true K, mean of 3 seeds)\n",
          md_table(["set", "SNR", "K", "encoder", "invariant"],
                   [[r["set"], r["snr"], r["k"], r["encoder"], r["invariant"]]
                    for r in transfer])]
    if disca:
        md += ["## DISCA (reduced: 5 demo classes × "
               f"{a.disca_per_class}, {a.disca_iterations} iterations; K, accuracy, V)\n",
               md_table(["SNR", "pretrained embedding (GMM, auto K)", "DISCA, pretrained "
                         "backbone", "DISCA, YOPO from scratch"],
                        [[r["snr"]] + [f"K={r[c][0]}, {r[c][1]:.3f}, {r[c][2]:.3f}" for c in
                                       ("pretrained_embedding", "disca_pretrained",
                                        "disca_yopo")] for r in disca])]
    write_outputs(a.out, payload, "\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
