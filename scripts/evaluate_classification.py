"""Rule evaluate_classification: a method's classes against the ground truth (the t-SNE
with the true classes is rule plot_embedding's)."""

import pandas as pd
from tomoclust.evaluate import classification_scores
from tomoclust.formats.atomic import write_tsv
from tomoclust.formats.star import read_star
from tomoclust.report.plots import plot_confusion
from tomoclust.rule import log, run_rule


def main(smk) -> None:
    clusters = read_star(smk.input.clusters, what="cluster table")
    truth = read_star(smk.input.truth, what="ground truth")
    m, scores, cm = classification_scores(clusters, truth, smk.params.tolerance,
                                          smk.params.challenge_tolerance, smk.wildcards.method)
    write_tsv(smk.output.metrics, pd.DataFrame([m]))
    write_tsv(smk.output.challenge, scores)
    write_tsv(smk.output.confusion, cm.reset_index())
    plot_confusion(cm, smk.output.confusion_plot, title=smk.wildcards.method)
    log.info("%s", m)


run_rule(snakemake, main)
