rule ingest:
    input:
        raw_tomogram,
    output:
        tomogram="results/tomograms/{tomo}/tomogram.mrc",
        info="results/tomograms/{tomo}/ingest.json",
    log:
        "logs/ingest/{tomo}.log",
    benchmark:
        "benchmarks/runs/ingest/{tomo}.tsv"
    params:
        working_voxel_size=param("ingest", "ingest.voxel_size"),
        voxel_size_override=sheet_voxel_size,
    resources:
        mem_mb=8000,
        runtime=30,
    conda:
        "../envs/cpu.yaml"
    script:
        "../scripts/ingest.py"
