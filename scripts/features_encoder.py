"""Rule features_transfer (pretrained model): the shipped encoder's embedding of the particles.

No training: the encoder (weights + manifest, SHA-256 checked) embeds every particle; the
library templates, simulated like the data, give prototypes for a nearest-template prediction
per particle (predictions.tsv).
"""

import time

from tomoclust import rule
from tomoclust.features.encoder import embed_particles, load_encoder, template_probabilities
from tomoclust.formats.atomic import write_tsv


def main(smk) -> None:
    device = rule.torch_device(smk)
    df, stack, vs = rule.load_particles(smk.input.star, smk.input.stack)
    model, man = load_encoder(smk.input.model, device)
    rule.log.info("encoder %s (sha256 %s…, %s, trained %s)", smk.input.model,
                  man["sha256"][:12], man.get("name"), man.get("date"))
    t0 = time.time()
    feats = embed_particles(model, stack, vs, chunks=smk.input.get("chunks"))
    seconds = time.time() - t0
    rule.log.info("%d particles in %.1f s (%.0f/s), device %s", len(df), seconds,
                  len(df) / max(seconds, 1e-9), device)
    rule.save_features(smk.output.features, feats, len(df))
    names = list(smk.params.names)
    prob = template_probabilities(model, feats, dict(zip(names, smk.input.templates, strict=True)),
                                  smk.params.prototype_views, smk.params.tilt, smk.params.ctf)
    pred = rule.class_predictions(df["rlnImageName"], names, prob)
    write_tsv(smk.output.predictions, pred)
    counts = pred["class"].value_counts().to_dict()
    rule.log.info("nearest library templates: %s", counts)
    rule.write_run_info(smk.output.info, device, seconds=seconds, model=str(smk.input.model),
                        model_sha256=man["sha256"], class_names=names, predicted_counts=counts)


rule.run_rule(snakemake, main)
