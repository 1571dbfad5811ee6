"""Rule import_coordinates: another tool's coordinates for one tomogram, in its voxels."""

import json

from tomoclust.external.coordinates import import_coordinates
from tomoclust.external.names import read_particles
from tomoclust.extract import plan_resampling
from tomoclust.formats.atomic import write_json, write_tsv
from tomoclust.formats.mrc import open_mrc
from tomoclust.formats.star import write_star
from tomoclust.rule import log, run_rule


def main(smk) -> None:
    p = smk.params
    tomo = smk.wildcards.tomo
    ingest = json.loads(open(smk.input.info).read())
    with open_mrc(smk.input.tomogram, "tomogram") as mrc:
        shape, vs = tuple(mrc.data.shape), float(mrc.voxel_size.x)
    plan = plan_resampling(vs, float(p.extraction_voxel_size), int(p.box))
    sources = []
    for path in smk.input.sources:
        df, optics, _ = read_particles(path, "coordinates")
        sources.append((str(path), df, optics))
    res = import_coordinates(
        sources, tomo, shape_in_zyx=ingest["shape_in_zyx"],
        voxel_size_in=float(ingest["voxel_size_in"]), shape_zyx=shape, voxel_size=vs, plan=plan,
        coordinates_voxel_size=p.coordinates_voxel_size, sheet_names=list(p.names),
        sheet_paths=list(p.paths),
    )
    write_star(smk.output.star, res.particles)
    write_tsv(smk.output.skipped, res.skipped)
    write_json(smk.output.report, res.info)
    log.info("%s: %d particles, %d rows skipped (%s)", tomo, len(res.particles),
             len(res.skipped), smk.output.skipped)


run_rule(snakemake, main)
