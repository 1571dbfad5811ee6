"""Rule features_fewshot: classify every particle against the support set with a trained
ProtoNet3D / ProtoNet-CE; write the embeddings (features), labels and confidences."""

import json
import time

import numpy as np
import torch
from tomoclust import TomoclustError
from tomoclust.features.fewshot import ProtoNet, classify, params_from_config
from tomoclust.features.fewshot_support import load_support_star
from tomoclust.formats.stacks import open_stack
from tomoclust.formats.star import read_star, write_star
from tomoclust.rule import (
    load_particles,
    log,
    resolve_device,
    run_info,
    run_rule,
    save_features,
    write_info,
)


def _support(smk, particles, stack):
    """(support stack, 1-based labels, class names, table for the record)."""
    cfg = smk.params.support
    names = {int(k): str(v) for k, v in (cfg.get("class_names") or {}).items()}
    if "support_star" in smk.input.keys():
        optics = read_star(smk.input.star, block="optics", what="particle table")
        sup = load_support_star(smk.input.support_star, particles,
                                tolerance_angst=float(cfg["support_tolerance"]),
                                tomo_voxel_size=float(optics["rlnTomoTiltSeriesPixelSize"].iloc[0]),
                                names=names)
        log.info("support: %d particles of the particle table named by %s", len(sup.rows),
                 smk.input.support_star)
        return np.asarray(stack[sup.rows]), sup.labels, sup.names, sup.table
    table = read_star(smk.input.support_sim_star, what="simulated support set")
    sstack, _ = open_stack(smk.input.support_sim_stack)
    labels = table["rlnClassNumber"].to_numpy(dtype=np.int64)
    cnames = table.drop_duplicates("rlnClassNumber").set_index("rlnClassNumber")["rlnClassName"]
    cnames = {int(k): names.get(int(k), str(v)) for k, v in cnames.items()}
    out = table[["rlnImageName", "rlnClassNumber"]].copy()
    out["rlnClassName"] = [cnames[int(c)] for c in out["rlnClassNumber"]]
    log.info("support: %d simulated particles of %s", len(labels), list(cnames.values()))
    return np.asarray(sstack), labels, cnames, out


def main(smk) -> None:
    torch.set_num_threads(max(int(smk.threads), 1))
    device = resolve_device(smk.params.device)
    df, stack, vs = load_particles(smk.input.star, smk.input.stack)
    tinfo = json.loads(open(smk.input.training_info).read())
    if int(tinfo["box"]) != stack.shape[-1] or abs(float(tinfo["voxel_size"]) - vs) > 1e-3:
        raise TomoclustError(
            f"{smk.input.model} was trained on {tinfo['box']}³ boxes at {tinfo['voxel_size']} Å "
            f"but {smk.input.stack} holds {stack.shape[-1]}³ at {vs} Å")
    params = params_from_config(dict(tinfo["params"]), smk.wildcards.variant)
    model = ProtoNet(stack.shape[-1], params).to(device)
    model.load_state_dict(torch.load(smk.input.model, map_location=device, weights_only=True))
    sup_stack, sup_labels, names, sup_table = _support(smk, df, stack)
    t0 = time.time()
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


run_rule(snakemake, main)
