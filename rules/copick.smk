# copick projects in and out (README "copick projects"). In: config copick.config names a
# copick project; each run (or copick.runs) is a tomogram, read through copick's API at
# copick.voxel_spacing / copick.tomo_type (copick_tomogram) and ingested like a sheet's
# tomogram; with copick.picks, that run's picks are its coordinates (copick_picks, then mode 1 of
# rules/external.smk). Out: copick_write adds each method's classes to the project as picks.
# The project sheet is built in rules/common.smk (COPICK, tomoclust.external.copick_project). The rules
# are always defined (and so checked by tests/test_envs.py); only a copick input asks for them.


rule copick_tomogram:
    output:
        temp("results/copick/tomograms/{tomo}.mrc"),
    log:
        "logs/copick/tomogram/{tomo}.log",
    params:
        config=COPICK_PARAMS["config"],
        voxel_spacing=COPICK_PARAMS["voxel_spacing"],
        tomo_type=COPICK_PARAMS["tomo_type"],
    resources:
        mem_mb=8000,
        runtime=30,
    conda:
        "../envs/copick.yaml"
    script:
        "../scripts/copick_tomogram.py"


rule copick_picks:
    output:
        "results/copick/picks/{tomo}.star",
    log:
        "logs/copick/picks/{tomo}.log",
    params:
        config=COPICK_PARAMS["config"],
        voxel_spacing=COPICK_PARAMS["voxel_spacing"],
        objects=COPICK_PARAMS["objects"],
        user_id=COPICK_PARAMS["picks_user_id"],
        session_id=COPICK_PARAMS["picks_session_id"],
    resources:
        mem_mb=1000,
        runtime=10,
    conda:
        "../envs/copick.yaml"
    script:
        "../scripts/copick_picks.py"


rule copick_write:
    input:
        tables=[copick_class_table(m) for m in COPICK_WRITE_METHODS],
        infos=expand("results/tomograms/{tomo}/ingest.json", tomo=TOMOGRAMS),
    output:
        "results/copick/written.tsv",
    log:
        "logs/copick/write.log",
    params:
        config=COPICK_PARAMS["config"],
        methods=COPICK_WRITE_METHODS,
        named_methods=FEWSHOT_VARIANTS,  # classes named by the support set
        runs=TOMOGRAMS,
        object=lambda wildcards: COPICK_PARAMS["object"],  # braces are not wildcards
        user_id=COPICK_PARAMS["write_user_id"],
        session_id=COPICK_PARAMS["write_session_id"],
        radius=config["picking"]["particle_radius"],
    resources:
        mem_mb=2000,
        runtime=30,
    conda:
        "../envs/copick.yaml"
    script:
        "../scripts/copick_write.py"
