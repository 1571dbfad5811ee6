rule template_density:
    input:
        template_source,
    output:
        "results/templates/{template}.mrc",
    log:
        "logs/templates/{template}.log",
    params:
        voxel_size=param("template_density", "simulation.voxel_size"),
    conda:
        "../envs/cpu.yaml"
    script:
        "../scripts/template_density.py"


rule simulate_tomogram:
    input:
        templates=expand("results/templates/{template}.mrc", template=TEMPLATES),
    output:
        tomogram="results/simulation/{tomo}/tomogram.mrc",
        labels="results/simulation/{tomo}/labels.mrc",
        truth="results/simulation/{tomo}/truth.star",
        tilts="results/simulation/{tomo}/tilts.tlt",
        info="results/simulation/{tomo}/info.json",
    log:
        "logs/simulation/{tomo}.log",
    benchmark:
        "benchmarks/runs/simulate_tomogram/{tomo}.tsv"
    params:
        sim=section("simulate_tomogram", "simulation"),
        names=TEMPLATES,
        seed=simulation_seed,
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    conda:
        "../envs/cpu.yaml"
    script:
        "../scripts/simulate_tomogram.py"


rule gather_truth:
    input:
        expand("results/simulation/{tomo}/truth.star", tomo=TOMOGRAMS),
    output:
        "results/simulation/truth.star",
    log:
        "logs/simulation/gather_truth.log",
    conda:
        "../envs/cpu.yaml"
    script:
        "../scripts/gather_tables.py"


rule simulate_subtomograms:
    input:
        templates=expand("results/templates_{{subset}}/{template}.mrc", template=TEMPLATES),
    output:
        star="results/simulated_subtomograms/{subset}/particles.star",
        stack="results/simulated_subtomograms/{subset}/particles.mrcs",
        info="results/simulated_subtomograms/{subset}/info.json",
    log:
        "logs/simulated_subtomograms/{subset}.log",
    benchmark:
        "benchmarks/runs/simulate_subtomograms/{subset}.tsv"
    params:
        settings=subtomogram_set,
        names=TEMPLATES,
        ctf=section("simulate_subtomograms", "simulation")["ctf"],
    resources:
        mem_mb=8000,
        runtime=60,
    conda:
        "../envs/cpu.yaml"
    script:
        "../scripts/simulate_subtomograms.py"


rule subset_template_density:
    input:
        template_source,
    output:
        "results/templates_{subset}/{template}.mrc",
    log:
        "logs/templates_{subset}/{template}.log",
    params:
        voxel_size=subset_voxel_size,
    conda:
        "../envs/cpu.yaml"
    script:
        "../scripts/template_density.py"
