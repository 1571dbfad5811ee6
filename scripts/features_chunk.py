"""Rules features_transfer_chunk and features_fewshot_chunk: a method's features of one share
of the particles (``inference_jobs`` > 1); the method's rule gathers the shares in particle
order."""

import torch
from tomoclust.features.chunk_jobs import feature_chunk
from tomoclust.formats.atomic import save_npy
from tomoclust.rule import load_particles, resolve_device, run_rule


def main(smk) -> None:
    torch.set_num_threads(max(int(smk.threads), 1))
    device = resolve_device(smk.params.device)
    _, stack, vs = load_particles(smk.input.star, smk.input.stack)
    save_npy(smk.output[0], feature_chunk(smk.params.kind, smk.input.model, stack, vs, device,
                                          int(smk.params.jobs), int(smk.wildcards.i),
                                          smk.input.get("training_info")))


run_rule(snakemake, main)
