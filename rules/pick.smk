rule pick:
    input:
        "results/tomograms/{tomo}/tomogram.mrc",
    output:
        "results/picks/{tomo}.star",
    log:
        "logs/pick/{tomo}.log",
    benchmark:
        "benchmarks/runs/pick/{tomo}.tsv"
    params:
        picking=section("pick", "picking"),
        extraction=section("pick", "extraction"),
        device=param("pick", "device"),
    threads: 2
    resources:
        mem_mb=8000,
        runtime=30,
    conda:
        "../envs/cpu.yaml"
    script:
        "../scripts/pick.py"
