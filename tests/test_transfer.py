"""tomoclust.features.transfer: the network's shapes, the simulated training set, a planted-signal
training run, checkpoint resume, saving/loading, the cache keys, and the workflow rules on the
tiny configuration (tests/data/tiny_transfer.yaml) with their rerun triggers."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from conftest import DEVICES, Interrupt, interrupt_after
from scipy import ndimage
from sklearn.cluster import KMeans
from sklearn.metrics import v_measure_score
from test_workflow import _job_stats, _output, _snakemake
from test_workflow import _write_config as write_tiny_config
from tomoclust import TomoclustError
from tomoclust.features.train import Checkpoint, fingerprint
from tomoclust.features.transfer import (
    TransferNet,
    load_model,
    save_model,
    simulate_training_set,
    train_transfer,
    transfer_features,
    wedge_preserving_turn,
)
from tomoclust.features.transfer_settings import (
    NO_PARTICLE,
    TrainingSetSettings,
    TransferNetSettings,
    TransferSettings,
    model_key,
    training_set_key,
)
from tomoclust.formats.star import read_star
from tomoclust.numerics.fourier import wedge_mask
from tomoclust.simulate.tomograms import Template


def _shapes(d: int = 16) -> list[Template]:
    """Three very different planted shapes: a large ball, a long rod, a small dumbbell."""
    zz, yy, xx = np.indices((d, d, d)) - d // 2
    ball = (zz**2 + yy**2 + xx**2 <= 4.5**2)
    rod = (xx**2 + yy**2 <= 2.5**2) & (np.abs(zz) <= 6)
    dumbbell = ((zz - 4) ** 2 + yy**2 + xx**2 <= 2.2**2) | ((zz + 4) ** 2 + yy**2 + xx**2
                                                             <= 2.2**2)
    return [Template(nm, i + 1, ndimage.gaussian_filter(v.astype(np.float32), 0.7))
            for i, (nm, v) in enumerate([("ball", ball), ("rod", rod), ("dumbbell", dumbbell)])]


def _set_params(**kw) -> TrainingSetSettings:
    base = dict(box=16, voxel_size=12.0, n_per_class=40, snr_min=3.0, snr_max=10.0,
                snr_groups=2, max_shift_vox=0.5, seed=0)
    return TrainingSetSettings(**{**base, **kw})


def _params(**kw) -> TransferSettings:
    base = dict(width=8, stages=2, hidden=32, input_binning=1, epochs=3, batch_size=16,
                lr=3e-3, seed=0)
    return TransferSettings(**{**base, **kw})


@pytest.fixture(scope="module")
def easy_set():
    return simulate_training_set(_shapes(), _set_params())


# ------------------------------------------------------------------------------ the network
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("box,binning", [(16, 1), (32, 2), (24, 1)])
def test_network_shapes(device, box, binning):
    net = TransferNet(TransferNetSettings(n_classes=13, width=4, stages=3,
                                        input_binning=binning)).to(device).eval()
    x = torch.randn(5, 1, box, box, box, device=device)
    with torch.inference_mode():
        f = net.features(x)
        logits = net(x)
    assert f.shape == (5, 32) and f.device.type == torch.device(device).type
    assert logits.shape == (5, 13)
    assert torch.all(f >= 0)  # ReLU features
    # the box is standardised inside: scale and offset of the input do not matter
    with torch.inference_mode():
        torch.testing.assert_close(net.features(3.0 * x + 7.0), f, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="smaller than the network's minimum"):
        net.features(torch.randn(2, 1, 4, 4, 4, device=device))


def test_wedge_preserving_turn_keeps_the_wedge_and_the_centre():
    d = 16
    mask = wedge_mask((d, d, d), -60.0, 60.0, rfft=False)
    rng = np.random.default_rng(0)
    vols = np.real(np.fft.ifftn(np.fft.fftn(rng.standard_normal((8, d, d, d)), axes=(1, 2, 3))
                                * mask, axes=(1, 2, 3))).astype(np.float32)
    gen = torch.Generator().manual_seed(1)
    out = wedge_preserving_turn(torch.as_tensor(vols)[:, None], gen)[:, 0].numpy()
    changed = [i for i in range(8) if not np.allclose(out[i], vols[i])]
    assert len(changed) >= 3  # most boxes turned (3 of 4 choices turn)
    spec = np.abs(np.fft.fftn(out, axes=(1, 2, 3))) ** 2
    assert spec[:, ~mask.astype(bool)].sum() < 1e-8 * spec.sum()
    # a 180° turn about z keeps the voxel d // 2 in place and maps (y, x) to (-y, -x)
    one = np.zeros((1, 1, d, d, d), np.float32)
    one[0, 0, d // 2, d // 2 + 3, d // 2 + 1] = 1
    g = torch.Generator().manual_seed(0)
    seen = set()
    for _ in range(20):
        r = wedge_preserving_turn(torch.as_tensor(one), g)[0, 0].numpy()
        pos = tuple(int(a) - d // 2 for a in np.argwhere(r)[0])
        seen.add(pos)
    assert seen <= {(0, 3, 1), (0, -3, -1), (0, 3, -1), (0, -3, 1)} and len(seen) >= 3


# ------------------------------------------------------------------------- the training set
def test_training_set_classes_counts_and_snr(easy_set):
    ts = easy_set
    assert ts.class_names == [NO_PARTICLE, "ball", "rod", "dumbbell"]
    assert ts.stack.shape == (4 * 40, 16, 16, 16) and ts.stack.dtype == np.float32
    assert np.bincount(ts.labels).tolist() == [40, 40, 40, 40]
    assert ts.info["counts"] == [40, 40, 40, 40]
    # per-box standardised, like extraction
    np.testing.assert_allclose(ts.stack.mean(axis=(1, 2, 3)), 0, atol=1e-4)
    np.testing.assert_allclose(ts.stack.std(axis=(1, 2, 3)), 1, atol=1e-3)
    snr = ts.table["snr_nominal"]
    assert snr.between(3.0, 10.0).all() and snr.nunique() == 2
    # labels and names agree row by row
    assert (np.array(ts.class_names)[ts.labels] == ts.table["class_name"]).all()
    # same seed, same set; another seed, other boxes
    again = simulate_training_set(_shapes(), _set_params(n_per_class=4))
    np.testing.assert_array_equal(
        again.stack, simulate_training_set(_shapes(), _set_params(n_per_class=4)).stack)
    other = simulate_training_set(_shapes(), _set_params(n_per_class=4, seed=1))
    assert not np.allclose(again.stack, other.stack)


def test_no_particle_class_holds_noise_or_a_cut_off_neighbour():
    only_nb = simulate_training_set(_shapes(), _set_params(n_per_class=6, neighbour_fraction=1.0,
                                                           snr_min=1e4, snr_max=1e4))
    nb = only_nb.table[only_nb.table["class_name"] == NO_PARTICLE]
    assert nb["source"].str.startswith(f"{NO_PARTICLE}:").all()
    only_empty = simulate_training_set(_shapes(), _set_params(n_per_class=6,
                                                              neighbour_fraction=0.0))
    assert (only_empty.table.loc[only_empty.labels == 0, "source"] == "empty").all()
    # the neighbour's density sits off centre: at high SNR the centre of an empty box is
    # weaker than that of a centred particle
    d = 16
    zz, yy, xx = np.indices((d, d, d)) - d // 2
    core = zz**2 + yy**2 + xx**2 <= 2**2
    centre = np.abs(only_nb.stack[:, core]).mean(axis=1)
    assert centre[only_nb.labels == 0].mean() < centre[only_nb.labels == 1].mean()
    no_empty = simulate_training_set(_shapes(), _set_params(n_per_class=4, no_particle=False))
    assert no_empty.class_names == ["ball", "rod", "dumbbell"]
    with pytest.raises(TomoclustError, match="reserved"):
        simulate_training_set([Template(NO_PARTICLE, 1, _shapes()[0].density)], _set_params())
    with pytest.raises(TomoclustError, match="snr_min"):
        simulate_training_set(_shapes(), _set_params(snr_min=2.0, snr_max=1.0))


# ----------------------------------------------------------------------------------- training
def test_planted_classes_are_learned_and_features_separate_them(easy_set):
    ts = easy_set
    res = train_transfer(ts.stack, ts.labels, ts.class_names, _params(epochs=6), "cpu")
    hist = res.history
    assert hist["epoch"].tolist() == list(range(6))
    assert hist["loss"].iloc[-1] < 0.6 * hist["loss"].iloc[0]
    assert hist["val_accuracy"].iloc[-1] >= 0.85, hist.to_string()
    # fresh boxes (other rotations, noise and SNR draws): the classifier and the features
    test = simulate_training_set(_shapes(), _set_params(n_per_class=20, seed=5))
    feats, prob = transfer_features(res.model, test.stack)
    assert feats.shape == (80, 32) and prob.shape == (80, 4)
    np.testing.assert_allclose(prob.sum(1), 1, rtol=1e-5)
    assert (prob.argmax(1) == test.labels).mean() >= 0.85
    pred = KMeans(4, n_init=10, random_state=0).fit_predict(feats)
    assert v_measure_score(test.labels, pred) >= 0.7


def test_bad_labels_and_too_small_boxes_are_clear_errors(easy_set):
    ts = easy_set
    with pytest.raises(TomoclustError, match="labels outside"):
        train_transfer(ts.stack[:8], np.full(8, 7), ts.class_names, _params(), "cpu")
    with pytest.raises(TomoclustError, match="smaller than the network's minimum"):
        train_transfer(ts.stack[:8, :2, :2, :2], ts.labels[:8], ts.class_names, _params(), "cpu")


@pytest.mark.parametrize("device", DEVICES)
def test_interrupted_training_resumes(easy_set, device, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="tomoclust")
    ts = easy_set
    stack, labels = ts.stack[:64], ts.labels[:64]
    params = _params(epochs=3)
    ckpt = Checkpoint(tmp_path / "t.pt", fingerprint(params.as_dict()))
    with pytest.raises(Interrupt):
        train_transfer(stack, labels, ts.class_names, params, device, checkpoint=ckpt,
                       on_epoch=interrupt_after(0))
    assert int(ckpt.load()["epoch"]) == 0
    caplog.clear()
    seen = []
    res = train_transfer(stack, labels, ts.class_names, params, device, checkpoint=ckpt,
                         on_epoch=seen.append, history_path=tmp_path / "h.tsv")
    assert "resuming transfer training from checkpoint after epoch 0" in caplog.text
    assert seen == [1, 2]
    assert pd.read_csv(tmp_path / "h.tsv", sep="\t")["epoch"].tolist() == [0, 1, 2]
    if torch.device(device).type == "cpu":
        full = train_transfer(stack, labels, ts.class_names, params, device)
        np.testing.assert_allclose(res.history["loss"], full.history["loss"], rtol=1e-5)
        np.testing.assert_allclose(transfer_features(res.model, stack)[0],
                                   transfer_features(full.model, stack)[0], rtol=1e-4,
                                   atol=1e-5)
    # other settings: the checkpoint is not used
    caplog.clear()
    other = _params(epochs=1)
    train_transfer(stack, labels, ts.class_names, other, device,
                   checkpoint=Checkpoint(ckpt.path, fingerprint(other.as_dict())))
    assert "resuming" not in caplog.text and "belongs to another run" in caplog.text


def test_saved_model_gives_the_same_features(easy_set, tmp_path):
    ts = easy_set
    res = train_transfer(ts.stack[:32], ts.labels[:32], ts.class_names, _params(epochs=1), "cpu")
    save_model(tmp_path / "m.pt", res.model, ts.class_names, {"box": 16, "voxel_size": 12.0})
    model, names, extra = load_model(tmp_path / "m.pt")
    assert names == ts.class_names and extra == {"box": 16, "voxel_size": 12.0}
    np.testing.assert_array_equal(transfer_features(model, ts.stack[:10])[0],
                                  transfer_features(res.model, ts.stack[:10])[0])
    (tmp_path / "bad.pt").write_bytes(b"not a model")
    with pytest.raises(TomoclustError, match="not a tomoclust transfer model"):
        load_model(tmp_path / "bad.pt")
    with pytest.raises(TomoclustError, match="not found"):
        load_model(tmp_path / "missing.pt")


# -------------------------------------------------------------------------------- cache keys
def test_cache_keys_follow_templates_box_voxel_size_and_settings(tmp_path, repo):
    src = repo / "resources" / "structures"
    a, b = tmp_path / "a.pdb.gz", tmp_path / "b.pdb.gz"
    shutil.copy(src / "3qm1.pdb.gz", a)
    shutil.copy(src / "1s3x.pdb.gz", b)
    lib = {"x": a, "y": b}
    p = _set_params()
    key = training_set_key(lib, p)
    assert key == training_set_key(dict(lib), _set_params())  # deterministic
    # the same files elsewhere: same key (content, not location)
    moved = tmp_path / "moved"
    moved.mkdir()
    shutil.copy(a, moved / "a.pdb.gz")
    assert training_set_key({"x": moved / "a.pdb.gz", "y": b}, p) == key
    others = {
        "renamed class": training_set_key({"z": a, "y": b}, p),
        "reordered": training_set_key({"y": b, "x": a}, p),
        "fewer templates": training_set_key({"x": a}, p),
        "other file": training_set_key({"x": b, "y": b}, p),
        "box": training_set_key(lib, _set_params(box=24)),
        "voxel size": training_set_key(lib, _set_params(voxel_size=10.0)),
        "ctf": training_set_key(lib, _set_params(ctf={"defocus_um": 3.0})),
        "tilt range": training_set_key(lib, _set_params(tilt_min=-50.0)),
        "snr range": training_set_key(lib, _set_params(snr_max=20.0)),
    }
    assert len(set(others.values()) | {key}) == len(others) + 1, others
    # a changed file content changes the key
    shutil.copy(src / "3gl1.pdb.gz", a)
    assert training_set_key(lib, p) != key
    # model key: its set's key and the training settings
    mk = model_key(key, _params())
    assert mk == model_key(key, _params())
    assert model_key(key, _params(epochs=9)) != mk
    assert model_key(key, _params(width=4)) != mk
    assert model_key("another", _params()) != mk
    with pytest.raises(TomoclustError, match="not found"):
        training_set_key({"x": tmp_path / "missing.pdb"}, p)


# --------------------------------------------------------------------------------- workflow
def _write_config(repo: Path, path: Path, **changes) -> Path:
    """tests/data/tiny_transfer.yaml with absolute template paths and section__key changes."""
    return write_tiny_config(repo, path, "tiny_transfer.yaml", **changes)


@pytest.fixture(scope="module")
def transfer_run(tmp_path_factory, repo):
    workdir = tmp_path_factory.mktemp("tiny_transfer")
    config = _write_config(repo, workdir / "tiny_transfer.yaml")
    proc = _snakemake(repo, workdir, "--configfile", str(config), timeout=600)
    assert proc.returncode == 0, _output(proc)[-5000:]
    return workdir


TRANSFER_RULES = {"transfer_template_density", "transfer_training_set", "transfer_train"}


@pytest.mark.slow
def test_workflow_trains_caches_and_applies_the_encoder(transfer_run):
    res = transfer_run / "results"
    particles = read_star(res / "particles" / "particles.star")
    n = len(particles)
    assert n >= 10
    feats = np.load(res / "features" / "transfer" / "features.npy")
    assert feats.shape == (n, 32) and feats.dtype == np.float32 and np.isfinite(feats).all()
    pred = pd.read_csv(res / "features" / "transfer" / "predictions.tsv", sep="\t")
    assert pred["rlnImageName"].tolist() == particles["rlnImageName"].tolist()
    assert set(pred["class"]) <= {NO_PARTICLE, "3j9i", "4v1w"}
    np.testing.assert_allclose(pred[["p_no_particle", "p_3j9i", "p_4v1w"]].sum(axis=1), 1,
                               rtol=1e-5)
    info = json.loads((res / "features" / "transfer" / "info.json").read_text())
    assert info["device"] == "cpu" and info["class_names"] == [NO_PARTICLE, "3j9i", "4v1w"]

    # the cache: one keyed training set with its templates, one keyed model inside it
    sets = list((transfer_run / "resources" / "models" / "transfer").glob("set-*"))
    assert len(sets) == 1
    set_dir = sets[0]
    assert sorted(p.name for p in (set_dir / "templates").iterdir()) == ["3j9i.mrc", "4v1w.mrc"]
    table = read_star(set_dir / "training_set.star")
    assert len(table) == 3 * 24
    assert np.bincount(table["rlnClassNumber"]).tolist() == [0, 24, 24, 24]
    models = list(set_dir.glob("model-*/model.pt"))
    assert len(models) == 1
    hist = pd.read_csv(models[0].parent / "history.tsv", sep="\t")
    assert hist["epoch"].tolist() == [0, 1, 2]
    assert {"loss", "train_accuracy", "val_accuracy", "val_loss"} <= set(hist.columns)
    assert info["model"].endswith(str(models[0].relative_to(transfer_run)))

    # the shared clustering and evaluation picked the method up
    clusters = read_star(res / "cluster" / "transfer" / "clusters.star")
    assert len(clusters) == n
    m = pd.read_csv(res / "evaluation" / "transfer" / "metrics.tsv", sep="\t")
    assert m["method"].tolist() == ["transfer"] and m["n_classes"].iloc[0] == 2
    table = pd.read_csv(res / "evaluation" / "classification.tsv", sep="\t")
    assert table["method"].tolist() == ["transfer"]
    assert not list(transfer_run.rglob("*.part"))


def _dry_run_jobs(repo: Path, workdir: Path, **changes) -> dict[str, int]:
    cfg = _write_config(repo, workdir / "changed.yaml", **changes)
    proc = _snakemake(repo, workdir, "-n", "--configfile", str(cfg))
    assert proc.returncode == 0, _output(proc)
    return _job_stats(_output(proc))


@pytest.mark.slow
def test_cached_model_survives_picking_and_clustering_changes(transfer_run, repo):
    assert _dry_run_jobs(repo, transfer_run) == {}  # nothing to do
    jobs = _dry_run_jobs(repo, transfer_run, clustering__k_max=3)
    assert "cluster" in jobs and not (TRANSFER_RULES | {"features_transfer"}) & set(jobs), jobs
    jobs = _dry_run_jobs(repo, transfer_run, picking__threshold=3.2)
    assert "pick" in jobs and "features_transfer" in jobs, jobs
    assert not TRANSFER_RULES & set(jobs), jobs


@pytest.mark.slow
@pytest.mark.parametrize("change,retrained", [
    ({"transfer__epochs": 4}, {"transfer_train"}),
    ({"extraction__box": 24}, TRANSFER_RULES),
    ({"extraction__voxel_size": 14.0}, TRANSFER_RULES),
    ({"transfer__templates": {"4v1w": "resources/structures/4v1w.cif.gz"}},
     TRANSFER_RULES),
], ids=["epochs", "box", "voxel_size", "library"])
def test_library_box_voxel_size_and_training_changes_retrain(transfer_run, repo, change,
                                                            retrained):
    change = {k: ({nm: str(repo / p) for nm, p in v.items()} if k == "transfer__templates"
                  else v) for k, v in change.items()}
    jobs = _dry_run_jobs(repo, transfer_run, **change)
    assert retrained <= set(jobs), jobs
    assert not (TRANSFER_RULES - retrained) & set(jobs), jobs
    assert "features_transfer" in jobs


@pytest.mark.slow
def test_missing_library_file_is_a_clear_error(repo, tmp_path):
    cfg = _write_config(repo, tmp_path / "bad.yaml")
    data = yaml.safe_load(cfg.read_text())
    data["transfer"]["templates"]["ghost"] = str(tmp_path / "ghost.pdb")
    cfg.write_text(yaml.safe_dump(data, sort_keys=False))
    proc = _snakemake(repo, tmp_path, "-n", "--configfile", str(cfg))
    assert proc.returncode != 0
    assert "transfer.templates" in _output(proc) and "ghost.pdb: file not found" in _output(proc)


@pytest.mark.slow
def test_rerun_matrix(transfer_run, repo):
    """Every config key reruns exactly the rules declared to read it (tests/rerun_matrix.py),
    on the completed transfer run."""
    from rerun_matrix import check, schema_leaf_keys

    config = transfer_run / "tiny_transfer.yaml"
    problems = check(repo, transfer_run, config, schema_leaf_keys(repo), {"truth", "simulation"})
    assert not problems, problems


def test_training_set_files_and_the_model_input_check(tmp_path):
    from tomoclust.features.transfer import check_model_input, read_training_set
    from tomoclust.formats.stacks import StackWriter
    from tomoclust.formats.star import write_star

    write_star(tmp_path / "training_set.star",
               pd.DataFrame({"rlnImageName": ["1@training_set.mrcs", "2@training_set.mrcs"],
                             "rlnClassNumber": [2, 1]}))
    with StackWriter(tmp_path / "training_set.mrcs", 2, 8, 12.0) as w:
        w[:] = np.zeros((2, 8, 8, 8), np.float32)
    (tmp_path / "training_set.json").write_text(json.dumps(
        {"class_names": ["ball", "rod"], "params": {"box": 8}}))
    stack, vs, labels, names, params = read_training_set(tmp_path / "training_set.star",
                                                         tmp_path / "training_set.mrcs")
    assert labels.tolist() == [1, 0] and names == ["ball", "rod"] and params == {"box": 8}
    assert stack.shape == (2, 8, 8, 8) and vs == pytest.approx(12.0)
    write_star(tmp_path / "training_set.star", pd.DataFrame({"rlnClassNumber": [1, 2, 1]}))
    with pytest.raises(TomoclustError, match=r"has 3 rows but .* holds 2 volumes"):
        read_training_set(tmp_path / "training_set.star", tmp_path / "training_set.mrcs")
    extra = {"box": 16, "voxel_size": 12.0}
    check_model_input("m.pt", extra, "p.mrcs", 16, 12.005)  # within 0.1 %
    with pytest.raises(TomoclustError, match=r"particles are 16³ at 10 Å but the transfer model "
                                             r"m\.pt was trained on 16³ at 12 Å"):
        check_model_input("m.pt", extra, "p.mrcs", 16, 10.0)
    with pytest.raises(TomoclustError, match="particles are 24³"):
        check_model_input("m.pt", extra, "p.mrcs", 24, 12.0)
