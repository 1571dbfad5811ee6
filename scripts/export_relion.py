"""Rule export_relion: a method's classes as RELION 5 tables (tomograms.star, and per class a
particles.star with centred Å coordinates, angles and origins where the class was averaged)."""

import json
import shutil
from pathlib import Path

import pandas as pd
from tomoclust.formats.atomic import write_text
from tomoclust.formats.relion5 import SourceTomogram, particles_table, tomograms_table
from tomoclust.formats.star import read_star, read_star_blocks, write_star
from tomoclust.rule import log, run_rule

# what goes to RELION from clusters.star (and, for averaged classes, their refinement)
KEEP = ["rlnTomoName", "rlnCoordinateX", "rlnCoordinateY", "rlnCoordinateZ", "rlnClassNumber",
        "tclClassProbability", "tclStackIndex"]
ORIGINS = ["rlnOriginXAngst", "rlnOriginYAngst", "rlnOriginZAngst"]
REFINED = ["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnOriginXAngst", "rlnOriginYAngst",
           "rlnOriginZAngst", "rlnRandomSubset"]


def main(smk) -> None:
    cfg = smk.params.relion
    ctf = smk.params.ctf
    optics = {"voltage": ctf["voltage_kv"], "spherical_aberration": ctf["cs_mm"],
              "amplitude_contrast": ctf["amplitude_contrast"]} if ctf else \
        {k: cfg[k] for k in ("voltage", "spherical_aberration", "amplitude_contrast")}
    tomos = {}
    for path in smk.input.ingest:
        info = json.loads(Path(path).read_text())
        tomos[info["name"]] = SourceTomogram(
            # absolute: RELION reads paths relative to its own project directory
            name=info["name"], path=str(Path(info["path"]).resolve()),
            shape_xyz=tuple(int(v) for v in info["shape_in_zyx"][::-1]),
            voxel_size=float(info["voxel_size_in"]),
            working_voxel_size=float(info["voxel_size_out"]))
    project = None
    if "project" in smk.input.keys():
        project = read_star_blocks(smk.input.project, what="RELION tomograms.star")
        if "global" not in project:
            raise RuntimeError(f"{smk.input.project}: no data_global block (not a RELION 5 "
                               "tomograms.star)")
        project = project["global"]
    clusters = read_star(smk.input.clusters, what="cluster table")
    table = clusters[[c for c in KEEP if c in clusters.columns]].copy()
    averaged = smk.input.averaged if "averaged" in smk.input.keys() else []
    refined = [read_star(p, block="particles", what="class particles") for p in averaged]
    # origins of boxes re-centred at extraction (RELION: centre = coordinate - origin)
    origins = [c for c in ORIGINS if c in clusters.columns]
    if len(origins) == 3:
        table[origins] = clusters[origins].to_numpy()
    if refined:
        ref = pd.concat(refined, ignore_index=True)[["tclStackIndex", *REFINED]]
        table = table.merge(ref, on="tclStackIndex", how="left", suffixes=("_extract", ""))
        for c in ORIGINS:  # averaged classes: the refined origin (which includes extraction's)
            if f"{c}_extract" in table.columns:
                table[c] = table[c].fillna(table.pop(f"{c}_extract"))
    used = [tomos[n] for n in sorted(set(table["rlnTomoName"]))]
    tomo_table = tomograms_table(used, cfg["tilt_series_pixel_size"], optics, cfg["hand"],
                                 project=project)
    opt, parts = particles_table(table, tomos, tomo_table, optics)
    out = Path(smk.output[0])
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    write_star(tmp / "tomograms.star", {"global": tomo_table})
    write_star(tmp / "particles.star", {"optics": opt, "particles": parts})
    for k, sub in parts.groupby("rlnClassNumber"):
        sub = sub.dropna(axis=1, how="all")  # classes too small to average have no angles
        write_star(tmp / f"class{int(k)}" / "particles.star",
                   {"optics": opt[opt["rlnOpticsGroup"].isin(sub["rlnOpticsGroup"])],
                    "particles": sub})
        log.info("class %d: %d particles%s", int(k), len(sub),
                 " with angles and origins" if "rlnOriginXAngst" in sub else "")
    write_text(tmp / "README.txt", (
        "RELION 5 tables of one method's classes.\n"
        "tomograms.star: one row per tomogram (rlnTomoSizeX/Y/Z in tilt-series pixels of "
        "rlnTomoTiltSeriesPixelSize).\n"
        "particles.star (all classes) and classK/particles.star: rlnCenteredCoordinate*Angst "
        "from each tomogram's centre at rlnTomoSize / 2 (RELION 5.0.1).\n"
        + ("" if project is not None else
           "No tilt series are known here: add rlnTomoTiltSeriesStarFile (or use your "
           "project's tomograms.star, config relion.tomograms_star) before RELION "
           "reconstructs subtomograms.\n")))
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    log.info("%d particles of %d tomograms in %d classes -> %s", len(parts), len(used),
             parts["rlnClassNumber"].nunique(), out)


run_rule(snakemake, main)
