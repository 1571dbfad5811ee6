"""Feature inference in shares (tomoclust.features.chunks, inference_jobs): the shares cover
the particles in order, gathered chunks equal the one-job features (eval mode, CPU) for both
kinds of transfer model, a stale chunk is a clear error, and a dry run plans one job per
share.

Equal means: to float32 rounding of the batched products. In eval mode a particle's output
does not depend on the other particles of its batch, but the CPU kernels (BLAS, oneDNN
convolutions) block a product differently for different batch sizes, so entries may differ in
their last bits (measured: 2 of 75 class probabilities by 1 ulp, 3e-8; 8 of 576 entries of the
encoder's unit-length embedding by up to 2.4e-7 after its 7 convolutions). The tolerance,
1e-6 absolute on outputs of magnitude ≤ 1, is a few times that; a wrong order or a missing
share differs by 1e-2 or more."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import yaml
from test_workflow import _job_stats, _output, _snakemake, _write_config
from tomoclust import TomoclustError
from tomoclust.features import chunk_jobs, chunks
from tomoclust.formats.atomic import save_npy

ATOL = 1e-6


def test_shares_cover_the_rows_in_order():
    for n in (0, 1, 7, 100):
        for jobs in (1, 2, 3, 8):
            parts = [chunks.share(n, jobs, i) for i in range(jobs)]
            assert parts[0][0] == 0 and parts[-1][1] == n
            assert all(p[1] == q[0] for p, q in itertools.pairwise(parts))
            assert max(b - a for a, b in parts) - min(b - a for a, b in parts) <= 1
    with pytest.raises(TomoclustError, match="does not exist"):
        chunks.share(10, 3, 3)


def _write_chunks(tmp_path, kind, model_path, stack, vs, jobs):
    paths = []
    for i in range(jobs):
        p = tmp_path / f"chunk{i}.npy"
        save_npy(p, chunk_jobs.feature_chunk(kind, model_path, stack, vs, "cpu", jobs, i))
        paths.append(str(p))
    return paths


def test_chunks_of_a_retrained_transfer_model_equal_one_job(rng, tmp_path):
    from tomoclust.features.transfer import TransferNet, save_model, transfer_features
    from tomoclust.features.transfer_settings import TransferNetSettings

    torch.manual_seed(0)
    model = TransferNet(TransferNetSettings(n_classes=3, width=4, stages=2, hidden=16,
                                            feature_dim=8))
    save_model(tmp_path / "m.pt", model, ["a", "b", "c"], {"box": 16, "voxel_size": 10.0})
    stack = rng.normal(size=(25, 16, 16, 16)).astype(np.float32)
    feats, prob = transfer_features(model.eval(), stack)
    paths = _write_chunks(tmp_path, "transfer", tmp_path / "m.pt", stack, 10.0, 3)
    f2, p2 = transfer_features(model, stack, chunks=paths)
    np.testing.assert_allclose(f2, feats, rtol=0, atol=ATOL)
    np.testing.assert_allclose(p2, prob, rtol=0, atol=ATOL)
    with pytest.raises(TomoclustError, match="trained on 16"):
        chunk_jobs.feature_chunk("transfer", tmp_path / "m.pt", stack[:, :8, :8, :8], 10.0,
                              "cpu", 2, 0)


def test_chunks_of_the_pretrained_encoder_equal_one_job(rng, tmp_path, repo):
    from tomoclust.features.encoder import embed_particles, load_encoder

    path = repo / "resources/models/encoder-v1.pt"
    model, _ = load_encoder(path)
    stack = rng.normal(size=(9, 24, 24, 24)).astype(np.float32)  # resampled to 32³ at 12 Å
    one = embed_particles(model, stack, 16.0)
    paths = _write_chunks(tmp_path, "encoder", path, stack, 16.0, 2)
    np.testing.assert_allclose(embed_particles(model, stack, 16.0, chunks=paths), one,
                               rtol=0, atol=ATOL)


@pytest.mark.parametrize("variant", ["protonet3d", "protonet_ce"])
def test_chunks_of_a_fewshot_network_classify_as_one_job(rng, tmp_path, variant):
    import json

    from tomoclust.features.fewshot import FewShotSettings, ProtoNet, classify, describe

    params = FewShotSettings(variant=variant, width=4, blocks=2)
    torch.manual_seed(0)
    model = ProtoNet(8, params).eval()
    torch.save(model.state_dict(), tmp_path / "model.pt")
    (tmp_path / "training.json").write_text(json.dumps(
        {"params": describe(params), "box": 8, "voxel_size": 10.0}))
    stack = rng.normal(size=(11, 8, 8, 8)).astype(np.float32)
    sup, sup_labels = stack[:4], np.array([1, 2, 1, 2])
    one = classify(model, sup, sup_labels, stack, "cpu")
    paths = []
    for i in range(3):
        p = tmp_path / f"chunk{i}.npy"
        save_npy(p, chunk_jobs.feature_chunk(variant, tmp_path / "model.pt", stack, 10.0, "cpu", 3,
                                         i, tmp_path / "training.json"))
        paths.append(str(p))
    three = classify(model, sup, sup_labels, stack, "cpu", chunks=paths)
    np.testing.assert_allclose(three.features, one.features, rtol=0, atol=ATOL)
    np.testing.assert_array_equal(three.labels, one.labels)
    with pytest.raises(TomoclustError, match="trained on 8"):
        chunk_jobs.feature_chunk(variant, tmp_path / "model.pt", stack, 12.0, "cpu", 3, 0,
                             tmp_path / "training.json")


def test_a_stale_or_foreign_chunk_is_a_clear_error(tmp_path):
    a = tmp_path / "chunk0.npy"
    b = tmp_path / "chunk1.npy"
    save_npy(a, np.zeros((5, 4), np.float32))
    save_npy(b, np.zeros((5, 4), np.float32))
    assert chunks.gather([a, b], 10).shape == (10, 4)
    with pytest.raises(TomoclustError, match=r"chunk0.npy: 5 rows, but share 0 of 2 holds"):
        chunks.gather([a, b], 11)  # the particles changed
    save_npy(b, np.zeros((5, 3), np.float32))
    with pytest.raises(TomoclustError, match="3 columns"):
        chunks.gather([a, b], 10)
    b.write_text("not an array")
    with pytest.raises(TomoclustError, match="not a readable feature chunk"):
        chunks.gather([a, b], 10)


@pytest.mark.parametrize(("base", "rule", "method"), [
    ("tiny_transfer.yaml", "features_transfer", "transfer"),
    ("tiny_fewshot.yaml", "features_fewshot", "protonet3d")])
def test_dry_run_plans_one_job_per_share(repo, tmp_path, base, rule, method):
    cfg = _write_config(repo, tmp_path / "c.yaml", base=base)
    c = yaml.safe_load(cfg.read_text())
    c.setdefault("transfer", {})["cache"] = str(tmp_path / "cache")
    c["inference_jobs"] = 3
    cfg.write_text(yaml.safe_dump(c, sort_keys=False))
    out = _snakemake(repo, tmp_path, "-n", "--configfile", str(cfg))
    assert out.returncode == 0, _output(out)[-3000:]
    jobs = _job_stats(_output(out))
    n_methods = jobs[rule]
    assert jobs[f"{rule}_chunk"] == 3 * n_methods
    for i in range(3):
        assert f"results/features/{method}/chunks/chunk{i}.npy" in _output(out)
    c["inference_jobs"] = 1  # the default: one job, no shares
    cfg.write_text(yaml.safe_dump(c, sort_keys=False))
    out = _snakemake(repo, tmp_path, "-n", "--configfile", str(cfg))
    assert f"{rule}_chunk" not in _job_stats(_output(out)) and rule in _job_stats(_output(out))


def test_the_chunk_rule_script_writes_its_share(rng, tmp_path, repo):
    """scripts/features_chunk.py as Snakemake runs it (a `snakemake` object), on a
    particle set on disk: share 1 of 2 of the retrained model's outputs."""
    import runpy
    from types import SimpleNamespace

    import pandas as pd
    from tomoclust.features.transfer import TransferNet, save_model
    from tomoclust.features.transfer_settings import TransferNetSettings
    from tomoclust.rule import write_particle_set

    torch.manual_seed(0)
    model = TransferNet(TransferNetSettings(n_classes=2, width=4, stages=2, hidden=8,
                                            feature_dim=4))
    save_model(tmp_path / "m.pt", model, ["a", "b"], {"box": 16, "voxel_size": 10.0})
    stack = rng.normal(size=(7, 16, 16, 16)).astype(np.float32)
    write_particle_set(tmp_path / "p.star", tmp_path / "p.mrcs", stack,
                       pd.DataFrame({"rlnCoordinateX": np.arange(7.0)}), 10.0, 16)
    class Input(SimpleNamespace):  # Snakemake's input has get()
        def get(self, key, default=None):
            return getattr(self, key, default)

    smk = SimpleNamespace(
        input=Input(star=str(tmp_path / "p.star"), stack=str(tmp_path / "p.mrcs"),
                    model=str(tmp_path / "m.pt")),
        output=[str(tmp_path / "chunk1.npy")], log=[str(tmp_path / "chunk1.log")],
        params=SimpleNamespace(device="cpu", jobs=2, kind="transfer"),
        wildcards=SimpleNamespace(i="1"), threads=1, rule="features_transfer_chunk")
    runpy.run_path(str(repo / "scripts/features_chunk.py"),
                   init_globals={"snakemake": smk})
    out = np.load(tmp_path / "chunk1.npy")
    assert out.shape == (3, 4 + 2)  # particles 4..6: 4 features and 2 probabilities
    expected = chunk_jobs.feature_chunk("transfer", tmp_path / "m.pt", stack, 10.0, "cpu", 2, 1)
    np.testing.assert_allclose(out, expected, rtol=0, atol=ATOL)
