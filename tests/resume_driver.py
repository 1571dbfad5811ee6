"""Train one method on a small planted set with a checkpoint, in its own process, and save the
result; test_resume.py runs it and kills it with SIGKILL.

    python tests/resume_driver.py METHOD OUT_DIR CHECKPOINT [--kill-at-batch N]
                                  [--kill-in-save N]

``--kill-at-batch N``: the process sends itself SIGKILL when the training loop asks for its
N-th batch (counted from the start of this process), wherever that falls in an epoch.
``--kill-in-save N``: at the N-th checkpoint save, half of the file is written, then SIGKILL
(a killed write leaves its temporary ``.part`` file behind).
Writes ``OUT_DIR/features.npy``, ``OUT_DIR/model.pt``, ``OUT_DIR/history.json`` and prints the
number of training batches this process asked for.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent / "scripts"), str(HERE)]

import numpy as np  # noqa: E402
import torch  # noqa: E402
from test_disca import planted_shapes  # noqa: E402
from tomoclust.features import autoencoder, disca, fewshot, train, transfer  # noqa: E402
from tomoclust.features.transfer_settings import TransferSettings  # noqa: E402

MODULES = {"autoencoder": autoencoder, "disca": disca, "fewshot": fewshot, "transfer": transfer}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("method", choices=sorted(MODULES))
    ap.add_argument("out")
    ap.add_argument("checkpoint")
    ap.add_argument("--kill-at-batch", type=int, default=0)
    ap.add_argument("--kill-in-save", type=int, default=0)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    torch.set_num_threads(1)
    stack, truth = planted_shapes(n_per=12, d=16)

    module = MODULES[args.method]
    calls = [0]
    real_to_tensor = module.to_tensor

    def counting_to_tensor(*a, **kw):
        calls[0] += 1
        if calls[0] == args.kill_at_batch:
            os.kill(os.getpid(), signal.SIGKILL)
        return real_to_tensor(*a, **kw)

    module.to_tensor = counting_to_tensor
    saves = [0]
    real_save = train.torch.save

    def killing_save(obj, f, *a, **kw):
        saves[0] += 1
        if saves[0] == args.kill_in_save:
            real_save(obj, f, *a, **kw)
            data = Path(f).read_bytes()
            Path(f).write_bytes(data[: len(data) // 2])
            os.kill(os.getpid(), signal.SIGKILL)
        return real_save(obj, f, *a, **kw)

    train.torch.save = killing_save
    ck = train.Checkpoint(args.checkpoint, f"resume-test-{args.method}")
    if args.method == "autoencoder":
        res = autoencoder.run_autoencoder(
            stack, autoencoder.AutoencoderSettings(code_dim=4, channels=4, epochs=5, batch_size=8),
            "cpu", checkpoint=ck)
        feats, state, hist = res.features, res.state_dict, res.history
    elif args.method == "disca":
        params = disca.DiscaSettings(preset="tiny", iterations=3, k_max=3, batch_size=8,
                                   pca_components=3, head_warmup_steps=5, seed=0)
        res = disca.run_disca(stack, params, "cpu", checkpoint=ck)
        feats, state, hist = res.features, res.state_dict, res.history
    elif args.method == "fewshot":
        params = fewshot.FewShotSettings(variant="protonet_ce", width=4, blocks=2, shot=2, query=3,
                                       epochs=4, episodes_per_epoch=3, lr_step=2, seed=3)
        res = fewshot.train_protonet(stack, truth, params, "cpu", checkpoint=ck)
        feats = fewshot.embed_stack(res.model, stack, "cpu").numpy()
        state, hist = res.model.state_dict(), res.history
    else:
        params = TransferSettings(width=4, stages=2, hidden=8, epochs=4, batch_size=8, seed=1)
        res = transfer.train_transfer(stack, truth, ["ball", "rod"], params, "cpu",
                                      checkpoint=ck)
        feats = transfer.transfer_features(res.model, stack)[0]
        state, hist = res.model.state_dict(), res.history
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / "features.npy", np.asarray(feats))
    real_save({k: v.detach().cpu() for k, v in state.items()}, out / "model.pt")
    cols = [c for c in hist.columns if c != "seconds"]
    (out / "history.json").write_text(json.dumps(hist[cols].to_dict("list"), default=str))
    print(json.dumps({"batches": calls[0], "saves": saves[0]}))


if __name__ == "__main__":
    main()
