# Figures and tables made for the HTML report (`snakemake --report report.html`). Each is a
# small rule of its own, downstream of the stage it shows, so restyling a figure (or forcing
# one of these rules) never reruns picking, feature learning or clustering. Captions are in
# report/*.rst; categories follow the stages.


rule plot_picks:
    input:
        unpack(picks_plot_inputs),
    output:
        report(
            "results/report/picks/{tomo}.jpg",
            caption="../report/picks.rst",
            category="1. Picking",
            subcategory="picks on tomogram slabs",
            labels={"tomogram": "{tomo}", "figure": "picks on slabs"},
        ),
    log:
        "logs/report/picks/{tomo}.log",
    params:
        radius=param("plot_picks", "picking.particle_radius"),
        n_slabs=3,
    resources:
        mem_mb=4000,
        runtime=15,
    conda:
        "../envs/report.yaml"
    script:
        "../scripts/plot_picks.py"


rule plot_embedding:
    input:
        unpack(embedding_inputs),
    output:
        report(
            "results/report/{method}/embedding.png",
            caption="../report/embedding.rst",
            category="2. Features",
            subcategory="{method}",
            labels={"method": "{method}", "figure": "t-SNE of the features"},
        ),
    log:
        "logs/report/{method}/embedding.log",
    params:
        # only used (and only a rerun trigger) when there is a ground truth to match
        tolerance=param("plot_embedding", "evaluation.picking_tolerance") if HAS_TRUTH else None,
        seed=param("plot_embedding", "clustering.seed"),
    threads: 2
    resources:
        mem_mb=4000,
        runtime=30,
    conda:
        "../envs/report.yaml"
    script:
        "../scripts/plot_embedding.py"


rule summarise_clusters:
    input:
        expand("results/cluster/{method}/summary.json", method=METHODS),
    output:
        tsv="results/cluster/summary.tsv",
        html=report(
            "results/cluster/summary.html",
            caption="../report/cluster_summary.rst",
            category="3. Clustering",
            subcategory="all methods",
            labels={"figure": "classes per method"},
        ),
    log:
        "logs/report/cluster_summary.log",
    params:
        note="One row per feature method: the number of classes K, the particles in each "
        "class, and how reproducible and confident the assignment is.",
    conda:
        "../envs/report.yaml"
    script:
        "../scripts/summarise_clusters.py"


rule plot_templates:
    input:
        expand("results/templates/{template}.mrc", template=TEMPLATES),
    output:
        report(
            "results/report/simulation/templates.png",
            caption="../report/templates.rst",
            category="0. Simulation",
            subcategory="templates",
            labels={"figure": "template maps"},
        ),
    log:
        "logs/report/templates.log",
    conda:
        "../envs/report.yaml"
    script:
        "../scripts/plot_templates.py"


rule picking_table:
    input:
        "results/evaluation/picking/metrics.tsv",
    output:
        report(
            "results/evaluation/picking/metrics.html",
            caption="../report/picking_table.rst",
            category="1. Picking",
            subcategory="against the ground truth",
            labels={"figure": "metrics table"},
        ),
    log:
        "logs/report/picking_table.log",
    params:
        title="Picking against the ground truth",
        note="Precision: fraction of picks within the tolerance of a true particle. Recall: "
        "fraction of true particles picked. F1: their harmonic mean. Rows: all tomograms, "
        "each tomogram, each true class (recall only).",
    conda:
        "../envs/report.yaml"
    script:
        "../scripts/report_table.py"


rule classification_table:
    input:
        "results/evaluation/classification.tsv",
    output:
        report(
            "results/evaluation/classification.html",
            caption="../report/classification_table.rst",
            category="4. Evaluation",
            subcategory="all methods",
            labels={"figure": "metrics table"},
        ),
    log:
        "logs/report/classification_table.log",
    params:
        title="Classification against the ground truth",
        note="One row per feature method, on the picks that match a true particle. "
        "Accuracy after the best one-to-one matching of clusters to classes; ARI, NMI and "
        "V-measure do not need a matching (1 = perfect, about 0 = chance).",
    conda:
        "../envs/report.yaml"
    script:
        "../scripts/report_table.py"


rule summarise_picks:
    input:
        all_picks(),
    output:
        tsv="results/picks/summary.tsv",
        html=report(
            "results/picks/summary.html",
            caption="../report/picks_table.rst",
            category="1. Picking",
            subcategory="picks per tomogram",
            labels={"figure": "picks table"},
        ),
    log:
        "logs/report/picks_summary.log",
    params:
        note="The number of picks of each tomogram and the spread of their detection "
        "z-scores (difference-of-Gaussians response above the tomogram's median, in units of "
        "its robust spread).",
    conda:
        "../envs/report.yaml"
    script:
        "../scripts/summarise_picks.py"


rule report_overview:
    input:
        unpack(overview_inputs),
    output:
        "results/report/overview.html",
    log:
        "logs/report/overview.log",
    conda:
        "../envs/report.yaml"
    script:
        "../scripts/report_overview.py"
