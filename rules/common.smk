import sys
from pathlib import Path

from snakemake.utils import validate

sys.path.insert(0, str(Path(workflow.basedir) / "scripts"))
from tomoclust import TomoclustError  # noqa: E402
from tomoclust.sheet import NAME_PATTERN, load_sheet  # noqa: E402

validate(config, workflow.source_path("../schemas/config.schema.yaml"))

SIM = config["simulation"]
TEMPLATES = list(config["templates"])


def _tomogram_table():
    if config["tomograms"]:
        if SIM["enabled"]:
            raise WorkflowError("config: set either 'tomograms' (a sheet) or "
                                "'simulation.enabled: true', not both")
        try:
            return load_sheet(config["tomograms"])
        except TomoclustError as exc:
            raise WorkflowError(str(exc))
    if not SIM["enabled"]:
        raise WorkflowError("config: no input; set 'tomograms' to a sheet or enable 'simulation'")
    if not TEMPLATES:
        raise WorkflowError("config: simulation needs at least one entry under 'templates'")
    return None


SHEET = _tomogram_table()
if SHEET is not None:
    TOMOGRAMS = list(SHEET["name"])
else:
    width = len(str(SIM["n_tomograms"]))
    TOMOGRAMS = [f"sim{i + 1:0{max(width, 2)}d}" for i in range(SIM["n_tomograms"])]
HAS_TRUTH = SHEET is None
METHODS = list(config["methods"])


wildcard_constraints:
    tomo=NAME_PATTERN,
    template=NAME_PATTERN,
    subset=NAME_PATTERN,
    method="|".join(METHODS) if METHODS else "^$",


# ------------------------------------------------------------------------- input functions
def raw_tomogram(wildcards):
    """The tomogram a given name is ingested from: the sheet's path, or the simulation."""
    if SHEET is not None:
        return SHEET.loc[wildcards.tomo, "path"]
    return f"results/simulation/{wildcards.tomo}/tomogram.mrc"


def sheet_voxel_size(wildcards):
    if SHEET is None:
        return None
    return SHEET.loc[wildcards.tomo, "voxel_size"]


def wedge_range():
    """Tilt range (degrees) for missing-wedge-aware steps: the simulation's, or the range
    that every tomogram of the sheet covers (the largest tilt_min, the smallest tilt_max)."""
    if SHEET is None:
        return [SIM["tilt_min"], SIM["tilt_max"]]
    return [float(SHEET["tilt_min"].max()), float(SHEET["tilt_max"].min())]


def template_source(wildcards):
    return config["templates"][wildcards.template]


def template_class_numbers():
    return {name: i + 1 for i, name in enumerate(TEMPLATES)}


def simulation_seed(wildcards):
    return SIM["seed"] + TOMOGRAMS.index(wildcards.tomo)


def subtomogram_set(wildcards):
    return config["subtomogram_sets"][wildcards.subset]


def subset_voxel_size(wildcards):
    return subtomogram_set(wildcards)["voxel_size"]


# ---------------------------------------------------------------------------------- targets
def all_targets():
    targets = [
        "results/particles/particles.star",
        "results/particles/particles.mrcs",
    ]
    targets += expand("results/cluster/{method}/clusters.star", method=METHODS)
    if HAS_TRUTH:
        targets += [
            "results/evaluation/picking/metrics.tsv",
            "results/evaluation/picking/picking.png",
        ]
        if METHODS:
            targets.append("results/evaluation/classification.tsv")
    targets += expand(
        "results/simulated_subtomograms/{subset}/particles.star",
        subset=list(config["subtomogram_sets"]),
    )
    return targets


# ------------------------------------------------------------- transfer-learned encoder
def _transfer_setup():
    """Cache directories of the transfer training set and model, named by keys over everything
    that determines them (template files, extraction box and voxel size, CTF, tilt range,
    simulation and training settings), or None when the method is not enabled."""
    if "transfer" not in METHODS:
        return None
    from tomoclust.transfer_config import (  # noqa: E402
        TrainingSetParams, TransferParams, model_key, training_set_key)

    t = config["transfer"]
    tilt_min, tilt_max = wedge_range()
    set_params = TrainingSetParams(
        box=config["extraction"]["box"], voxel_size=config["extraction"]["voxel_size"],
        n_per_class=t["n_per_class"], snr_min=t["snr_min"], snr_max=t["snr_max"],
        snr_groups=t["snr_groups"], convention=t["convention"], tilt_min=tilt_min,
        tilt_max=tilt_max, ctf=dict(SIM["ctf"]), no_particle=t["no_particle"],
        neighbour_fraction=t["neighbour_fraction"], max_shift_vox=t["max_shift"],
        seed=t["seed"])
    train_params = TransferParams(**{k: t[k] for k in (
        "width", "stages", "feature_dim", "hidden", "input_binning", "dropout", "epochs",
        "batch_size", "lr", "weight_decay", "val_fraction", "augment", "seed")})
    try:
        set_key = training_set_key(t["templates"], set_params)
    except TomoclustError as exc:
        raise WorkflowError(f"config transfer.templates: {exc}")
    set_dir = f"{t['cache'].rstrip('/')}/set-{set_key}"
    return {
        "templates": list(t["templates"]),
        "set_params": set_params.as_dict(),
        "train_params": train_params.as_dict(),
        "set_dir": set_dir,
        "model_dir": f"{set_dir}/model-{model_key(set_key, train_params)}",
    }


TRANSFER = _transfer_setup()


def transfer_template_source(wildcards):
    return config["transfer"]["templates"][wildcards.template]
