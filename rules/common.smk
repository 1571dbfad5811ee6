import sys
from pathlib import Path
from types import SimpleNamespace

from snakemake.logging import logger
from snakemake.utils import validate

sys.path.insert(0, str(Path(workflow.basedir) / "scripts"))
from tomoclust import TomoclustError  # noqa: E402
from tomoclust.formats.sheet import NAME_PATTERN, coordinate_files, load_sheet  # noqa: E402
from tomoclust.formats.starhead import has_class_numbers  # noqa: E402
from tomoclust.settings import apply_renames, check_config, rule_params, rule_value  # noqa: E402

try:
    for _old in apply_renames(config):  # old key names: read with a warning for one release
        logger.warning(f"config {_old} is renamed; see schemas/config.schema.yaml")
    validate(config, workflow.source_path("../schemas/config.schema.yaml"))
    SETTINGS = check_config(config)  # cross-key checks: a bad config stops before any job
except TomoclustError as exc:
    raise WorkflowError(str(exc))



def shipped_path(path):
    """A relative path that does not exist in the working directory but does under the
    workflow's base directory is a resource shipped with the workflow (an atomic model in
    resources/structures/, a model in resources/models/): use that one, so every method works
    from a separate project directory. Anything else is returned unchanged."""
    p = Path(str(path))
    if p.is_absolute() or p.exists():
        return str(path)
    alt = Path(workflow.basedir) / p
    return str(alt) if alt.exists() else str(path)


for _lib in (config["templates"], config["fewshot"]["train_templates"] or {},
             config["transfer"]["templates"]):
    for _name in list(_lib):
        _lib[_name] = shipped_path(_lib[_name])

for _section in ("disca", "fewshot"):
    if config[_section].get("pretrained"):
        config[_section]["pretrained"] = shipped_path(config[_section]["pretrained"])
if config["disca"]["init"] == "auto":
    config["disca"]["init"] = "network" if config["disca"]["pretrained"] else "invariant"


def pretrained_input(section):
    """{"encoder": weights} of a method that starts from a pretrained encoder, else {}."""
    path = config[section].get("pretrained")
    return {"encoder": path} if path else {}


SIM = config["simulation"]
TEMPLATES = list(config["templates"])
EXT = config["external"]
SUBTOMO_MODE = bool(EXT["subtomograms"])  # mode 2: subtomograms in (see rules/external.smk)
COPICK = None  # a copick project as the input (rules/copick.smk)
if config["copick"]["config"]:
    from tomoclust.external.copick_project import CopickSettings, tomogram_sheet  # noqa: E402

    try:
        COPICK = CopickSettings.from_config(config["copick"])
    except TomoclustError as exc:
        raise WorkflowError(str(exc))


def _tomogram_table():
    if SUBTOMO_MODE:
        if config["tomograms"] or SIM["enabled"] or EXT["coordinates"] or COPICK:
            raise WorkflowError("config: 'external.subtomograms' replaces the tomograms; unset "
                                "'tomograms', 'copick.config', 'external.coordinates' and "
                                "'simulation.enabled'")
        return None
    if COPICK is not None:
        if config["tomograms"] or SIM["enabled"]:
            raise WorkflowError("config: set one input: 'copick.config' (a copick project), "
                                "'tomograms' (a sheet) or 'simulation.enabled: true'")
        try:
            return tomogram_sheet(COPICK, config["ingest"]["voxel_size"])
        except TomoclustError as exc:
            raise WorkflowError(str(exc))
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
HAS_TRUTH = SHEET is None and SIM["enabled"]  # simulated ground truth (picking evaluation)
# which conditional readers of tomoclust/settings.py read their keys in this run
MODES = ({"truth"} if HAS_TRUTH else set()) | ({"subtomograms"} if SUBTOMO_MODE else set()) | (
    {"simulation"} if SHEET is None and not SUBTOMO_MODE else set()) | (
    {"copick"} if COPICK is not None else set())


def section(rule, name):
    """The keys of config section ``name`` that ``rule`` reads (tomoclust/settings.py): its
    params, so that changing any other key does not rerun it."""
    return rule_params(config, rule, name, MODES)


def param(rule, key):
    """One config key (dotted) as a param of ``rule``, which must be declared to read it."""
    return rule_value(config, rule, key, MODES)
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
    if SUBTOMO_MODE:
        return [EXT["tilt_min"], EXT["tilt_max"]]
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


# --------------------------------------------------------- external picks / subtomograms
def _external_sources():
    """{tomogram: [coordinate STAR files]} for tomograms whose picking is skipped."""
    if EXT["coordinates"]:
        if SHEET is None:
            raise WorkflowError("config: 'external.coordinates' needs a tomogram sheet "
                                "('tomograms'); it is not used with the simulation")
        if not Path(EXT["coordinates"]).is_file():
            raise WorkflowError(f"config: external.coordinates {EXT['coordinates']}: file does "
                                "not exist")
        if any(coordinate_files(c) for c in SHEET["coordinates"]):
            raise WorkflowError("config: set either 'external.coordinates' (one STAR for all) or "
                                "the sheet's 'coordinates' column, not both")
        return {t: [f"results/imported/split/{t}.star"] for t in TOMOGRAMS}
    if SHEET is None:
        return {}
    return {t: coordinate_files(SHEET.loc[t, "coordinates"]) for t in TOMOGRAMS
            if coordinate_files(SHEET.loc[t, "coordinates"])}


COORD_SOURCES = _external_sources()


def _external_truth():
    if not EXT["truth"]:
        return False
    try:
        if SUBTOMO_MODE:
            return has_class_numbers([EXT["subtomograms"]])
        if EXT["coordinates"]:
            return has_class_numbers([EXT["coordinates"]])
        if COPICK is not None and COPICK.picks is not None:  # STARs not written yet
            return COPICK.picks.labelled
        return has_class_numbers(f for fs in COORD_SOURCES.values() for f in fs)
    except TomoclustError as exc:
        raise WorkflowError(str(exc))


EXTERNAL_TRUTH = _external_truth()  # the input STAR carries rlnClassNumber: evaluate by index


def picks_for(wildcards):
    """Coordinates extraction starts from: DoG picks, or another tool's, converted."""
    if wildcards.tomo in COORD_SOURCES:
        return f"results/imported/{wildcards.tomo}.star"
    return f"results/picks/{wildcards.tomo}.star"


def all_picks():
    """Every tomogram's coordinates (DoG picks or imported), in TOMOGRAMS order."""
    return [picks_for(SimpleNamespace(tomo=t)) for t in TOMOGRAMS]


def coordinate_sources(wildcards):
    return COORD_SOURCES[wildcards.tomo]


def coordinates_voxel_size(wildcards):
    """The sheet's coordinates_voxel_size for this tomogram, else the config's (or None)."""
    if SHEET is not None:
        v = SHEET.loc[wildcards.tomo, "coordinates_voxel_size"]
        if v is not None and v == v:
            return float(v)
    return EXT["coordinates_voxel_size"]


def classification_truth():
    """Ground truth for evaluate_classification: the simulation's (matched by position) or the
    input STAR's rlnClassNumber (aligned to the particle stack)."""
    if EXTERNAL_TRUTH:
        return "results/truth/particles_truth.star"
    return "results/simulation/truth.star"


# ------------------------------------------------------------- report (rules/report.smk)
def picks_plot_inputs(wildcards):
    """The ingested tomogram and its picks, plus its true particles when simulated."""
    inputs = {
        "tomogram": f"results/tomograms/{wildcards.tomo}/tomogram.mrc",
        "picks": picks_for(wildcards),
    }
    if HAS_TRUTH:
        inputs["truth"] = f"results/simulation/{wildcards.tomo}/truth.star"
    return inputs


def embedding_inputs(wildcards):
    """A method's features and clusters, plus the ground truth when simulated."""
    inputs = {
        "features": f"results/features/{wildcards.method}/features.npy",
        "clusters": f"results/cluster/{wildcards.method}/clusters.star",
    }
    if HAS_TRUTH or EXTERNAL_TRUTH:
        inputs["truth"] = classification_truth()
    return inputs


def pick_figure_tomograms():
    """The tomograms whose picks the report draws: report.pick_figures of them, spread evenly
    over the sheet (first and last included), or all of them."""
    k = config["report"]["pick_figures"]
    n = len(TOMOGRAMS)
    if k is None or n <= k:
        return list(TOMOGRAMS)
    return [TOMOGRAMS[round(i * (n - 1) / max(k - 1, 1))] for i in range(k)]


def report_targets():
    """Every figure and table of the HTML report that this configuration can make."""
    targets = []
    if not SUBTOMO_MODE:  # subtomograms in: no tomograms, no picks to draw
        targets += expand("results/report/picks/{tomo}.jpg", tomo=pick_figure_tomograms())
        targets.append("results/picks/summary.html")
    targets += expand("results/report/{method}/embedding.png", method=METHODS)
    if METHODS:
        targets += ["results/cluster/summary.html", "results/report/overview.html"]
    if HAS_TRUTH:
        targets += [
            "results/report/simulation/templates.png",
            "results/evaluation/picking/metrics.html",
        ]
    if METHODS and (HAS_TRUTH or EXTERNAL_TRUTH):
        targets.append("results/evaluation/classification.html")
    return targets


# ------------------------------------------------------------------------------- averaging
AVERAGING = config["averaging"]


def averaged_classes(method):
    """Class numbers of a method with enough particles to average (read after the `cluster`
    checkpoint has run); the others are listed as skipped in the method's summary.tsv."""
    import json

    from tomoclust.numerics.class_maps import classes_to_average

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


def overview_inputs(wildcards):
    """The report's first page: every method's clustering summary, class-average table and
    averages, and the classification table when there is ground truth."""
    inputs = {"summaries": expand("results/cluster/{method}/summary.json", method=METHODS)}
    if AVERAGING["enabled"]:
        inputs["averages"] = expand("results/average/{method}/summary.tsv", method=METHODS)
        for m in METHODS:
            inputs["averages"] += expand("results/average/{method}/class{k}/average.mrc",
                                         method=m, k=averaged_classes(m))
    if HAS_TRUTH or EXTERNAL_TRUTH:
        inputs["classification"] = "results/evaluation/classification.tsv"
    return inputs


# --------------------------------------------------------------------------- RELION 5 export
RELION_EXPORT = config["relion"]["export"] and not SUBTOMO_MODE


def relion_export_inputs(wildcards):
    """A method's classes, every tomogram's ingest record and the averaged classes' refined
    particles (angles, origins), when averaging is on."""
    inputs = {
        "clusters": f"results/cluster/{wildcards.method}/clusters.star",
        "ingest": expand("results/tomograms/{tomo}/ingest.json", tomo=TOMOGRAMS),
    }
    if AVERAGING["enabled"]:
        inputs["averaged"] = expand("results/average/{method}/class{k}/particles.star",
                                    method=wildcards.method,
                                    k=averaged_classes(wildcards.method))
    if config["relion"]["tomograms_star"]:
        inputs["project"] = config["relion"]["tomograms_star"]
    return inputs


# ---------------------------------------------------------------------------------- targets
def all_targets():
    targets = [
        "results/particles/particles.star",
        "results/particles/particles.mrcs",
    ]
    targets += expand("results/cluster/{method}/clusters.star", method=METHODS)
    targets += expand("results/embedding/{method}/embedding.tsv", method=METHODS)
    if HAS_TRUTH:
        targets += [
            "results/evaluation/picking/metrics.tsv",
            "results/evaluation/picking/picking.png",
        ]
    if METHODS and (HAS_TRUTH or EXTERNAL_TRUTH):
        targets.append("results/evaluation/classification.tsv")
    if AVERAGING["enabled"]:
        targets += expand("results/average/{method}/summary.{ext}", method=METHODS,
                          ext=["tsv", "html"])
    if RELION_EXPORT:
        targets += expand("results/relion/{method}", method=METHODS)
    targets += expand(
        "results/simulated_subtomograms/{subset}/particles.star",
        subset=list(config["subtomogram_sets"]),
    )
    targets += report_targets()
    targets += fewshot_targets()  # few-shot: the predicted labels' own evaluation
    targets += copick_targets()  # classes written back into a copick project
    return targets


# --------------------------------------------------------------- few-shot (ProtoNet3D / -CE)
FEWSHOT = config["fewshot"]
FEWSHOT_VARIANTS = [m for m in METHODS if m in ("protonet3d", "protonet_ce")]
# episodic training classes: fewshot.train_templates, or the `templates` when it is empty
FEWSHOT_TRAIN_SOURCES = dict(FEWSHOT["train_templates"] or config["templates"])
FEWSHOT_TRAIN_TEMPLATES = list(FEWSHOT_TRAIN_SOURCES)

def _check_fewshot():
    if not FEWSHOT_VARIANTS:
        return
    # exactly one support source: checked with the other settings (tomoclust/settings.py)
    if FEWSHOT["support"] and not Path(FEWSHOT["support"]).is_file():
        raise WorkflowError(f"config: fewshot.support {FEWSHOT['support']!r} is not a file")
    if FEWSHOT["support_from_truth"] > 0 and not HAS_TRUTH:
        raise WorkflowError("config: fewshot.support_from_truth needs the simulation (ground "
                            "truth); for real data give fewshot.support (a STAR) or "
                            "fewshot.support_templates")
    unknown = [t for t in FEWSHOT["support_templates"]
               if t not in FEWSHOT_TRAIN_SOURCES and t not in config["templates"]]
    if unknown:
        raise WorkflowError(f"config: fewshot.support_templates {unknown} are neither in "
                            "`templates` nor in fewshot.train_templates")
    if len(FEWSHOT_TRAIN_TEMPLATES) < 2:
        raise WorkflowError("config: few-shot episodic training needs at least 2 templates in "
                            "fewshot.train_templates (or `templates`)")


_check_fewshot()


wildcard_constraints:
    variant="protonet3d|protonet_ce",


def fewshot_template_source(wildcards):
    name = wildcards.template
    return FEWSHOT_TRAIN_SOURCES.get(name) or config["templates"][name]


def _fewshot_simulation(n_per_class, snr, seed):
    ex = config["extraction"]
    return {"n_per_class": n_per_class, "snr": list(snr), "box": ex["box"],
            "voxel_size": ex["voxel_size"], "ctf": SIM["ctf"], "tilt": wedge_range(),
            "seed": seed}


def fewshot_training_settings():
    return _fewshot_simulation(FEWSHOT["train_per_class"], FEWSHOT["train_snr"],
                               FEWSHOT["seed"])


def fewshot_support_settings():
    return _fewshot_simulation(FEWSHOT["support_per_class"], [FEWSHOT["support_snr"]],
                               FEWSHOT["seed"] + 1)


FEWSHOT_MODEL_KEYS = ["preset", "width", "blocks", "way", "shot", "query", "epochs",
                      "episodes_per_epoch", "lr", "lr_step", "lr_gamma", "temperature",
                      "ce_weight", "augment", "pretrained", "finetune", "seed"]


def fewshot_model_settings():
    return {k: FEWSHOT[k] for k in FEWSHOT_MODEL_KEYS}


def fewshot_support_config():
    return {k: FEWSHOT[k] for k in ("support", "support_tolerance", "class_names",
                                    "support_templates", "support_from_truth")}


def fewshot_support_input(wildcards):
    if FEWSHOT["support"]:
        return {"support_star": FEWSHOT["support"]}
    if FEWSHOT["support_from_truth"] > 0:
        return {"support_star": "results/fewshot/support_from_truth.star"}
    return {"support_sim_star": "results/fewshot/support/particles.star",
            "support_sim_stack": "results/fewshot/support/particles.mrcs"}


def fewshot_targets():
    targets = []
    if HAS_TRUTH:
        targets += expand("results/evaluation/{variant}/fewshot_metrics.tsv",
                          variant=FEWSHOT_VARIANTS)
    return targets


# ------------------------------------------------------------- transfer-learned encoder
def _transfer_setup():
    """Cache directories of the transfer training set and model, named by keys over everything
    that determines them (template files, extraction box and voxel size, CTF, tilt range,
    simulation and training settings), or None when the method is not enabled."""
    if "transfer" not in METHODS:
        return None
    from tomoclust.features.transfer_settings import (
        TrainingSetSettings,
        TransferSettings,
        model_key,
        training_set_key,
    )

    t = config["transfer"]
    tilt_min, tilt_max = wedge_range()
    if t["model"] != "retrain":
        model = shipped_path(t["model"])
        if not Path(model).is_file():
            raise WorkflowError(f"config transfer.model: {t['model']}: encoder weights not "
                                f"found (looked in the working directory and in "
                                f"{workflow.basedir}); give a path, or 'retrain'")
        return {"pretrained": True, "model": model, "templates": list(t["templates"]),
                "tilt": [tilt_min, tilt_max], "prototype_views": t["prototype_views"]}
    set_params = TrainingSetSettings(
        box=config["extraction"]["box"], voxel_size=config["extraction"]["voxel_size"],
        n_per_class=t["n_per_class"], snr_min=t["snr_min"], snr_max=t["snr_max"],
        snr_groups=t["snr_groups"], convention=t["convention"], tilt_min=tilt_min,
        tilt_max=tilt_max, ctf=dict(SIM["ctf"]), no_particle=t["no_particle"],
        neighbour_fraction=t["neighbour_fraction"], max_shift_vox=t["max_shift_vox"],
        seed=t["seed"])
    train_params = TransferSettings(**{k: t[k] for k in (
        "width", "stages", "feature_dim", "hidden", "input_binning", "dropout", "epochs",
        "batch_size", "lr", "weight_decay", "val_fraction", "augment", "seed")})
    try:
        set_key = training_set_key(t["templates"], set_params)
    except TomoclustError as exc:
        raise WorkflowError(f"config transfer.templates: {exc}")
    set_dir = f"{t['cache'].rstrip('/')}/set-{set_key}"
    return {
        "pretrained": False,
        "templates": list(t["templates"]),
        "set_params": set_params.as_dict(),
        "train_params": train_params.as_dict(),
        "set_dir": set_dir,
        "model_dir": f"{set_dir}/model-{model_key(set_key, train_params)}",
    }


TRANSFER = _transfer_setup()
if TRANSFER is not None and TRANSFER["pretrained"]:
    MODES.add("pretrained")  # keys read only by the pretrained encoder's rule


def unwhitened_input(wildcards):
    """The invariant features before noise whitening, which the consensus K pools with the
    whitened ones; no such file for the other methods."""
    if wildcards.method == "invariant":
        return ["results/features/invariant/unwhitened.npy"]
    return []


def chunks_input(wildcards):
    """{"chunks": [...]}: the shares of a method's feature inference when ``inference_jobs``
    > 1 (rules features_transfer_chunk, features_fewshot_chunk), else {} (one job)."""
    jobs = config["inference_jobs"]
    if jobs <= 1:
        return {}
    method = getattr(wildcards, "variant", "transfer")
    return {"chunks": [f"results/features/{method}/chunks/chunk{i}.npy" for i in range(jobs)]}


def transfer_template_source(wildcards):
    return config["transfer"]["templates"][wildcards.template]


# --------------------------------------------------------------------------- copick projects
def _copick_write_methods():
    if COPICK is None or not COPICK.write.enabled:
        return []
    methods = COPICK.write.methods or METHODS
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise WorkflowError(f"config copick.write.methods: {unknown} are not in `methods`")
    from tomoclust.external.copick_project import check_write_template  # noqa: E402

    try:
        check_write_template(COPICK.write.object, methods)
    except TomoclustError as exc:
        raise WorkflowError(str(exc))
    return list(methods)


COPICK_WRITE_METHODS = _copick_write_methods()
_CP = COPICK
COPICK_PARAMS = {  # for rules/copick.smk (empty without a copick input)
    "config": str(_CP.config) if _CP else "",
    "voxel_spacing": _CP.voxel_spacing if _CP else 0.0,
    "tomo_type": _CP.tomo_type if _CP else "",
    "objects": _CP.picks.objects if _CP and _CP.picks else [],
    "picks_user_id": (_CP.picks.user_id or "") if _CP and _CP.picks else "",
    "picks_session_id": (_CP.picks.session_id or "") if _CP and _CP.picks else "",
    "object": _CP.write.object if _CP else "",
    "write_user_id": _CP.write.user_id if _CP else "",
    "write_session_id": _CP.write.session_id if _CP else "",
}


def copick_class_table(method):
    """The labelled particles written back for a method: few-shot predictions (named classes),
    else the clustering."""
    if method in FEWSHOT_VARIANTS:
        return f"results/features/{method}/labels.star"
    return f"results/cluster/{method}/clusters.star"


def copick_targets():
    return ["results/copick/written.tsv"] if COPICK_WRITE_METHODS else []
