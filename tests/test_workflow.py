"""End to end: the real workflow on a tiny configuration, rerun triggers, sheet errors, lint.

The tiny run (tests/data/tiny.yaml: two 48x96x96 tomograms at 10 Å, two small complexes) takes
about 20 s on 2 cores; the dry runs after it reuse its working directory.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import pytest
import yaml
from tomoclust.formats.stacks import open_stack
from tomoclust.formats.star import read_star

pytestmark = pytest.mark.slow

SNAKEMAKE = Path(sys.executable).parent / "snakemake"


def _snakemake(repo: Path, workdir: Path, *args: str, timeout: int = 300
               ) -> subprocess.CompletedProcess:
    cmd = [str(SNAKEMAKE), "--snakefile", str(repo / "Snakefile"), "--directory", str(workdir),
           "--cores", "2", *args]
    return subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, timeout=timeout)


def _output(proc: subprocess.CompletedProcess) -> str:
    return proc.stdout + proc.stderr


def _job_stats(text: str) -> dict[str, int]:
    """The first 'Job stats' table of a (dry) run as {rule: count} (without 'total')."""
    lines = text.splitlines()
    try:
        start = next(i for i, line in enumerate(lines) if line.strip() == "Job stats:")
    except StopIteration:
        return {}
    jobs = {}
    for line in lines[start + 3:]:  # skip the "job count" header and its rule
        parts = line.split()
        if len(parts) != 2 or parts[0] == "total":
            break
        jobs[parts[0]] = int(parts[1])
    return jobs


# template libraries of a config (section, key): their paths are relative to the repository
TEMPLATE_LIBRARIES = [(None, "templates"), ("transfer", "templates"),
                      ("fewshot", "train_templates")]


def _write_config(repo: Path, path: Path, base: str = "tiny.yaml", **changes) -> Path:
    """tests/data/``base`` with absolute template paths (every library in it) and
    ``section__key=value`` changes."""
    cfg = yaml.safe_load((repo / "tests" / "data" / base).read_text())
    for section, key in TEMPLATE_LIBRARIES:
        holder = cfg if section is None else cfg.get(section) or {}
        if holder.get(key):
            holder[key] = {k: str(repo / v) for k, v in holder[key].items()}
    for dotted, value in changes.items():
        section, key = dotted.split("__")
        cfg[section][key] = value
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, repo):
    """Run the whole workflow once on the tiny configuration; return its working directory."""
    workdir = tmp_path_factory.mktemp("tiny")
    config = _write_config(repo, workdir / "tiny.yaml")
    proc = _snakemake(repo, workdir, "--configfile", str(config))
    assert proc.returncode == 0, _output(proc)[-5000:]
    return workdir


def test_end_to_end_outputs(tiny_run):
    res = tiny_run / "results"
    star, stack = res / "particles" / "particles.star", res / "particles" / "particles.mrcs"
    assert star.is_file() and stack.is_file()
    particles = read_star(star)
    data, vs = open_stack(stack)
    assert len(particles) > 0
    assert len(particles) == data.shape[0]
    assert data.shape[1:] == (16, 16, 16)
    assert vs == pytest.approx(12.0, abs=1e-3)
    assert particles["rlnImageName"].tolist() == [
        f"{i}@particles.mrcs" for i in range(1, len(particles) + 1)]
    assert set(particles["rlnTomoName"]) <= {"sim01", "sim02"}
    optics = read_star(star, block="optics")
    assert float(optics["rlnImagePixelSize"].iloc[0]) == pytest.approx(12.0, abs=1e-3)
    # normalised subtomograms
    arr = np.asarray(data)
    np.testing.assert_allclose(arr.mean(axis=(1, 2, 3)), 0.0, atol=1e-3)
    np.testing.assert_allclose(arr.std(axis=(1, 2, 3)), 1.0, atol=1e-2)

    metrics = res / "evaluation" / "picking" / "metrics.tsv"
    assert metrics.is_file()
    m = pd.read_csv(metrics, sep="\t")
    overall = m[m["scope"] == "all"].iloc[0]
    assert overall["n_true"] > 0
    # the planted particles are easy at SNR 0.5: most are found
    assert overall["recall"] > 0.7
    assert (res / "evaluation" / "picking" / "picking.png").is_file()
    truth = read_star(res / "simulation" / "truth.star")
    assert set(truth["rlnTomoName"]) == {"sim01", "sim02"}
    assert set(truth["rlnClassNumber"]) == {1, 2}
    # ingested tomograms are normalised, at the working voxel size
    with mrcfile.open(res / "tomograms" / "sim01" / "tomogram.mrc") as mrc:
        assert mrc.data.shape == (48, 96, 96)
        assert float(mrc.voxel_size.x) == pytest.approx(10.0, abs=1e-3)
        assert float(mrc.data.std()) == pytest.approx(1.0, abs=1e-3)
    # no temporary files left behind by the atomic writers
    assert not list(res.rglob("*.part"))


def test_dry_run_unchanged_has_nothing_to_do(tiny_run, repo):
    proc = _snakemake(repo, tiny_run, "-n", "--configfile", str(tiny_run / "tiny.yaml"))
    assert proc.returncode == 0, _output(proc)
    assert "Nothing to be done" in _output(proc), _output(proc)
    assert _job_stats(_output(proc)) == {}


def test_threshold_change_reruns_only_picking_and_after(tiny_run, repo):
    cfg = _write_config(repo, tiny_run / "threshold.yaml", picking__threshold=3.2)
    proc = _snakemake(repo, tiny_run, "-n", "--configfile", str(cfg))
    assert proc.returncode == 0, _output(proc)
    jobs = _job_stats(_output(proc))
    assert jobs == {"pick": 2, "extract": 2, "gather_particles": 1, "evaluate_picking": 1,
                    "plot_picks": 2, "summarise_picks": 1, "picking_table": 1,
                    "all": 1}, _output(proc)


def test_box_change_reruns_extraction_and_not_simulation(tiny_run, repo):
    cfg = _write_config(repo, tiny_run / "box.yaml", extraction__box=20)
    proc = _snakemake(repo, tiny_run, "-n", "--configfile", str(cfg))
    assert proc.returncode == 0, _output(proc)
    jobs = _job_stats(_output(proc))
    # pick reruns too: its edge exclusion depends on the box; evaluation uses the same edge
    for rule, n in {"pick": 2, "extract": 2, "gather_particles": 1, "evaluate_picking": 1,
                    "all": 1}.items():
        assert jobs.get(rule) == n, _output(proc)
    assert not {"template_density", "simulate_tomogram", "gather_truth"} & set(jobs), jobs


def test_box_change_does_not_reingest(tiny_run, repo):
    cfg = _write_config(repo, tiny_run / "box.yaml", extraction__box=20)
    proc = _snakemake(repo, tiny_run, "-n", "--configfile", str(cfg))
    assert proc.returncode == 0, _output(proc)
    assert "ingest" not in _job_stats(_output(proc)), _output(proc)


def test_sheet_mode_on_the_simulated_tomograms(tiny_run, repo, tmp_path):
    """Real-data mode: a sheet of MRC files (here the simulated ones), binned to 20 Å."""
    sim = tiny_run / "results" / "simulation"
    sheet = tmp_path / "tomograms.tsv"
    sheet.write_text("name\tpath\tvoxel_size\n"
                     f"TS_01\t{sim / 'sim01' / 'tomogram.mrc'}\t\n"
                     f"TS_02\t{sim / 'sim02' / 'tomogram.mrc'}\t10.0\n")
    cfg = yaml.safe_load(_write_config(repo, tmp_path / "c.yaml").read_text())
    cfg["tomograms"] = str(sheet)
    cfg["simulation"]["enabled"] = False
    cfg["ingest"]["voxel_size"] = 20.0
    cfg["extraction"] = {"box": 12, "voxel_size": 20.0, "normalise": True}
    cfg["picking"]["particle_radius"] = 70.0
    (tmp_path / "sheet.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    proc = _snakemake(repo, tmp_path, "--configfile", str(tmp_path / "sheet.yaml"))
    assert proc.returncode == 0, _output(proc)[-5000:]
    assert not (tmp_path / "results" / "simulation").exists()
    assert not (tmp_path / "results" / "evaluation").exists()  # no truth, no evaluation
    with mrcfile.open(tmp_path / "results" / "tomograms" / "TS_01" / "tomogram.mrc") as mrc:
        assert mrc.data.shape == (24, 48, 48)
        assert float(mrc.voxel_size.x) == pytest.approx(20.0, abs=1e-3)
    particles = read_star(tmp_path / "results" / "particles" / "particles.star")
    data, vs = open_stack(tmp_path / "results" / "particles" / "particles.mrcs")
    assert len(particles) == data.shape[0] > 0
    assert set(particles["rlnTomoName"]) <= {"TS_01", "TS_02"}
    assert vs == pytest.approx(20.0, abs=1e-3)


def test_bad_sheet_fails_at_dag_time(repo, tmp_path):
    tomo = tmp_path / "t.mrc"
    tomo.write_bytes(b"")
    sheet = tmp_path / "tomograms.tsv"
    sheet.write_text(f"name\tpath\nTS_01\t{tomo}\nTS_01\t{tomo}\n")
    cfg = yaml.safe_load(_write_config(repo, tmp_path / "c.yaml").read_text())
    cfg["tomograms"] = str(sheet)
    cfg["simulation"]["enabled"] = False
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    proc = _snakemake(repo, tmp_path, "-n", "--configfile", str(tmp_path / "bad.yaml"),
                      timeout=120)
    assert proc.returncode != 0
    out = _output(proc)
    assert str(sheet) in out and "duplicate name" in out, out
    assert not (tmp_path / "results").exists()


def test_report_draws_picks_of_a_spread_of_tomograms(repo, tmp_path):
    """report.pick_figures of a sheet's tomograms get a picks figure, first and last included
    and evenly spread; null draws every tomogram."""
    names = [f"TS_{i:02d}" for i in range(1, 8)]
    lines = ["name\tpath\tvoxel_size"]
    for name in names:
        path = tmp_path / f"{name}.mrc"
        with mrcfile.new(path) as m:
            m.set_data(np.zeros((8, 8, 8), np.float32))
        lines.append(f"{name}\t{path}\t10.0")
    (tmp_path / "tomograms.tsv").write_text("\n".join(lines) + "\n")
    cfg = yaml.safe_load(_write_config(repo, tmp_path / "c.yaml").read_text())
    cfg["tomograms"] = str(tmp_path / "tomograms.tsv")
    cfg["simulation"]["enabled"] = False
    for value, want in ((3, ["TS_01", "TS_04", "TS_07"]), (None, names)):
        cfg["report"] = {"pick_figures": value}
        (tmp_path / "sheet.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
        proc = _snakemake(repo, tmp_path, "-n", "--configfile", str(tmp_path / "sheet.yaml"),
                          timeout=120)
        assert proc.returncode == 0, _output(proc)
        jobs = _job_stats(_output(proc))
        assert jobs["plot_picks"] == len(want)
        assert jobs["pick"] == len(names)  # every tomogram is picked
        drawn = sorted(set(re.findall(r"results/report/picks/(TS_\d+)\.jpg", _output(proc))))
        assert drawn == want


def test_sheet_and_simulation_both_set_is_an_error(repo, tmp_path):
    sheet = tmp_path / "tomograms.tsv"
    sheet.write_text("name\tpath\n")
    cfg = yaml.safe_load(_write_config(repo, tmp_path / "c.yaml").read_text())
    cfg["tomograms"] = str(sheet)
    (tmp_path / "both.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    proc = _snakemake(repo, tmp_path, "-n", "--configfile", str(tmp_path / "both.yaml"),
                      timeout=120)
    assert proc.returncode != 0
    assert "not both" in _output(proc), _output(proc)


def test_rerun_matrix(tiny_run, repo):
    """Every config key reruns exactly the rules tomoclust/settings.py declares as reading it
    (tests/rerun_matrix.py); dry runs on the completed tiny run."""
    from rerun_matrix import check, schema_leaf_keys

    problems = check(repo, tiny_run, tiny_run / "tiny.yaml", schema_leaf_keys(repo),
                     {"truth", "simulation"})
    assert not problems, problems


def test_kmeans_without_k_stops_at_parse_time_naming_the_key(repo, tmp_path):
    cfg = yaml.safe_load(_write_config(repo, tmp_path / "c.yaml").read_text())
    cfg["clustering"] = {"algorithm": "kmeans", "k": None}
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(cfg))
    proc = _snakemake(repo, tmp_path, "-n", "--configfile", str(tmp_path / "bad.yaml"),
                      timeout=120)
    assert proc.returncode != 0
    lines = [line for line in _output(proc).splitlines() if "clustering.k:" in line]
    assert lines and "k-means" in lines[0] and "set clustering.k" in lines[0], _output(proc)
    assert "Job stats" not in _output(proc)  # stopped while parsing, before any job
    assert not (tmp_path / "results").exists()


def test_lint_is_clean(repo):
    proc = subprocess.run([str(SNAKEMAKE), "--lint"], cwd=repo, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, _output(proc)
    assert "Congratulations" in _output(proc) or "good condition" in _output(proc), _output(proc)
