"""Rule train_fewshot: episodic training of ProtoNet3D / ProtoNet-CE on the simulated set."""

import json
import time

import torch
from tomoclust.features.distributed import job_processes
from tomoclust.features.fewshot import describe, params_from_config, train_protonet
from tomoclust.features.train import Checkpoint, fingerprint
from tomoclust.formats.stacks import open_stack
from tomoclust.formats.star import read_star
from tomoclust.rule import log, resolve_device, run_info, run_rule, save_state_dict, write_info


def main(smk) -> None:
    torch.set_num_threads(max(int(smk.threads), 1))
    device = resolve_device(smk.params.device)
    params = params_from_config(dict(smk.params.model), smk.wildcards.variant)
    truth = read_star(smk.input.star, what="few-shot training set")
    stack, vs = open_stack(smk.input.stack)
    labels = truth["rlnClassNumber"].to_numpy()
    log.info("%s: episodic training on %d simulated subtomograms of %d classes, device %s, %s",
             params.variant, len(stack), len(set(labels)), device, describe(params))
    ckpt = Checkpoint(smk.params.checkpoint, fingerprint(describe(params), smk.input.stack))
    t0 = time.time()
    tilt = json.loads(open(smk.input.info).read())["tilt"]
    res = train_protonet(stack, labels, params, device, checkpoint=ckpt,
                         history_path=smk.output.history, tilt_range=tuple(tilt),
                         processes=job_processes(device, smk.resources))
    save_state_dict(smk.output.model, res.model.state_dict())
    names = truth.drop_duplicates("rlnClassNumber").set_index("rlnClassNumber")["rlnClassName"]
    write_info(smk.output.info, run_info(
        device, seconds=time.time() - t0, variant=params.variant, params=describe(params),
        box=int(stack.shape[-1]), voxel_size=vs, embedding_dim=res.model.dim,
        n_training=len(stack), training_classes={int(k): str(v) for k, v in names.items()},
        final_episode_accuracy=float(res.history["episode_accuracy"].iloc[-1])
        if len(res.history) else None))
    ckpt.finish()


run_rule(snakemake, main)
