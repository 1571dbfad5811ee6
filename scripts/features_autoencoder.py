"""Rule features_autoencoder: 3D autoencoder codes for the gathered particles."""

import time

import torch
from tomoclust.features.autoencoder import AutoencoderSettings, describe, run_autoencoder
from tomoclust.features.train import Checkpoint, fingerprint
from tomoclust.rule import (
    load_particles,
    log,
    resolve_device,
    run_info,
    run_rule,
    save_features,
    save_state_dict,
    write_info,
)


def main(smk) -> None:
    torch.set_num_threads(max(int(smk.threads), 1))
    device = resolve_device(smk.params.device)
    df, stack, _ = load_particles(smk.input.star, smk.input.stack)
    params = AutoencoderSettings(**smk.params.autoencoder)
    log.info("autoencoder on %d particles, device %s, %s", len(df), device, describe(params))
    ckpt = Checkpoint(smk.params.checkpoint, fingerprint(describe(params), smk.input.stack))
    t0 = time.time()
    res = run_autoencoder(stack, params, device, checkpoint=ckpt, history_path=smk.output.history)
    save_features(smk.output.features, res.features, len(df))
    save_state_dict(smk.output.model, res.state_dict)
    write_info(smk.output.info, run_info(device, seconds=time.time() - t0, params=describe(params)))


run_rule(snakemake, main)
