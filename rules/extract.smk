rule extract:
    input:
        tomogram="results/tomograms/{tomo}/tomogram.mrc",
        picks=picks_for,
    output:
        star="results/subtomograms/{tomo}.star",
        stack="results/subtomograms/{tomo}.mrcs",
    log:
        "logs/extract/{tomo}.log",
    benchmark:
        "benchmarks/runs/extract/{tomo}.tsv"
    params:
        extraction=section("extract", "extraction"),
    threads: 2
    resources:
        mem_mb=4000,
        runtime=30,
    conda:
        "../envs/cpu.yaml"
    script:
        "../scripts/extract.py"


rule gather_particles:
    input:
        stars=expand("results/subtomograms/{tomo}.star", tomo=TOMOGRAMS),
        stacks=expand("results/subtomograms/{tomo}.mrcs", tomo=TOMOGRAMS),
    output:
        star="results/particles/particles.star",
        stack="results/particles/particles.mrcs",
    log:
        "logs/gather_particles.log",
    resources:
        mem_mb=2000,
        runtime=30,
    conda:
        "../envs/cpu.yaml"
    script:
        "../scripts/gather_particles.py"
