"""Rule features_fewshot: classify every particle against the support set with a trained
ProtoNet3D / ProtoNet-CE; write the embeddings (features), labels and confidences."""

import time

from tomoclust import rule
from tomoclust.features import fewshot_support as support
from tomoclust.features.fewshot import classify, load_trained
from tomoclust.formats.star import write_star


def main(smk) -> None:
    device = rule.torch_device(smk)
    df, stack, vs = rule.load_particles(smk.input.star, smk.input.stack)
    model, params = load_trained(smk.input.model, rule.read_json(smk.input.training_info),
                                 smk.input.stack, stack.shape[-1], vs, smk.wildcards.variant,
                                 device)
    cfg, get = smk.params.support, smk.input.get
    sup_stack, sup = support.support_examples(
        df, stack, class_names=cfg.get("class_names"), support_star=get("support_star"),
        particle_star=smk.input.star, tolerance_angst=cfg["support_tolerance"],
        sim_star=get("support_sim_star"), sim_stack=get("support_sim_stack"))
    t0 = time.time()
    pred = classify(model, sup_stack, sup.labels, stack, device, chunks=smk.input.get("chunks"))
    rule.save_features(smk.output.features, pred.features, len(df))
    write_star(smk.output.labels, support.fewshot_labels_table(df, pred, sup))
    write_star(smk.output.support, sup.table)
    info = support.fewshot_summary(pred, sup, params.variant)
    rule.write_run_info(smk.output.info, device, seconds=time.time() - t0, **info)
    rule.log.info("%s: %d particles classified into %s (mean confidence %.3f)", params.variant,
                  len(df), info["class_sizes"], info["mean_confidence"])


rule.run_rule(snakemake, main)
