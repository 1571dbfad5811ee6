"""Rule train_fewshot: episodic training of ProtoNet3D / ProtoNet-CE on the simulated set."""

import time

from tomoclust import rule
from tomoclust.features.distributed import job_processes
from tomoclust.features.fewshot import describe, params_from_config, train_protonet
from tomoclust.features.fewshot_support import load_training_set
from tomoclust.features.train import Checkpoint, fingerprint


def main(smk) -> None:
    device = rule.torch_device(smk)
    params = params_from_config(dict(smk.params.model), smk.wildcards.variant)
    stack, vs, labels, names = load_training_set(smk.input.star, smk.input.stack)
    rule.log.info("%s: episodic training on %d simulated subtomograms of %d classes, device %s, "
                  "%s", params.variant, len(stack), len(set(labels)), device, describe(params))
    ckpt = Checkpoint(smk.params.checkpoint, fingerprint(describe(params), smk.input.stack))
    t0 = time.time()
    tilt = rule.read_json(smk.input.info)["tilt"]
    res = train_protonet(stack, labels, params, device, checkpoint=ckpt,
                         history_path=smk.output.history, tilt_range=tuple(tilt),
                         processes=job_processes(device, smk.resources))
    rule.save_state_dict(smk.output.model, res.model.state_dict())
    rule.write_run_info(
        smk.output.info, device, seconds=time.time() - t0, variant=params.variant,
        params=describe(params), box=int(stack.shape[-1]), voxel_size=vs,
        embedding_dim=res.model.dim, n_training=len(stack), training_classes=names,
        final_episode_accuracy=float(res.history["episode_accuracy"].iloc[-1])
        if len(res.history) else None)
    ckpt.finish()


rule.run_rule(snakemake, main)
