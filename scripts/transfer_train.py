"""Rule transfer_train: train the transfer-learned encoder on its simulated training set."""

import json
import time

import torch
from tomoclust import TomoclustError
from tomoclust.features.distributed import job_processes
from tomoclust.features.train import Checkpoint, fingerprint
from tomoclust.features.transfer import save_model, train_transfer
from tomoclust.features.transfer_settings import TransferSettings
from tomoclust.formats.stacks import open_stack
from tomoclust.formats.star import read_star
from tomoclust.rule import log, resolve_device, run_info, run_rule, write_info


def main(smk) -> None:
    torch.set_num_threads(max(int(smk.threads), 1))
    device = resolve_device(smk.params.device)
    info_path = smk.input.stack.rsplit(".", 1)[0] + ".json"  # training_set.json
    with open(info_path) as fh:
        set_info = json.load(fh)
    names = set_info["class_names"]
    df = read_star(smk.input.star, what="transfer training set")
    stack, vs = open_stack(smk.input.stack)
    if len(df) != len(stack):
        raise TomoclustError(f"{smk.input.star} has {len(df)} rows but {smk.input.stack} "
                             f"holds {len(stack)} volumes")
    labels = df["rlnClassNumber"].to_numpy() - 1
    params = TransferSettings(**smk.params.transfer)
    log.info("training on %d boxes of %d classes, device %s, %s", len(df), len(names), device,
             params.as_dict())
    fp = fingerprint({"training": params.as_dict(), "set": set_info["params"]}, smk.input.stack)
    ckpt = Checkpoint(smk.params.checkpoint, fp)
    t0 = time.time()
    res = train_transfer(stack, labels, names, params, device, checkpoint=ckpt,
                         history_path=smk.output.history,
                         processes=job_processes(device, smk.resources))
    last = res.history.iloc[-1]
    extra = {"box": int(stack.shape[-1]), "voxel_size": float(vs),
             "training_set": set_info["params"], "training": params.as_dict(),
             "val_accuracy": float(last["val_accuracy"]),
             "train_accuracy": float(last["train_accuracy"])}
    save_model(smk.output.model, res.model, names, extra)
    write_info(smk.output.info, run_info(device, seconds=time.time() - t0, class_names=names,
                                         **extra))
    ckpt.finish()


run_rule(snakemake, main)
