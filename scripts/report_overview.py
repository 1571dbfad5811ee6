"""Rule report_overview: the report's first page (per method: classes, their sizes, central
slices of their averages, FSC 0.143 resolution, stability and, with ground truth, accuracy;
the recommended method first)."""

import re

import mrcfile
import pandas as pd
from tomoclust.formats.atomic import write_text
from tomoclust.report.overview import (
    central_slices_png,
    method_rows,
    overview_html,
    recommend,
)
from tomoclust.rule import log, run_rule


def main(smk) -> None:
    classification = smk.input.classification if "classification" in smk.input.keys() else None
    methods = method_rows(smk.input.summaries, classification)
    classes, slices = {}, {}
    averages = smk.input.averages if "averages" in smk.input.keys() else []
    for path in averages:
        m = re.search(r"average/(\w+)/summary\.tsv$", path)
        if m:
            classes[m.group(1)] = pd.read_csv(path, sep="\t")
            continue
        m = re.search(r"average/(\w+)/class(\d+)/average\.mrc$", path)
        with mrcfile.open(path, permissive=True) as mrc:
            slices[(m.group(1), int(m.group(2)))] = central_slices_png(mrc.data)
    best, reason = recommend(methods)
    write_text(smk.output[0], overview_html(methods, classes, slices, best, reason))
    log.info("overview of %d methods (%d class averages); recommended: %s (%s)", len(methods),
             len(slices), best, reason)


run_rule(snakemake, main)
