"""Rule features_disca: DISCA features, labels and weights for the gathered particles."""

import time

import torch
from tomoclust.features.disca import describe, params_from_config, run_disca
from tomoclust.features.distributed import job_processes
from tomoclust.features.train import Checkpoint, fingerprint
from tomoclust.formats.star import write_star
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
    params = params_from_config(dict(smk.params.disca), *smk.params.wedge)
    log.info("DISCA on %d particles, device %s, %s", len(df), device, describe(params))
    ckpt = Checkpoint(smk.params.checkpoint, fingerprint(describe(params), smk.input.stack))
    t0 = time.time()
    res = run_disca(stack, params, device, checkpoint=ckpt, history_path=smk.output.history,
                    processes=job_processes(device, smk.resources))
    save_features(smk.output.features, res.features, len(df))
    save_state_dict(smk.output.model, res.state_dict)
    out = df[[c for c in df.columns if c.startswith(("rlnImageName", "rlnTomoName",
                                                     "rlnCoordinate"))]].copy()
    out["rlnClassNumber"] = res.labels
    out["tclClassProbability"] = res.probability
    write_star(smk.output.labels, out)
    write_info(smk.output.info, run_info(device, seconds=time.time() - t0,
                                         best_iteration=res.best_iteration,
                                         k=int(res.labels.max()), params=describe(params)))
    log.info("best iteration %d with K=%d", res.best_iteration, int(res.labels.max()))
    ckpt.finish()


run_rule(snakemake, main)
