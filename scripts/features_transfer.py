"""Rule features_transfer: the transfer-learned encoder's 32-d features of the particles."""

import time

import numpy as np
import pandas as pd
import torch
from tomoclust import TomoclustError
from tomoclust.features.transfer import load_model, transfer_features
from tomoclust.formats.atomic import write_tsv
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
    df, stack, vs = load_particles(smk.input.star, smk.input.stack)
    model, names, extra = load_model(smk.input.model, device)
    box = stack.shape[-1]
    if box != extra["box"] or not np.isclose(vs, extra["voxel_size"], rtol=1e-3):
        raise TomoclustError(
            f"{smk.input.stack}: particles are {box}³ at {vs:g} Å but the transfer model "
            f"{smk.input.model} was trained on {extra['box']}³ at {extra['voxel_size']:g} Å")
    t0 = time.time()
    feats, prob = transfer_features(model, stack, chunks=smk.input.get("chunks"))
    seconds = time.time() - t0
    log.info("%d particles in %.1f s (%.0f/s), device %s", len(df), seconds,
             len(df) / max(seconds, 1e-9), device)
    save_features(smk.output.features, feats, len(df))
    pred = pd.DataFrame({"rlnImageName": df["rlnImageName"],
                         "class": [names[i] for i in prob.argmax(1)],
                         "probability": prob.max(1)})
    for j, nm in enumerate(names):
        pred[f"p_{nm}"] = prob[:, j]
    write_tsv(smk.output.predictions, pred)
    counts = pred["class"].value_counts().to_dict()
    log.info("library classes predicted: %s", counts)
    write_info(smk.output.info, run_info(device, seconds=seconds, model=str(smk.input.model),
                                         class_names=names, predicted_counts=counts,
                                         model_val_accuracy=extra.get("val_accuracy")))


run_rule(snakemake, main)
