"""Rule features_transfer_chunk: the transfer method's features of one share of the particles
(``inference_jobs`` > 1); rule features_transfer gathers the shares in particle order."""

import torch
from tomoclust.features.chunks import transfer_chunk
from tomoclust.formats.atomic import save_npy
from tomoclust.rule import load_particles, resolve_device, run_rule


def main(smk) -> None:
    torch.set_num_threads(max(int(smk.threads), 1))
    device = resolve_device(smk.params.device)
    _, stack, vs = load_particles(smk.input.star, smk.input.stack)
    save_npy(smk.output[0], transfer_chunk(smk.params.kind, smk.input.model, stack, vs, device,
                                           int(smk.params.jobs), int(smk.wildcards.i)))


run_rule(snakemake, main)
