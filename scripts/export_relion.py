"""Rule export_relion: a method's classes as RELION 5 tables (tomograms.star, and per class a
particles.star with centred Å coordinates, angles and origins where the class was averaged)."""

from tomoclust.formats.relion5 import export_classes, read_project, source_tomogram
from tomoclust.formats.star import read_star
from tomoclust.rule import read_json, run_rule


def main(smk) -> None:
    tomos = {t.name: t for t in (source_tomogram(read_json(p)) for p in smk.input.ingest)}
    project = read_project(smk.input.project) if "project" in smk.input.keys() else None
    clusters = read_star(smk.input.clusters, what="cluster table")
    refined = [read_star(p, block="particles", what="class particles")
               for p in smk.input.get("averaged", [])]
    export_classes(smk.output[0], clusters, refined, tomos, smk.params.relion, smk.params.ctf,
                   project=project)


run_rule(snakemake, main)
