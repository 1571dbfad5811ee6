"""The workflow started from other tools' output, end to end on tiny data.

Mode 1: three 40x64x64 tomograms at 10 Å with planted balls (class 1) and dumbbells (class 2);
TS_01's coordinates come as RELION 3 voxels of a bin-2 tomogram, TS_02's as RELION 5 centred Å,
both with rlnClassNumber; TS_03 has none and is DoG-picked. Mode 2: 40 synthetic subtomograms,
half as single MRC files (24 voxels at 10 Å), half in one stack (24 voxels at 8 Å), resampled to
16 voxels at 12 Å, through benchmarks/score_external.py (the benchmark entry point). Each run
takes ~15-30 s on 2 idle cores (tests/data/tiny_external.yaml).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import pytest
import starfile
import yaml
from test_workflow import _job_stats, _output, _snakemake
from tomoclust.formats.mrc import write_mrc
from tomoclust.formats.stacks import open_stack
from tomoclust.formats.star import read_star

pytestmark = pytest.mark.slow

SHAPE = (40, 64, 64)  # z, y, x voxels at 10 Å
# (z, y, x) at least 12 voxels from every face (the 24-voxel extraction box at 10 Å)
CENTRES = [(14, 16, 16), (26, 16, 48), (14, 48, 16), (26, 48, 48), (20, 32, 32), (26, 20, 32),
           (14, 44, 34)]


def _classes() -> list[int]:
    return [1 if i % 2 else 2 for i in range(len(CENTRES))]  # 1 ball, 2 dumbbell


def _tomogram(seed: int) -> np.ndarray:
    z, y, x = np.indices(SHAPE, dtype=np.float32)
    vol = np.zeros(SHAPE, np.float32)
    for (cz, cy, cx), cls in zip(CENTRES, _classes(), strict=True):
        offsets, sigma = ((0,), 3.0) if cls == 1 else ((-3, 3), 2.0)
        for dx in offsets:
            vol -= np.exp(-((z - cz) ** 2 + (y - cy) ** 2 + (x - cx - dx) ** 2) / (2 * sigma**2))
    rng = np.random.default_rng(seed)
    return vol + 0.1 * rng.standard_normal(SHAPE).astype(np.float32)


def _config(repo: Path, path: Path, **top) -> Path:
    cfg = yaml.safe_load((repo / "tests" / "data" / "tiny_external.yaml").read_text())
    for key, value in top.items():
        section, _, sub = key.partition("__")
        if sub:
            cfg[section][sub] = value
        else:
            cfg[section] = value
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def coords_run(tmp_path_factory, repo):
    d = tmp_path_factory.mktemp("coords")
    paths = {}
    for i, name in enumerate(("TS_01", "TS_02", "TS_03")):
        paths[name] = d / f"{name}.mrc"
        write_mrc(paths[name], _tomogram(i), 10.0)
    zyx = np.array(CENTRES, dtype=np.float64)
    cls = _classes()
    # RELION 3: voxels of a bin-2 (20 Å) tomogram, plus one row outside the volume
    r3 = pd.DataFrame({"rlnCoordinateX": list(zyx[:, 2] / 2) + [100.0],
                       "rlnCoordinateY": list(zyx[:, 1] / 2) + [10.0],
                       "rlnCoordinateZ": list(zyx[:, 0] / 2) + [10.0],
                       "rlnMicrographName": ["TS_01.mrc"] * (len(zyx) + 1),
                       "rlnClassNumber": cls + [1], "rlnAutopickFigureOfMerit": 0.5})
    starfile.write(r3, d / "TS_01_r3.star", overwrite=True)
    # RELION 5: Å from the centre (size / 2.0 voxels)
    cen = (zyx[:, ::-1] - np.array(SHAPE[::-1]) / 2.0) * 10.0
    r5 = pd.DataFrame({"rlnTomoName": "TS_02", "rlnCenteredCoordinateXAngst": cen[:, 0],
                       "rlnCenteredCoordinateYAngst": cen[:, 1],
                       "rlnCenteredCoordinateZAngst": cen[:, 2], "rlnClassNumber": cls})
    starfile.write(r5, d / "TS_02_r5.star", overwrite=True)
    sheet = d / "tomograms.tsv"
    sheet.write_text("name\tpath\tcoordinates\tcoordinates_voxel_size\n"
                     f"TS_01\t{paths['TS_01']}\t{d / 'TS_01_r3.star'}\t20\n"
                     f"TS_02\t{paths['TS_02']}\t{d / 'TS_02_r5.star'}\t\n"
                     f"TS_03\t{paths['TS_03']}\t\t\n")
    cfg = _config(repo, d / "c.yaml", tomograms=str(sheet))
    proc = _snakemake(repo, d, "--configfile", str(cfg))
    assert proc.returncode == 0, _output(proc)[-5000:]
    return d, cfg, proc


def test_coordinates_in_skip_picking_for_those_tomograms(coords_run, repo):
    d, cfg, _ = coords_run
    proc = _snakemake(repo, d, "-n", "--forceall", "--configfile", str(cfg))
    jobs = _job_stats(_output(proc))
    assert jobs["pick"] == 1 and jobs["import_coordinates"] == 2, jobs  # TS_03 only is picked
    assert jobs["particle_truth"] == 1 and jobs["evaluate_classification"] == 1, jobs
    assert not (d / "results" / "picks" / "TS_01.star").exists()
    assert (d / "results" / "picks" / "TS_03.star").exists()


def test_coordinates_in_outputs_keep_identity_and_truth(coords_run):
    d, _, _ = coords_run
    res = d / "results"
    parts = read_star(res / "particles" / "particles.star")
    data, vs = open_stack(res / "particles" / "particles.mrcs")
    assert len(parts) == data.shape[0] and vs == pytest.approx(12.0)
    for tomo in ("TS_01", "TS_02"):
        sel = parts[parts["rlnTomoName"] == tomo]
        assert len(sel) == len(CENTRES)
        # the planted centres, in voxels of the ingested (10 Å) tomogram
        np.testing.assert_allclose(sel[["rlnCoordinateZ", "rlnCoordinateY",
                                        "rlnCoordinateX"]].to_numpy(), CENTRES, atol=1e-6)
        assert sel["tclOriginalClassNumber"].tolist() == _classes()
    ts1 = parts[parts["rlnTomoName"] == "TS_01"]
    np.testing.assert_allclose(ts1["tclOriginalCoordinateX"], np.array(CENTRES)[:, 2] / 2)
    assert (ts1["rlnAutopickFigureOfMerit"] == 0.5).all()
    skipped = pd.read_csv(res / "imported" / "TS_01.skipped.tsv", sep="\t")
    assert skipped["row"].tolist() == [len(CENTRES) + 1]
    assert skipped["reason"].tolist() == ["outside the tomogram"]
    truth = read_star(res / "truth" / "particles_truth.star")
    assert truth["tclStackIndex"].tolist() == list(range(len(parts)))
    dog = parts["rlnTomoName"] == "TS_03"
    assert (truth["rlnClassNumber"][dog] == 0).all()  # DoG picks: unlabelled
    clusters = read_star(res / "cluster" / "invariant" / "clusters.star")
    assert "tclOriginalCoordinateX" in clusters and "rlnClassNumber" in clusters
    m = pd.read_csv(res / "evaluation" / "classification.tsv", sep="\t").iloc[0]
    assert m["n_unmatched_picks"] == int(dog.sum())
    assert m["accuracy"] >= 0.85, m.to_dict()  # balls vs dumbbells, well separated


def test_coordinate_voxel_size_change_reruns_only_that_tomogram(coords_run, repo):
    """TS_01's voxel size comes from the sheet, so a new config value touches TS_02 alone:
    its import, its extraction and everything after the gather; never ingest or picking."""
    d, cfg, _ = coords_run
    changed = yaml.safe_load(cfg.read_text())
    changed["external"]["coordinates_voxel_size"] = 5.0
    path = d / "changed.yaml"
    path.write_text(yaml.safe_dump(changed, sort_keys=False))
    proc = _snakemake(repo, d, "-n", "--configfile", str(path))
    out = _output(proc)
    jobs = _job_stats(out)
    assert jobs.get("import_coordinates") == 1 and jobs.get("extract") == 1, jobs
    assert "wildcards: tomo=TS_02" in out and "tomo=TS_01" not in out, out
    assert not {"ingest", "pick"} & set(jobs), jobs


def test_one_star_for_all_with_an_unknown_name_fails_naming_the_row(coords_run, repo, tmp_path):
    d, _, _ = coords_run
    df = pd.DataFrame({"rlnMicrographName": ["TS_01.mrc", "TS_07.mrc"],
                       "rlnCoordinateX": [32.0, 32.0], "rlnCoordinateY": [32.0, 32.0],
                       "rlnCoordinateZ": [20.0, 20.0]})
    starfile.write(df, tmp_path / "all.star", overwrite=True)
    sheet = tmp_path / "tomograms.tsv"
    sheet.write_text("name\tpath\n" + "".join(f"{n}\t{d / (n + '.mrc')}\n"
                                              for n in ("TS_01", "TS_02")))
    cfg = _config(repo, tmp_path / "c.yaml", tomograms=str(sheet),
                  external__coordinates=str(tmp_path / "all.star"),
                  external__coordinates_voxel_size=10.0)
    dry = _snakemake(repo, tmp_path, "-n", "--configfile", str(cfg))
    assert dry.returncode == 0, _output(dry)
    jobs = _job_stats(_output(dry))
    assert jobs["split_coordinates"] == 1 and "pick" not in jobs, jobs
    proc = _snakemake(repo, tmp_path, "results/imported/split/TS_01.star", "--configfile",
                      str(cfg))
    assert proc.returncode != 0
    log = (tmp_path / "logs" / "imported" / "split_coordinates.log").read_text()
    assert "row 2: rlnMicrographName 'TS_07.mrc' matches no tomogram" in log, log


# ------------------------------------------------------------------------------- mode 2
def _particle(cls: int, box: int, vs: float, rng) -> np.ndarray:
    """A ball (class 1) or a randomly oriented dumbbell (class 2), dark, in noise."""
    c = (box // 2) * np.ones(3)
    z, y, x = np.indices((box,) * 3, dtype=np.float64) * vs
    vol = np.zeros((box,) * 3)
    if cls == 1:
        offsets, sigma = [np.zeros(3)], 30.0
    else:
        u = rng.standard_normal(3)
        u *= 30.0 / np.linalg.norm(u)
        offsets, sigma = [u, -u], 20.0
    for o in offsets:
        cz, cy, cx = c * vs + o
        vol -= np.exp(-((z - cz) ** 2 + (y - cy) ** 2 + (x - cx) ** 2) / (2 * sigma**2))
    return (vol + 0.1 * rng.standard_normal(vol.shape)).astype(np.float32)


@pytest.fixture(scope="module")
def subtomo_run(tmp_path_factory, repo):
    d = tmp_path_factory.mktemp("subtomos")
    rng = np.random.default_rng(3)
    (d / "Subtomograms").mkdir()
    cls = [1, 2] * 20
    names = []
    for i, c in enumerate(cls[:20]):
        write_mrc(d / "Subtomograms" / f"p{i}.mrc", _particle(c, 24, 10.0, rng), 10.0)
        names.append(f"Subtomograms/p{i}.mrc")
    stack = np.stack([_particle(c, 24, 8.0, rng) for c in cls[20:]])
    with mrcfile.new(d / "Subtomograms" / "stack.mrcs") as m:
        m.set_data(stack)
        m.header.ispg = 401
        m.voxel_size = 8.0
    names += [f"{i + 1}@Subtomograms/stack.mrcs" for i in range(20)]
    df = pd.DataFrame({"rlnImageName": names, "rlnClassNumber": cls,
                       "rlnTomoName": ["TS_01"] * 20 + ["TS_02"] * 20,
                       "rlnCoordinateX": np.arange(40.0), "rlnCoordinateY": 1.0,
                       "rlnCoordinateZ": 2.0})
    starfile.write({"particles": df}, d / "particles_in.star", overwrite=True)
    # the mode-2 run is the benchmark entry point's: tiny settings, the set's labels as truth
    out = d / "external_tiny.json"
    proc = subprocess.run(
        [sys.executable, str(repo / "benchmarks" / "score_external.py"), "--star",
         str(d / "particles_in.star"), "--configfile", str(repo / "tests" / "data" /
                                                          "tiny_external.yaml"),
         "--workdir", str(d / "w"), "--out", str(out)],
        capture_output=True, text=True, timeout=600)
    log = (d / "w" / "snakemake.log")
    assert proc.returncode == 0, proc.stderr + (log.read_text()[-5000:] if log.exists() else "")
    return d / "w", d / "w" / "config.yaml", df, out


def test_subtomograms_in_skip_ingest_pick_extract(subtomo_run, repo):
    d, cfg, _, _ = subtomo_run
    proc = _snakemake(repo, d, "-n", "--forceall", "--configfile", str(cfg))
    jobs = _job_stats(_output(proc))
    assert jobs.get("import_subtomograms") == 1, jobs
    assert not {"ingest", "pick", "extract", "gather_particles", "evaluate_picking"} & set(jobs)
    assert not (d / "results" / "tomograms").exists()


def test_subtomograms_in_outputs(subtomo_run):
    d, _, df, _ = subtomo_run
    res = d / "results"
    parts = read_star(res / "particles" / "particles.star")
    data, vs = open_stack(res / "particles" / "particles.mrcs")
    assert data.shape == (40, 16, 16, 16) and vs == pytest.approx(12.0)
    assert parts["rlnImageOriginalName"].tolist() == df["rlnImageName"].tolist()
    clusters = read_star(res / "cluster" / "invariant" / "clusters.star")
    assert clusters["rlnImageOriginalName"].tolist() == df["rlnImageName"].tolist()
    assert clusters["tclOriginalCoordinateX"].tolist() == df["rlnCoordinateX"].tolist()
    m = pd.read_csv(res / "evaluation" / "classification.tsv", sep="\t").iloc[0]
    assert m["n_unmatched_picks"] == 0
    assert m["accuracy"] >= 0.9, m.to_dict()


def test_score_external_writes_the_metrics_table(subtomo_run):
    """benchmarks/score_external.py: one command from a labelled STAR to the metrics table."""
    d, _, _, out = subtomo_run
    payload = json.loads(out.read_text())
    row = payload["rows"][0]
    assert [r["method"] for r in payload["rows"]] == ["invariant"]
    assert row["n"] == 40 and row["n_classes"] == 2 and row["k"] >= 2
    table = pd.read_csv(d / "results" / "evaluation" / "classification.tsv", sep="\t")
    assert row["accuracy"] == pytest.approx(float(table["accuracy"].iloc[0]))
    assert payload["config"]["extraction"] == {"box": 16, "voxel_size": 12.0, "normalise": True,
                                                  "recentre": True}
    assert "| invariant |" in out.with_suffix(".md").read_text()


def test_rerun_matrix_coordinates_in(coords_run, repo):
    """Every config key reruns exactly the rules declared to read it (tests/rerun_matrix.py),
    on the completed coordinates-in run."""
    from rerun_matrix import check, schema_leaf_keys

    workdir, config, _ = coords_run
    problems = check(repo, workdir, config, schema_leaf_keys(repo), set())
    assert not problems, problems


def test_rerun_matrix_subtomograms_in(subtomo_run, repo):
    """Every config key reruns exactly the rules declared to read it (tests/rerun_matrix.py),
    on the completed subtomograms-in run."""
    from rerun_matrix import check, schema_leaf_keys

    workdir, config, _, _ = subtomo_run
    problems = check(repo, workdir, config, schema_leaf_keys(repo), {"subtomograms"})
    assert not problems, problems
