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


# --- transfer-learned encoder
# A classifier trained on simulated labelled subtomograms of `transfer.templates`; its cached
# training set and model live under `transfer.cache`, in directories named by keys over
# everything that determines them (rules/common.smk: _transfer_setup), so they are made once
# and reused by every run (and every picking or clustering change) with the same key.
if TRANSFER is not None:

    rule transfer_template_density:
        input:
            transfer_template_source,
        output:
            f"{TRANSFER['set_dir']}/templates/{{template}}.mrc",
        log:
            "logs/transfer/templates/{template}.log",
        params:
            voxel_size=TRANSFER["set_params"]["voxel_size"],
        conda:
            "../envs/cpu.yaml"
        script:
            "../scripts/template_density.py"

    rule transfer_training_set:
        input:
            templates=expand(f"{TRANSFER['set_dir']}/templates/{{template}}.mrc",
                             template=TRANSFER["templates"]),
        output:
            star=f"{TRANSFER['set_dir']}/training_set.star",
            stack=f"{TRANSFER['set_dir']}/training_set.mrcs",
            info=f"{TRANSFER['set_dir']}/training_set.json",
        log:
            "logs/transfer/training_set.log",
        benchmark:
            "benchmarks/runs/transfer/training_set.tsv"
        params:
            names=TRANSFER["templates"],
            settings=TRANSFER["set_params"],
        threads: 1
        resources:
            mem_mb=16000,
            runtime=120,
        conda:
            "../envs/cpu.yaml"
        script:
            "../scripts/transfer_training_set.py"

    rule transfer_train:
        input:
            star=f"{TRANSFER['set_dir']}/training_set.star",
            stack=f"{TRANSFER['set_dir']}/training_set.mrcs",
        output:
            model=f"{TRANSFER['model_dir']}/model.pt",
            history=f"{TRANSFER['model_dir']}/history.tsv",
            info=f"{TRANSFER['model_dir']}/info.json",
        log:
            "logs/transfer/train.log",
        benchmark:
            "benchmarks/runs/transfer/train.tsv"
        params:
            transfer=TRANSFER["train_params"],
            device=config["device"],
            checkpoint="results/checkpoints/transfer.pt",
        threads: 2
        resources:
            gpu=1,
            mem_mb=16000,
            runtime=720,
        conda:
            "../envs/torch-gpu.yaml"
        script:
            "../scripts/transfer_train.py"

    rule features_transfer:
        input:
            star="results/particles/particles.star",
            stack="results/particles/particles.mrcs",
            model=f"{TRANSFER['model_dir']}/model.pt",
        output:
            features="results/features/transfer/features.npy",
            predictions="results/features/transfer/predictions.tsv",
            info="results/features/transfer/info.json",
        log:
            "logs/features/transfer.log",
        benchmark:
            "benchmarks/runs/features/transfer.tsv"
        params:
            device=config["device"],
        threads: 2
        resources:
            gpu=1,
            mem_mb=8000,
            runtime=60,
        conda:
            "../envs/torch-gpu.yaml"
        script:
            "../scripts/features_transfer.py"
