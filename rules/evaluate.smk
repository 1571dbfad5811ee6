rule evaluate_picking:
    input:
        picks=expand("results/picks/{tomo}.star", tomo=TOMOGRAMS),
        truth="results/simulation/truth.star",
        tomograms=expand("results/tomograms/{tomo}/tomogram.mrc", tomo=TOMOGRAMS),
    output:
        metrics="results/evaluation/picking/metrics.tsv",
        matched="results/evaluation/picking/matched.star",
        plot=report(
            "results/evaluation/picking/picking.png",
            caption="../report/picking.rst",
            category="1. Picking",
            subcategory="against the ground truth",
            labels={"figure": "precision, recall, F1"},
        ),
    log:
        "logs/evaluation/picking.log",
    params:
        tolerance=param("evaluate_picking", "evaluation.picking_tolerance"),
        challenge_tolerance=0.5 * param("evaluate_picking", "picking.particle_radius"),
        extraction=section("evaluate_picking", "extraction"),
    conda:
        "../envs/cpu.yaml"
    script:
        "../scripts/evaluate_picking.py"


rule evaluate_classification:
    input:
        clusters="results/cluster/{method}/clusters.star",
        truth=classification_truth(),
    output:
        metrics="results/evaluation/{method}/metrics.tsv",
        confusion="results/evaluation/{method}/confusion.tsv",
        challenge="results/evaluation/{method}/challenge.tsv",
        confusion_plot=report(
            "results/evaluation/{method}/confusion.png",
            caption="../report/confusion.rst",
            category="4. Evaluation",
            subcategory="{method}",
            labels={"method": "{method}", "figure": "confusion matrix"},
        ),
    log:
        "logs/evaluation/{method}.log",
    params:
        tolerance=param("evaluate_classification", "evaluation.picking_tolerance"),
        challenge_tolerance=0.5 * param("evaluate_classification", "picking.particle_radius"),
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
