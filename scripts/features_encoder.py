"""Rule features_transfer (pretrained model): the shipped encoder's embedding of the particles.

No training: the encoder (weights + manifest, SHA-256 checked) embeds every particle; the
library templates, simulated like the data, give prototypes for a nearest-template prediction
per particle (predictions.tsv).
"""

import time

import pandas as pd
import torch
from tomoclust.features.encoder import (
    embed_particles,
    load_encoder,
    nearest_prototype,
    template_prototypes,
)
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
from tomoclust.simulate.density import template_density


def main(smk) -> None:
    torch.set_num_threads(max(int(smk.threads), 1))
    device = resolve_device(smk.params.device)
    df, stack, vs = load_particles(smk.input.star, smk.input.stack)
    model, man = load_encoder(smk.input.model, device)
    log.info("encoder %s (sha256 %s…, %s, trained %s)", smk.input.model, man["sha256"][:12],
             man.get("name"), man.get("date"))
    t0 = time.time()
    feats = embed_particles(model, stack, vs, chunks=smk.input.get("chunks"))
    seconds = time.time() - t0
    log.info("%d particles in %.1f s (%.0f/s), device %s", len(df), seconds,
             len(df) / max(seconds, 1e-9), device)
    save_features(smk.output.features, feats, len(df))
    names = list(smk.params.names)
    dens = {n: template_density(p, model.cfg.voxel_size)
            for n, p in zip(names, smk.input.templates, strict=True)}
    proto = template_prototypes(model, dens, int(smk.params.prototype_views),
                                tuple(smk.params.tilt), dict(smk.params.ctf))
    prob = nearest_prototype(feats, proto)
    pred = pd.DataFrame({"rlnImageName": df["rlnImageName"],
                         "class": [names[i] for i in prob.argmax(1)],
                         "probability": prob.max(1)})
    for j, nm in enumerate(names):
        pred[f"p_{nm}"] = prob[:, j]
    write_tsv(smk.output.predictions, pred)
    counts = pred["class"].value_counts().to_dict()
    log.info("nearest library templates: %s", counts)
    write_info(smk.output.info, run_info(device, seconds=seconds, model=str(smk.input.model),
                                         model_sha256=man["sha256"], class_names=names,
                                         predicted_counts=counts))


run_rule(snakemake, main)
