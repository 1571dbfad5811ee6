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
<<<<<<< HEAD
    pred = classify(model, sup_stack, sup.labels, stack, device)
    rule.save_features(smk.output.features, pred.features, len(df))
    write_star(smk.output.labels, support.fewshot_labels_table(df, pred, sup))
    write_star(smk.output.support, sup.table)
    info = support.fewshot_summary(pred, sup, params.variant)
    rule.write_run_info(smk.output.info, device, seconds=time.time() - t0, **info)
    rule.log.info("%s: %d particles classified into %s (mean confidence %.3f)", params.variant,
                  len(df), info["class_sizes"], info["mean_confidence"])
=======
    pred = classify(model, sup_stack, sup_labels, stack, device, chunks=smk.input.get("chunks"))
    save_features(smk.output.features, pred.features, len(df))
    out = df[[c for c in df.columns if c.startswith(("rlnImageName", "rlnTomoName",
                                                     "rlnCoordinate", "rlnCentered"))]].copy()
    out["rlnClassNumber"] = pred.labels
    out["rlnClassName"] = [names[int(c)] for c in pred.labels]
    out["tclClassProbability"] = pred.confidence
    for k in range(pred.probabilities.shape[1]):
        out[f"tclProbabilityClass{k + 1}"] = pred.probabilities[:, k]
    is_support = np.zeros(len(df), dtype=int)
    if "tclParticleIndex" in sup_table.columns:
        is_support[sup_table["tclParticleIndex"].to_numpy() - 1] = 1
    out["tclSupport"] = is_support
    write_star(smk.output.labels, out)
    write_star(smk.output.support, sup_table)
    counts = {names[c]: int((pred.labels == c).sum()) for c in sorted(names)}
    write_info(smk.output.info, run_info(
        device, seconds=time.time() - t0, variant=params.variant, n_particles=len(df),
        n_support=len(sup_labels), classes=names, class_sizes=counts,
        mean_confidence=float(pred.confidence.mean()), embedding_dim=int(pred.features.shape[1]),
        support_source="star" if "support_star" in smk.input.keys() else "simulated"))
    log.info("%s: %d particles classified into %s (mean confidence %.3f)", params.variant,
             len(df), counts, float(pred.confidence.mean()))
>>>>>>> ddp


rule.run_rule(snakemake, main)
