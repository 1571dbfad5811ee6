"""The HTML report: its figures and tables, and `snakemake --report` on real data.

The unit tests are fast. The workflow test runs the real-data path (a sheet of tomograms,
no ground truth) on two small synthetic tomograms with the invariant features only, then
builds the report and reads it back; the report of a simulation (with the evaluation) is
checked in tests/test_workflow_methods.py on that module's run.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
from html.parser import HTMLParser
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import pytest
import yaml
from test_workflow import _job_stats, _output, _snakemake
from test_workflow import _write_config as _write_tiny_config
from tomoclust import TomoclustError
from tomoclust.formats.star import read_star
from tomoclust.report.plots import (
    in_slab,
    plot_central_slices,
    plot_embedding,
    plot_picks,
    slab_bounds,
)
from tomoclust.report.tables import cluster_summary, html_table, picks_summary, write_html_table


# ------------------------------------------------------------------ reading a built report
def read_report(path: Path) -> dict:
    """The data a Snakemake 9 HTML report embeds: ``categories`` ({category: {subcategory:
    [result paths]}}), ``results`` ({path: {caption, labels, mime_type, data_uri...}}) and
    the rendered workflow description ``workflow_desc``."""
    text = Path(path).read_text()
    out = {}
    for name in ["categories", "results", "workflow_desc"]:
        tag = name.replace("_", "-")
        m = re.search(rf'<script id="{tag}">\s*var {name} = (.*?);\s*</script>', text, re.S)
        assert m, f"no {name} in {path}"
        out[name] = json.loads(m.group(1))
    return out


def result_bytes(result: dict) -> bytes:
    """The file content of one embedded report result (a base64 data URI)."""
    head, _, data = result["data_uri"].partition(",")
    assert head.startswith("data:") and head.endswith(";base64"), head[:80]
    return base64.b64decode(data)


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) in pixels from a PNG's IHDR chunk."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    return struct.unpack(">II", data[16:24])


class _Cells(HTMLParser):
    def __init__(self):
        super().__init__()
        self.rows: list[list[str]] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        if tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.rows[-1].append("".join(self._cell))
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def table_cells(html_text: str) -> list[list[str]]:
    """Rows of cells (header row first) of the tables in an HTML page."""
    parser = _Cells()
    parser.feed(html_text)
    return parser.rows


# ---------------------------------------------------------------------------- slabs
def test_slab_bounds_evenly_spaced_clipped_and_unique():
    assert slab_bounds(48, 12, 3) == [(2, 14), (18, 30), (34, 46)]
    assert slab_bounds(30, 10, 3) == [(0, 10), (10, 20), (20, 30)]
    assert slab_bounds(10, 40, 3) == [(0, 10)]  # thicker than the volume: once, whole
    assert slab_bounds(20, 8, 1) == [(6, 14)]
    for nz, t, n in [(7, 3, 5), (100, 9, 4), (5, 1, 9)]:
        for z0, z1 in slab_bounds(nz, t, n):
            assert 0 <= z0 < z1 <= nz and z1 - z0 == min(t, nz)
    with pytest.raises(ValueError):
        slab_bounds(0, 3, 3)


def test_in_slab_puts_every_point_of_contiguous_slabs_in_exactly_one():
    z = np.linspace(-0.5, 29.49, 400)
    counts = sum(in_slab(z, z0, z1).astype(int) for z0, z1 in slab_bounds(30, 10, 3))
    assert np.all(counts == 1)
    assert in_slab([9.49], 0, 10)[0] and not in_slab([9.5], 0, 10)[0]
    assert in_slab([-0.5], 0, 10)[0] and not in_slab([-0.51], 0, 10)[0]


def test_plot_picks_draws_each_pick_on_the_slab_holding_it(tmp_path, rng):
    vol = rng.normal(size=(30, 40, 50)).astype(np.float32)
    picks = np.array([[10, 10, 5.0], [20, 30, 25.0], [40, 5, 14.0], [25, 25, 29.9]])
    truth = np.array([[10, 11, 5.2], [21, 30, 24.0]])
    out = tmp_path / "picks.png"
    shown = plot_picks(vol, 10.0, picks, 3.0, out, title="t", truth_xyz=truth,
                       truth_class=[1, 2], n_slabs=3, thickness=10)
    # slabs 0-9, 10-19, 20-29 hold z 5, 14, 25; z 29.9 is beyond the last voxel's centre +0.5
    # but within a radius (3) of the last slab: drawn dashed there
    assert shown == {"picks": 3, "truth": 2, "picks_near": 1}
    w, h = png_size(out.read_bytes())
    assert w > 2.5 * h  # three panels side by side
    # default thickness: one particle diameter, so only picks within a radius of a centre
    shown = plot_picks(vol, 10.0, picks, 2.0, tmp_path / "thin.png", n_slabs=3)
    assert shown["picks"] == sum(
        int(in_slab(picks[:, 2], z0, z1).sum()) for z0, z1 in slab_bounds(30, 4, 3))
    # JPEG when asked for (the workflow's choice: noisy slabs compress badly as PNG)
    plot_picks(vol, 10.0, picks, 3.0, tmp_path / "picks.jpg")
    assert (tmp_path / "picks.jpg").read_bytes()[:3] == b"\xff\xd8\xff"
    # no picks at all still makes a figure
    assert plot_picks(vol, 10.0, np.zeros((0, 3)), 2.0, tmp_path / "none.png")["picks"] == 0
    assert png_size((tmp_path / "none.png").read_bytes())[0] > 0


def test_plot_embedding_has_a_truth_panel_only_with_truth(tmp_path, rng):
    from threadpoolctl import threadpool_limits

    feats = np.concatenate([rng.normal(0, 1, (30, 6)), rng.normal(6, 1, (30, 6))])
    clusters = np.repeat([1, 2], 30)
    with threadpool_limits(1):  # t-SNE of 60 points: threads only add contention
        plot_embedding(feats, clusters, None, tmp_path / "one.png", title="m")
        plot_embedding(feats, clusters, clusters, tmp_path / "two.png", title="m")
    w1, h1 = png_size((tmp_path / "one.png").read_bytes())
    w2, h2 = png_size((tmp_path / "two.png").read_bytes())
    assert 1.7 < w2 / w1 < 2.3 and abs(h2 - h1) < 0.1 * h1


def test_plot_central_slices_one_row_per_map(tmp_path, rng):
    maps = [("a", rng.normal(size=(12, 14, 16)), 10.0), ("b", rng.normal(size=(8, 8, 8)), 5.0)]
    plot_central_slices(maps, tmp_path / "two.png", title="maps")
    plot_central_slices(maps[:1], tmp_path / "one.png")
    (w2, h2), (w1, h1) = (png_size((tmp_path / f).read_bytes()) for f in ["two.png", "one.png"])
    assert h2 > 1.6 * h1 and abs(w2 - w1) < 0.1 * w1
    with pytest.raises(ValueError):
        plot_central_slices([], tmp_path / "none.png")


# ---------------------------------------------------------------------------- tables
def test_html_table_escapes_and_formats():
    df = pd.DataFrame({"method": ["<b>x</b>", "y & z"], "n": [3, 40],
                       "accuracy": [0.87654, float("nan")], "k": [2.0, 3.0]})
    text = html_table(df, "Title <1>", note="a < b")
    assert "<b>x</b>" not in text and "&lt;b&gt;x&lt;/b&gt;" in text
    assert "Title &lt;1&gt;" in text and "a &lt; b" in text
    rows = table_cells(text)
    assert rows[0] == ["method", "n", "accuracy", "k"]
    assert rows[1] == ["<b>x</b>", "3", "0.877", "2"]
    assert rows[2] == ["y & z", "40", "–", "3"]
    assert len(rows) == 3
    rows = table_cells(html_table(df, "T", digits={"accuracy": 1}))
    assert rows[1][2] == "0.9" and rows[1][3] == "2"


def test_write_html_table_is_atomic_and_complete(tmp_path):
    path = tmp_path / "t.html"
    write_html_table(path, pd.DataFrame({"a": [1]}), "T")
    assert path.read_text().startswith("<!DOCTYPE html>")
    assert path.read_text().rstrip().endswith("</html>")
    assert not list(tmp_path.glob("*.part"))


def test_cluster_summary_rows_and_bad_files(tmp_path):
    a = tmp_path / "a.json"
    a.write_text(json.dumps({"method": "inv", "algorithm": "gmm", "k": 3,
                             "class_sizes": [5, 3, 2], "stability_ari": 0.9,
                             "mean_probability": 0.95}))
    b = tmp_path / "b.json"
    b.write_text(json.dumps({"method": "ae", "algorithm": "kmeans", "k": 2,
                             "class_sizes": [6, 4], "stability_ari": float("nan"),
                             "collapse_warning": "only 2 classes found"}))
    df = cluster_summary([a, b])
    assert df["warning"].tolist() == ["", "only 2 classes found"]  # shown in the report
    assert df["method"].tolist() == ["inv", "ae"]
    assert df["K"].tolist() == [3, 2] and df["particles"].tolist() == [10, 10]
    assert df["class sizes"].iloc[0] == "5 / 3 / 2"
    assert df["smallest class %"].tolist() == pytest.approx([20.0, 40.0])
    assert np.isnan(df["mean probability"].iloc[1])
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"method": "x"}))
    with pytest.raises(TomoclustError, match=r"bad\.json.*lacks"):
        cluster_summary([bad])
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(TomoclustError, match=r"broken\.json"):
        cluster_summary([tmp_path / "broken.json"])


def test_picks_summary_counts_and_z_scores():
    a = pd.DataFrame({"tclDogZScore": [4.0, 6.0, 5.0]})
    b = pd.DataFrame({"tclDogZScore": [3.5]})
    empty = pd.DataFrame({"rlnCoordinateX": []})
    df = picks_summary({"A": a, "B": b, "C": empty})
    assert df["tomogram"].tolist() == ["A", "B", "C", "all 3"]
    assert df["picks"].tolist() == [3, 1, 0, 4]
    assert df["median z-score"].iloc[0] == 5.0 and np.isnan(df["median z-score"].iloc[2])
    assert df["lowest z-score"].iloc[3] == 3.5 and df["highest z-score"].iloc[3] == 6.0
    assert picks_summary({"A": a})["tomogram"].tolist() == ["A"]  # no total for one


# ------------------------------------------------------------- the report of real data
def _blob_tomogram(rng, shape, centres, radii) -> np.ndarray:
    """Dark balls (protein is dark in a tomogram) of two sizes in Gaussian noise."""
    zz, yy, xx = np.indices(shape, dtype=np.float32)
    vol = np.zeros(shape, np.float32)
    for (x, y, z), r in zip(centres, radii, strict=True):
        d2 = (xx - x) ** 2 + (yy - y) ** 2 + (zz - z) ** 2
        vol -= np.exp(-d2 / (2 * (r / 1.5) ** 2))
    return vol + rng.normal(0, 0.15, shape).astype(np.float32)


@pytest.fixture(scope="module")
def real_data_run(tmp_path_factory, repo):
    """The workflow on a sheet of two synthetic tomograms (no truth), then its report."""
    rng = np.random.default_rng(7)
    workdir = tmp_path_factory.mktemp("report_real")
    rows = ["name\tpath\tvoxel_size"]
    for name in ["TS_01", "TS_02"]:
        # a 3 x 3 grid of balls per tomogram, 24 voxels apart, radii 4 and 6 voxels
        centres = [(24 + 24 * i, 24 + 24 * j, 24) for i in range(3) for j in range(3)]
        radii = [4.0 if (i + j) % 2 else 6.0 for i in range(3) for j in range(3)]
        path = workdir / f"{name}.mrc"
        with mrcfile.new(path) as mrc:
            mrc.set_data(_blob_tomogram(rng, (48, 96, 96), centres, radii))
            mrc.voxel_size = 10.0
        rows.append(f"{name}\t{path}\t")
    (workdir / "tomograms.tsv").write_text("\n".join(rows) + "\n")
    cfg = yaml.safe_load(_write_tiny_config(repo, workdir / "c.yaml",
                                            base="tiny_methods.yaml").read_text())
    cfg["tomograms"] = str(workdir / "tomograms.tsv")
    cfg["simulation"]["enabled"] = False
    cfg["methods"] = ["invariant"]
    config = workdir / "real.yaml"
    config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    proc = _snakemake(repo, workdir, "--configfile", str(config))
    assert proc.returncode == 0, _output(proc)[-5000:]
    proc = _snakemake(repo, workdir, "--configfile", str(config), "--report", "report.html")
    assert proc.returncode == 0, _output(proc)[-5000:]
    return workdir


@pytest.mark.slow
def test_real_data_report_has_every_stage_without_evaluation(real_data_run):
    rep = read_report(real_data_run / "report.html")
    cats, results = rep["categories"], rep["results"]
    # no ground truth: no Simulation and no Evaluation category, and no truth figures
    assert {"1. Picking", "2. Features", "3. Clustering"} <= set(cats), cats
    assert not {"0. Simulation", "4. Evaluation"} & set(cats), cats
    assert cats["1. Picking"] == {"picks on tomogram slabs": ["results/report/picks/TS_01.jpg",
                                                          "results/report/picks/TS_02.jpg"],
                               "picks per tomogram": ["results/picks/summary.html"]}
    assert cats["2. Features"] == {"invariant": ["results/report/invariant/embedding.png"]}
    assert cats["3. Clustering"] == {"invariant": ["results/cluster/invariant/bic.png"],
                                  "all methods": ["results/cluster/summary.html"]}
    for path, res in results.items():
        assert res["caption"].strip(), f"{path} has no caption"
        data = result_bytes(res)
        assert data == (real_data_run / path).read_bytes(), path
        if path.endswith(".png"):
            assert min(png_size(data)) > 100, path
        if path.endswith(".jpg"):
            assert data[:3] == b"\xff\xd8\xff" and res["mime_type"] == "image/jpeg", path
    picks = results["results/report/picks/TS_01.jpg"]
    assert picks["labels"] == {"tomogram": "TS_01", "figure": "picks on slabs"}
    assert "TS_01" in picks["caption"] and "true particles" not in picks["caption"]
    emb = results["results/report/invariant/embedding.png"]
    assert "invariant" in emb["caption"] and "true class" not in emb["caption"]
    assert png_size(result_bytes(emb))[0] < 700  # one panel: by cluster only
    summary = table_cells(result_bytes(results["results/cluster/summary.html"]).decode())
    assert summary[0][:3] == ["method", "algorithm", "K"] and summary[1][0] == "invariant"
    k = json.loads((real_data_run / "results/cluster/invariant/summary.json").read_text())["k"]
    assert summary[1][2] == str(k)
    picks = table_cells(result_bytes(results["results/picks/summary.html"]).decode())
    assert [r[:2] for r in picks[1:]] == [["TS_01", "9"], ["TS_02", "9"], ["all 2", "18"]]
    assert "tomograms.tsv" in rep["workflow_desc"] and "no ground truth" in rep["workflow_desc"]


@pytest.mark.slow
def test_real_data_picks_are_drawn_where_they_are(real_data_run):
    """The planted balls are all picked, at their centres (z = 24), so the middle of the
    three slabs (z 18-29) holds every pick of the figure."""
    picks = read_star(real_data_run / "results" / "picks" / "TS_01.star")
    xyz = picks[["rlnCoordinateX", "rlnCoordinateY", "rlnCoordinateZ"]].to_numpy(float)
    planted = np.array([(24 + 24 * i, 24 + 24 * j, 24) for i in range(3) for j in range(3)])
    d = np.linalg.norm(xyz[:, None] - planted[None], axis=2)
    assert len(picks) == 9 and np.all(d.min(axis=1) < 2.0), xyz
    assert sorted(d.argmin(axis=1)) == list(range(9))
    log = (real_data_run / "logs" / "report" / "picks" / "TS_01.log").read_text()
    assert "TS_01: 9 of 9 picks drawn" in log, log


@pytest.mark.slow
def test_report_figures_rerun_alone(real_data_run, repo):
    """Forcing a report figure reruns that figure only, never the stage it shows."""
    figures = {"plot_embedding": 1, "plot_picks": 2, "summarise_clusters": 1,
               "summarise_picks": 1}
    proc = _snakemake(repo, real_data_run, "-n", "--configfile", str(real_data_run / "real.yaml"),
                      "--forcerun", *figures)
    assert proc.returncode == 0, _output(proc)
    assert _job_stats(_output(proc)) == {**figures, "all": 1}, _output(proc)


# --------------------------------------------- the README's report command on a fresh venv
# A virtual environment made from requirements.txt alone (nothing from requirements-dev.txt,
# so nothing pytest pulls in by chance) must run `snakemake --report`. It is built once per
# content of requirements.txt under the system's temporary directory
# (tomoclust-venv-<hash>; TOMOCLUST_FRESH_VENV_DIR picks another parent): about 2 min on 2
# cores from local wheels the first time, then seconds.


def _fresh_venv() -> Path:
    reqs = Path(__file__).resolve().parents[1] / "requirements.txt"
    key = hashlib.sha256(reqs.read_bytes()).hexdigest()[:16]
    parent = Path(os.environ.get("TOMOCLUST_FRESH_VENV_DIR", tempfile.gettempdir()))
    venv = parent / f"tomoclust-venv-{key}"
    done = venv / ".tomoclust-complete"
    if done.exists():
        return venv
    shutil.rmtree(venv, ignore_errors=True)  # a build that was interrupted
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    proc = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q",
                           "--disable-pip-version-check", "-r", str(reqs)],
                          capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, f"pip install -r requirements.txt failed:\n{proc.stderr[-4000:]}"
    done.write_text(reqs.read_text())
    return venv


@pytest.mark.slow
def test_report_from_a_venv_of_requirements_txt(real_data_run, tmp_path, repo):
    """`.venv/bin/snakemake --report report.html`, as the README says, with only
    requirements.txt installed (snakemake needs pygments for it)."""
    venv = _fresh_venv()
    pip = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "list",
                          "--format=freeze"], capture_output=True, text=True, check=True)
    installed = {line.split("==")[0].lower() for line in pip.stdout.splitlines()}
    assert "pytest" not in installed  # the venv really is requirements.txt alone
    config = real_data_run / "real.yaml"
    out = tmp_path / "report.html"
    proc = subprocess.run([str(venv / "bin" / "snakemake"), "--snakefile", str(repo / "Snakefile"),
                           "--configfile", str(config), "--report", str(out)],
                          cwd=real_data_run, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    rep = read_report(out)
    assert "results/report/picks/TS_01.jpg" in {r for cat in rep["categories"].values()
                                                for sub in cat.values() for r in sub}


def test_embedding_table_rows_and_columns():
    from tomoclust.report.tables import embedding_table

    clusters = pd.DataFrame({"rlnTomoName": ["A", "B"], "rlnCoordinateX": [1.0, 2.0],
                             "rlnCoordinateY": [3.0, 4.0], "rlnCoordinateZ": [5.0, 6.0],
                             "rlnClassNumber": [2, 1], "tclClassProbability": [0.9, 0.6],
                             "tclStackIndex": [0, 1], "tclOther": ["x", "y"]})
    feats = np.array([[0.5, -1.0, 2.0], [1.5, 0.0, -2.0]], np.float32)
    t = embedding_table(clusters, feats)
    assert list(t.columns) == ["rlnTomoName", "rlnCoordinateX", "rlnCoordinateY",
                               "rlnCoordinateZ", "rlnClassNumber", "tclClassProbability",
                               "tclStackIndex", "f0", "f1", "f2"]
    np.testing.assert_array_equal(t[["f0", "f1", "f2"]].to_numpy(), feats)
    with pytest.raises(TomoclustError):
        embedding_table(clusters, feats[:1])


def test_averaging_summary_one_row_per_class(caplog):
    from tomoclust.report.tables import averaging_summary

    summary = {"k": 3, "class_sizes": [12, 3, 20]}
    infos = [{"class": 3, "n_particles": 20, "resolution_0143_angst": 31.5},
             {"class": 1, "n_particles": 12, "resolution_0143_angst": 40.0, "template": "4v1w",
              "template_particles": 11.0, "fsc_truth_05_angst": 45.0,
              "fsc_truth_0143_angst": 38.0}]
    with caplog.at_level("INFO", logger="tomoclust.report.tables"):
        table = averaging_summary(summary, infos, min_particles=10)
    assert "class 2: 3 particles, too few to average (min_particles 10" in caplog.text
    assert table["class"].tolist() == [1, 2, 3]
    assert table["status"].tolist() == ["averaged", "too few particles", "averaged"]
    assert table["n_particles"].tolist() == [12, 3, 20]
    assert table.loc[0, "template"] == "4v1w" and table.loc[0, "fsc_truth_0143_angst"] == 38.0
    # integer counts, missing where unknown (not 11.0 and NaN)
    assert str(table["template_particles"].dtype) == "Int64"
    assert table.loc[0, "template_particles"] == 11
    assert table["template_particles"].isna().tolist() == [False, True, True]
