rule evaluate_picking:
    input:
        picks=expand("results/picks/{tomo}.star", tomo=TOMOGRAMS),
        truth="results/simulation/truth.star",
        tomograms=expand("results/tomograms/{tomo}/tomogram.mrc", tomo=TOMOGRAMS),
    output:
        metrics="results/evaluation/picking/metrics.tsv",
        matched="results/evaluation/picking/matched.star",
        plot="results/evaluation/picking/picking.png",
    log:
        "logs/evaluation/picking.log",
    params:
        tolerance=config["evaluation"]["picking_tolerance"],
        extraction=config["extraction"],
    conda:
        "../envs/cpu.yaml"
    script:
        "../scripts/evaluate_picking.py"


rule evaluate_classification:
    input:
        clusters="results/cluster/{method}/clusters.star",
        features="results/features/{method}/features.npy",
        truth=classification_truth(),
    output:
        metrics="results/evaluation/{method}/metrics.tsv",
        confusion="results/evaluation/{method}/confusion.tsv",
        confusion_plot="results/evaluation/{method}/confusion.png",
        embedding="results/evaluation/{method}/embedding.png",
    log:
        "logs/evaluation/{method}.log",
    params:
        tolerance=config["evaluation"]["picking_tolerance"],
        seed=config["clustering"]["seed"],
    conda:
        "../envs/cpu.yaml"
    script:
        "../scripts/evaluate_classification.py"


rule summarise_classification:
    input:
        expand("results/evaluation/{method}/metrics.tsv", method=METHODS),
    output:
        "results/evaluation/classification.tsv",
    log:
        "logs/evaluation/classification.log",
    params:
        methods=METHODS,
    conda:
        "../envs/cpu.yaml"
    script:
        "../scripts/summarise_classification.py"
