# A checkpoint: the number of classes is known only after it has run, and the averaging
# rules (rules/average.smk) expand over the classes it found.
checkpoint cluster:
    input:
        features="results/features/{method}/features.npy",
        star="results/particles/particles.star",
        unwhitened=unwhitened_input,
    output:
        star="results/cluster/{method}/clusters.star",
        bic="results/cluster/{method}/bic.tsv",
        plot=report(
            "results/cluster/{method}/bic.png",
            caption="../report/bic.rst",
            category="3. Clustering",
            subcategory="{method}",
            labels={"method": "{method}", "figure": "BIC and chosen K"},
        ),
        summary="results/cluster/{method}/summary.json",
    log:
        "logs/cluster/{method}.log",
    params:
        clustering=section("cluster", "clustering"),
    threads: 2
    resources:
        mem_mb=8000,
        runtime=60,
    conda:
        "../envs/cpu.yaml"
    script:
        "../scripts/cluster.py"


rule export_embedding:
    input:
        features="results/features/{method}/features.npy",
        clusters="results/cluster/{method}/clusters.star",
    output:
        "results/embedding/{method}/embedding.tsv",
    log:
        "logs/embedding/{method}.log",
    conda:
        "../envs/report.yaml"
    script:
        "../scripts/export_embedding.py"
