"""Rule cluster: GMM with BIC choice of K (or k-means with fixed K) on a method's features."""

import numpy as np
from tomoclust.cluster import cluster_features, constant_columns
from tomoclust.formats.atomic import write_json, write_tsv
from tomoclust.formats.star import read_star, write_star
from tomoclust.report.plots import plot_bic
from tomoclust.rule import log, run_rule


def main(smk) -> None:
    c = smk.params.clustering
    feats = np.load(smk.input.features)
    df = read_star(smk.input.star, what="particle table")
    if len(df) != len(feats):
        raise RuntimeError(f"{len(feats)} feature rows for {len(df)} particles")
    n_const = constant_columns(feats)
    if n_const == feats.shape[1]:
        log.warning("%s: all %d feature columns are the same for every particle (the model "
                    "collapsed, e.g. dead units of a network trained on very noisy data); the "
                    "clustering cannot separate anything and puts every particle in one class",
                    smk.wildcards.method, n_const)
    elif n_const:
        log.warning("%s: %d of %d feature columns are the same for every particle (dead "
                    "units); the clustering uses the other %d", smk.wildcards.method, n_const,
                    feats.shape[1], feats.shape[1] - n_const)
    res = cluster_features(feats, c["algorithm"], k=c["k"], k_min=c["k_min"], k_max=c["k_max"],
                           pca_components=c["pca_components"], n_init=c["n_init"], seed=c["seed"],
                           merge_ratio=c["merge_ratio"], merge_gap=c["merge_gap"])
    df["rlnClassNumber"] = res.labels
    df["tclClassProbability"] = res.probability
    write_star(smk.output.star, df)
    write_tsv(smk.output.bic, res.bic)
    plot_bic(res.bic, res.k, smk.output.plot, title=smk.wildcards.method)
    sizes = np.bincount(res.labels)[1:].tolist()
    write_json(smk.output.summary, {"method": smk.wildcards.method, "algorithm": c["algorithm"],
                                    "k": res.k, "class_sizes": sizes,
                                    "mixture_components": res.k_components,
                                    "stability_ari": res.stability_ari,
                                    "mean_probability": float(res.probability.mean()),
                                    "constant_feature_columns": n_const,
                                    "feature_columns": int(feats.shape[1])})
    log.info("%s: K=%d, sizes %s, stability ARI %.3f", smk.wildcards.method, res.k, sizes,
             res.stability_ari)


run_rule(snakemake, main)
