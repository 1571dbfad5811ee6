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


# ------------------------------------------------------------------------------- averaging
AVERAGING = config["averaging"]


def averaged_classes(method):
    """Class numbers of a method with enough particles to average (read after the `cluster`
    checkpoint has run); the others are listed as skipped in the method's summary.tsv."""
    import json

    from tomoclust.maps import classes_to_average

    summary = checkpoints.cluster.get(method=method).output.summary
    info = json.loads(Path(summary).read_text())
    kept, _ = classes_to_average(info["class_sizes"], int(info["k"]),
                                 AVERAGING["min_particles"])
    return kept


def averaged_class_files(wildcards):
    return expand("results/average/{method}/class{k}/{name}", method=wildcards.method,
                  k=averaged_classes(wildcards.method),
                  name=["info.json", "average.mrc", "fsc.tsv", "slices.png", "fsc.png"])


def average_class_inputs(wildcards):
    inputs = {
        "clusters": f"results/cluster/{wildcards.method}/clusters.star",
        "particles": "results/particles/particles.star",
        "stack": "results/particles/particles.mrcs",
    }
    if HAS_TRUTH:
        inputs["truth"] = "results/simulation/truth.star"
        inputs["truth_maps"] = expand("results/average/truth/{template}.mrc",
                                      template=TEMPLATES)
    return inputs


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
    if AVERAGING["enabled"]:
        targets += expand("results/average/{method}/summary.tsv", method=METHODS)
    targets += expand(
        "results/simulated_subtomograms/{subset}/particles.star",
        subset=list(config["subtomogram_sets"]),
    )
    return targets
