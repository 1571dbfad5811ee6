# One rule per feature-learning method. Each asks for a GPU through the portable `gpu`
# resource (the SLURM profile turns it into --gpus=1) and falls back to the CPU when none is
# visible (device: auto). Checkpoints live outside the declared outputs so that a killed job
# resumes from them; they are keyed by settings + input, so a changed run starts afresh.


rule features_disca:
    input:
        unpack(lambda wc: pretrained_input("disca")),
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
        disca=section("features_disca", "disca"),
        wedge=wedge_range(),
        device=param("features_disca", "device"),
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
        autoencoder=section("features_autoencoder", "autoencoder"),
        device=param("features_autoencoder", "device"),
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
        # the features before noise whitening (0 columns when they were not whitened): the
        # consensus K pools both (clustering.consensus_unwhitened)
        unwhitened="results/features/invariant/unwhitened.npy",
        info="results/features/invariant/info.json",
    log:
        "logs/features/invariant.log",
    benchmark:
        "benchmarks/runs/features/invariant.tsv"
    params:
        invariant=section("features_invariant", "invariant"),
        device=param("features_invariant", "device"),
    threads: 2
    resources:
        mem_mb=8000,
        runtime=60,
    conda:
        "../envs/torch-gpu.yaml"
    script:
        "../scripts/features_invariant.py"


# --- few-shot prototypical networks (ProtoNet3D / ProtoNet-CE; methods protonet3d, protonet_ce)
# Training set and model are cached outputs of their own rules: changing the support set or
# the particles reclassifies without retraining. Workflow Python: rules/common.smk (few-shot).


rule fewshot_template_density:
    input:
        fewshot_template_source,
    output:
        "results/fewshot/templates/{template}.mrc",
    log:
        "logs/fewshot/templates/{template}.log",
    params:
        voxel_size=param("fewshot_template_density", "extraction.voxel_size"),
    conda:
        "../envs/cpu.yaml"
    script:
        "../scripts/template_density.py"


rule fewshot_training_set:
    input:
        templates=expand("results/fewshot/templates/{template}.mrc",
                         template=FEWSHOT_TRAIN_TEMPLATES),
    output:
        star="results/fewshot/training/particles.star",
        stack="results/fewshot/training/particles.mrcs",
        info="results/fewshot/training/info.json",
    log:
        "logs/fewshot/training_set.log",
    params:
        settings=fewshot_training_settings(),
        names=FEWSHOT_TRAIN_TEMPLATES,
    resources:
        mem_mb=8000,
        runtime=60,
    conda:
        "../envs/cpu.yaml"
    script:
        "../scripts/simulate_fewshot_set.py"


rule fewshot_support_set:
    input:
        templates=expand("results/fewshot/templates/{template}.mrc",
                         template=config["fewshot"]["support_templates"]),
    output:
        star="results/fewshot/support/particles.star",
        stack="results/fewshot/support/particles.mrcs",
        info="results/fewshot/support/info.json",
    log:
        "logs/fewshot/support_set.log",
    params:
        settings=fewshot_support_settings(),
        names=param("fewshot_support_set", "fewshot.support_templates"),
    resources:
        mem_mb=4000,
        runtime=30,
    conda:
        "../envs/cpu.yaml"
    script:
        "../scripts/simulate_fewshot_set.py"


rule fewshot_support_from_truth:
    input:
        particles="results/particles/particles.star",
        truth="results/simulation/truth.star",
    output:
        "results/fewshot/support_from_truth.star",
    log:
        "logs/fewshot/support_from_truth.log",
    params:
        n_per_class=param("fewshot_support_from_truth", "fewshot.support_from_truth"),
        tolerance=param("fewshot_support_from_truth", "evaluation.picking_tolerance"),
        seed=param("fewshot_support_from_truth", "fewshot.seed"),
    conda:
        "../envs/cpu.yaml"
    script:
        "../scripts/fewshot_support_from_truth.py"


rule train_fewshot:
    input:
        unpack(lambda wc: pretrained_input("fewshot")),
        star="results/fewshot/training/particles.star",
        stack="results/fewshot/training/particles.mrcs",
        info="results/fewshot/training/info.json",
    output:
        model="results/features/{variant}/model.pt",
        history="results/features/{variant}/history.tsv",
        info="results/features/{variant}/training.json",
    log:
        "logs/features/{variant}_training.log",
    benchmark:
        "benchmarks/runs/features/{variant}_training.tsv"
    params:
        model=fewshot_model_settings(),
        device=param("train_fewshot", "device"),
        checkpoint="results/checkpoints/{variant}.pt",
    threads: 2
    resources:
        gpu=1,
        mem_mb=16000,
        runtime=480,
    conda:
        "../envs/torch-gpu.yaml"
    script:
        "../scripts/train_fewshot.py"


rule features_fewshot:
    input:
        unpack(fewshot_support_input),
        unpack(chunks_input),
        star="results/particles/particles.star",
        stack="results/particles/particles.mrcs",
        model="results/features/{variant}/model.pt",
        training_info="results/features/{variant}/training.json",
    output:
        features="results/features/{variant}/features.npy",
        labels="results/features/{variant}/labels.star",
        support="results/features/{variant}/support.star",
        info="results/features/{variant}/info.json",
    log:
        "logs/features/{variant}.log",
    benchmark:
        "benchmarks/runs/features/{variant}.tsv"
    params:
        support=fewshot_support_config(),
        device=param("features_fewshot", "device"),
    threads: 2
    resources:
        gpu=1,
        mem_mb=8000,
        runtime=60,
    conda:
        "../envs/torch-gpu.yaml"
    script:
        "../scripts/features_fewshot.py"


rule evaluate_fewshot:
    input:
        labels="results/features/{variant}/labels.star",
        truth="results/simulation/truth.star",
    output:
        metrics="results/evaluation/{variant}/fewshot_metrics.tsv",
        confusion="results/evaluation/{variant}/fewshot_confusion.tsv",
        confusion_plot="results/evaluation/{variant}/fewshot_confusion.png",
    log:
        "logs/evaluation/{variant}_fewshot.log",
    params:
        tolerance=param("evaluate_fewshot", "evaluation.picking_tolerance"),
    conda:
        "../envs/cpu.yaml"
    script:
        "../scripts/evaluate_fewshot.py"


# --- transfer-learned encoder
# A classifier trained on simulated labelled subtomograms of `transfer.templates`; its cached
# training set and model live under `transfer.cache`, in directories named by keys over
# everything that determines them (rules/common.smk: _transfer_setup), so they are made once
# and reused by every run (and every picking or clustering change) with the same key.
if TRANSFER is not None and TRANSFER["pretrained"]:

    rule features_transfer:
        input:
            unpack(chunks_input),
            star="results/particles/particles.star",
            stack="results/particles/particles.mrcs",
            model=TRANSFER["model"],
            templates=[config["transfer"]["templates"][t] for t in TRANSFER["templates"]],
        output:
            features="results/features/transfer/features.npy",
            predictions="results/features/transfer/predictions.tsv",
            info="results/features/transfer/info.json",
        log:
            "logs/features/transfer.log",
        benchmark:
            "benchmarks/runs/features/transfer.tsv"
        params:
            device=param("features_transfer", "device"),
            names=TRANSFER["templates"],
            tilt=TRANSFER["tilt"],
            ctf=section("features_transfer", "simulation.ctf"),
            prototype_views=param("features_transfer", "transfer.prototype_views"),
        threads: 2
        resources:
            gpu=1,
            mem_mb=8000,
            runtime=60,
        conda:
            "../envs/torch-gpu.yaml"
        script:
            "../scripts/features_encoder.py"


if TRANSFER is not None and not TRANSFER["pretrained"]:

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
            device=param("transfer_train", "device"),
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
            unpack(chunks_input),
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
            device=param("features_transfer", "device"),
        threads: 2
        resources:
            gpu=1,
            mem_mb=8000,
            runtime=60,
        conda:
            "../envs/torch-gpu.yaml"
        script:
            "../scripts/features_transfer.py"


# Feature inference in shares of the particles, one job each (inference_jobs > 1); the
# method's rule (features_transfer, features_fewshot) gathers them in particle order.
if FEWSHOT_VARIANTS and config["inference_jobs"] > 1:

    rule features_fewshot_chunk:
        input:
            star="results/particles/particles.star",
            stack="results/particles/particles.mrcs",
            model="results/features/{variant}/model.pt",
            training_info="results/features/{variant}/training.json",
        output:
            "results/features/{variant}/chunks/chunk{i}.npy",
        wildcard_constraints:
            i=r"\d+",
        log:
            "logs/features/{variant}_chunk{i}.log",
        benchmark:
            "benchmarks/runs/features/{variant}_chunk{i}.tsv"
        params:
            device=param("features_fewshot_chunk", "device"),
            jobs=param("features_fewshot_chunk", "inference_jobs"),
            kind=lambda wc: wc.variant,
        threads: 2
        resources:
            gpu=1,
            mem_mb=8000,
            runtime=60,
        conda:
            "../envs/torch-gpu.yaml"
        script:
            "../scripts/features_chunk.py"


if TRANSFER is not None and config["inference_jobs"] > 1:

    rule features_transfer_chunk:
        input:
            star="results/particles/particles.star",
            stack="results/particles/particles.mrcs",
            model=TRANSFER["model"] if TRANSFER["pretrained"]
            else f"{TRANSFER['model_dir']}/model.pt",
        output:
            "results/features/transfer/chunks/chunk{i}.npy",
        wildcard_constraints:
            i=r"\d+",
        log:
            "logs/features/transfer_chunk{i}.log",
        benchmark:
            "benchmarks/runs/features/transfer_chunk{i}.tsv"
        params:
            device=param("features_transfer_chunk", "device"),
            jobs=param("features_transfer_chunk", "inference_jobs"),
            kind="encoder" if TRANSFER["pretrained"] else "transfer",
        threads: 2
        resources:
            gpu=1,
            mem_mb=8000,
            runtime=60,
        conda:
            "../envs/torch-gpu.yaml"
        script:
            "../scripts/features_chunk.py"
