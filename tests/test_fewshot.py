"""Few-shot ProtoNet3D / ProtoNet-CE: prototype and logit math on planted embeddings, the
episode sampler, the set attention, a short training run that must beat chance, checkpoint
resume, every support-STAR error, and (slow) the workflow on tests/data/tiny_fewshot.yaml.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import DEVICES, Interrupt, interrupt_after
from test_workflow import _write_config as write_tiny_config
from tomoclust import TomoclustError
from tomoclust.features.fewshot import (
    FewShotSettings,
    ProtoNet,
    SetAttention,
    classify,
    evaluate_episodes,
    prototypes,
    sample_episode,
    squared_distances,
    train_protonet,
    wedge_preserving_turns,
)
from tomoclust.features.fewshot_support import load_support_star, support_from_truth
from tomoclust.features.train import Checkpoint
from tomoclust.formats.star import read_star, write_star
from tomoclust.numerics.rotations import random_rotations, rotate_volume
from tomoclust.simulate.labelled_sets import simulate_labelled_set

# ------------------------------------------------------------------ prototypes and logits


def test_prototypes_are_class_means(rng):
    emb = rng.normal(size=(30, 7))
    lab = np.repeat([0, 1, 2], 10)
    rng.shuffle(lab)
    p = prototypes(torch.as_tensor(emb), torch.as_tensor(lab), 3).numpy()
    for c in range(3):
        np.testing.assert_allclose(p[c], emb[lab == c].mean(0), rtol=1e-12, atol=1e-12)
    with pytest.raises(TomoclustError, match="no support example"):
        prototypes(torch.as_tensor(emb), torch.as_tensor(lab), 4)


def test_squared_distances_match_cdist(rng):
    q, p = torch.as_tensor(rng.normal(size=(9, 5))), torch.as_tensor(rng.normal(size=(4, 5)))
    np.testing.assert_allclose(squared_distances(q, p).numpy(), torch.cdist(q, p).numpy() ** 2,
                               rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("variant", ["protonet3d", "protonet_ce"])
def test_query_equal_to_a_prototype_gets_it(rng, variant):
    """Planted, well separated prototypes: each prototype as a query scores highest on itself;
    ProtoNet3D's logit for it is exactly 0 (distance 0), the others are -distance²/T."""
    params = FewShotSettings(variant=variant, width=2, blocks=1, temperature=2.0, ce_weight=0.0)
    model = ProtoNet(8, params).eval()
    dim = model.dim
    protos = torch.as_tensor(rng.normal(scale=5.0, size=(4, dim)), dtype=torch.float32)
    logits = model.logits(protos, protos.clone())
    assert logits.shape == (4, 4)
    assert logits.argmax(1).tolist() == [0, 1, 2, 3]
    expected = -squared_distances(protos, protos) / 2.0
    torch.testing.assert_close(logits, expected)
    assert torch.all(logits.diagonal() == 0)
    # a noisy query still goes to the nearest prototype
    q = protos + 0.01 * torch.as_tensor(rng.normal(size=(4, dim)), dtype=torch.float32)
    assert model.logits(protos, q).argmax(1).tolist() == [0, 1, 2, 3]


def test_protonet_ce_mixes_plain_and_adapted_distances(rng):
    torch.manual_seed(0)
    p_half = FewShotSettings(variant="protonet_ce", width=2, blocks=1, ce_weight=0.5)
    model = ProtoNet(8, p_half).eval()
    protos = torch.randn(3, model.dim)
    q = torch.randn(5, model.dim)
    plain = -squared_distances(q, protos)
    s = torch.cat([protos.expand(5, 3, -1), q[:, None]], dim=1)
    a = model.attention(s)
    adapted = -((a[:, 3:] - a[:, :3]) ** 2).sum(-1)
    torch.testing.assert_close(model.logits(protos, q), 0.5 * plain + 0.5 * adapted)
    model.ce_weight = 0.0
    torch.testing.assert_close(model.logits(protos, q), plain)


def test_encoder_gets_gradient_only_through_the_plain_term():
    torch.manual_seed(0)
    params = FewShotSettings(variant="protonet_ce", width=2, blocks=1, ce_weight=1.0)
    model = ProtoNet(8, params)
    x = torch.randn(6, 1, 8, 8, 8)
    emb = model.embed(x)
    logits = model.logits(prototypes(emb[:2], torch.tensor([0, 1]), 2), emb[2:])
    logits.sum().backward()
    # β = 1: the logits are the adapted distances only, which see detached embeddings
    assert all(p.grad is None or float(p.grad.abs().sum()) == 0
               for p in model.encoder.parameters())
    assert any(p.grad is not None and float(p.grad.abs().sum()) > 0
               for p in model.attention.parameters())


def test_encoder_output_size_and_too_small_box():
    enc = ProtoNet(32, FewShotSettings(preset="published")).encoder
    assert enc.out_dim == 512  # 64 channels × 2³ at 32³: the paper's size
    assert enc(torch.zeros(2, 1, 32, 32, 32)).shape == (2, 512)
    assert ProtoNet(16, FewShotSettings(preset="light")).dim == 16
    with pytest.raises(TomoclustError, match="too small"):
        ProtoNet(8, FewShotSettings())
    with pytest.raises(TomoclustError, match="variant"):
        FewShotSettings(variant="protonet")


# ----------------------------------------------------------------------------- attention
def test_set_attention_shapes_and_permutation_equivariance(rng):
    torch.manual_seed(1)
    att = SetAttention(6).eval()
    x = torch.as_tensor(rng.normal(size=(3, 5, 6)), dtype=torch.float32)
    y = att(x)
    assert y.shape == (3, 5, 6)
    # LayerNorm output: zero mean, unit variance over the feature axis
    torch.testing.assert_close(y.mean(-1), torch.zeros(3, 5), atol=1e-5, rtol=0)
    perm = torch.tensor([3, 0, 4, 2, 1])
    torch.testing.assert_close(att(x[:, perm]), y[:, perm], atol=1e-5, rtol=1e-5)


def test_protonet_ce_logits_follow_a_permutation_of_the_prototypes(rng):
    torch.manual_seed(2)
    model = ProtoNet(8, FewShotSettings(variant="protonet_ce", width=2, blocks=1)).eval()
    protos = torch.as_tensor(rng.normal(size=(4, model.dim)), dtype=torch.float32)
    q = torch.as_tensor(rng.normal(size=(7, model.dim)), dtype=torch.float32)
    perm = torch.tensor([2, 0, 3, 1])
    torch.testing.assert_close(model.logits(protos[perm], q), model.logits(protos, q)[:, perm],
                               atol=1e-4, rtol=1e-5)


# ------------------------------------------------------------------------------ episodes
def test_episode_sampler_invariants(rng):
    labels = np.repeat([3, 5, 8, 9], [25, 30, 20, 12])  # class 9 too small for 5 + 15
    rng.shuffle(labels)
    for _ in range(50):
        e = sample_episode(labels, way=3, shot=5, query=15, rng=rng)
        assert len(set(e.classes.tolist())) == 3 and 9 not in e.classes
        assert e.support.shape == (15,) and e.query.shape == (45,)
        assert np.bincount(e.support_y).tolist() == [5, 5, 5]
        assert np.bincount(e.query_y).tolist() == [15, 15, 15]
        assert not set(e.support) & set(e.query)
        assert len(set(e.support)) == 15 and len(set(e.query)) == 45
        np.testing.assert_array_equal(labels[e.support], e.classes[e.support_y])
        np.testing.assert_array_equal(labels[e.query], e.classes[e.query_y])
    with pytest.raises(TomoclustError, match="only 3 class"):
        sample_episode(labels, way=4, shot=5, query=15, rng=rng)


# ------------------------------------------------------------------------------ training
@pytest.mark.parametrize("symmetric", [True, False])
def test_wedge_preserving_turns_are_180_degree_rotations(rng, symmetric):
    """Each output is the input turned by 180° about y (any wedge), or about x or z
    (symmetric tilt ranges only), or unchanged: compared with rotate_volume on an odd box,
    where the grid centre is exact; and the missing wedge maps onto itself."""
    from tomoclust.numerics.fourier import wedge_mask

    x = torch.as_tensor(rng.normal(size=(64, 1, 9, 9, 9)), dtype=torch.float32)
    y = wedge_preserving_turns(x, np.random.default_rng(0), symmetric_wedge=symmetric)
    turns = [np.eye(3)] + [np.diag(d) for d in ([-1, 1, -1], [1, -1, -1], [-1, -1, 1])]
    seen = set()
    for i in range(len(x)):
        vol = x[i, 0].numpy()
        hits = [k for k, m in enumerate(turns)
                if np.allclose(rotate_volume(vol, m, order=1), y[i, 0].numpy(), atol=1e-5)]
        assert len(hits) == 1, i
        seen.add(hits[0])
    assert seen == ({0, 1, 2, 3} if symmetric else {0, 1})
    # which turns keep which wedge: flips of the centred Fourier grid (z, y, x axes)
    def flipped(w, axes):
        return np.fft.ifftshift(np.flip(np.fft.fftshift(w), axes))

    sym = wedge_mask((9, 9, 9), -60, 60, rfft=False)
    asym = wedge_mask((9, 9, 9), -45, 60, rfft=False)
    assert np.array_equal(flipped(asym, (0, 2)), asym)  # about y: any wedge
    for axes in ((0, 1), (1, 2)):  # about x, about z: the symmetric one only
        assert np.array_equal(flipped(sym, axes), sym)
        assert not np.array_equal(flipped(asym, axes), asym)


def _shapes(n_per_class: int, box: int, rng: np.random.Generator, noise: float = 0.6
            ) -> tuple[np.ndarray, np.ndarray]:
    """Randomly rotated ball / rod / disc (equal volume-ish), plus white noise, normalised."""
    c = box // 2
    z, y, x = np.indices((box, box, box)) - c
    shapes = [
        (x**2 + y**2 + z**2 <= 3.5**2),  # ball
        (x**2 / 6.5**2 + y**2 / 1.6**2 + z**2 / 1.6**2 <= 1),  # rod
        (x**2 / 5.5**2 + y**2 / 5.5**2 + z**2 / 1.2**2 <= 1),  # disc
    ]
    vols, labels = [], []
    for k, s in enumerate(shapes):
        for m in random_rotations(n_per_class, rng):
            v = rotate_volume(s.astype(np.float32), m, order=1)
            v = v + noise * rng.standard_normal(v.shape)
            vols.append((v - v.mean()) / v.std())
            labels.append(k + 1)
    return np.asarray(vols, dtype=np.float32), np.asarray(labels)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("variant", ["protonet3d", "protonet_ce"])
def test_short_training_beats_chance_on_easy_classes(variant, device):
    rng = np.random.default_rng(0)
    train_x, train_y = _shapes(20, 16, rng, noise=0.1)
    test_x, test_y = _shapes(12, 16, rng, noise=0.1)
    torch.set_num_threads(1)
    params = FewShotSettings(variant=variant, width=8, way=3, shot=3, query=5, epochs=4,
                           episodes_per_epoch=10, lr_step=2, seed=0)
    res = train_protonet(train_x, train_y, params, device)
    assert res.history["epoch"].tolist() == [0, 1, 2, 3]
    assert res.history["lr"].tolist() == pytest.approx([1e-3, 5e-4, 5e-4, 2.5e-4])
    # held-out volumes, 3-way 3-shot episodes: chance is 1/3
    acc = evaluate_episodes(res.model, test_x, test_y, way=3, shot=3, query=5, n_episodes=30,
                            seed=1, device=device)
    assert acc.mean() > 0.8, acc.mean()
    # workflow-style classification against a support set of 3 volumes per class
    sup = np.concatenate([np.flatnonzero(test_y == c)[:3] for c in (1, 2, 3)])
    pred = classify(res.model, test_x[sup], test_y[sup], test_x, device)
    assert pred.features.shape == (len(test_x), res.model.dim)
    assert pred.features.dtype == np.float32
    assert set(pred.labels) <= {1, 2, 3}
    np.testing.assert_allclose(pred.probabilities.sum(1), 1.0, atol=1e-5)
    assert np.all((pred.confidence >= 1 / 3 - 1e-6) & (pred.confidence <= 1 + 1e-9))
    np.testing.assert_allclose(pred.confidence, pred.probabilities.max(1), atol=1e-6)
    assert (pred.labels == test_y).mean() > 0.8


@pytest.mark.parametrize("device", DEVICES)
def test_killed_training_resumes_to_the_same_model(tmp_path, caplog, device):
    tol = 1e-6 if device == "cpu" else 1e-4  # cuDNN backward sums in any order
    rng = np.random.default_rng(3)
    x, y = _shapes(8, 16, rng)
    params = FewShotSettings(variant="protonet_ce", width=4, way=3, shot=2, query=3, epochs=3,
                           episodes_per_epoch=3, lr_step=1, seed=5)
    full = train_protonet(x, y, params, device)

    ckpt = Checkpoint(tmp_path / "ck.pt", "fp-a")
    with pytest.raises(Interrupt):
        train_protonet(x, y, params, device, checkpoint=ckpt, on_epoch=interrupt_after(0))
    assert ckpt.load() is not None and int(ckpt.load()["epoch"]) == 0
    with caplog.at_level("INFO"):
        resumed = train_protonet(x, y, params, device, checkpoint=ckpt,
                                 history_path=tmp_path / "history.tsv")
    assert "resuming few-shot training from checkpoint after epoch 0" in caplog.text
    a, b = full.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=10 * tol, atol=tol)
    hist = pd.read_csv(tmp_path / "history.tsv", sep="\t")
    assert hist["epoch"].tolist() == [0, 1, 2]
    np.testing.assert_allclose(hist["loss"], full.history["loss"], rtol=10 * tol)
    # a checkpoint of other settings is not used
    other = Checkpoint(tmp_path / "ck.pt", "fp-b")
    assert other.load() is None


# ---------------------------------------------------------------------------- support sets
def _particles() -> pd.DataFrame:
    return pd.DataFrame({
        "rlnImageName": [f"{i}@particles.mrcs" for i in range(1, 7)],
        "rlnTomoName": ["t1", "t1", "t1", "t2", "t2", "t2"],
        "rlnCoordinateX": [10.0, 40.0, 70.0, 10.0, 40.0, 70.0],
        "rlnCoordinateY": [20.0] * 6,
        "rlnCoordinateZ": [5.0] * 6,
    })


def _star(tmp_path: Path, rows: dict, name: str = "support.star") -> Path:
    path = tmp_path / name
    write_star(path, pd.DataFrame(rows))
    return path


def test_support_by_image_name_and_by_coordinates(tmp_path):
    p = _star(tmp_path, {"rlnImageName": ["5@results/particles/particles.mrcs",
                                          "2@particles.mrcs", "3@particles.mrcs"],
                         "rlnClassNumber": [2, 1, 1],
                         "rlnClassName": ["ribosome", "proteasome", "proteasome"]})
    s = load_support_star(p, _particles())
    assert s.rows.tolist() == [4, 1, 2]
    assert s.labels.tolist() == [2, 1, 1]
    assert s.names == {1: "proteasome", 2: "ribosome"}
    assert s.table["rlnImageName"].tolist() == ["5@particles.mrcs", "2@particles.mrcs",
                                                "3@particles.mrcs"]
    # coordinates (voxels of the tomogram), tolerance in Å with 10 Å voxels
    p = _star(tmp_path, {"rlnTomoName": ["t2", "t1"], "rlnCoordinateX": [41.0, 69.0],
                         "rlnCoordinateY": [21.0, 20.0], "rlnCoordinateZ": [5.0, 6.0],
                         "rlnClassNumber": [1, 2]}, "coords.star")
    s = load_support_star(p, _particles(), tolerance_angst=20.0, tomo_voxel_size=10.0,
                          names={1: "a", "2": "b"})
    assert s.rows.tolist() == [4, 2]
    assert s.names == {1: "a", 2: "b"}


@pytest.mark.parametrize("rows,kwargs,message", [
    ({"rlnImageName": ["1@particles.mrcs"]}, {}, "missing column rlnClassNumber"),
    ({"rlnClassNumber": [1, 2]}, {}, r"no particle reference.*rlnImageName"),
    ({"rlnTomoName": ["t1"], "rlnCoordinateX": [1.0], "rlnClassNumber": [1]}, {},
     r"missing \['rlnCoordinateY', 'rlnCoordinateZ'\]"),
    ({"rlnImageName": ["1@particles.mrcs", "2@particles.mrcs"],
      "rlnClassNumber": [1.0, float("nan")]}, {}, r"row 2: rlnClassNumber is empty/NaN"),
    ({"rlnImageName": ["1@particles.mrcs", "2@particles.mrcs"], "rlnClassNumber": [1, 0]}, {},
     r"row 2: rlnClassNumber must be an integer ≥ 1"),
    ({"rlnImageName": ["1@particles.mrcs", "2@particles.mrcs"], "rlnClassNumber": [1, 1.5]},
     {}, r"row 2: rlnClassNumber must be an integer"),
    ({"rlnImageName": ["1@particles.mrcs", "2@particles.mrcs"], "rlnClassNumber": [1, 3]}, {},
     r"class\(es\) \[2\] have no example"),
    ({"rlnImageName": ["1@particles.mrcs", "2@particles.mrcs"], "rlnClassNumber": [1, 2]},
     {"n_classes": 3}, r"class\(es\) \[3\] have no example"),
    ({"rlnImageName": ["1@particles.mrcs", "2@particles.mrcs"], "rlnClassNumber": [1, 4]},
     {"n_classes": 3}, r"row 2: class 4 but only 3 classes"),
    ({"rlnImageName": ["1@particles.mrcs", "9@particles.mrcs"], "rlnClassNumber": [1, 2]}, {},
     r"row 2: rlnImageName '9@particles.mrcs' refers to no particle"),
    ({"rlnImageName": ["1@particles.mrcs", "2@other.mrcs"], "rlnClassNumber": [1, 2]}, {},
     r"row 2: rlnImageName '2@other.mrcs' refers to no particle"),
    ({"rlnImageName": ["1@particles.mrcs", "particles.mrcs"], "rlnClassNumber": [1, 2]}, {},
     r"row 2: rlnImageName 'particles.mrcs' is not of the form"),
    ({"rlnImageName": ["1@particles.mrcs", "1@particles.mrcs", "2@particles.mrcs"],
      "rlnClassNumber": [1, 2, 2]}, {}, r"row 2: particle 1 is also row 1 with another class"),
    ({"rlnImageName": ["1@particles.mrcs", "2@particles.mrcs", "3@particles.mrcs"],
      "rlnClassNumber": [1, 2, 1], "rlnClassName": ["a", "b", "c"]}, {},
     r"row 3: class 1 is named 'c' here but 'a'"),
    ({"rlnTomoName": ["t3"], "rlnCoordinateX": [10.0], "rlnCoordinateY": [20.0],
      "rlnCoordinateZ": [5.0], "rlnClassNumber": [1]}, {"tomo_voxel_size": 10.0},
     r"row 1: tomogram 't3' has no particle"),
    ({"rlnTomoName": ["t1", "t1"], "rlnCoordinateX": [10.0, 55.0], "rlnCoordinateY": [20.0] * 2,
      "rlnCoordinateZ": [5.0] * 2, "rlnClassNumber": [1, 2]}, {"tomo_voxel_size": 10.0},
     r"row 2: no particle of t1 within 30 Å of \(55, 20, 5\); the nearest is 150 Å away"),
])
def test_support_errors_name_file_and_row(tmp_path, rows, kwargs, message):
    path = _star(tmp_path, rows)
    with pytest.raises(TomoclustError, match=message) as err:
        load_support_star(path, _particles(), **kwargs)
    assert str(path) in str(err.value)


def test_support_file_missing_or_empty(tmp_path):
    with pytest.raises(TomoclustError, match=r"does not exist|not found|no such"):
        load_support_star(tmp_path / "nope.star", _particles())
    path = _star(tmp_path, {"rlnImageName": pd.Series([], dtype=str),
                            "rlnClassNumber": pd.Series([], dtype=int)})
    with pytest.raises(TomoclustError, match=r"few-shot support .*: no rows"):
        load_support_star(path, _particles())


def test_support_from_truth_is_a_valid_user_star(tmp_path):
    parts = _particles()
    parts["rlnCenteredCoordinateXAngst"] = parts["rlnCoordinateX"] * 10
    parts["rlnCenteredCoordinateYAngst"] = 0.0
    parts["rlnCenteredCoordinateZAngst"] = 0.0
    truth = parts[["rlnTomoName"] + [f"rlnCenteredCoordinate{a}Angst" for a in "XYZ"]].copy()
    truth["rlnCenteredCoordinateXAngst"] += 15.0  # within the 60 Å tolerance
    truth["rlnClassNumber"] = [1, 2, 1, 2, 1, 2]
    truth["tclTemplateName"] = ["p", "r", "p", "r", "p", "r"]
    df = support_from_truth(parts, truth, 2, 60.0, seed=0)
    assert df["rlnClassNumber"].value_counts().to_dict() == {1: 2, 2: 2}
    path = tmp_path / "s.star"
    write_star(path, df)
    s = load_support_star(path, parts)
    assert s.names == {1: "p", 2: "r"}
    np.testing.assert_array_equal(truth["rlnClassNumber"].to_numpy()[s.rows], s.labels)


def _write_stack(path: Path, n: int, box: int = 8) -> None:
    from tomoclust.formats.stacks import StackWriter

    with StackWriter(path, n, box, 12.0) as w:
        w[:] = np.stack([np.full((box,) * 3, i, np.float32) for i in range(n)])


def test_support_examples_from_the_particles_or_a_simulated_set(tmp_path):
    from tomoclust.features.fewshot_support import support_examples
    from tomoclust.formats.star import optics_table

    particles = _particles()
    stack = np.stack([np.full((8, 8, 8), i, np.float32) for i in range(6)])
    write_star(tmp_path / "particles.star", {"optics": optics_table(10.0, 12.0, 8),
                                             "particles": particles})
    star = _star(tmp_path, {"rlnTomoName": ["t2", "t1"], "rlnCoordinateX": [41.0, 69.0],
                            "rlnCoordinateY": [21.0, 20.0], "rlnCoordinateZ": [5.0, 6.0],
                            "rlnClassNumber": [1, 2]})
    # coordinates in voxels of the 10 Å tomogram (the optics' rlnTomoTiltSeriesPixelSize)
    vols, sup = support_examples(particles, stack, class_names={"2": "b"}, support_star=star,
                                 particle_star=tmp_path / "particles.star",
                                 tolerance_angst=20.0)
    assert sup.rows.tolist() == [4, 2] and vols[:, 0, 0, 0].tolist() == [4.0, 2.0]
    assert sup.names == {1: "class1", 2: "b"}
    # a simulated support set: its own stack, names from the set unless overridden
    sim = _star(tmp_path, {"rlnImageName": ["1@sim.mrcs", "2@sim.mrcs", "3@sim.mrcs"],
                           "rlnClassNumber": [1, 2, 2], "rlnClassName": ["x", "y", "y"]},
                "sim.star")
    _write_stack(tmp_path / "sim.mrcs", 3)
    vols, sup = support_examples(particles, stack, class_names={1: "ribo"}, sim_star=sim,
                                 sim_stack=tmp_path / "sim.mrcs")
    assert sup.rows is None and sup.labels.tolist() == [1, 2, 2] and len(vols) == 3
    assert sup.names == {1: "ribo", 2: "y"}
    assert sup.table["rlnClassName"].tolist() == ["ribo", "y", "y"]


def test_fewshot_labels_table_and_summary_mark_the_support():
    from tomoclust.features.fewshot import Prediction
    from tomoclust.features.fewshot_support import (
        SupportSet,
        fewshot_labels_table,
        fewshot_summary,
    )

    particles = _particles().assign(tclDogScore=1.0)
    pred = Prediction(features=np.zeros((6, 4), np.float32), labels=np.array([1, 1, 2, 2, 2, 1]),
                      confidence=np.full(6, 0.75),
                      probabilities=np.tile([[0.75, 0.25]], (6, 1)))
    sup = SupportSet(np.array([4, 1]), np.array([2, 1]), {1: "a", 2: "b"},
                     pd.DataFrame({"tclParticleIndex": [5, 2], "rlnClassNumber": [2, 1]}))
    out = fewshot_labels_table(particles, pred, sup)
    assert "tclDogScore" not in out
    assert list(out.columns[-6:]) == ["rlnClassNumber", "rlnClassName", "tclClassProbability",
                                      "tclProbabilityClass1", "tclProbabilityClass2",
                                      "tclSupport"]
    assert out["rlnClassName"].tolist() == ["a", "a", "b", "b", "b", "a"]
    assert out["tclSupport"].tolist() == [0, 1, 0, 0, 1, 0]
    info = fewshot_summary(pred, sup, "protonet3d")
    assert info["class_sizes"] == {"a": 3, "b": 3} and info["support_source"] == "star"
    assert info["n_particles"] == 6 and info["n_support"] == 2 and info["embedding_dim"] == 4
    sim = SupportSet(None, np.array([1, 2]), {1: "a", 2: "b"}, pd.DataFrame())
    assert fewshot_labels_table(particles, pred, sim)["tclSupport"].sum() == 0
    assert fewshot_summary(pred, sim, "protonet3d")["support_source"] == "simulated"


def test_training_set_and_trained_model_must_fit_the_data(tmp_path):
    from tomoclust.features.fewshot import load_trained
    from tomoclust.features.fewshot_support import load_training_set

    star = _star(tmp_path, {"rlnImageName": ["1@t.mrcs", "2@t.mrcs", "3@t.mrcs"],
                            "rlnClassNumber": [2, 1, 2], "rlnClassName": ["y", "x", "y"]})
    _write_stack(tmp_path / "t.mrcs", 3)
    stack, vs, labels, names = load_training_set(star, tmp_path / "t.mrcs")
    assert stack.shape == (3, 8, 8, 8) and vs == pytest.approx(12.0)
    assert labels.tolist() == [2, 1, 2] and names == {2: "y", 1: "x"}
    _write_stack(tmp_path / "short.mrcs", 2)
    with pytest.raises(TomoclustError, match=r"has 3 rows but .*short\.mrcs holds 2 volumes"):
        load_training_set(star, tmp_path / "short.mrcs")
    params = FewShotSettings(variant="protonet_ce", preset="tiny", width=4)
    model = ProtoNet(16, params)
    torch.save(model.state_dict(), tmp_path / "model.pt")
    info = {"box": 16, "voxel_size": 12.0, "params": {"preset": "tiny", "width": 4}}
    loaded, got = load_trained(str(tmp_path / "model.pt"), info, "p.mrcs", 16, 12.0,
                               "protonet_ce", "cpu")
    assert got.variant == "protonet_ce" and got.width == 4
    for a, b in zip(loaded.state_dict().values(), model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    with pytest.raises(TomoclustError, match=r"trained on 16³ boxes at 12.0 Å but p.mrcs "
                                             r"holds 32³ at 12.0 Å"):
        load_trained(str(tmp_path / "model.pt"), info, "p.mrcs", 32, 12.0, "protonet3d", "cpu")


def test_simulated_labelled_set_covers_every_class_at_every_snr():
    from tomoclust.simulate.tomograms import Template

    z, y, x = np.indices((12, 12, 12)) - 6
    ball = np.exp(-(x**2 + y**2 + z**2) / 8.0)
    rod = np.exp(-(x**2 / 20.0 + y**2 / 2.0 + z**2 / 2.0))
    temps = [Template("ball", 1, ball), Template("rod", 2, rod)]
    stack, truth = simulate_labelled_set(temps, 4, 12, 10.0, [1.0, 0.1], seed=3)
    assert stack.shape == (16, 12, 12, 12) and stack.dtype == np.float32
    counts = truth.groupby(["tclSnrNominal", "tclTemplateName"]).size().to_dict()
    assert counts == {(1.0, "ball"): 4, (1.0, "rod"): 4, (0.1, "ball"): 4, (0.1, "rod"): 4}
    assert dict(zip(truth["tclTemplateName"], truth["rlnClassNumber"], strict=True)) == {
        "ball": 1, "rod": 2}
    np.testing.assert_allclose(stack.std(axis=(1, 2, 3)), 1.0, atol=1e-4)  # normalised boxes
    # lower SNR, noisier boxes: the class mean explains less of each box
    lo, hi = stack[truth["tclSnrNominal"] == 0.1], stack[truth["tclSnrNominal"] == 1.0]
    assert np.abs(lo.mean(0)).mean() < np.abs(hi.mean(0)).mean()


# ------------------------------------------------------------------------------- workflow
VARIANTS = ["protonet3d", "protonet_ce"]


def _write_config(repo: Path, path: Path, **changes) -> Path:
    return write_tiny_config(repo, path, "tiny_fewshot.yaml", **changes)


def _smk(repo: Path, workdir: Path, *args: str, timeout: int = 600):
    from test_workflow import _snakemake

    return _snakemake(repo, workdir, *args, timeout=timeout)


def _out(proc) -> str:
    return proc.stdout + proc.stderr


def _jobs(repo: Path, workdir: Path, name: str, **changes) -> dict[str, int]:
    from test_workflow import _job_stats

    cfg = _write_config(repo, workdir / name, **changes)
    proc = _smk(repo, workdir, "-n", "--configfile", str(cfg))
    assert proc.returncode == 0, _out(proc)
    return _job_stats(_out(proc))


@pytest.fixture(scope="module")
def fewshot_run(tmp_path_factory, repo):
    workdir = tmp_path_factory.mktemp("tiny_fewshot")
    config = _write_config(repo, workdir / "tiny_fewshot.yaml")
    proc = _smk(repo, workdir, "--configfile", str(config))
    assert proc.returncode == 0, _out(proc)[-5000:]
    return workdir


@pytest.mark.slow
def test_workflow_outputs(fewshot_run):
    res = fewshot_run / "results"
    particles = read_star(res / "particles" / "particles.star")
    n = len(particles)
    assert n >= 10
    support = read_star(res / "fewshot" / "support_from_truth.star")
    assert support["rlnClassNumber"].value_counts().to_dict() == {1: 2, 2: 2}
    train = read_star(res / "fewshot" / "training" / "particles.star")
    assert sorted(set(train["rlnClassName"])) == ["1bxn", "1qvr", "3d2f"]
    for v in VARIANTS:
        d = res / "features" / v
        feats = np.load(d / "features.npy")
        assert feats.shape == (n, 8) and feats.dtype == np.float32
        assert np.all(np.isfinite(feats))
        lab = read_star(d / "labels.star")
        assert lab["rlnImageName"].tolist() == particles["rlnImageName"].tolist()
        assert set(lab["rlnClassNumber"]) <= {1, 2}
        assert set(lab["rlnClassName"]) <= {"3j9i", "4v1w"}
        conf = lab["tclClassProbability"].to_numpy(float)
        probs = lab[["tclProbabilityClass1", "tclProbabilityClass2"]].to_numpy(float)
        np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
        np.testing.assert_allclose(conf, probs.max(1), atol=1e-6)
        assert np.all(conf >= 0.5 - 1e-6)
        flagged = set(lab.loc[lab["tclSupport"] == 1, "rlnImageName"])
        assert flagged == set(support["rlnImageName"])
        info = json.loads((d / "info.json").read_text())
        assert info["device"] == "cpu" and info["n_support"] == 4
        assert info["support_source"] == "star"
        tinfo = json.loads((d / "training.json").read_text())
        assert tinfo["variant"] == v and tinfo["box"] == 16 and tinfo["embedding_dim"] == 8
        hist = pd.read_csv(d / "history.tsv", sep="\t")
        assert hist["epoch"].tolist() == [0, 1]
        state = torch.load(d / "model.pt", weights_only=True)
        assert ("attention.q.weight" in state) == (v == "protonet_ce")
        assert not (res / "checkpoints" / f"{v}.pt").exists()  # removed once finished
        clusters = read_star(res / "cluster" / v / "clusters.star")
        assert len(clusters) == n
        m = pd.read_csv(res / "evaluation" / v / "fewshot_metrics.tsv", sep="\t")
        assert m["method"].iloc[0] == v and m["n_support"].iloc[0] == 4
        assert m["n"].iloc[0] + m["n_unmatched_picks"].iloc[0] + 4 == n
        # two training epochs promise no accuracy (measured 0.29 and 0.50 on 14 particles):
        # check the numbers against the written confusion matrix instead, and the softmax
        # bound: the winning class of C has probability at least 1/C
        cm = pd.read_csv(res / "evaluation" / v / "fewshot_confusion.tsv", sep="\t",
                         index_col=0)
        direct = sum(cm.loc[c, c] for c in cm.index if c in cm.columns) / cm.to_numpy().sum()
        assert m["accuracy_direct"].iloc[0] == pytest.approx(direct, abs=1e-9)
        assert m["accuracy"].iloc[0] >= m["accuracy_direct"].iloc[0] - 1e-9  # matched >= as-is
        assert m["mean_confidence"].iloc[0] >= 1 / m["n_classes"].iloc[0] - 1e-6
        assert (res / "evaluation" / v / "fewshot_confusion.png").stat().st_size > 0
        assert (res / "evaluation" / v / "metrics.tsv").is_file()
    table = pd.read_csv(res / "evaluation" / "classification.tsv", sep="\t")
    assert table["method"].tolist() == VARIANTS
    assert not list(res.rglob("*.part"))


@pytest.mark.slow
def test_workflow_reruns(fewshot_run, repo):
    proc = _smk(repo, fewshot_run, "-n", "--configfile",
                str(fewshot_run / "tiny_fewshot.yaml"))
    assert "Nothing to be done" in _out(proc), _out(proc)
    # another support set: reclassify, do not retrain
    jobs = _jobs(repo, fewshot_run, "support.yaml", fewshot__support_from_truth=3)
    assert jobs == {"fewshot_support_from_truth": 1, "features_fewshot": 2, "cluster": 2,
                    "evaluate_classification": 2, "evaluate_fewshot": 2,
                    "summarise_classification": 1, "all": 1,
                    # the report's figures and tables of the changed methods
                    "plot_embedding": 2, "summarise_clusters": 1,
                    "classification_table": 1, "average_summary": 2,
                    "averaging_table": 2, "export_embedding": 2, "export_relion": 2,
                    "report_overview": 1}, jobs
    # another training schedule: retrain both, same training set
    jobs = _jobs(repo, fewshot_run, "epochs.yaml", fewshot__epochs=3)
    assert jobs.get("train_fewshot") == 2 and "fewshot_training_set" not in jobs, jobs
    assert "fewshot_support_from_truth" not in jobs and "extract" not in jobs, jobs
    # another training SNR: new training set, retrain, nothing upstream
    jobs = _jobs(repo, fewshot_run, "snr.yaml", fewshot__train_snr=[0.2])
    assert jobs.get("fewshot_training_set") == 1 and jobs.get("train_fewshot") == 2, jobs
    assert "fewshot_template_density" not in jobs and "extract" not in jobs, jobs


@pytest.mark.slow
def test_forced_training_trains_afresh(fewshot_run, repo):
    """The finished job removed its checkpoint, so a forced rerun trains again (the same
    model on the CPU) instead of resuming."""
    res = fewshot_run / "results"
    config = str(fewshot_run / "tiny_fewshot.yaml")
    before = torch.load(res / "features" / "protonet_ce" / "model.pt", weights_only=True)
    proc = _smk(repo, fewshot_run, "--configfile", config, "--forcerun", "train_fewshot",
                "--until", "train_fewshot")
    try:
        assert proc.returncode == 0, _out(proc)[-5000:]
        log = (fewshot_run / "logs" / "features" / "protonet_ce_training.log").read_text()
        assert "resuming few-shot training" not in log, log
        assert "few-shot protonet_ce epoch 0" in log, log
        after = torch.load(res / "features" / "protonet_ce" / "model.pt", weights_only=True)
        for k in before:
            torch.testing.assert_close(before[k], after[k])
    finally:
        touch = _smk(repo, fewshot_run, "--configfile", config, "--touch")
        assert touch.returncode == 0, _out(touch)


@pytest.mark.slow
def test_simulated_support_templates(fewshot_run, repo):
    """Support simulated from chosen templates (here the demo's own two classes)."""
    cfg = _write_config(repo, fewshot_run / "templates.yaml", fewshot__support_from_truth=0,
                        fewshot__support_templates=["4v1w", "3j9i"],
                        fewshot__support_per_class=3)
    proc = _smk(repo, fewshot_run, "--configfile", str(cfg), "--until", "features_fewshot")
    assert proc.returncode == 0, _out(proc)[-5000:]
    d = fewshot_run / "results" / "features" / "protonet3d"
    lab = read_star(d / "labels.star")
    assert set(lab["rlnClassName"]) <= {"4v1w", "3j9i"}
    assert (lab["tclSupport"] == 0).all()
    sup = read_star(d / "support.star")
    assert sup["rlnClassName"].tolist().count("4v1w") == 3
    assert sup.groupby("rlnClassNumber")["rlnClassName"].first().to_dict() == {1: "4v1w",
                                                                               2: "3j9i"}
    info = json.loads((d / "info.json").read_text())
    assert info["support_source"] == "simulated" and info["n_support"] == 6


@pytest.mark.slow
def test_bad_support_star_fails_with_a_clear_message(fewshot_run, repo):
    """Runs last: the failed job removes the few-shot outputs of this working directory."""
    bad = fewshot_run / "bad_support.star"
    write_star(bad, pd.DataFrame({"rlnImageName": ["1@particles.mrcs", "999@particles.mrcs"],
                                  "rlnClassNumber": [1, 2]}))
    cfg = _write_config(repo, fewshot_run / "bad.yaml", fewshot__support_from_truth=0,
                        fewshot__support=str(bad))
    proc = _smk(repo, fewshot_run, "--configfile", str(cfg), "--until", "features_fewshot",
                "--keep-going")
    assert proc.returncode != 0
    for v in VARIANTS:
        log = (fewshot_run / "logs" / "features" / f"{v}.log").read_text()
        assert f"few-shot support {bad}, row 2: rlnImageName '999@particles.mrcs' refers to " \
               "no particle" in log, log
        assert "Traceback" not in log
        assert not (fewshot_run / "results" / "features" / v / "labels.star").exists()


@pytest.mark.parametrize("changes,message", [
    ({"fewshot__support_from_truth": 0},
     ["needs a support set", "fewshot.support:", "rlnClassNumber", "rlnImageName",
      "rlnTomoName + rlnCoordinateX/Y/Z", "fewshot.support_templates", "support_from_truth"]),
    ({"fewshot__support_templates": ["3j9i", "4v1w"]}, ["more than one few-shot support"]),
    ({"fewshot__support_from_truth": 0, "fewshot__support": "missing.star"},
     ["fewshot.support 'missing.star' is not a file"]),
    ({"fewshot__support_from_truth": 0, "fewshot__support_templates": ["nope"]},
     ["support_templates ['nope'] are neither"]),
    ({"fewshot__train_templates": {}}, None),
], ids=["none", "two", "missing_file", "unknown_template", "train_from_templates"])
def test_config_errors_say_what_to_provide(tmp_path, repo, changes, message):
    cfg = _write_config(repo, tmp_path / "c.yaml", **changes)
    proc = _smk(repo, tmp_path, "-n", "--configfile", str(cfg), timeout=120)
    if message is None:  # empty train_templates: the `templates` are the training classes
        assert proc.returncode == 0, _out(proc)
        assert "fewshot_template_density" in _out(proc)
        return
    assert proc.returncode != 0
    for m in message:
        assert m in _out(proc), _out(proc)


def test_lint_with_fewshot(repo, tmp_path):
    from test_workflow import SNAKEMAKE

    cfg = _write_config(repo, tmp_path / "c.yaml")
    proc = subprocess.run([str(SNAKEMAKE), "--lint", "--configfile", str(cfg)], cwd=repo,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, _out(proc)
    assert "Congratulations" in _out(proc) or "good condition" in _out(proc), _out(proc)


@pytest.mark.slow
def test_rerun_matrix(fewshot_run, repo):
    """Every config key reruns exactly the rules declared to read it (tests/rerun_matrix.py),
    on the completed few-shot run."""
    from rerun_matrix import check, schema_leaf_keys

    problems = check(repo, fewshot_run, fewshot_run / "tiny_fewshot.yaml", schema_leaf_keys(repo),
                     {"truth", "simulation"})
    assert not problems, problems
