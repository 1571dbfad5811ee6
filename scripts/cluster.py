"""Rule cluster: GMM with BIC choice of K (or k-means with fixed K) on a method's features."""

import numpy as np
from tomoclust.cluster import cluster_method
from tomoclust.formats.atomic import write_json, write_tsv
from tomoclust.formats.star import read_star, write_star
from tomoclust.report.plots import plot_bic
from tomoclust.rule import run_rule


def main(smk) -> None:
    feats = np.load(smk.input.features)
    df = read_star(smk.input.star, what="particle table")
    if len(df) != len(feats):
        raise RuntimeError(f"{len(feats)} feature rows for {len(df)} particles")
    plain = None
    if smk.input.get("unwhitened"):  # invariant: its features before noise whitening
        path = smk.input.unwhitened
        plain = np.load(path if isinstance(path, str) else path[0])
        if len(plain) != len(feats):
            raise RuntimeError(f"{path}: {len(plain)} rows for {len(feats)} particles")
    res, summary = cluster_method(feats, smk.params.clustering, smk.wildcards.method,
                                  unwhitened=plain)
    df["rlnClassNumber"] = res.labels
    df["tclClassProbability"] = res.probability
    write_star(smk.output.star, df)
    write_tsv(smk.output.bic, res.bic)
    plot_bic(res.bic, res.k, smk.output.plot, title=smk.wildcards.method)
    write_json(smk.output.summary, summary)


run_rule(snakemake, main)
