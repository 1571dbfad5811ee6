"""The shipped pretrained encoder: weights + manifest (SHA-256 checked, clear errors), the
network, box preparation, the pretraining corpus and imaging, the supervised-contrastive loss,
and the workflow from a separate project directory (shipped resources found relative to the
workflow)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from tomoclust import TomoclustError
from tomoclust.features.encoder import (
    DEFAULT_MODEL,
    EncoderSettings,
    SubtomoEncoder,
    embed,
    load_encoder,
    manifest_path,
    nearest_prototype,
    prepare_boxes,
    resolve_model,
    save_encoder,
)
from tomoclust.features.pretrain import (
    HELD_OUT,
    Imager,
    ImagingSettings,
    pseudo_molecule,
    supcon_loss,
)
from tomoclust.simulate.density import bounding_radius

TINY = EncoderSettings(channels=(2, 4, 4, 4), hidden=8, embed_dim=4)


def _saved(tmp_path: Path, cfg: EncoderSettings = TINY) -> tuple[Path, SubtomoEncoder]:
    torch.manual_seed(0)
    model = SubtomoEncoder(cfg).eval()
    path = tmp_path / "enc.pt"
    save_encoder(path, model, {"name": "enc", "measured": {}})
    return path, model


# ------------------------------------------------------------------ weights and manifest
def test_save_load_roundtrip_gives_identical_embeddings(tmp_path):
    path, model = _saved(tmp_path)
    man = json.loads(manifest_path(path).read_text())
    assert man["file"] == "enc.pt" and len(man["sha256"]) == 64
    assert man["architecture"]["channels"] == [2, 4, 4, 4]
    loaded, man2 = load_encoder(path)
    assert man2["sha256"] == man["sha256"]
    x = np.random.default_rng(0).standard_normal((5, 32, 32, 32)).astype(np.float32)
    a, b = embed(model, x), embed(loaded, x)
    np.testing.assert_allclose(a, b, atol=1e-6)
    assert a.shape == (5, 4)
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)


def test_missing_weights_or_manifest_name_the_file(tmp_path):
    with pytest.raises(TomoclustError, match=r"nothere\.pt: encoder weights not found"):
        load_encoder(tmp_path / "nothere.pt")
    path, _ = _saved(tmp_path)
    manifest_path(path).unlink()
    with pytest.raises(TomoclustError, match=r"enc\.json: manifest of the encoder"):
        load_encoder(path)


def test_corrupt_or_replaced_weights_fail_the_sha256_check(tmp_path):
    path, _ = _saved(tmp_path)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(TomoclustError, match=r"enc\.pt: SHA-256 .* differs from its manifest"):
        load_encoder(path)
    path.write_bytes(b"")  # truncated to nothing
    with pytest.raises(TomoclustError, match=r"enc\.pt: SHA-256"):
        load_encoder(path)


def test_weights_of_another_architecture_are_a_clear_error(tmp_path):
    path, _ = _saved(tmp_path)
    man = json.loads(manifest_path(path).read_text())
    man["architecture"]["channels"] = [3, 4, 4, 4]  # manifest disagrees with the weights
    manifest_path(path).write_text(json.dumps(man))
    with pytest.raises(TomoclustError, match=r"enc\.pt: not loadable as a tomoclust encoder"):
        load_encoder(path)


def test_shipped_encoder_loads_and_holds_out_the_evaluation_classes(repo):
    _, man = load_encoder(repo / DEFAULT_MODEL)
    assert set(HELD_OUT) <= set(man["corpus"]["held_out"])
    assert not set(HELD_OUT) & set(man["corpus"]["atomic_models"])
    assert (repo / DEFAULT_MODEL).stat().st_size < 10 * 2**20  # a few MB
    for key in ("name", "sha256", "architecture", "training_command", "corpus", "date",
                "commit", "measured"):
        assert key in man, key


def test_resolve_model_prefers_the_working_directory(tmp_path, monkeypatch):
    base = tmp_path / "workflow"
    (base / "resources/models").mkdir(parents=True)
    (base / "resources/models/m.pt").write_bytes(b"x")
    proj = tmp_path / "proj"
    proj.mkdir()
    monkeypatch.chdir(proj)
    assert resolve_model("resources/models/m.pt", base) == base / "resources/models/m.pt"
    (proj / "resources/models").mkdir(parents=True)
    (proj / "resources/models/m.pt").write_bytes(b"y")
    assert resolve_model("resources/models/m.pt", base) == Path("resources/models/m.pt")


# ------------------------------------------------------------------------------ network
def test_embedding_ignores_box_scaling_and_rejects_tiny_boxes():
    torch.manual_seed(0)
    model = SubtomoEncoder(TINY).eval()
    x = np.random.default_rng(1).standard_normal((3, 32, 32, 32)).astype(np.float32)
    # standardised inside the network: an affine change of grey values changes nothing
    np.testing.assert_allclose(embed(model, x), embed(model, 5 * x + 2), atol=1e-5)
    with pytest.raises(ValueError, match="smaller than the encoder's minimum"):
        model(torch.zeros(2, 1, 8, 8, 8))


def test_prepare_boxes_resamples_to_the_encoder_grid():
    cfg = EncoderSettings()
    d, vs = 64, 6.0  # the same 384 Å field of view at half the voxel size
    ax = np.arange(d) - d // 2
    zz, yy, xx = np.meshgrid(ax, ax, ax, indexing="ij")
    sigma = 4.0  # voxels at 6 Å = 2 voxels at 12 Å
    blob = np.exp(-(zz**2 + yy**2 + (xx - 8) ** 2) / (2 * sigma**2)).astype(np.float32)
    out = prepare_boxes(blob[None], vs, cfg)
    assert out.shape == (1, 32, 32, 32)
    v = out[0]
    peak = np.unravel_index(np.argmax(v), v.shape)
    assert peak == (16, 16, 20)  # 8 voxels at 6 Å off-centre in x = 4 at 12 Å
    a = np.arange(32) - 16
    w = np.clip(v, 0, None)
    var_x = float((w.sum(axis=(0, 1)) * (a - 4) ** 2).sum() / w.sum())
    assert var_x == pytest.approx(2.0**2, rel=0.1)
    same = np.zeros((2, 32, 32, 32), np.float32)
    assert prepare_boxes(same, 12.0, cfg) is same


def test_nearest_prototype_probabilities():
    proto = np.eye(3)
    z = np.array([[0.9, 0.1, 0.0], [0.0, 0.2, 0.98]])
    p = nearest_prototype(z, proto)
    np.testing.assert_allclose(p.sum(axis=1), 1.0)
    assert p.argmax(axis=1).tolist() == [0, 2]


# ------------------------------------------------------------------ corpus and imaging
def test_pseudo_molecules_are_centred_varied_and_within_the_size_range():
    rng = np.random.default_rng(3)
    kinds, diam = set(), []
    for _ in range(40):
        d, kind = pseudo_molecule(rng, 32, 12.0, (5.0, 40.0))
        kinds.add(kind)
        diam.append(2 * bounding_radius(d) * 12.0 / 10.0)  # nm
        assert d.shape == (32, 32, 32) and np.all(d >= 0) and d.max() > 0
        idx = np.indices(d.shape).reshape(3, -1)
        com = (idx * d.ravel()).sum(axis=1) / d.sum()
        assert np.all(np.abs(com - 16) <= 1.0)
    assert len(kinds) >= 5
    # 98 % of the mass within 3-60 nm across (subunits and helices extend past the nominal
    # 5-40 nm; the box diagonal is 66 nm)
    assert 3.0 <= min(diam) and max(diam) <= 60.0 and np.ptp(diam) > 10.0


def test_imager_places_a_planted_blob_at_the_rotated_shifted_position():
    box = 32
    imager = Imager(box, 12.0, ImagingSettings())
    ax = torch.arange(box, dtype=torch.float32) - box // 2
    zz, yy, xx = torch.meshgrid(ax, ax, ax, indexing="ij")
    # a blob at +5 in x; 90° about z sends x to y; then shift (x, y, z) = (1, 0, -2)
    dens = torch.exp(-((xx - 5) ** 2 + yy**2 + zz**2) / 2.0)[None]
    rz = torch.tensor([[[0.0, -1, 0], [1, 0, 0], [0, 0, 1]]])
    out = imager.place(dens, rz, torch.tensor([[1.0, 0.0, -2.0]]))[0]
    peak = np.unravel_index(int(out.argmax()), out.shape)  # (z, y, x)
    assert peak == (16 - 2, 16 + 5, 16 + 1)


def test_imaged_boxes_are_standardised_and_noise_follows_the_snr():
    rng = np.random.default_rng(0)
    dens = torch.as_tensor(np.stack([pseudo_molecule(rng, 32, 12.0, (10, 20))[0]
                                     for _ in range(8)]))
    clean = ImagingSettings(snr=(1e4, 1e4), crowding=0.0, junk=0.0, max_shift=0.0)
    noisy = ImagingSettings(snr=(0.01, 0.01), crowding=0.0, junk=0.0, max_shift=0.0)
    out_c = Imager(32, 12.0, clean)(dens, np.random.default_rng(1))
    out_n = Imager(32, 12.0, noisy)(dens, np.random.default_rng(1))
    for out in (out_c, out_n):
        assert torch.allclose(out.mean(dim=(1, 2, 3)), torch.zeros(8), atol=1e-4)
        assert torch.allclose(out.std(dim=(1, 2, 3)), torch.ones(8), atol=1e-3)
    # two views of the same shape correlate strongly when clean, barely when noisy
    def corr(a, b):
        return float((a * b).mean())
    assert corr(out_c[0], Imager(32, 12.0, clean)(dens, np.random.default_rng(1))[0]) > 0.99
    assert abs(corr(out_n[0], out_c[0])) < 0.3


def test_supcon_loss_rewards_grouping_by_label():
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    grouped = torch.nn.functional.normalize(torch.eye(3)[labels] + 0.01, dim=1)
    mixed = torch.nn.functional.normalize(torch.eye(3)[torch.tensor([0, 1, 2, 0, 1, 2])] + 0.01,
                                          dim=1)
    assert supcon_loss(grouped, labels, 0.1) < supcon_loss(mixed, labels, 0.1) - 5
    same = torch.nn.functional.normalize(torch.ones(6, 3), dim=1)
    # identical embeddings: every other sample equally likely, -log(1 / 5)
    assert float(supcon_loss(same, labels, 0.1)) == pytest.approx(math.log(5), rel=1e-5)


# --------------------------------------------------------------------------------- workflow
def _project_config(repo: Path, proj: Path, methods: list[str], **transfer) -> Path:
    """tests/data/tiny_methods.yaml (+ the few-shot settings of tiny_fewshot.yaml) with the
    template paths left *relative*, as a project outside the repository would give them."""
    cfg = yaml.safe_load((repo / "tests/data/tiny_methods.yaml").read_text())
    cfg["fewshot"] = yaml.safe_load((repo / "tests/data/tiny_fewshot.yaml").read_text())[
        "fewshot"]
    cfg["methods"] = methods
    cfg["transfer"] = {"templates": {"3j9i": "resources/structures/3j9i.pdb.gz",
                                     "4v1w": "resources/structures/4v1w.cif.gz"},
                       "prototype_views": 4, **transfer}
    path = proj / "project.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


ALL_METHODS = ["invariant", "disca", "autoencoder", "protonet3d", "protonet_ce", "transfer"]


@pytest.mark.slow
@pytest.mark.parametrize("transfer_model", ["default", "retrain"])
def test_every_method_plans_from_a_separate_project_directory(tmp_path, repo, transfer_model):
    from test_workflow import _job_stats, _output, _snakemake

    proj = tmp_path / "proj"
    proj.mkdir()
    extra = {} if transfer_model == "default" else {"model": "retrain", "n_per_class": 4,
                                                    "snr_groups": 1}
    cfg = _project_config(repo, proj, ALL_METHODS, **extra)
    proc = _snakemake(repo, proj, "-n", "--configfile", str(cfg))
    assert proc.returncode == 0, _output(proc)[-3000:]
    jobs = _job_stats(_output(proc))
    for rule in ("features_invariant", "features_disca", "features_autoencoder",
                 "features_fewshot", "train_fewshot", "features_transfer",
                 "fewshot_template_density", "template_density"):
        assert jobs.get(rule, 0) >= 1, (rule, jobs)
    if transfer_model == "default":  # no training at run time
        assert "transfer_train" not in jobs and "transfer_training_set" not in jobs
    else:
        assert jobs.get("transfer_train") == 1


@pytest.mark.slow
def test_shipped_encoder_runs_from_a_separate_project_directory(tmp_path, repo):
    from test_workflow import _output, _snakemake

    proj = tmp_path / "proj"
    proj.mkdir()
    cfg = _project_config(repo, proj, ["transfer"])
    proc = _snakemake(repo, proj, "results/features/transfer/features.npy",
                      "--configfile", str(cfg), timeout=600)
    assert proc.returncode == 0, _output(proc)[-5000:]
    res = proj / "results/features/transfer"
    feats = np.load(res / "features.npy")
    from tomoclust.formats.star import read_star

    n = len(read_star(proj / "results/particles/particles.star"))
    assert feats.shape == (n, 64) and np.isfinite(feats).all()
    np.testing.assert_allclose(np.linalg.norm(feats, axis=1), 1.0, atol=1e-4)
    pred = pd.read_csv(res / "predictions.tsv", sep="\t")
    assert len(pred) == n and set(pred["class"]) <= {"3j9i", "4v1w"}
    info = json.loads((res / "info.json").read_text())
    man = json.loads(manifest_path(repo / DEFAULT_MODEL).read_text())
    assert info["model_sha256"] == man["sha256"]
    assert not (proj / "resources").exists()  # nothing trained or cached in the project


@pytest.mark.slow
def test_missing_model_is_a_parse_time_error_naming_it(tmp_path, repo):
    from test_workflow import _output, _snakemake

    proj = tmp_path / "proj"
    proj.mkdir()
    cfg = _project_config(repo, proj, ["transfer"], model="models/nothere.pt")
    proc = _snakemake(repo, proj, "-n", "--configfile", str(cfg))
    assert proc.returncode != 0
    assert "transfer.model: models/nothere.pt: encoder weights not found" in _output(proc)


def test_copied_model_is_used_from_the_project(tmp_path, repo):
    """A model in the project directory wins over the shipped one (resolve order)."""
    proj = tmp_path / "proj"
    (proj / "resources/models").mkdir(parents=True)
    shutil.copy(repo / DEFAULT_MODEL, proj / DEFAULT_MODEL)
    assert resolve_model(proj / DEFAULT_MODEL, repo) == proj / DEFAULT_MODEL


# ------------------------------------------------------------ few-shot and DISCA start from it
def test_disca_backbone_starts_from_the_encoder_and_fine_tunes(tmp_path):
    from tomoclust.features.disca import DiscaSettings, describe, run_disca
    from tomoclust.features.encoder import EncoderClassifier

    path, model = _saved(tmp_path)
    x = np.random.default_rng(0).standard_normal((30, 16, 16, 16)).astype(np.float32)
    clf = EncoderClassifier.from_file(path).eval()
    np.testing.assert_allclose(embed(clf.encoder, x), embed(model, x), atol=1e-6)
    params = DiscaSettings(pretrained=str(path), init="network", iterations=1, k_max=3,
                         pca_components=2, batch_size=10, head_warmup_steps=2)
    assert describe(params)["network"]["pretrained"] == json.loads(
        manifest_path(path).read_text())["sha256"]
    from tomoclust.features.train import Checkpoint

    ck = Checkpoint(tmp_path / "disca.pt", "fp")
    res = run_disca(x, params, "cpu", checkpoint=ck)
    assert res.features.shape == (30, 4)
    trained = ck.load()["model"]  # after the first iteration's training epoch
    changed = [k for k, v in model.state_dict().items()
               if v.dtype.is_floating_point and not torch.allclose(v, trained[f"encoder.{k}"])]
    assert changed  # the EM loop fine-tuned the backbone


@pytest.mark.parametrize("variant", ["protonet3d", "protonet_ce"])
def test_fewshot_on_the_frozen_encoder_keeps_its_weights(tmp_path, variant):
    from tomoclust.features.fewshot import FewShotSettings, train_protonet

    path, model = _saved(tmp_path)
    x = np.random.default_rng(0).standard_normal((24, 16, 16, 16)).astype(np.float32)
    y = np.repeat(np.arange(3), 8)
    params = FewShotSettings(variant=variant, pretrained=str(path), epochs=1,
                           episodes_per_epoch=2, shot=2, query=3)
    res = train_protonet(x, y, params, "cpu")
    for k, v in model.state_dict().items():
        assert torch.equal(v, res.model.encoder.net.state_dict()[k]), k
    assert len(res.history) == (0 if variant == "protonet3d" else 1)
    tuned = train_protonet(x, y, FewShotSettings(variant=variant, pretrained=str(path),
                                               finetune=True, epochs=1, episodes_per_epoch=2,
                                               shot=2, query=3), "cpu")
    assert any(not torch.equal(v, tuned.model.encoder.net.state_dict()[k])
               for k, v in model.state_dict().items() if v.dtype.is_floating_point)


def test_template_probabilities_follow_the_templates_in_order(repo):
    from tomoclust.features.encoder import template_probabilities, template_prototypes
    from tomoclust.simulate.density import template_density

    torch.manual_seed(0)
    model = SubtomoEncoder(TINY).eval()
    lib = {n: str(repo / "resources" / "structures" / f"{n}.pdb.gz") for n in ("3j9i", "1bxn")}
    ctf = {"defocus_um": 3.0, "voltage_kv": 300.0, "cs_mm": 2.7, "amplitude_contrast": 0.07}
    z = np.random.default_rng(1).standard_normal((5, 4))
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    p = template_probabilities(model, z, lib, 2, [-50.0, 50.0], ctf)
    dens = {n: template_density(path, TINY.voxel_size) for n, path in lib.items()}
    proto = template_prototypes(model, dens, 2, (-50.0, 50.0), ctf)
    np.testing.assert_allclose(p, nearest_prototype(z, proto), atol=1e-6)
    assert p.shape == (5, 2)


def test_embed_in_channels_last_order_equals_the_plain_forward_pass():
    """``embed`` runs the convolutions in channels-last memory order: same embeddings as the
    model's plain forward pass, and the model's parameters are left in their usual layout."""
    from tomoclust.features.encoder import embed

    torch.manual_seed(0)
    model = SubtomoEncoder(TINY).eval()
    x = np.random.default_rng(0).standard_normal((7, TINY.box, TINY.box, TINY.box))
    x = x.astype(np.float32)
    with torch.no_grad():
        ref = model(torch.as_tensor(x)[:, None]).numpy()
    np.testing.assert_allclose(embed(model, x, batch_size=3), ref, atol=1e-5)
    assert all(p.is_contiguous() for p in model.parameters())
