"""Rule features_invariant: rotation-invariant radial profile and shell spectra of the gathered
particles."""

import time

import numpy as np
import torch
from tomoclust.features.invariant import invariant_representations
from tomoclust.rule import (
    load_particles,
    log,
    resolve_device,
    run_info,
    run_rule,
    save_features,
    write_info,
)


def main(smk) -> None:
    torch.set_num_threads(max(int(smk.threads), 1))
    device = resolve_device(smk.params.device)
    cfg = smk.params.invariant
    df, stack, _ = load_particles(smk.input.star, smk.input.stack)
    t0 = time.time()
    feats, plain = invariant_representations(
        stack, cfg["l_max"], cfg["lowpass_vox"], radial=cfg["radial"],
        spectrum_components=cfg["spectrum_components"], device=device,
        centring=cfg["centring"], noise_whitening=cfg["noise_whitening"])
    dt = time.time() - t0
    log.info("%d particles -> %d invariant features in %.1f s (%.0f/s) on %s", len(df),
             feats.shape[1], dt, len(df) / max(dt, 1e-9), device)
    save_features(smk.output.features, feats, len(df))
    # before whitening, for the consensus K; 0 columns when the features were not whitened
    save_features(smk.output.unwhitened,
                  plain if plain is not None else np.zeros((len(df), 0), np.float32), len(df))
    write_info(smk.output.info, run_info(device, seconds=dt, params=dict(cfg)))


run_rule(snakemake, main)
