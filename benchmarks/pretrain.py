"""Pretrain the shipped subtomogram encoder (one command; see tomoclust.features.pretrain).

    # the shipped model (reduced size: 2 CPU cores, about 45 min)
    python benchmarks/pretrain.py --work /tmp/encoder --out resources/models/encoder-v1.pt

    # full size, for a GPU (about 20x the views); --processes 4 splits every step over 4 GPUs
    python benchmarks/pretrain.py --work /scratch/encoder --device cuda --n-pseudo 5000 \
        --steps 20000 --shapes-per-batch 128 --out resources/models/encoder-full.pt

The corpus (densities of the atomic models in resources/structures/ minus the held-out
evaluation classes, plus procedurally generated pseudo-molecules) is cached in --work as
corpus.npz; training checkpoints to --work/checkpoint.pt every 50 steps and resumes from it.
Every view is imaged anew (rotation, ±shift, crowding, defocus, tilt range, noise level), so
the corpus stays small on disk. The weights and manifest are written at the end; measured
figures are added to the manifest by benchmarks/encoder_eval.py.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import shlex
import sys
import time
from pathlib import Path

import numpy as np
from common import REPO, machine_info


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default="/tmp/encoder", help="corpus cache and checkpoint")
    ap.add_argument("--out", default=str(REPO / "resources/models/encoder-v1.pt"))
    ap.add_argument("--n-pseudo", type=int, default=1500)
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--shapes-per-batch", type=int, default=48)
    ap.add_argument("--views", type=int, default=2)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--atomic-weight", type=float, default=5.0,
                    help="sampling weight of an atomic model relative to a pseudo-molecule")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--processes", type=int, default=1,
                    help="data-parallel processes, one per GPU (device cuda); the views of "
                         "a step are split over them")
    a = ap.parse_args(argv)

    import torch
    from tomoclust.features.encoder import save_encoder
    from tomoclust.features.pretrain import (
        CorpusSettings,
        ImagingSettings,
        PretrainSettings,
        build_corpus,
        params_dict,
        train_encoder,
    )

    torch.set_num_threads(a.threads)
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s",
                        handlers=[logging.StreamHandler(sys.stdout),
                                  logging.FileHandler(work / "pretrain.log")])
    cp = CorpusSettings(n_pseudo=a.n_pseudo, seed=a.seed)
    ip = ImagingSettings()
    tp = PretrainSettings(steps=a.steps, shapes_per_batch=a.shapes_per_batch, views=a.views,
                     lr=a.lr, seed=a.seed)
    corpus_file = work / f"corpus-{a.n_pseudo}-{a.seed}.npz"
    if corpus_file.exists():
        z = np.load(corpus_file)
        corpus = {"density": z["density"], "names": list(z["names"]), "kinds": list(z["kinds"])}
    else:
        corpus = build_corpus(REPO / "resources/structures", cp)
        np.savez(corpus_file, density=corpus["density"], names=corpus["names"],
                 kinds=corpus["kinds"])
    kinds = corpus["kinds"]
    weights = np.where(np.array(kinds) == "atomic", a.atomic_weight, 1.0)
    logging.info("corpus: %d shapes (%s)", len(kinds),
                 {k: kinds.count(k) for k in sorted(set(kinds))})
    t0 = time.time()
    model, history = train_encoder(corpus["density"], tp, ip, work / "checkpoint.pt",
                                   device=a.device, weights=weights, processes=a.processes)
    seconds = time.time() - t0
    (work / "history.json").write_text(json.dumps(history))
    manifest = {
        "name": Path(a.out).stem,
        "description": "subtomogram encoder, supervised-contrastive pretraining on simulated "
                       "atomic models and pseudo-molecules; unit-length embedding",
        "training_command": "python benchmarks/pretrain.py " + shlex.join(sys.argv[1:]),
        "corpus": {"atomic_models": [n for n, k in zip(corpus["names"], kinds, strict=True)
                                     if k == "atomic"],
                   "held_out": list(cp.held_out), "pseudo_molecules": a.n_pseudo,
                   "pseudo_kinds": {k: kinds.count(k) for k in sorted(set(kinds))
                                    if k != "atomic"}},
        "params": params_dict(cp, ip, tp),
        "training": {"steps": a.steps, "views_seen": a.steps * a.shapes_per_batch * a.views,
                     "seconds": round(seconds), "final_loss_mean_last50": float(
                         np.mean([h["loss"] for h in history[-50:]]))},
        "date": dt.date.today().isoformat(),
        "machine": machine_info(),
        "measured": {},
    }
    manifest["commit"] = manifest["machine"].get("git_commit")
    man = save_encoder(a.out, model, manifest)
    logging.info("wrote %s (%d bytes, sha256 %s)", a.out, man["bytes"], man["sha256"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
