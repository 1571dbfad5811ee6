"""Rule evaluate_fewshot: the few-shot predicted classes themselves against the ground truth
(support particles left out; ``accuracy_direct`` compares class names with no matching: see
tomoclust.evaluate.fewshot_scores)."""

import pandas as pd
from tomoclust.evaluate import fewshot_scores
from tomoclust.formats.atomic import write_tsv
from tomoclust.formats.star import read_star
from tomoclust.report.plots import plot_confusion
from tomoclust.rule import log, run_rule


def main(smk) -> None:
    labels = read_star(smk.input.labels, what="few-shot labels")
    truth = read_star(smk.input.truth, what="ground truth")
    m, cm = fewshot_scores(labels, truth, smk.params.tolerance, smk.wildcards.variant)
    write_tsv(smk.output.metrics, pd.DataFrame([m]))
    write_tsv(smk.output.confusion, cm.reset_index())
    plot_confusion(cm, smk.output.confusion_plot,
                   title=f"{smk.wildcards.variant} (few-shot labels)")
    log.info("%s", m)


run_rule(snakemake, main)
