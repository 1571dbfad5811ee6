# Subtomogram averaging per method and class (tomoclust.average). Classes are only known after
# clustering (the `cluster` checkpoint); `averaged_classes` in rules/common.smk reads them and
# leaves out classes too small for gold-standard half sets (listed in summary.tsv instead).


rule truth_map:
    input:
        "results/templates/{template}.mrc",
    output:
        "results/average/truth/{template}.mrc",
    log:
        "logs/average/truth/{template}.log",
    params:
        voxel_size=param("truth_map", "extraction.voxel_size"),
        box=param("truth_map", "extraction.box"),
    conda:
        "../envs/cpu.yaml"
    script:
        "../scripts/truth_map.py"


rule average_class:
    input:
        unpack(average_class_inputs),
    output:
        average="results/average/{method}/class{k}/average.mrc",
        half1="results/average/{method}/class{k}/half1.mrc",
        half2="results/average/{method}/class{k}/half2.mrc",
        fsc="results/average/{method}/class{k}/fsc.tsv",
        star="results/average/{method}/class{k}/particles.star",
        info="results/average/{method}/class{k}/info.json",
        slices=report(
            "results/average/{method}/class{k}/slices.png",
            category="5. Averaging",
            subcategory="{method}",
            caption="../report/average_slices.rst",
            labels={"method": "{method}", "class": "{k}", "figure": "central slices"},
        ),
        fsc_plot=report(
            "results/average/{method}/class{k}/fsc.png",
            category="5. Averaging",
            subcategory="{method}",
            caption="../report/average_fsc.rst",
            labels={"method": "{method}", "class": "{k}", "figure": "FSC"},
        ),
    log:
        "logs/average/{method}/class{k}.log",
    benchmark:
        "benchmarks/runs/average/{method}/class{k}.tsv"
    wildcard_constraints:
        k=r"\d+",
    params:
        averaging=section("average_class", "averaging"),
        wedge=wedge_range(),
        device=param("average_class", "device"),
        has_truth=HAS_TRUTH,
        # truth-only settings: on real data they must not rerun the averages
        templates=TEMPLATES if HAS_TRUTH else [],
        tolerance=param("average_class", "evaluation.picking_tolerance") if HAS_TRUTH else None,
        ctf=section("average_class", "simulation")["ctf"] if HAS_TRUTH else None,
    threads: 2
    resources:
        gpu=1,
        mem_mb=8000,
        runtime=120,
    conda:
        "../envs/torch-gpu.yaml"
    script:
        "../scripts/average_class.py"


rule average_summary:
    input:
        clusters="results/cluster/{method}/clusters.star",
        summary="results/cluster/{method}/summary.json",
        infos=averaged_class_files,
    output:
        "results/average/{method}/summary.tsv",
    log:
        "logs/average/{method}/summary.log",
    params:
        min_particles=param("average_summary", "averaging.min_particles"),
    conda:
        "../envs/cpu.yaml"
    script:
        "../scripts/average_summary.py"


rule averaging_table:
    input:
        "results/average/{method}/summary.tsv",
    output:
        report(
            "results/average/{method}/summary.html",
            caption="../report/average_table.rst",
            category="5. Averaging",
            subcategory="{method}",
            labels={"method": "{method}", "figure": "summary table"},
        ),
    log:
        "logs/report/averaging_table_{method}.log",
    params:
        title=lambda wildcards: f"Class averages of {wildcards.method}",
        note="One row per class: its particles, whether it was averaged (classes below "
        "averaging.min_particles are not), the gold-standard resolution at FSC 0.143 and, "
        "with ground truth, the dominant true template and the resolutions where the FSC "
        "against its map crosses 0.5 and 0.143.",
    conda:
        "../envs/report.yaml"
    script:
        "../scripts/report_table.py"
