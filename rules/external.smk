# Starting from other tools' output (issue 7). Mode 1: coordinates in; the sheet's
# `coordinates` column or config external.coordinates names STAR files, picking is skipped for
# those tomograms and extraction starts from the converted coordinates (see picks_for).
# Mode 2: subtomograms in; config external.subtomograms names a particle STAR, and
# results/particles/ is written from it (ingest, picking and extraction are not in the DAG).
# Conventions and matching rules: scripts/tomoclust/external/ and the README.


if EXT["coordinates"]:

    rule split_coordinates:
        input:
            EXT["coordinates"],
        output:
            expand("results/imported/split/{tomo}.star", tomo=TOMOGRAMS),
        log:
            "logs/imported/split_coordinates.log",
        params:
            names=TOMOGRAMS,
            paths=[str(SHEET.loc[t, "path"]) for t in TOMOGRAMS],
        conda:
            "../envs/cpu.yaml"
        script:
            "../scripts/split_coordinates.py"


rule import_coordinates:
    input:
        sources=coordinate_sources,
        tomogram="results/tomograms/{tomo}/tomogram.mrc",
        info="results/tomograms/{tomo}/ingest.json",
    output:
        star="results/imported/{tomo}.star",
        skipped="results/imported/{tomo}.skipped.tsv",
        report="results/imported/{tomo}.json",
    log:
        "logs/imported/{tomo}.log",
    params:
        coordinates_voxel_size=coordinates_voxel_size,
        box=config["extraction"]["box"],
        extraction_voxel_size=config["extraction"]["voxel_size"],
        names=TOMOGRAMS,
        paths=lambda wildcards: [str(SHEET.loc[t, "path"]) for t in TOMOGRAMS],
    resources:
        mem_mb=2000,
        runtime=30,
    conda:
        "../envs/cpu.yaml"
    script:
        "../scripts/import_coordinates.py"


if SUBTOMO_MODE:

    rule import_subtomograms:
        input:
            EXT["subtomograms"],
        output:
            star="results/particles/particles.star",
            stack="results/particles/particles.mrcs",
            report="results/particles/import.json",
        log:
            "logs/import_subtomograms.log",
        params:
            extraction=config["extraction"],
            image_root=EXT["image_root"],
            voxel_size=EXT["subtomograms_voxel_size"],
        threads: 2
        resources:
            mem_mb=4000,
            runtime=120,
        conda:
            "../envs/cpu.yaml"
        script:
            "../scripts/import_subtomograms.py"

    ruleorder: import_subtomograms > gather_particles


rule particle_truth:
    input:
        "results/particles/particles.star",
    output:
        "results/truth/particles_truth.star",
    log:
        "logs/truth/particles_truth.log",
    conda:
        "../envs/cpu.yaml"
    script:
        "../scripts/particle_truth.py"
