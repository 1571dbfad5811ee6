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
