"""Rule features_disca: DISCA features, labels and weights for the gathered particles."""

import time

from tomoclust import rule
from tomoclust.features.disca import describe, params_from_config, run_disca
from tomoclust.features.distributed import job_processes
from tomoclust.features.train import Checkpoint, fingerprint
from tomoclust.formats.star import write_star


def main(smk) -> None:
    device = rule.torch_device(smk)
    df, stack, _ = rule.load_particles(smk.input.star, smk.input.stack)
    params = params_from_config(dict(smk.params.disca), *smk.params.wedge)
    rule.log.info("DISCA on %d particles, device %s, %s", len(df), device, describe(params))
    ckpt = Checkpoint(smk.params.checkpoint, fingerprint(describe(params), smk.input.stack))
    t0 = time.time()
    res = run_disca(stack, params, device, checkpoint=ckpt, history_path=smk.output.history,
                    processes=job_processes(device, smk.resources))
    rule.save_features(smk.output.features, res.features, len(df))
    rule.save_state_dict(smk.output.model, res.state_dict)
    write_star(smk.output.labels, rule.labels_table(df, res.labels, res.probability))
    k = int(res.labels.max())
    rule.write_run_info(smk.output.info, device, seconds=time.time() - t0,
                        best_iteration=res.best_iteration, k=k, params=describe(params))
    rule.log.info("best iteration %d with K=%d", res.best_iteration, k)
    ckpt.finish()


rule.run_rule(snakemake, main)
