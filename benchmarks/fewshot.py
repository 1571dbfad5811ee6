"""Few-shot benchmark: the paper protocol of ProtoNet3D / ProtoNet-CE (Li et al. 2020).

Five classes (the demo's: 3jb9 spliceosome, 6s47 ribosome, 3j9i proteasome, 4v1w
apoferritin, 3cf3 p97), 32³ at 12 Å, tilt ±60°, 3D CTF, aitom SNR convention. The encoder is
trained episodically on three classes (``--train-classes``, default 3jb9 6s47 3j9i) and tested
on the two unseen ones (4v1w, 3cf3): 2-way 1-shot and 2-way 5-shot, 15 queries per class,
``--episodes`` (100) test episodes; mean ± std of the episode accuracy, per nominal SNR
(100, 0.1, 0.05, 0.03, 0.01). One model per variant and SNR, trained 3-way ``--shot``-shot,
serves both test settings. Training and test sets are simulated independently (other seeds).

The CPU budget of this project is small, so the defaults use the light encoder (16 channels,
not the paper's 64) and a few hundred training episodes (the paper trains far longer); the
JSON and markdown record every setting. Each finished (variant, SNR) run is appended to the
JSON at once; ``--resume`` skips runs already there.

    nice -n 19 .venv/bin/python benchmarks/fewshot.py --out benchmarks/results/fewshot.json
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
from common import DEMO_CLASSES, REPO, fmt, log, machine_info, machine_line, md_table
from tomoclust.features.fewshot import FewShotSettings, evaluate_episodes, train_protonet
from tomoclust.simulate.density import template_density
from tomoclust.simulate.subtomograms import simulate_subtomograms
from tomoclust.simulate.tomograms import Template

#: Li et al. 2020 (ProtoNet-CE), 2-way accuracy on unseen classes, mean ± std, aitom SNR.
PUBLISHED = {
    5: {100: (0.963, 0.008), 0.1: (0.867, 0.014), 0.05: (0.798, 0.018), 0.03: (0.776, 0.015),
        0.01: (0.570, 0.016)},
    1: {100: (0.892, 0.021), 0.1: (0.745, 0.023), 0.05: (0.657, 0.028), 0.03: (0.677, 0.022),
        0.01: (0.525, 0.019)},
}
VOXEL, BOX = 12.0, 32


def templates(names: list[str]) -> list[Template]:
    return [Template(nm, i + 1, template_density(REPO / DEMO_CLASSES[nm], VOXEL))
            for i, nm in enumerate(names)]


def run_one(variant: str, snr: float, train, test, args, device: str) -> dict:
    params = FewShotSettings(variant=variant, preset="light", width=args.width, way=None,
                           shot=args.shot, query=args.train_query, epochs=args.epochs,
                           episodes_per_epoch=args.episodes_per_epoch, lr=1e-3,
                           lr_step=args.lr_step, seed=args.seed)
    ytrain = train.truth["rlnClassNumber"].to_numpy()
    ytest = test.truth["rlnClassNumber"].to_numpy()
    t0 = time.perf_counter()
    res = train_protonet(train.stack, ytrain, params, device)
    t_train = time.perf_counter() - t0
    out = {"variant": variant, "snr": snr, "snr_measured_train": train.info["snr_measured"],
           "snr_measured_test": test.info["snr_measured"], "device": device,
           "seconds_training": t_train,
           "training_episodes": args.epochs * args.episodes_per_epoch,
           "final_train_episode_accuracy": float(res.history["episode_accuracy"].iloc[-1]),
           "final_train_loss": float(res.history["loss"].iloc[-1])}
    for shot in (1, 5):
        t0 = time.perf_counter()
        acc = evaluate_episodes(res.model, test.stack, ytest, way=2, shot=shot,
                                query=args.query, n_episodes=args.episodes,
                                seed=args.seed + 1000 + shot, device=device)
        out[f"{shot}shot"] = {"mean": float(acc.mean()), "std": float(acc.std()),
                              "ci95": float(1.96 * acc.std() / np.sqrt(len(acc))),
                              "episodes": len(acc), "seconds": time.perf_counter() - t0}
    log(f"{variant} SNR {snr}: 1-shot {out['1shot']['mean']:.3f} ± {out['1shot']['std']:.3f}, "
        f"5-shot {out['5shot']['mean']:.3f} ± {out['5shot']['std']:.3f} "
        f"(training {t_train:.0f} s, train episode acc "
        f"{out['final_train_episode_accuracy']:.3f})")
    return out


def markdown(payload: dict) -> str:
    a = payload["settings"]
    runs = payload["runs"]
    lines = [
        "# Few-shot benchmark (ProtoNet3D / ProtoNet-CE, paper protocol)\n",
        f"Machine: {machine_line(payload['machine'])}.\n",
        f"Train classes {', '.join(a['train_classes'])} ({a['train_per_class']} simulated "
        f"subtomograms each); test classes {', '.join(a['test_classes'])} (unseen, "
        f"{a['test_per_class']} each); 32³ at 12 Å, tilt ±60°, CTF, aitom SNR convention. "
        f"Encoder: {a['width']} channels × 4 blocks ({a['width'] * 8}-d embedding; the paper "
        f"uses 64 channels, 512-d); {a['epochs'] * a['episodes_per_epoch']} training episodes "
        f"(3-way {a['shot']}-shot, {a['train_query']} queries; Adam 1e-3 halved every "
        f"{a['lr_step']} epochs of {a['episodes_per_epoch']} episodes). Test: 2-way, "
        f"{a['query']} queries per class, {a['episodes']} episodes; mean ± std over episodes. "
        "One trained model per variant and SNR serves the 1-shot and the 5-shot test.\n",
    ]
    header = ["SNR", "measured SNR", "ProtoNet3D 5-shot", "ProtoNet-CE 5-shot",
              "published 5-shot", "ProtoNet3D 1-shot", "ProtoNet-CE 1-shot",
              "published 1-shot", "training s (3D / CE)"]
    rows = []
    for snr in sorted({r["snr"] for r in runs}, reverse=True):
        by = {r["variant"]: r for r in runs if r["snr"] == snr}

        def cell(v, shot, by=by):
            r = by.get(v)
            return "–" if r is None else (f"{r[f'{shot}shot']['mean']:.3f} ± "
                                          f"{r[f'{shot}shot']['std']:.3f}")

        pub = {s: PUBLISHED[s].get(snr) for s in (1, 5)}
        any_run = next(iter(by.values()))
        rows.append([
            fmt(float(snr)), fmt(float(any_run["snr_measured_test"])),
            cell("protonet3d", 5), cell("protonet_ce", 5),
            "–" if pub[5] is None else f"{pub[5][0]:.3f} ± {pub[5][1]:.3f}",
            cell("protonet3d", 1), cell("protonet_ce", 1),
            "–" if pub[1] is None else f"{pub[1][0]:.3f} ± {pub[1][1]:.3f}",
            " / ".join(f"{by[v]['seconds_training']:.0f}" if v in by else "–"
                       for v in ("protonet3d", "protonet_ce")),
        ])
    lines.append(md_table(header, rows))
    lines.append("\nPublished: Li et al. 2020 (ProtoNet-CE), as quoted in the design notes. "
                 "Chance is 0.5.\n")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "fewshot.json"))
    ap.add_argument("--snrs", type=float, nargs="+", default=[100, 0.1, 0.05, 0.03, 0.01])
    ap.add_argument("--variants", nargs="+", default=["protonet3d", "protonet_ce"])
    ap.add_argument("--train-classes", nargs="+", default=["3jb9", "6s47", "3j9i"])
    ap.add_argument("--test-classes", nargs="+", default=["4v1w", "3cf3"])
    ap.add_argument("--train-per-class", type=int, default=100)
    ap.add_argument("--test-per-class", type=int, default=60)
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--shot", type=int, default=5)
    ap.add_argument("--query", type=int, default=15, help="test queries per class")
    ap.add_argument("--train-query", type=int, default=15, help="training queries per class")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--episodes-per-epoch", type=int, default=20)
    ap.add_argument("--lr-step", type=int, default=3)
    ap.add_argument("--episodes", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--resume", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    settings = {k: v for k, v in vars(args).items() if k not in ("out", "resume")}
    payload = {"machine": machine_info(), "settings": settings, "published": {
        f"{s}shot": {str(k): v for k, v in d.items()} for s, d in PUBLISHED.items()},
        "runs": []}
    if args.resume and out.exists():
        old = json.loads(out.read_text())
        payload["runs"] = old.get("runs", [])
    done = {(r["variant"], r["snr"]) for r in payload["runs"]}
    from common import write_outputs

    tr_t, te_t = templates(args.train_classes), templates(args.test_classes)
    for snr in args.snrs:
        todo = [v for v in args.variants if (v, snr) not in done]
        if not todo:
            continue
        t0 = time.perf_counter()
        train = simulate_subtomograms(tr_t, args.train_per_class, BOX, VOXEL, snr, "aitom",
                                      seed=args.seed + 1)
        test = simulate_subtomograms(te_t, args.test_per_class, BOX, VOXEL, snr, "aitom",
                                     seed=args.seed + 2)
        log(f"SNR {snr}: simulated {len(train.stack)} + {len(test.stack)} subtomograms in "
            f"{time.perf_counter() - t0:.0f} s (measured SNR {test.info['snr_measured']:.3g})")
        for v in todo:
            r = run_one(v, snr, train, test, args, args.device)
            r["load_average_after"] = list(os.getloadavg())
            payload["runs"].append(r)
            payload["machine"]["load_average_at_end"] = list(os.getloadavg())
            write_outputs(out, payload, markdown(payload))
    payload["machine"]["load_average_at_end"] = list(os.getloadavg())
    md = write_outputs(out, payload, markdown(payload))
    log(f"wrote {out} and {md}")


if __name__ == "__main__":
    main()
