"""Rule transfer_train: train the transfer-learned encoder on its simulated training set."""

import time

from tomoclust import rule
from tomoclust.features.distributed import job_processes
from tomoclust.features.train import Checkpoint, fingerprint
from tomoclust.features.transfer import read_training_set, save_model, train_transfer
from tomoclust.features.transfer_settings import TransferSettings


def main(smk) -> None:
    device = rule.torch_device(smk)
    stack, vs, labels, names, set_params = read_training_set(smk.input.star, smk.input.stack)
    params = TransferSettings(**smk.params.transfer)
    rule.log.info("training on %d boxes of %d classes, device %s, %s", len(labels), len(names),
                  device, params.as_dict())
    fp = fingerprint({"training": params.as_dict(), "set": set_params}, smk.input.stack)
    ckpt = Checkpoint(smk.params.checkpoint, fp)
    t0 = time.time()
    res = train_transfer(stack, labels, names, params, device, checkpoint=ckpt,
                         history_path=smk.output.history,
                         processes=job_processes(device, smk.resources))
    last = res.history.iloc[-1]
    extra = {"box": int(stack.shape[-1]), "voxel_size": float(vs),
             "training_set": set_params, "training": params.as_dict(),
             "val_accuracy": float(last["val_accuracy"]),
             "train_accuracy": float(last["train_accuracy"])}
    save_model(smk.output.model, res.model, names, extra)
    rule.write_run_info(smk.output.info, device, seconds=time.time() - t0, class_names=names,
                        **extra)
    ckpt.finish()


rule.run_rule(snakemake, main)
