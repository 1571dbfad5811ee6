"""Rule evaluate_classification: a method's classes against the ground truth (the t-SNE
with the true classes is rule plot_embedding's)."""

import pandas as pd
from tomoclust.evaluate import truth_by_index, truth_classes
from tomoclust.formats.atomic import write_tsv
from tomoclust.formats.star import read_star
from tomoclust.numerics.metrics import clustering_metrics, confusion
from tomoclust.report.plots import plot_confusion
from tomoclust.rule import log, run_rule


def main(smk) -> None:
    clusters = read_star(smk.input.clusters, what="cluster table")
    truth = read_star(smk.input.truth, what="ground truth")
    if "tclStackIndex" in truth.columns:  # results/truth: the input STAR's classes, by row
        true_cls = truth_by_index(clusters, truth)
        ok = true_cls > 0
        log.info("%d of %d particles carry a class number in the input STAR", int(ok.sum()),
                 len(ok))
    else:  # simulated truth, matched by position
        true_cls = truth_classes(clusters, truth, smk.params.tolerance)
        ok = true_cls > 0
        log.info("%d of %d particles match a true particle within %.0f Å; the rest are junk "
                 "picks", int(ok.sum()), len(ok), smk.params.tolerance)
    pred = clusters["rlnClassNumber"].to_numpy()
    m = clustering_metrics(true_cls[ok], pred[ok])
    m = {"method": smk.wildcards.method, **m, "n_unmatched_picks": int((~ok).sum())}
    write_tsv(smk.output.metrics, pd.DataFrame([m]))
    cm = confusion(true_cls, pred)
    write_tsv(smk.output.confusion, cm.reset_index())
    plot_confusion(cm, smk.output.confusion_plot, title=smk.wildcards.method)
    log.info("%s", m)


run_rule(snakemake, main)
