"""The workflow's settings: one frozen, typed dataclass per config section, checked when the
workflow is parsed, and the table of which rule reads which key.

No torch, no numpy: rules/common.smk imports this module at DAG time.

Adding a config key
    1. schemas/config.schema.yaml: the key with its type, default, range and description (what
       users read; validation fills the default in).
    2. Here, one line in its section's dataclass::

           new_key: float = reads(1.0, "rule_a", "rule_b")

       with the schema's default and every rule whose output depends on the key. That line is
       the whole wiring: the rules named get the key in their params (so changing it reruns
       exactly them, and nothing else), and tests/test_rerun_matrix.py checks the claim
       against real dry runs of a completed workflow. A key that decides which jobs exist
       (a mode switch, a list of names) says so with ``shapes_dag=True``.
    Lengths are in Å; a length in voxels ends in ``_vox``. A renamed key keeps its old name
    for one release in :data:`RENAMED` (read with a deprecation warning).

Cross-key checks (k-means needs k, few-shot needs exactly one support source, ranges that the
schema cannot express) live in each section's ``check`` and run from
:func:`check_config` while the workflow is parsed, so a bad configuration stops before any job
with one line that names the key.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from . import TomoclustError

#: rules whose output depends on the device they ran on (the GPU-capable steps)
DEVICE_RULES = ("pick", "features_disca", "features_autoencoder", "features_invariant",
                "train_fewshot", "features_fewshot", "transfer_train", "features_transfer",
                "features_transfer_chunk", "features_fewshot_chunk", "average_class")
#: rules that model the missing wedge of the data (the tilt range of the simulation, the input
#: subtomograms, or the sheet)
WEDGE_RULES = ("features_disca", "average_class", "fewshot_training_set", "fewshot_support_set",
               "transfer_training_set", "features_transfer")
#: the transfer encoder's training set and model, cached under keys over their settings
TRANSFER_SET = ("transfer_training_set",)
TRANSFER_MODEL = ("transfer_train",)

#: old key -> new key, read with a deprecation warning for one release
RENAMED = {
    "invariant.lowpass": "invariant.lowpass_vox",
    "averaging.max_shift": "averaging.max_shift_vox",
    "averaging.mask_edge": "averaging.mask_edge_vox",
    "transfer.max_shift": "transfer.max_shift_vox",
    "disca.invariant_lowpass": "disca.invariant_lowpass_vox",
}


def reads(default: Any, *rules: str, truth: tuple[str, ...] = (),
          simulation: tuple[str, ...] = (), subtomograms: tuple[str, ...] = (),
          copick: tuple[str, ...] = (), pretrained: tuple[str, ...] = (),
          shapes_dag: bool = False) -> Any:
    """A settings field: its default and the rules that read it.

    ``rules`` read it always; ``truth`` only when there is a ground truth (simulation, or
    class numbers in the input); ``simulation`` only in simulation mode; ``subtomograms`` only
    when starting from subtomograms (external.subtomograms); ``copick`` only with a copick
    project as the input; ``pretrained`` only when ``transfer`` embeds with a pretrained
    encoder (``transfer.model`` is not ``retrain``). ``shapes_dag``: the key decides which
    jobs exist (it may also be read by rules).
    """
    meta = {"rules": tuple(rules), "truth": tuple(truth), "simulation": tuple(simulation),
            "subtomograms": tuple(subtomograms), "copick": tuple(copick),
            "pretrained": tuple(pretrained),
            "shapes_dag": shapes_dag}
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda d=default: type(d)(d), metadata=meta)
    return field(default=default, metadata=meta)


class _Section:
    """Shared behaviour of the section dataclasses."""

    SECTION: ClassVar[str] = ""

    @classmethod
    def from_config(cls, config: Mapping[str, Any]):
        """The section of a (schema-validated) configuration, checked."""
        values = config.get(cls.SECTION, {}) if cls.SECTION else config
        kwargs = {}
        for f in dataclasses.fields(cls):
            if f.name not in values:
                continue
            v = values[f.name]
            sub = _nested_type(cls, f)
            kwargs[f.name] = sub.from_config({sub.SECTION: v}) if sub else v
        obj = cls(**kwargs)
        obj.check(config)
        return obj

    def check(self, config: Mapping[str, Any]) -> None:
        """Cross-key and range checks the schema cannot express; raise :func:`bad`."""

    def key(self, name: str) -> str:
        return f"{self.SECTION}.{name}" if self.SECTION else name


def bad(key: str, problem: str) -> TomoclustError:
    """The one-line error of a bad setting, naming its key."""
    return TomoclustError(f"config {key}: {problem}")


# ------------------------------------------------------------------------------ sections
@dataclass(frozen=True)
class WorkflowSettings(_Section):
    """Top-level keys."""

    SECTION: ClassVar[str] = ""
    tomograms: str = reads("", shapes_dag=True)
    device: str = reads("auto", *DEVICE_RULES)
    templates: dict = reads({}, "template_density", "simulate_tomogram", shapes_dag=True)
    subtomogram_sets: dict = reads({}, "simulate_subtomograms", "subset_template_density",
                                   shapes_dag=True)
    methods: list = reads(["invariant", "disca", "autoencoder"], shapes_dag=True)
    inference_jobs: int = reads(1, "features_transfer_chunk", "features_fewshot_chunk",
                                shapes_dag=True)


@dataclass(frozen=True)
class SimulationCtfSettings(_Section):
    SECTION: ClassVar[str] = "simulation.ctf"
    # features_transfer: the pretrained encoder's template prototypes are imaged with it
    _READERS: ClassVar[tuple] = ("simulate_tomogram", "simulate_subtomograms",
                                 "fewshot_training_set", "fewshot_support_set", *TRANSFER_SET,
                                 "features_transfer")
    defocus_um: float = reads(5.0, *_READERS, truth=("average_class",))
    # the RELION export takes the simulated microscope's optics instead of relion.*
    voltage_kv: float = reads(300.0, *_READERS, truth=("average_class",),
                              simulation=("export_relion",))
    cs_mm: float = reads(2.7, *_READERS, truth=("average_class",),
                         simulation=("export_relion",))
    amplitude_contrast: float = reads(0.07, *_READERS, truth=("average_class",),
                                      simulation=("export_relion",))


@dataclass(frozen=True)
class SimulationSettings(_Section):
    SECTION: ClassVar[str] = "simulation"
    enabled: bool = reads(False, shapes_dag=True)
    n_tomograms: int = reads(4, shapes_dag=True)
    shape: list = reads([128, 256, 256], "simulate_tomogram")
    voxel_size: float = reads(10.0, "simulate_tomogram", "template_density")
    particles_per_class: int = reads(12, "simulate_tomogram")
    snr: float = reads(0.1, "simulate_tomogram")
    snr_region: str = reads("particles", "simulate_tomogram")
    tilt_min: float = reads(-60.0, "simulate_tomogram", simulation=WEDGE_RULES)
    tilt_max: float = reads(60.0, "simulate_tomogram", simulation=WEDGE_RULES)
    tilt_step: float = reads(3.0, "simulate_tomogram")
    membranes: int = reads(0, "simulate_tomogram")
    gold_beads: int = reads(0, "simulate_tomogram")
    seed: int = reads(1, "simulate_tomogram")
    ctf: SimulationCtfSettings = field(default_factory=SimulationCtfSettings)

    def check(self, config):
        if self.tilt_min >= self.tilt_max:
            raise bad("simulation.tilt_min", f"{self.tilt_min} is not below simulation.tilt_max "
                      f"{self.tilt_max}")


@dataclass(frozen=True)
class IngestSettings(_Section):
    SECTION: ClassVar[str] = "ingest"
    voxel_size: float | None = reads(None, "ingest")


@dataclass(frozen=True)
class PickingSettings(_Section):
    SECTION: ClassVar[str] = "picking"
    particle_radius: float = reads(100.0, "pick", "plot_picks", "copick_write",
                                   # the challenge F-beta's match distance (half the radius)
                                   "evaluate_picking", "evaluate_classification")
    sigma_scale: float = reads(0.577, "pick")
    sigma_ratio: float = reads(1.1, "pick")
    contrast: str = reads("dark", "pick")
    threshold: float = reads(3.5, "pick")
    min_distance: float = reads(100.0, "pick")
    max_count: int | None = reads(None, "pick")
    chunk_z: int = reads(128, "pick")
    bin: int = reads(2, "pick")
    refine: bool = reads(True, "pick")


_BOX_READERS = ("pick", "extract", "evaluate_picking", "import_coordinates", "import_subtomograms",
                "truth_map", "fewshot_training_set", "fewshot_support_set", *TRANSFER_SET)


@dataclass(frozen=True)
class ExtractionSettings(_Section):
    """The ``extraction`` section. The ingest rule also checks that each tomogram holds one box
    (box × voxel_size) but its output does not depend on them, so it is not a reader."""

    SECTION: ClassVar[str] = "extraction"
    box: int = reads(32, *_BOX_READERS)
    voxel_size: float = reads(12.0, *_BOX_READERS, "fewshot_template_density",
                              "transfer_template_density")
    normalise: bool = reads(True, "extract", "import_subtomograms")
    recentre: bool = reads(True, "extract")


_TOLERANCE_READERS = ("evaluate_picking", "evaluate_classification", "evaluate_fewshot",
                      "fewshot_support_from_truth")


@dataclass(frozen=True)
class EvaluationSettings(_Section):
    SECTION: ClassVar[str] = "evaluation"
    picking_tolerance: float = reads(60.0, *_TOLERANCE_READERS,
                                     truth=("average_class", "plot_embedding"))


@dataclass(frozen=True)
class ExternalSettings(_Section):
    SECTION: ClassVar[str] = "external"
    coordinates: str = reads("", shapes_dag=True)
    coordinates_voxel_size: float | None = reads(None, "import_coordinates")
    subtomograms: str = reads("", shapes_dag=True)
    image_root: str = reads("", "import_subtomograms")
    subtomograms_voxel_size: float | None = reads(None, "import_subtomograms")
    tilt_min: float = reads(-60.0, subtomograms=WEDGE_RULES)
    tilt_max: float = reads(60.0, subtomograms=WEDGE_RULES)
    truth: bool = reads(True, shapes_dag=True)

    def check(self, config):
        if self.tilt_min >= self.tilt_max:
            raise bad("external.tilt_min", f"{self.tilt_min} is not below external.tilt_max "
                      f"{self.tilt_max}")


_COPICK_IN = ("copick_tomogram", "copick_picks")


@dataclass(frozen=True)
class CopickPicksSettings(_Section):
    SECTION: ClassVar[str] = "copick.picks"
    object: str | list = reads("", "copick_picks", shapes_dag=True)
    user_id: str = reads("", "copick_picks")
    session_id: str | int = reads("", "copick_picks")


@dataclass(frozen=True)
class CopickWriteSettings(_Section):
    SECTION: ClassVar[str] = "copick.write"
    enabled: bool = reads(True, shapes_dag=True)
    methods: list = reads([], "copick_write", shapes_dag=True)
    object: str = reads("{method}-{class}", "copick_write")
    user_id: str = reads("tomoclust", "copick_write")
    session_id: str | int = reads("0", "copick_write")


@dataclass(frozen=True)
class CopickConfigSettings(_Section):
    """The ``copick`` section (parsed for the project by external.copick_project)."""

    SECTION: ClassVar[str] = "copick"
    config: str = reads("", *_COPICK_IN, "copick_write", shapes_dag=True)
    voxel_spacing: float = reads(10.0, *_COPICK_IN)
    tomo_type: str = reads("wbp", "copick_tomogram")
    runs: list = reads([], "copick_write", shapes_dag=True)
    tilt_min: float = reads(-60.0, copick=WEDGE_RULES)
    tilt_max: float = reads(60.0, copick=WEDGE_RULES)
    picks: CopickPicksSettings = field(default_factory=CopickPicksSettings)
    write: CopickWriteSettings = field(default_factory=CopickWriteSettings)


_DISCA = ("features_disca",)


@dataclass(frozen=True)
class DiscaConfigSettings(_Section):
    """The ``disca`` section (the method's own settings are features.disca.DiscaSettings)."""

    SECTION: ClassVar[str] = "disca"
    preset: str = reads("light", *_DISCA)
    blocks: int | None = reads(None, *_DISCA)
    width: int | None = reads(None, *_DISCA)
    width_step: int | None = reads(None, *_DISCA)
    feature_dim: int | None = reads(None, *_DISCA)
    input_binning: int | None = reads(None, *_DISCA)
    dropout: float | None = reads(None, *_DISCA)
    iterations: int = reads(10, *_DISCA)
    epochs_per_iteration: int = reads(1, *_DISCA)
    k_min: int = reads(2, *_DISCA)
    k_max: int = reads(20, *_DISCA)
    pca_components: int = reads(8, *_DISCA)
    gmm_n_init: int = reads(3, *_DISCA)
    batch_size: int = reads(64, *_DISCA)
    lr: float = reads(0.001, *_DISCA)
    lr_decay: float = reads(0.95, *_DISCA)
    smoothing: float = reads(0.2, *_DISCA)
    smoothing_decay: float = reads(0.9, *_DISCA)
    loss: str = reads("cross_entropy", *_DISCA)
    augment: str = reads("uniform_masked", *_DISCA)
    convergence: float = reads(0.999, *_DISCA)
    head_warmup_steps: int = reads(50, *_DISCA)
    init: str = reads("auto", *_DISCA)
    pretrained: str | None = reads("resources/models/encoder-v1.pt", *_DISCA)
    invariant_l_max: int = reads(6, *_DISCA)
    invariant_lowpass_vox: float = reads(1.0, *_DISCA)
    invariant_radial: bool = reads(False, *_DISCA)
    invariant_components: int | None = reads(None, *_DISCA)
    seed: int = reads(0, *_DISCA)

    def check(self, config):
        if self.k_min > self.k_max:
            raise bad("disca.k_min", f"{self.k_min} is above disca.k_max {self.k_max}")


@dataclass(frozen=True)
class InvariantSettings(_Section):
    SECTION: ClassVar[str] = "invariant"
    l_max: int = reads(6, "features_invariant")
    lowpass_vox: float = reads(1.0, "features_invariant")
    radial: bool = reads(False, "features_invariant")
    spectrum_components: int | None = reads(None, "features_invariant")
    centring: str = reads("com", "features_invariant")
    noise_whitening: str = reads("phase", "features_invariant")


_AE = ("features_autoencoder",)


@dataclass(frozen=True)
class AutoencoderConfigSettings(_Section):
    """The ``autoencoder`` section (the method's own: features.autoencoder.AutoencoderSettings)."""

    SECTION: ClassVar[str] = "autoencoder"
    code_dim: int = reads(32, *_AE)
    channels: int = reads(32, *_AE)
    epochs: int = reads(20, *_AE)
    batch_size: int = reads(64, *_AE)
    lr: float = reads(0.001, *_AE)
    l1_activity: float = reads(0.0001, *_AE)
    seed: int = reads(0, *_AE)


FEWSHOT_SUPPORT_HELP = (
    "few-shot (methods protonet3d / protonet_ce) needs a support set; set exactly one of\n"
    "  fewshot.support: path of a STAR file with one row per example particle and the\n"
    "      columns rlnClassNumber (1..C, every class at least once; optional rlnClassName)\n"
    "      and either rlnImageName (i@particles.mrcs, the i-th row of\n"
    "      results/particles/particles.star) or rlnTomoName + rlnCoordinateX/Y/Z (voxels of\n"
    "      the ingested tomogram, matched within fewshot.support_tolerance Å);\n"
    "  fewshot.support_templates: [names of `templates` or fewshot.train_templates] to\n"
    "      simulate fewshot.support_per_class particles of each at fewshot.support_snr;\n"
    "  fewshot.support_from_truth: N (simulation only: N truth-labelled picked particles per\n"
    "      class, for demos and tests)")

_FS_MODEL = ("train_fewshot",)
_FS_SUPPORT = ("features_fewshot",)


@dataclass(frozen=True)
class FewshotConfigSettings(_Section):
    """The ``fewshot`` section (the method's own: features.fewshot.FewShotSettings)."""

    SECTION: ClassVar[str] = "fewshot"
    preset: str = reads("light", *_FS_MODEL)
    width: int | None = reads(None, *_FS_MODEL)
    blocks: int = reads(4, *_FS_MODEL)
    way: int | None = reads(None, *_FS_MODEL)
    shot: int = reads(5, *_FS_MODEL)
    query: int = reads(15, *_FS_MODEL)
    epochs: int = reads(20, *_FS_MODEL)
    episodes_per_epoch: int = reads(50, *_FS_MODEL)
    lr: float = reads(0.001, *_FS_MODEL)
    lr_step: int = reads(20, *_FS_MODEL)
    lr_gamma: float = reads(0.5, *_FS_MODEL)
    temperature: float = reads(1.0, *_FS_MODEL)
    ce_weight: float = reads(0.5, *_FS_MODEL)
    augment: bool = reads(True, *_FS_MODEL)
    pretrained: str | None = reads("resources/models/encoder-v1.pt", *_FS_MODEL)
    finetune: bool = reads(False, *_FS_MODEL)
    seed: int = reads(0, *_FS_MODEL, "fewshot_training_set", "fewshot_support_set",
                      "fewshot_support_from_truth")
    train_templates: dict = reads({}, "fewshot_template_density", "fewshot_training_set",
                                  shapes_dag=True)
    train_per_class: int = reads(100, "fewshot_training_set")
    train_snr: list = reads([1.0, 0.1], "fewshot_training_set")
    support: str = reads("", *_FS_SUPPORT, shapes_dag=True)
    support_tolerance: float = reads(30.0, *_FS_SUPPORT)
    class_names: dict = reads({}, *_FS_SUPPORT)
    support_templates: list = reads([], *_FS_SUPPORT, "fewshot_support_set", shapes_dag=True)
    support_per_class: int = reads(5, "fewshot_support_set")
    support_snr: float = reads(0.1, "fewshot_support_set")
    support_from_truth: int = reads(0, *_FS_SUPPORT, "fewshot_support_from_truth",
                                    shapes_dag=True)

    def check(self, config):
        methods = config.get("methods") or []
        if not any(m in ("protonet3d", "protonet_ce") for m in methods):
            return
        given = [k for k, on in (("support", bool(self.support)),
                                 ("support_templates", bool(self.support_templates)),
                                 ("support_from_truth", self.support_from_truth > 0)) if on]
        if not given:
            raise bad("fewshot.support", FEWSHOT_SUPPORT_HELP)
        if len(given) > 1:
            raise bad(f"fewshot.{given[1]}", "more than one few-shot support set is configured "
                      f"(fewshot.{', fewshot.'.join(given)}).\n{FEWSHOT_SUPPORT_HELP}")


@dataclass(frozen=True)
class ClusteringSettings(_Section):
    SECTION: ClassVar[str] = "clustering"
    algorithm: str = reads("gmm", "cluster")
    k: int | None = reads(None, "cluster")
    k_min: int = reads(2, "cluster")
    k_max: int = reads(10, "cluster")
    pca_components: int = reads(10, "cluster")
    consensus_components: list[int] | None = reads([4, 6, 8, 10, 12, 16], "cluster")
    consensus_unwhitened: bool = reads(True, "cluster")
    n_init: int = reads(3, "cluster")
    seed: int = reads(0, "cluster", "plot_embedding")
    merge_ratio: float | None = reads(0.1, "cluster")
    merge_gap: float = reads(2.0, "cluster")
    k_selection: str = reads("consensus", "cluster")

    def check(self, config):
        if self.algorithm == "kmeans" and self.k is None:
            raise bad("clustering.k", "k-means (clustering.algorithm: kmeans) needs a fixed "
                      "number of classes; set clustering.k")
        if self.k is None and self.k_min > self.k_max:
            raise bad("clustering.k_min", f"{self.k_min} is above clustering.k_max {self.k_max}")


_AVG = ("average_class",)


@dataclass(frozen=True)
class AveragingConfigSettings(_Section):
    """The ``averaging`` section (the method's own: average.AveragingSettings)."""

    SECTION: ClassVar[str] = "averaging"
    enabled: bool = reads(True, shapes_dag=True)
    angular_step: float = reads(30.0, *_AVG)
    local_step: float = reads(7.5, *_AVG)
    iterations: int = reads(3, *_AVG)
    max_shift_vox: float = reads(4.0, *_AVG)
    mask_radius: float | None = reads(None, *_AVG)
    mask_edge_vox: float = reads(3.0, *_AVG)
    initial_resolution: float = reads(50.0, *_AVG)
    wiener: float = reads(0.05, *_AVG)
    min_particles: int = reads(10, *_AVG, "average_summary", shapes_dag=True)
    seed: int = reads(0, *_AVG)

    def check(self, config):
        if self.local_step > self.angular_step:
            raise bad("averaging.local_step", f"{self.local_step}° is coarser than "
                      f"averaging.angular_step {self.angular_step}°")


_RELION = ("export_relion",)


@dataclass(frozen=True)
class RelionSettings(_Section):
    """The RELION 5 export (formats/relion5.py)."""

    SECTION: ClassVar[str] = "relion"
    export: bool = reads(True, shapes_dag=True)
    tilt_series_pixel_size: float | None = reads(None, *_RELION)
    tomograms_star: str = reads("", *_RELION, shapes_dag=True)
    voltage: float = reads(300.0, *_RELION)
    spherical_aberration: float = reads(2.7, *_RELION)
    amplitude_contrast: float = reads(0.1, *_RELION)
    hand: float = reads(-1, *_RELION)


@dataclass(frozen=True)
class ReportSettings(_Section):
    """Figures of the HTML report."""

    SECTION: ClassVar[str] = "report"
    pick_figures: int | None = reads(24, shapes_dag=True)


_SET_AND_MODEL = TRANSFER_SET + TRANSFER_MODEL


@dataclass(frozen=True)
class TransferConfigSettings(_Section):
    """The ``transfer`` section; features.transfer_settings holds the method's own settings
    and the cache keys over them."""

    SECTION: ClassVar[str] = "transfer"
    # the shipped encoder (features_transfer embeds with it) or 'retrain' (the rules below)
    model: str = reads("resources/models/encoder-v1.pt", "features_transfer", shapes_dag=True)
    prototype_views: int = reads(24, pretrained=("features_transfer",))
    cache: str = reads("resources/models/transfer", shapes_dag=True)
    templates: dict = reads({}, "transfer_template_density", *TRANSFER_SET,
                            "features_transfer", shapes_dag=True)
    n_per_class: int = reads(200, *TRANSFER_SET)
    snr_min: float = reads(0.05, *TRANSFER_SET)
    snr_max: float = reads(1.0, *TRANSFER_SET)
    snr_groups: int = reads(10, *TRANSFER_SET)
    convention: str = reads("aitom", *TRANSFER_SET)
    no_particle: bool = reads(True, *TRANSFER_SET)
    neighbour_fraction: float = reads(0.5, *TRANSFER_SET)
    max_shift_vox: float = reads(1.0, *TRANSFER_SET)
    width: int = reads(16, *TRANSFER_MODEL)
    stages: int = reads(3, *TRANSFER_MODEL)
    feature_dim: int = reads(32, *TRANSFER_MODEL)
    hidden: int = reads(128, *TRANSFER_MODEL)
    input_binning: int = reads(2, *TRANSFER_MODEL)
    dropout: float = reads(0.3, *TRANSFER_MODEL)
    epochs: int = reads(15, *TRANSFER_MODEL)
    batch_size: int = reads(32, *TRANSFER_MODEL)
    lr: float = reads(0.002, *TRANSFER_MODEL)
    weight_decay: float = reads(0.0001, *TRANSFER_MODEL)
    val_fraction: float = reads(0.1, *TRANSFER_MODEL)
    augment: bool = reads(True, *TRANSFER_MODEL)
    seed: int = reads(0, *_SET_AND_MODEL)

    def check(self, config):
        if self.snr_min > self.snr_max:
            raise bad("transfer.snr_min", f"{self.snr_min} is above transfer.snr_max "
                      f"{self.snr_max}")


SECTIONS: tuple[type[_Section], ...] = (
    WorkflowSettings, SimulationSettings, IngestSettings, PickingSettings, ExtractionSettings,
    EvaluationSettings, ExternalSettings, CopickConfigSettings, DiscaConfigSettings,
    InvariantSettings, AutoencoderConfigSettings, FewshotConfigSettings, ClusteringSettings,
    AveragingConfigSettings, TransferConfigSettings, RelionSettings, ReportSettings,
)


def _nested_type(cls, f) -> type[_Section] | None:
    """The section dataclass of a nested field (simulation.ctf), else None."""
    t = f.type if not isinstance(f.type, str) else globals().get(f.type)
    return t if isinstance(t, type) and issubclass(t, _Section) else None


# ----------------------------------------------------------------------- the reader table
def leaf_fields() -> dict[str, dataclasses.Field]:
    """{dotted key: its field} for every leaf key of every section."""
    out: dict[str, dataclasses.Field] = {}

    def walk(cls: type[_Section]) -> None:
        for f in dataclasses.fields(cls):
            sub = _nested_type(cls, f)
            if sub is not None:
                walk(sub)
            else:
                out[f"{cls.SECTION}.{f.name}" if cls.SECTION else f.name] = f
    for cls in SECTIONS:
        walk(cls)
    return out


def readers(key: str, modes: frozenset[str] | set[str] = frozenset()) -> set[str]:
    """The rules that read ``key`` in the given modes ('truth', 'simulation',
    'subtomograms', 'copick', 'pretrained')."""
    meta = leaf_fields()[key].metadata
    out = set(meta["rules"])
    for mode in ("truth", "simulation", "subtomograms", "copick", "pretrained"):
        if mode in modes:
            out |= set(meta[mode])
    return out


def shapes_dag(key: str) -> bool:
    return bool(leaf_fields()[key].metadata["shapes_dag"])


def _get(config: Mapping[str, Any], dotted: str) -> Any:
    node: Any = config
    for part in dotted.split("."):
        node = node[part]
    return node


def rule_params(config: Mapping[str, Any], rule: str, section: str,
                modes: frozenset[str] | set[str] = frozenset()) -> dict[str, Any]:
    """The keys of ``section`` that ``rule`` reads, as a dict (nested sections as dicts):
    what the rule gets as a param, so that a change of any other key does not rerun it."""
    prefix = f"{section}."
    out: dict[str, Any] = {}
    for key in leaf_fields():
        if key.startswith(prefix) and rule in readers(key, modes):
            node = out
            parts = key[len(prefix):].split(".")
            for p in parts[:-1]:
                node = node.setdefault(p, {})
            node[parts[-1]] = _get(config, key)
    if not out:
        raise TomoclustError(f"rule {rule} reads no key of config section {section!r} "
                             "(see the reads(...) of tomoclust/settings.py)")
    return out


def rule_value(config: Mapping[str, Any], rule: str, key: str,
               modes: frozenset[str] | set[str] = frozenset()) -> Any:
    """One key's value as a param of ``rule``; the table must say that the rule reads it."""
    if rule not in readers(key, modes):
        raise TomoclustError(f"rule {rule} is not declared to read config {key} (add it to the "
                             "key's reads(...) in tomoclust/settings.py)")
    return _get(config, key)


# ----------------------------------------------------------------------- parse-time checks
def apply_renames(config: dict) -> list[str]:
    """Move keys given under their old names (:data:`RENAMED`) to the new ones, with a
    deprecation warning each; both names at once is an error. Returns the moved keys."""
    moved = []
    for old, new in RENAMED.items():
        section, old_name = old.split(".")
        new_name = new.split(".")[1]
        sec = config.get(section)
        if not isinstance(sec, dict) or old_name not in sec:
            continue
        if new_name in sec:
            raise bad(old, f"renamed to {new}; give only {new}")
        sec[new_name] = sec.pop(old_name)
        warnings.warn(f"config {old} is renamed to {new} (same value, in voxels); the old name "
                      "will stop working in the next release", FutureWarning, stacklevel=2)
        moved.append(old)
    return moved


@dataclass(frozen=True)
class Settings:
    """Every section of a checked configuration."""

    workflow: WorkflowSettings
    simulation: SimulationSettings
    ingest: IngestSettings
    picking: PickingSettings
    extraction: ExtractionSettings
    evaluation: EvaluationSettings
    external: ExternalSettings
    copick: CopickConfigSettings
    disca: DiscaConfigSettings
    invariant: InvariantSettings
    autoencoder: AutoencoderConfigSettings
    fewshot: FewshotConfigSettings
    clustering: ClusteringSettings
    averaging: AveragingConfigSettings
    transfer: TransferConfigSettings
    relion: RelionSettings
    report: ReportSettings


def check_config(config: Mapping[str, Any]) -> Settings:
    """Build every section from a schema-validated configuration, running the cross-key
    checks; the first problem raises a :class:`TomoclustError` naming its key."""
    built = [cls.from_config(config) for cls in SECTIONS]
    return Settings(*built)
