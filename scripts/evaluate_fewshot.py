"""Rule evaluate_fewshot: the few-shot predicted classes themselves against the ground truth.

Support particles are left out (their class was given). Besides the clustering metrics
(accuracy after Hungarian matching, ARI, NMI, V-measure), ``accuracy_direct`` compares the
predicted class *names* with the true template names, with no matching; it is empty when the
support classes are not named after the templates.
"""

import numpy as np
import pandas as pd
from tomoclust.evaluate import truth_classes
from tomoclust.formats.atomic import write_tsv
from tomoclust.formats.star import read_star
from tomoclust.numerics.metrics import clustering_metrics, confusion
from tomoclust.report.plots import plot_confusion
from tomoclust.rule import log, run_rule


def main(smk) -> None:
    pred = read_star(smk.input.labels, what="few-shot labels")
    truth = read_star(smk.input.truth, what="ground truth")
    true_cls = truth_classes(pred, truth, smk.params.tolerance)
    support = pred["tclSupport"].to_numpy() == 1
    ok = (true_cls > 0) & ~support
    names = dict(zip(truth["rlnClassNumber"].astype(int), truth["tclTemplateName"].astype(str),
                     strict=True))
    true_names = np.array([names.get(int(c), "") for c in true_cls])
    pred_names = pred["rlnClassName"].astype(str).to_numpy()
    conf = pred["tclClassProbability"].to_numpy(dtype=float)
    m = {"method": smk.wildcards.variant, **clustering_metrics(true_cls[ok],
                                                               pred["rlnClassNumber"][ok])}
    direct = set(pred_names) <= set(names.values())
    right = true_names == pred_names
    m["accuracy_direct"] = float(right[ok].mean()) if direct and ok.any() else float("nan")
    m["mean_confidence"] = float(conf[ok].mean()) if ok.any() else float("nan")
    if direct and ok.any():
        m["mean_confidence_correct"] = float(conf[ok & right].mean()) if (ok & right).any() \
            else float("nan")
        m["mean_confidence_wrong"] = float(conf[ok & ~right].mean()) if (ok & ~right).any() \
            else float("nan")
    m["n_support"] = int(support.sum())
    m["n_unmatched_picks"] = int(((true_cls == 0) & ~support).sum())
    write_tsv(smk.output.metrics, pd.DataFrame([m]))
    cm = confusion(true_names[ok], pred_names[ok])
    write_tsv(smk.output.confusion, cm.reset_index())
    plot_confusion(cm, smk.output.confusion_plot,
                   title=f"{smk.wildcards.variant} (few-shot labels)")
    log.info("%s", m)


run_rule(snakemake, main)
