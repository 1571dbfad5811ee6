# One rule per feature-learning method. Each asks for a GPU through the portable `gpu`
# resource (the SLURM profile turns it into --gpus=1) and falls back to the CPU when none is
# visible (device: auto). Checkpoints live outside the declared outputs so that a killed job
# resumes from them; they are keyed by settings + input, so a changed run starts afresh.


rule features_disca:
    input:
        star="results/particles/particles.star",
        stack="results/particles/particles.mrcs",
    output:
        features="results/features/disca/features.npy",
        model="results/features/disca/model.pt",
        labels="results/features/disca/labels.star",
        history="results/features/disca/history.tsv",
        info="results/features/disca/info.json",
    log:
        "logs/features/disca.log",
    benchmark:
        "benchmarks/runs/features/disca.tsv"
    params:
        disca=config["disca"],
        wedge=wedge_range(),
        device=config["device"],
        checkpoint="results/checkpoints/disca.pt",
    threads: 2
    resources:
        gpu=1,
        mem_mb=16000,
        runtime=720,
    conda:
        "../envs/torch-gpu.yaml"
    script:
        "../scripts/features_disca.py"


rule features_autoencoder:
    input:
        star="results/particles/particles.star",
        stack="results/particles/particles.mrcs",
    output:
        features="results/features/autoencoder/features.npy",
        model="results/features/autoencoder/model.pt",
        history="results/features/autoencoder/history.tsv",
        info="results/features/autoencoder/info.json",
    log:
        "logs/features/autoencoder.log",
    benchmark:
        "benchmarks/runs/features/autoencoder.tsv"
    params:
        autoencoder=config["autoencoder"],
        device=config["device"],
        checkpoint="results/checkpoints/autoencoder.pt",
    threads: 2
    resources:
        gpu=1,
        mem_mb=16000,
        runtime=240,
    conda:
        "../envs/torch-gpu.yaml"
    script:
        "../scripts/features_autoencoder.py"


rule features_invariant:
    input:
        star="results/particles/particles.star",
        stack="results/particles/particles.mrcs",
    output:
        features="results/features/invariant/features.npy",
        info="results/features/invariant/info.json",
    log:
        "logs/features/invariant.log",
    benchmark:
        "benchmarks/runs/features/invariant.tsv"
    params:
        invariant=config["invariant"],
        device=config["device"],
    threads: 2
    resources:
        mem_mb=8000,
        runtime=60,
    conda:
        "../envs/torch-gpu.yaml"
    script:
        "../scripts/features_invariant.py"
