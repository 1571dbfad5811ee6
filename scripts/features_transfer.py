"""Rule features_transfer: the transfer-learned encoder's 32-d features of the particles."""

import time

from tomoclust import rule
from tomoclust.features.transfer import check_model_input, load_model, transfer_features
from tomoclust.formats.atomic import write_tsv


def main(smk) -> None:
    device = rule.torch_device(smk)
    df, stack, vs = rule.load_particles(smk.input.star, smk.input.stack)
    model, names, extra = load_model(smk.input.model, device)
    check_model_input(smk.input.model, extra, smk.input.stack, stack.shape[-1], vs)
    t0 = time.time()
    feats, prob = transfer_features(model, stack, chunks=smk.input.get("chunks"))
    seconds = time.time() - t0
    rule.log.info("%d particles in %.1f s (%.0f/s), device %s", len(df), seconds,
                  len(df) / max(seconds, 1e-9), device)
    rule.save_features(smk.output.features, feats, len(df))
    pred = rule.class_predictions(df["rlnImageName"], names, prob)
    write_tsv(smk.output.predictions, pred)
    counts = pred["class"].value_counts().to_dict()
    rule.log.info("library classes predicted: %s", counts)
    rule.write_run_info(smk.output.info, device, seconds=seconds, model=str(smk.input.model),
                        class_names=names, predicted_counts=counts,
                        model_val_accuracy=extra.get("val_accuracy"))


rule.run_rule(snakemake, main)
