"""End to end with every feature method: invariant, DISCA and the autoencoder on the tiny
simulation, the shared clustering, the classification evaluation, the class averages; rerun
triggers of the method, clustering and averaging settings; a forced DISCA job trains afresh;
lint.

The run (tests/data/tiny_methods.yaml) takes about a minute on 2 busy cores; the dry runs
after it reuse its working directory.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.optimize import linear_sum_assignment
from test_workflow import SNAKEMAKE, _job_stats, _output, _snakemake
from test_workflow import _write_config as _write_tiny_config
from tomoclust.formats.mrc import read_mrc
from tomoclust.formats.star import read_star

pytestmark = pytest.mark.slow

METHODS = ["invariant", "disca", "autoencoder"]
UPSTREAM = {"simulate_tomogram", "template_density", "gather_truth", "ingest", "pick",
            "extract", "gather_particles", "evaluate_picking"}


def _write_config(repo: Path, path: Path, **changes) -> Path:
    """tests/data/tiny_methods.yaml, written as test_workflow's tiny config is."""
    return _write_tiny_config(repo, path, base="tiny_methods.yaml", **changes)


@pytest.fixture(scope="module")
def methods_run(tmp_path_factory, repo):
    workdir = tmp_path_factory.mktemp("tiny_methods")
    config = _write_config(repo, workdir / "tiny_methods.yaml")
    proc = _snakemake(repo, workdir, "--configfile", str(config), timeout=600)
    assert proc.returncode == 0, _output(proc)[-5000:]
    return workdir


def _dry_run_jobs(repo: Path, workdir: Path, name: str, **changes) -> dict[str, int]:
    cfg = _write_config(repo, workdir / name, **changes)
    proc = _snakemake(repo, workdir, "-n", "--configfile", str(cfg))
    assert proc.returncode == 0, _output(proc)
    return _job_stats(_output(proc))


def test_features_clusters_and_evaluation(methods_run):
    res = methods_run / "results"
    particles = read_star(res / "particles" / "particles.star")
    n = len(particles)
    assert n >= 10
    for method in METHODS:
        feats = np.load(res / "features" / method / "features.npy")
        assert feats.shape[0] == n and feats.ndim == 2 and feats.dtype == np.float32
        assert np.all(np.isfinite(feats))
        info = json.loads((res / "features" / method / "info.json").read_text())
        assert info["device"] == "cpu"

        clusters = read_star(res / "cluster" / method / "clusters.star")
        assert len(clusters) == n
        assert clusters["rlnImageName"].tolist() == particles["rlnImageName"].tolist()
        labels = clusters["rlnClassNumber"].to_numpy()
        k = int(labels.max())
        assert 2 <= k <= 4  # clustering.k_min .. k_max
        assert sorted(set(labels)) == list(range(1, k + 1))  # 1-based, no gaps
        prob = clusters["tclClassProbability"].to_numpy(dtype=float)
        assert np.all((prob > 0) & (prob <= 1 + 1e-9))
        summary = json.loads((res / "cluster" / method / "summary.json").read_text())
        assert summary["k"] == k and sum(summary["class_sizes"]) == n
        assert summary["mixture_components"] >= k  # BIC components, before any merging
        assert summary["effective_dimension"] > 0
        log = (methods_run / "logs" / "cluster" / f"{method}.log").read_text()
        assert (summary["collapse_warning"] is not None) == ("may have collapsed" in log)
        bic = pd.read_csv(res / "cluster" / method / "bic.tsv", sep="\t")
        assert set(bic["k"]) >= {2, 3, 4}
        assert (res / "cluster" / method / "bic.png").stat().st_size > 0

        m = pd.read_csv(res / "evaluation" / method / "metrics.tsv", sep="\t")
        assert len(m) == 1 and m["method"].iloc[0] == method
        assert m["n_classes"].iloc[0] == 2  # two templates
        assert m["n"].iloc[0] + m["n_unmatched_picks"].iloc[0] == n
        # two tiny DISCA iterations and two autoencoder epochs on 18 particles promise no
        # accuracy (DISCA measured 0.44, the autoencoder 0.72; the invariant's floor is below),
        # so check the number itself: the Hungarian optimum of the written confusion matrix
        # (its row 0 holds the picks that match no true particle, outside the metrics)
        cm = pd.read_csv(res / "evaluation" / method / "confusion.tsv", sep="\t",
                         index_col=0).drop(index=0, errors="ignore").to_numpy(dtype=float)
        rows, cols = linear_sum_assignment(-cm)
        assert m["accuracy"].iloc[0] == pytest.approx(cm[rows, cols].sum() / cm.sum(), abs=1e-9)
        assert cm.sum() == m["n"].iloc[0]
        for name in ["confusion.tsv", "confusion.png"]:
            assert (res / "evaluation" / method / name).stat().st_size > 0
        assert (res / "report" / method / "embedding.png").stat().st_size > 0

    table = pd.read_csv(res / "evaluation" / "classification.tsv", sep="\t")
    assert table["method"].tolist() == METHODS
    # proteasome vs apoferritin at SNR 0.5: the rotation-invariant spectra tell them apart
    inv = table.set_index("method").loc["invariant"]
    assert inv["accuracy"] >= 0.85, table.to_string()

    # DISCA's own outputs: labels, history (invariant init + 2 iterations at most), weights
    dl = read_star(res / "features" / "disca" / "labels.star")
    assert len(dl) == n and dl["rlnClassNumber"].min() == 1
    hist = pd.read_csv(res / "features" / "disca" / "history.tsv", sep="\t")
    assert hist["iteration"].tolist() == list(range(len(hist))) and 2 <= len(hist) <= 3
    assert hist["features"].iloc[0] == "invariant"
    state = torch.load(res / "features" / "disca" / "model.pt", weights_only=True)
    assert state["embed.weight"].shape[0] == 16  # the 'tiny' preset's feature_dim
    ae = pd.read_csv(res / "features" / "autoencoder" / "history.tsv", sep="\t")
    assert ae["epoch"].tolist() == [0, 1]
    assert np.load(res / "features" / "autoencoder" / "features.npy").shape == (n, 8)
    assert not list(res.rglob("*.part"))


def test_class_averages(methods_run):
    """Every class with enough particles is averaged (MRC maps with the voxel size, FSC table,
    RELION STAR with refined angles, origins and half sets, figures); the others are listed."""
    res = methods_run / "results"
    particles = read_star(res / "particles" / "particles.star")
    n_averaged = n_pure = 0
    for method in METHODS:
        clusters = read_star(res / "cluster" / method / "clusters.star")
        sizes = clusters["rlnClassNumber"].value_counts().to_dict()
        summary = pd.read_csv(res / "average" / method / "summary.tsv", sep="\t")
        k = json.loads((res / "cluster" / method / "summary.json").read_text())["k"]
        assert summary["class"].tolist() == list(range(1, k + 1))
        for row in summary.itertuples():
            cdir = res / "average" / method / f"class{row[1]}"
            assert row.n_particles == sizes.get(row[1], 0)
            if row.n_particles < 6:  # averaging.min_particles of tiny_methods.yaml
                assert row.status == "too few particles"
                assert not cdir.exists()  # no placeholder outputs
                continue
            n_averaged += 1
            assert row.status == "averaged"
            for name in ("average", "half1", "half2"):
                vol, vs = read_mrc(cdir / f"{name}.mrc")
                assert vol.shape == (16, 16, 16) and np.all(np.isfinite(vol))
                assert vs == pytest.approx(12.0, abs=1e-3)
            fsc = pd.read_csv(cdir / "fsc.tsv", sep="\t")
            assert list(fsc.columns) == ["shell", "resolution_angst", "fsc_half_maps",
                                         "fsc_truth"]
            assert len(fsc) == 9 and fsc["fsc_half_maps"].iloc[0] == pytest.approx(1.0)
            # refinement must resolve beyond its starting point: the references start
            # low-passed to initial_resolution 50 Å, whose nearest shell of the 16-voxel box at
            # 12 Å is 48 Å (4/16). Measured 30-34 Å (FSC 0.143) and 34-37 Å (0.5 against the
            # true map): a margin of one to two shells. 24 Å is Nyquist.
            assert 24.0 <= row.resolution_0143_angst <= 48.0
            assert row.template in ("3j9i", "4v1w")
            # against the true map only where the class is mostly one complex: an impure class
            # (the weak autoencoder's 10 of 16, measured 99.9 Å) tests the clustering, not the
            # averaging
            if row.template_particles >= 0.75 * row.n_particles:
                n_pure += 1
                assert 24.0 <= row.fsc_truth_05_angst <= 48.0
            star = read_star(cdir / "particles.star")
            assert len(star) == row.n_particles
            assert set(star["rlnImageName"]) <= set(particles["rlnImageName"])
            for col in ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnOriginXAngst",
                        "rlnOriginYAngst", "rlnOriginZAngst"):
                assert np.all(np.isfinite(star[col].to_numpy(dtype=float))), col
            # max_shift 2 voxels, plus at most as much for half 2 brought into half 1's frame
            assert np.abs(star[["rlnOriginXAngst", "rlnOriginYAngst", "rlnOriginZAngst"]]
                          .to_numpy()).max() <= 2 * 2.0 * 12.0 + 1e-6
            assert sorted(set(star["rlnRandomSubset"])) == [1, 2]
            assert read_star(cdir / "particles.star", block="optics")["rlnImageSize"][0] == 16
            for png in ("slices.png", "fsc.png"):
                assert (cdir / png).stat().st_size > 0
            log = (methods_run / "logs" / "average" / method / f"class{row[1]}.log").read_text()
            assert "half-map FSC 0.143" in log
    assert n_averaged >= 1 and n_pure >= 1


def test_averaging_change_reruns_only_averaging(methods_run, repo):
    jobs = _dry_run_jobs(repo, methods_run, "averaging.yaml", averaging__iterations=2)
    # the RELION export carries the refined angles and origins, the overview the averages
    assert set(jobs) == {"average_class", "average_summary", "averaging_table", "export_relion",
                         "report_overview", "all"}, jobs
    assert jobs["average_summary"] == jobs["averaging_table"] == jobs["export_relion"] == 3


def test_dry_run_unchanged_has_nothing_to_do(methods_run, repo):
    proc = _snakemake(repo, methods_run, "-n", "--configfile",
                      str(methods_run / "tiny_methods.yaml"))
    assert proc.returncode == 0, _output(proc)
    assert "Nothing to be done" in _output(proc), _output(proc)


@pytest.mark.parametrize("change", [{"clustering__k_max": 3},
                                    {"clustering__algorithm": "kmeans", "clustering__k": 2},
                                    {"clustering__merge_gap": 3.0}],
                         ids=["k_max", "kmeans", "merge_gap"])
def test_clustering_change_reruns_only_clustering_and_after(methods_run, repo, change):
    jobs = _dry_run_jobs(repo, methods_run, "clustering.yaml", **change)
    # (the class averages of the new classes appear once the `cluster` checkpoint has run)
    assert jobs == {"cluster": 3, "evaluate_classification": 3, "summarise_classification": 1,
                    "plot_embedding": 3, "summarise_clusters": 1, "classification_table": 1,
                    "average_summary": 3, "averaging_table": 3, "export_embedding": 3,
                    "export_relion": 3, "report_overview": 1, "all": 1}, jobs
    assert not {"features_invariant", "features_disca", "features_autoencoder"} & set(jobs)
    assert not UPSTREAM & set(jobs)


def test_disca_change_reruns_only_disca(methods_run, repo):
    jobs = _dry_run_jobs(repo, methods_run, "disca.yaml", disca__iterations=3)
    # one cluster / evaluate_classification job: DISCA's, not the other methods'
    assert jobs == {"features_disca": 1, "cluster": 1, "evaluate_classification": 1,
                    "summarise_classification": 1, "plot_embedding": 1, "summarise_clusters": 1,
                    "classification_table": 1, "average_summary": 1, "averaging_table": 1,
                    "export_embedding": 1, "export_relion": 1, "report_overview": 1,
                    "all": 1}, jobs


def test_autoencoder_change_reruns_only_autoencoder(methods_run, repo):
    jobs = _dry_run_jobs(repo, methods_run, "ae.yaml", autoencoder__epochs=3)
    assert jobs == {"features_autoencoder": 1, "cluster": 1, "evaluate_classification": 1,
                    "summarise_classification": 1, "plot_embedding": 1, "summarise_clusters": 1,
                    "classification_table": 1, "average_summary": 1, "averaging_table": 1,
                    "export_embedding": 1, "export_relion": 1, "report_overview": 1,
                    "all": 1}, jobs


def test_forced_disca_job_trains_afresh(methods_run, repo):
    """A finished job removes its checkpoint (it exists to resume a killed job), so
    ``--forcerun features_disca`` trains again instead of handing back the old model; on the
    CPU the retrained model is the same."""
    res = methods_run / "results"
    assert not (res / "checkpoints" / "disca.pt").exists()
    assert not (res / "checkpoints" / "autoencoder.pt").exists()
    before = np.load(res / "features" / "disca" / "features.npy")
    config = str(methods_run / "tiny_methods.yaml")
    proc = _snakemake(repo, methods_run, "--configfile", config, "--forcerun",
                      "features_disca", "--until", "features_disca")
    try:
        assert proc.returncode == 0, _output(proc)[-5000:]
        log = (methods_run / "logs" / "features" / "disca.log").read_text()
        assert "resuming DISCA" not in log, log
        assert "DISCA iteration 0" in log and "checkpoint" in log and "removed" in log, log
        np.testing.assert_array_equal(np.load(res / "features" / "disca" / "features.npy"),
                                      before)
        assert not (res / "checkpoints" / "disca.pt").exists()
    finally:  # leave the working directory up to date for the other tests
        touch = _snakemake(repo, methods_run, "--configfile", config, "--touch")
        assert touch.returncode == 0, _output(touch)
    proc = _snakemake(repo, methods_run, "-n", "--configfile", config)
    assert "Nothing to be done" in _output(proc), _output(proc)


def test_lint_is_clean_with_every_method(repo, tmp_path):
    config = _write_config(repo, tmp_path / "tiny_methods.yaml")
    proc = subprocess.run([str(SNAKEMAKE), "--lint", "--configfile", str(config)], cwd=repo,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, _output(proc)
    assert "Congratulations" in _output(proc) or "good condition" in _output(proc), _output(proc)


# ------------------------------------------------------------------------- the HTML report
@pytest.fixture(scope="module")
def simulation_report(methods_run, repo, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("report") / "report.html"
    proc = _snakemake(repo, methods_run, "--configfile", str(methods_run / "tiny_methods.yaml"),
                      "--report", str(out))
    assert proc.returncode == 0, _output(proc)[-5000:]
    return out


def test_report_of_the_simulation_has_every_stage(methods_run, simulation_report):
    """`snakemake --report` on the simulation: a category per stage, a figure per method in
    each, the tables, and captions rendered for the wildcards of each figure."""
    from test_report import png_size, read_report, result_bytes, table_cells

    rep = read_report(simulation_report)
    cats, results = rep["categories"], rep["results"]
    assert {"0. Simulation", "1. Picking", "2. Features", "3. Clustering", "4. Evaluation",
            "5. Averaging"} <= set(cats), cats
    for method in METHODS:  # every averaged class: central slices and FSC, plus the table
        avg = methods_run / "results" / "average" / method
        classes = sorted(p.parent.name for p in avg.glob("class*/average.mrc"))
        expected = {f"results/average/{method}/summary.html"} | {
            f"results/average/{method}/{c}/{f}" for c in classes for f in ("slices.png", "fsc.png")}
        assert set(cats["5. Averaging"][method]) == expected, cats["5. Averaging"]
    assert cats["0. Simulation"] == {"templates": ["results/report/simulation/templates.png"]}
    assert cats["1. Picking"] == {
        "picks on tomogram slabs": ["results/report/picks/sim01.jpg",
                                    "results/report/picks/sim02.jpg"],
        "against the ground truth": ["results/evaluation/picking/metrics.html",
                                     "results/evaluation/picking/picking.png"],
        "picks per tomogram": ["results/picks/summary.html"]}
    for method in METHODS:
        assert cats["2. Features"][method] == [f"results/report/{method}/embedding.png"]
        assert cats["3. Clustering"][method] == [f"results/cluster/{method}/bic.png"]
        assert cats["4. Evaluation"][method] == [f"results/evaluation/{method}/confusion.png"]
        for path in cats["2. Features"][method] + cats["4. Evaluation"][method]:
            assert f"<strong>{method}</strong>" in results[path]["caption"], path
            assert results[path]["labels"]["method"] == method
        emb = results[f"results/report/{method}/embedding.png"]
        assert "true class" in emb["caption"]
        assert png_size(result_bytes(emb))[0] > 700  # two panels: cluster and true class
    assert cats["3. Clustering"]["all methods"] == ["results/cluster/summary.html"]
    assert cats["4. Evaluation"]["all methods"] == ["results/evaluation/classification.html"]
    for path, res in results.items():
        assert res["caption"].strip(), f"{path} has no caption"
        assert result_bytes(res) == (methods_run / path).read_bytes(), path
    assert "true particles" in results["results/report/picks/sim01.jpg"]["caption"]

    rows = table_cells(result_bytes(results["results/evaluation/classification.html"]).decode())
    table = pd.read_csv(methods_run / "results" / "evaluation" / "classification.tsv", sep="\t")
    header = rows[0]
    assert header == list(table.columns)
    assert [r[0] for r in rows[1:]] == METHODS
    acc = [float(r[header.index("accuracy")]) for r in rows[1:]]
    np.testing.assert_allclose(acc, table["accuracy"], atol=5e-4)
    summary = table_cells(result_bytes(results["results/cluster/summary.html"]).decode())
    for row, method in zip(summary[1:], METHODS, strict=True):
        k = json.loads((methods_run / "results" / "cluster" / method / "summary.json")
                       .read_text())["k"]
        assert row[0] == method and row[2] == str(k)
    assert "2 simulated tomograms" in rep["workflow_desc"]


def test_rerun_matrix(methods_run, repo):
    """Every config key reruns exactly the rules declared to read it (tests/rerun_matrix.py),
    on the completed methods run."""
    from rerun_matrix import check, schema_leaf_keys

    problems = check(repo, methods_run, methods_run / "tiny_methods.yaml", schema_leaf_keys(repo),
                     {"truth", "simulation"})
    assert not problems, problems


def _averaged(methods_run: Path, method: str) -> list[int]:
    avg = methods_run / "results" / "average" / method
    return sorted(int(p.parent.name[5:]) for p in avg.glob("class*/average.mrc"))


def test_report_first_page_answers(methods_run, simulation_report):
    """The page the report opens on starts with the answer: per method (the most accurate
    first) K, class sizes, central slices and FSC 0.143 of each average, stability, accuracy."""
    from test_report import read_report

    desc = read_report(simulation_report)["workflow_desc"]
    table = pd.read_csv(methods_run / "results" / "evaluation" / "classification.tsv", sep="\t")
    best = table.loc[table["accuracy"].idxmax(), "method"]
    assert desc.index("tomoclust-overview") < desc.index("How it was found")
    order = [desc.index(f'data-method="{m}"') for m in METHODS]
    assert order.index(min(order)) == METHODS.index(best)
    assert f"Recommended: {best}" in desc
    for method in METHODS:
        k = json.loads((methods_run / "results" / "cluster" / method / "summary.json")
                       .read_text())["k"]
        block = desc[desc.index(f'data-method="{method}"'):]
        block = block[:block.index("</table>")]
        assert block.count("<tr><td>") == k
        assert block.count('class="tc-slices"') == len(_averaged(methods_run, method))
        acc = table.set_index("method").loc[method, "accuracy"]
        assert f"accuracy {acc:.2f}" in block and "stability ARI" in block
        summary = pd.read_csv(methods_run / "results" / "average" / method / "summary.tsv",
                              sep="\t")
        for res in summary["resolution_0143_angst"].dropna():
            assert f"{res:.0f} Å" in block


def test_report_renders_in_a_browser(methods_run, simulation_report, tmp_path):
    """Debian's chromium, headless: the answer is on the first screen, every class average's
    slices are loaded images, and the screenshot is not blank."""
    from browser import render
    from matplotlib import image

    script = """() => {
      const ov = document.querySelector('#tomoclust-overview');
      if (!ov) return null;
      const r = ov.getBoundingClientRect();
      const title = document.querySelector('.prose h1, .prose .title');
      return {top: r.top, width: r.width, height: r.height,
              title: title ? [title.innerText, title.getBoundingClientRect().top] : null,
              lead: ov.querySelector('.tc-lead').innerText,
              methods: [...ov.querySelectorAll('.tc-method')].map(d => ({
                method: d.dataset.method, head: d.querySelector('h3').innerText,
                rows: d.querySelectorAll('tbody tr').length,
                imgs: [...d.querySelectorAll('img.tc-slices')].map(
                  i => [i.complete, i.naturalWidth, i.getBoundingClientRect().height])}))};
    }"""
    shot = tmp_path / "report.png"
    dom, errors = render(simulation_report, shot, script=script)
    assert not errors, errors
    assert dom is not None, "no overview on the report's first page"
    assert dom["width"] > 200 and dom["height"] > 100 and 0 <= dom["top"] < 1000, dom
    # the title above it is on screen too (the landing page is not cut off at the top)
    assert dom["title"] and dom["title"][0].startswith("tomoclust") and dom["title"][1] >= 0
    assert dom["lead"].startswith("Recommended:"), dom["lead"]
    assert {m["method"] for m in dom["methods"]} == set(METHODS)
    for m in dom["methods"]:
        k = json.loads((methods_run / "results" / "cluster" / m["method"] / "summary.json")
                       .read_text())["k"]
        assert m["rows"] == k and f"{k} class" in m["head"] and "accuracy" in m["head"], m
        assert len(m["imgs"]) == len(_averaged(methods_run, m["method"])), m
        for complete, natural, height in m["imgs"]:
            assert complete and natural > 0 and height > 20, m
    pixels = image.imread(shot)[..., :3]
    assert pixels.std() > 0.05, "blank screenshot"
    assert (pixels.mean(axis=2) < 0.5).mean() > 0.005, "almost no dark pixels (text, images)"
    keep = Path(os.environ.get("TOMOCLUST_SCREENSHOT_DIR", tmp_path))
    keep.mkdir(parents=True, exist_ok=True)
    if keep != tmp_path:
        (keep / "report_first_page.png").write_bytes(shot.read_bytes())


def test_relion_and_embedding_exports(methods_run):
    """Per method: the embedding table (features, place, class, probability) and the RELION 5
    set (tomograms.star; particles.star per class, centred Å from size / 2, angles and origins
    where the class was averaged)."""
    from tomoclust.formats.star import read_star_blocks

    res = methods_run / "results"
    particles = read_star(res / "particles" / "particles.star")
    for method in METHODS:
        clusters = read_star(res / "cluster" / method / "clusters.star")
        emb = pd.read_csv(res / "embedding" / method / "embedding.tsv", sep="\t")
        feats = np.load(res / "features" / method / "features.npy")
        assert len(emb) == len(particles)
        np.testing.assert_allclose(emb[[f"f{i}" for i in range(feats.shape[1])]], feats,
                                   rtol=1e-6, atol=1e-6)
        assert emb["rlnClassNumber"].tolist() == clusters["rlnClassNumber"].tolist()
        assert emb["tclClassProbability"].between(0, 1).all()
        assert emb["rlnTomoName"].tolist() == particles["rlnTomoName"].tolist()

        out = res / "relion" / method
        tomos = read_star_blocks(out / "tomograms.star")["global"]
        assert sorted(tomos["rlnTomoName"]) == ["sim01", "sim02"]
        # the simulation: 96 x 96 x 48 at 10 Å, no tilt-series pixel size given: binning 1
        assert tomos[["rlnTomoSizeX", "rlnTomoSizeY", "rlnTomoSizeZ"]].values.tolist() == \
            [[96, 96, 48]] * 2
        blocks = read_star_blocks(out / "particles.star")
        assert blocks["optics"]["rlnTomoTiltSeriesPixelSize"].tolist() == [10.0]
        allp = blocks["particles"]
        assert len(allp) == len(clusters)
        np.testing.assert_allclose(allp["rlnCenteredCoordinateXAngst"],
                                   particles["rlnCoordinateX"] * 10.0 - 480.0, atol=1e-6)
        np.testing.assert_allclose(allp["rlnCenteredCoordinateZAngst"],
                                   particles["rlnCoordinateZ"] * 10.0 - 240.0, atol=1e-6)
        # boxes re-centred at extraction (extraction.recentre): every particle keeps its origin,
        # the extraction's where the class was not averaged
        assert "rlnOriginXAngst" in particles.columns
        assert allp["rlnOriginXAngst"].notna().all()
        not_averaged = ~allp["rlnClassNumber"].isin(_averaged(methods_run, method)).to_numpy()
        np.testing.assert_allclose(allp["rlnOriginZAngst"].to_numpy()[not_averaged],
                                   particles["rlnOriginZAngst"].to_numpy()[not_averaged], atol=1e-6)
        for k in _averaged(methods_run, method):
            cls = read_star_blocks(out / f"class{k}" / "particles.star")["particles"]
            assert (cls["rlnClassNumber"] == k).all()
            assert {"rlnAngleRot", "rlnOriginXAngst", "rlnRandomSubset"} <= set(cls.columns)
            assert cls["rlnAngleRot"].notna().all()
