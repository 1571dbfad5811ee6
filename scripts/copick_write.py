"""Rule copick_write: every written method's classes back into the copick project as picks."""

import json

from tomoclust.external.copick_project import class_picks, write_classes
from tomoclust.formats.atomic import write_tsv
from tomoclust.formats.star import read_star
from tomoclust.rule import log, run_rule


def main(smk) -> None:
    p = smk.params
    voxel_sizes = {}
    for tomo, info in zip(p.runs, smk.input.infos, strict=True):
        voxel_sizes[tomo] = float(json.loads(open(info).read())["voxel_size_out"])
    classes = []
    for method, path in zip(p.methods, smk.input.tables, strict=True):
        table = read_star(path, what=f"{method} classes")
        got = class_picks(method, table, voxel_sizes, p.object, p.runs,
                          named=method in p.named_methods)
        log.info("%s: %d classes -> objects %s", method, len(got), [c.object for c in got])
        classes += got
    rows = write_classes(p.config, classes, user_id=p.user_id, session_id=p.session_id,
                         radius=p.radius)
    write_tsv(smk.output[0], rows)
    log.info("wrote %d picks files (%d points) as user %s, session %s", len(rows),
             int(rows["n_points"].sum()) if len(rows) else 0, p.user_id, p.session_id)


run_rule(snakemake, main)
