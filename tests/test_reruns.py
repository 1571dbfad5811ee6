"""What a rerun redoes, in sheet (real-data) mode: a run killed with SIGKILL resumes without
redoing its finished jobs; a tomogram added to the sheet is processed alone (plus the gather
and everything after it); a clustering setting reruns only the clustering.

The workflow (tests/data/tiny_sheet.yaml: 40x64x64 tomograms at 10 Å with planted blobs,
invariant features only) takes about 15 s per run on 2 cores; the whole file well under two
minutes.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from test_workflow import SNAKEMAKE, _job_stats, _output, _snakemake
from tomoclust.formats.mrc import write_mrc
from tomoclust.formats.stacks import open_stack
from tomoclust.formats.star import read_star

pytestmark = pytest.mark.slow

SHAPE = (40, 64, 64)  # z, y, x voxels at 10 Å
# blob centres (z, y, x): at least 12 voxels from every face, the extraction box at 10 Å
CENTRES = [(14, 16, 16), (26, 16, 48), (14, 48, 16), (26, 48, 48), (20, 32, 32), (26, 20, 32),
           (14, 44, 34)]
FINAL = "results/cluster/invariant/clusters.star"

# "rule ingest:" / "localrule pick:" opens a job block of a (dry) run's log
_RULE = re.compile(r"^\s*(?:local)?(?:rule|checkpoint) (\S+):\s*$")
_JOBID = re.compile(r"^\s*jobid: (\d+)\s*$")
_WILDCARDS = re.compile(r"^\s*wildcards: (.*)$")
_FINISHED = re.compile(r"Finished job(?:id:)? (\d+)")


# the report's per-method figures and tables, remade whenever the clustering is
REPORT_JOBS = {("plot_embedding", "method=invariant"), ("summarise_clusters", "")}

def _tomogram(seed: int) -> np.ndarray:
    """Dark blobs (alternately a ball and a dumbbell) in weak Gaussian noise."""
    z, y, x = np.indices(SHAPE, dtype=np.float32)
    vol = np.zeros(SHAPE, np.float32)
    for i, (cz, cy, cx) in enumerate(CENTRES):
        offsets, sigma = ((0,), 3.0) if i % 2 else ((-3, 3), 2.0)
        for dx in offsets:
            r2 = (z - cz) ** 2 + (y - cy) ** 2 + (x - cx - dx) ** 2
            vol -= np.exp(-r2 / (2 * sigma**2))
    rng = np.random.default_rng(seed)
    return vol + 0.1 * rng.standard_normal(SHAPE).astype(np.float32)


def _write_sheet(path: Path, tomograms: dict[str, Path]) -> Path:
    path.write_text("name\tpath\n" + "".join(f"{k}\t{v}\n" for k, v in tomograms.items()))
    return path


def _write_config(repo: Path, path: Path, sheet: Path, **changes) -> Path:
    """tests/data/tiny_sheet.yaml on ``sheet``, with ``section__key=value`` changes."""
    cfg = yaml.safe_load((repo / "tests" / "data" / "tiny_sheet.yaml").read_text())
    cfg["tomograms"] = str(sheet)
    for dotted, value in changes.items():
        section, key = dotted.split("__")
        cfg[section][key] = value
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def _jobs(text: str) -> dict[str, tuple[str, str]]:
    """The job blocks of a (dry) run's output as {jobid: (rule, wildcards)}; wildcards is the
    text after 'wildcards:' ("" for rules without any)."""
    jobs: dict[str, tuple[str, str]] = {}
    rule = jobid = wildcards = None
    for line in text.splitlines() + [""]:
        m = _RULE.match(line)
        if m or not line.strip():  # a new block, or the blank line that ends one
            if rule is not None and jobid is not None:
                jobs[jobid] = (rule, wildcards or "")
            rule, jobid, wildcards = (m.group(1) if m else None), None, None
            continue
        if rule is None:
            continue
        if m := _JOBID.match(line):
            jobid = m.group(1)
        elif m := _WILDCARDS.match(line):
            wildcards = m.group(1).strip()
    return jobs


def _job_set(text: str) -> set[tuple[str, str]]:
    jobs = set(_jobs(text).values())
    assert len(jobs) == len(_jobs(text)), "a job is listed twice"
    return jobs


def _finished(text: str) -> set[tuple[str, str]]:
    """(rule, wildcards) of the jobs a run's output reports as finished."""
    jobs = _jobs(text)
    return {jobs[j] for j in _FINISHED.findall(text)}


def _real(jobs: set[tuple[str, str]]) -> set[tuple[str, str]]:
    """Jobs without the output-less target rule `all`: when the `cluster` checkpoint is the
    last job, Snakemake re-evaluates the DAG after it and may end the run without running
    `all` (nothing is left for it to wait for)."""
    return {j for j in jobs if j[0] != "all"}


def _group_alive(pgid: int) -> bool:
    """Whether any non-zombie process is left in process group ``pgid`` (Linux /proc)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":  # fields: state, ppid, pgrp, ...
            return True
    return False


def _mtimes(workdir: Path, paths: list[str]) -> dict[str, int]:
    return {p: (workdir / p).stat().st_mtime_ns for p in paths}


def _outputs(rule: str, wildcards: str) -> list[str]:
    """The output files of a per-tomogram job (for the mtime checks)."""
    tomo = wildcards.removeprefix("tomo=")
    return {
        "ingest": [f"results/tomograms/{tomo}/tomogram.mrc",
                   f"results/tomograms/{tomo}/ingest.json"],
        "pick": [f"results/picks/{tomo}.star"],
        "extract": [f"results/subtomograms/{tomo}.star", f"results/subtomograms/{tomo}.mrcs"],
    }.get(rule, [])


@pytest.fixture(scope="module")
def killed_and_resumed(tmp_path_factory, repo):
    """Start the real run on one core, SIGKILL it (with its process group) once three jobs
    have finished, then do what a user does: rerun (refused: stale lock), ``--unlock``,
    dry-run, rerun with ``--rerun-incomplete``. Returns what each step printed."""
    workdir = tmp_path_factory.mktemp("sheet_reruns")
    tomos = {}
    for i in (1, 2, 3):
        tomos[f"TS_0{i}"] = workdir / "raw" / f"TS_0{i}.mrc"
        write_mrc(tomos[f"TS_0{i}"], _tomogram(i), 10.0)
    sheet = _write_sheet(workdir / "sheet.tsv", {k: tomos[k] for k in ("TS_01", "TS_02")})
    _write_sheet(workdir / "sheet3.tsv", tomos)
    config = _write_config(repo, workdir / "sheet.yaml", sheet)

    cmd = [str(SNAKEMAKE), "--snakefile", str(repo / "Snakefile"), "--directory", str(workdir),
           "--cores", "1", "--configfile", str(config)]
    log_path = workdir / "killed_run.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=workdir, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while len(_FINISHED.findall(log_path.read_text())) < 3:
            assert proc.poll() is None, "the run ended before it was killed:\n" + \
                log_path.read_text()[-5000:]
            assert time.monotonic() < deadline, log_path.read_text()[-5000:]
            time.sleep(0.05)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    deadline = time.monotonic() + 30
    while _group_alive(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    killed_log = log_path.read_text()
    state = {
        "workdir": workdir, "config": config, "sheet3": workdir / "sheet3.tsv",
        "killed_log": killed_log, "group_left": _group_alive(proc.pid),
        "final_after_kill": (workdir / FINAL).exists(),
        "finished": _finished(killed_log), "started": set(_jobs(killed_log).values()),
    }
    state["finished_mtimes"] = _mtimes(workdir, [p for job in state["finished"]
                                                 for p in _outputs(*job)])
    # what a user sees next: a refused run, --unlock, a dry run, the resumed run
    state["locked"] = _snakemake(repo, workdir, "--configfile", str(config))
    state["unlock"] = _snakemake(repo, workdir, "--configfile", str(config), "--unlock")
    state["dry"] = _snakemake(repo, workdir, "--configfile", str(config), "-n",
                              "--rerun-incomplete")
    state["resumed"] = _snakemake(repo, workdir, "--configfile", str(config),
                                  "--rerun-incomplete")
    return state


def test_killed_run_is_cut_short(killed_and_resumed):
    s = killed_and_resumed
    assert not s["group_left"], "processes of the killed run survived SIGKILL of its group"
    assert not s["final_after_kill"], "the run had finished before the kill"
    assert len(s["finished"]) >= 3, s["killed_log"][-3000:]
    # at least one per-tomogram output is complete; on one core at most one job was running
    assert {"ingest"} <= {rule for rule, _ in s["finished"]}, s["finished"]
    assert len(s["started"] - s["finished"]) <= 1, (s["started"], s["finished"])


def test_stale_lock_is_reported_and_unlock_clears_it(killed_and_resumed):
    s = killed_and_resumed
    locked = _output(s["locked"])
    assert s["locked"].returncode != 0, locked
    assert "cannot be locked" in locked and "--unlock" in locked, locked
    assert s["unlock"].returncode == 0, _output(s["unlock"])


def test_resume_redoes_no_finished_job(killed_and_resumed):
    s = killed_and_resumed
    assert s["dry"].returncode == 0, _output(s["dry"])
    planned = _job_set(_output(s["dry"]))
    every = {(r, f"tomo={t}") for r in ("ingest", "pick", "extract") for t in ("TS_01", "TS_02")}
    every |= {("gather_particles", ""), ("features_invariant", ""),
              ("cluster", "method=invariant"), ("all", "")}
    every |= REPORT_JOBS | {("summarise_picks", "")}
    every |= {("plot_picks", f"tomo={t}") for t in ("TS_01", "TS_02")}
    assert s["finished"] <= every, s["finished"]
    # nothing that finished before the kill is planned again; everything else is, except
    # perhaps the one job that was running (it is planned if it left its outputs behind)
    assert not planned & s["finished"], planned & s["finished"]
    running = s["started"] - s["finished"]
    assert every - s["finished"] - running <= planned <= every - s["finished"], planned
    assert sum(_job_stats(_output(s["dry"])).values()) == len(planned)

    resumed = _output(s["resumed"])
    assert s["resumed"].returncode == 0, resumed[-5000:]
    assert _real(_finished(resumed)) == _real(planned), (_finished(resumed), planned)
    # the finished jobs' outputs are the very files written before the kill
    assert _mtimes(s["workdir"], list(s["finished_mtimes"])) == s["finished_mtimes"]
    res = s["workdir"] / "results"
    particles = read_star(res / "particles" / "particles.star")
    data, _ = open_stack(res / "particles" / "particles.mrcs")
    assert len(particles) == data.shape[0] > 0
    assert set(particles["rlnTomoName"]) == {"TS_01", "TS_02"}
    assert len(read_star(res / "cluster" / "invariant" / "clusters.star")) == len(particles)


def test_nothing_to_do_after_the_resume(killed_and_resumed, repo):
    s = killed_and_resumed
    proc = _snakemake(repo, s["workdir"], "-n", "--configfile", str(s["config"]))
    assert proc.returncode == 0, _output(proc)
    assert "Nothing to be done" in _output(proc), _output(proc)


@pytest.mark.parametrize("change", [{"clustering__k_max": 4},
                                    {"clustering__algorithm": "kmeans", "clustering__k": 2}],
                         ids=["k_max", "kmeans"])
def test_clustering_change_reruns_only_cluster(killed_and_resumed, repo, change):
    s = killed_and_resumed
    sheet = yaml.safe_load(s["config"].read_text())["tomograms"]
    cfg = _write_config(repo, s["workdir"] / "clustering.yaml", Path(sheet), **change)
    proc = _snakemake(repo, s["workdir"], "-n", "--configfile", str(cfg))
    assert proc.returncode == 0, _output(proc)
    assert _job_stats(_output(proc)) == {"cluster": 1, "plot_embedding": 1,
                                         "summarise_clusters": 1, "all": 1}, _output(proc)
    assert _job_set(_output(proc)) == {("cluster", "method=invariant"), ("all", "")} | REPORT_JOBS


def test_added_tomogram_is_processed_alone(killed_and_resumed, repo, tmp_path):
    """A third row in the sheet: its ingest, pick and extract, then the gather and everything
    after it; not one job of the two tomograms already done. Checked in a dry run, then by a
    real run (in a copy of the working directory, so the other tests keep theirs)."""
    s = killed_and_resumed
    workdir = tmp_path / "w"
    shutil.copytree(s["workdir"], workdir, symlinks=True)  # copy2 keeps the mtimes
    cfg = _write_config(repo, workdir / "three.yaml", s["sheet3"])
    expected = {("ingest", "tomo=TS_03"), ("pick", "tomo=TS_03"), ("extract", "tomo=TS_03"),
                ("gather_particles", ""), ("features_invariant", ""),
                ("cluster", "method=invariant"), ("all", ""),
                ("plot_picks", "tomo=TS_03"), ("summarise_picks", "")} | REPORT_JOBS

    dry = _snakemake(repo, workdir, "-n", "--configfile", str(cfg))
    assert dry.returncode == 0, _output(dry)
    assert _job_stats(_output(dry)) == {"ingest": 1, "pick": 1, "extract": 1,
                                        "gather_particles": 1, "features_invariant": 1,
                                        "cluster": 1, "all": 1, "plot_picks": 1,
                                        "summarise_picks": 1, "plot_embedding": 1,
                                        "summarise_clusters": 1}, _output(dry)
    assert _job_set(_output(dry)) == expected, _output(dry)

    before = _mtimes(workdir, [p for t in ("TS_01", "TS_02")
                               for r in ("ingest", "pick", "extract")
                               for p in _outputs(r, f"tomo={t}")])
    run = _snakemake(repo, workdir, "--configfile", str(cfg))
    assert run.returncode == 0, _output(run)[-5000:]
    assert _real(_finished(_output(run))) == _real(expected), _output(run)[-5000:]
    assert _mtimes(workdir, list(before)) == before
    particles = read_star(workdir / "results" / "particles" / "particles.star")
    assert set(particles["rlnTomoName"]) == {"TS_01", "TS_02", "TS_03"}
