"""Rule average_summary: one row per class of a method (averaged or too small to average)."""

import json

import pandas as pd
from tomoclust.formats.atomic import write_tsv
from tomoclust.numerics.class_maps import classes_to_average
from tomoclust.rule import log, run_rule


def main(smk) -> None:
    summary = json.loads(open(smk.input.summary).read())
    kept, skipped = classes_to_average(summary["class_sizes"], int(summary["k"]),
                                       smk.params.min_particles)
    infos = {}
    for path in smk.input.infos:
        if path.endswith("info.json"):
            info = json.loads(open(path).read())
            infos[int(info["class"])] = info
    rows = []
    for k in range(1, int(summary["k"]) + 1):
        if k in skipped:
            log.info("class %d: %d particles, too few to average (min_particles %d, 2 per "
                     "half set): no average", k, skipped[k], smk.params.min_particles)
            rows.append({"class": k, "n_particles": skipped[k], "status": "too few particles"})
            continue
        info = infos[k]
        rows.append({
            "class": k, "n_particles": info["n_particles"], "status": "averaged",
            "resolution_0143_angst": info["resolution_0143_angst"],
            "template": info.get("template"),
            "template_particles": info.get("template_particles"),
            "fsc_truth_05_angst": info.get("fsc_truth_05_angst"),
            "fsc_truth_0143_angst": info.get("fsc_truth_0143_angst"),
        })
    table = pd.DataFrame(rows)
    if "template_particles" in table:
        table["template_particles"] = pd.array(
            [None if v in ("", None) or v != v else int(v) for v in table["template_particles"]],
            dtype="Int64")
    write_tsv(smk.output[0], table)
    log.info("%s: %d classes averaged, %d too small", smk.wildcards.method, len(kept),
             len(skipped))


run_rule(snakemake, main)
