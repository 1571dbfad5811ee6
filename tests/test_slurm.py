"""The SLURM profile (profiles/slurm), statically and against a real single-node SLURM.

Static checks (always run, < 1 s): the profile's keys are options of the installed Snakemake
and SLURM plugin, and they survive the workflow profile (profiles/default), which Snakemake
loads automatically next to ``--profile`` and lets override it.

The real-cluster test (``-m slurm``) runs only when ``CI=true`` or ``TOMOCLUST_SLURM=1``:
tests/slurm/start_cluster.sh installs Debian's SLURM if needed and starts munged, slurmctld and
slurmd with one fake GPU; the fixture always stops them again. The tiny workflow
(tests/slurm/tiny.yaml) is run with exactly the users' command line::

    snakemake --profile profiles/slurm --configfile tiny.yaml

plus ``--verbose`` (to log the sbatch calls), and ``--set-resources pick:gpu=1`` only if no rule
of the tiny DAG asks for a GPU (so the GPU path is always exercised). Run it with::

    TOMOCLUST_SLURM=1 .venv/bin/python -m pytest -m slurm tests/test_slurm.py
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
PROFILE = REPO / "profiles" / "slurm"
CLUSTER = REPO / "tests" / "slurm"
SNAKEMAKE = Path(sys.executable).with_name("snakemake")

# the whole snakemake run; a hang fails after this (SIGINT: snakemake cancels its jobs)
RUN_LIMIT_S = int(os.environ.get("TOMOCLUST_SLURM_LIMIT", "420"))
# If the tiny DAG has no rule that asks for a GPU, this one is made to (the GPU path is proven
# either way; pick falls back to the CPU like every GPU-capable step)
FALLBACK_GPU_RULE = "pick"

SLURM_ALLOWED = os.environ.get("CI") == "true" or os.environ.get("TOMOCLUST_SLURM") == "1"


def _profile() -> dict:
    return yaml.safe_load((PROFILE / "config.yaml").read_text())


def _parse_cli(args: list[str], cwd: Path, monkeypatch):
    """Snakemake's own argument parsing, profiles included (as `snakemake <args>` in cwd)."""
    from snakemake.cli import parse_args

    monkeypatch.chdir(cwd)
    return parse_args(args)[1]


def _dest(key: str) -> str:
    return key.replace("-", "_")


def _value(resource):
    """A parsed resource's constant value (None for expressions such as `2*input.size_mb`)."""
    try:
        return getattr(resource, "value", resource)
    except ValueError:
        return None


# ---------------------------------------------------------------------------------- static
def test_profile_options_exist(tmp_path, monkeypatch):
    """Every key of profiles/slurm is an option of this Snakemake + plugin (no typos)."""
    args = _parse_cli(["--snakefile", str(REPO / "Snakefile"), "--profile", str(PROFILE),
                       "--workflow-profile", "none", "--dry-run"], tmp_path, monkeypatch)
    for key in _profile():
        assert hasattr(args, _dest(key)), f"unknown profile key {key}"
    assert args.executor == "slurm"
    assert args.slurm_status_command == "squeue"  # sacct hangs where there is no slurmdbd
    assert "gpu" not in {k for k, v in args.default_resources.items() if _value(v)}


def test_workflow_profile_keeps_slurm_settings(tmp_path, monkeypatch):
    """`--profile profiles/slurm` also loads profiles/default (the workflow profile), whose
    settings win. It must not undo the cluster settings (keep-going, default-resources such as a
    site's slurm_account) nor impose a global resource limit: a local `resources: gpu: 1` would
    let one GPU job at a time run on the whole cluster."""
    args = _parse_cli(["--snakefile", str(REPO / "Snakefile"), "--profile", str(PROFILE),
                       "--dry-run"], tmp_path, monkeypatch)
    prof = _profile()
    problems = []
    for key, want in prof.items():
        if isinstance(want, dict):
            continue
        got = getattr(args, _dest(key))
        got = str(got) if isinstance(got, Path) else got
        if got != want:
            problems.append(f"{key}: {want!r} in profiles/slurm, effective {got!r}")
    for name, want in prof.get("default-resources", {}).items():
        got = _value((args.default_resources or {}).get(name))
        if got != want:
            problems.append(f"default-resources {name}: {want!r} in profiles/slurm, "
                            f"effective {got!r}")
    limits = {k: _value(v) for k, v in (args.resources or {}).items()}
    if limits != prof.get("resources", {}):
        problems.append(f"global resource limits on the cluster: {limits}")
    assert not problems, "profiles/default overrides profiles/slurm:\n" + "\n".join(problems)


def _gpu_rules_anywhere() -> set[str]:
    """Rules of rules/*.smk (also those defined inside an ``if``) whose resources ask for a
    GPU."""
    out = set()
    for smk in sorted((REPO / "rules").glob("*.smk")):
        blocks = re.split(r"^\s*(?:rule|checkpoint)\s+(\w+)\s*:", smk.read_text(), flags=re.M)
        for name, body in zip(blocks[1::2], blocks[2::2], strict=True):
            if re.search(r"\bgpu\s*=\s*[1-9]", body):
                out.add(name)
    return out


def test_gres_profile_is_the_slurm_profile_with_gres_for_every_gpu_rule():
    """profiles/slurm-gres: the same settings as profiles/slurm, except that every GPU rule
    asks for `--gres=gpu:1` instead of `--gpus` (the plugin would send both if both were set,
    and its partition selection rejects that pair)."""
    gres = yaml.safe_load((REPO / "profiles" / "slurm-gres" / "config.yaml").read_text())
    sets = gres.pop("set-resources")
    assert gres == _profile()
    gpu_rules = _gpu_rules_anywhere()
    assert {"features_disca", "average_class", "transfer_train"} <= gpu_rules
    assert set(sets) == gpu_rules
    for rule, res in sets.items():
        assert res["gpu"] == 0, rule
        assert res["gres"] == "'gpu:1'", rule  # the inner quotes make it a string resource


def _install(xdg: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "XDG_CONFIG_HOME": str(xdg)}
    return subprocess.run(["bash", str(REPO / "profiles" / "install.sh"), *args], env=env,
                          capture_output=True, text=True, timeout=60)


def test_install_links_the_profiles_once_and_never_clobbers(tmp_path):
    xdg = tmp_path / "xdg"
    res = _install(xdg, "--dry-run")
    assert res.returncode == 0 and not (xdg / "snakemake").exists(), res.stderr
    for _ in range(2):  # idempotent
        res = _install(xdg)
        assert res.returncode == 0, res.stderr
        for name in ("slurm", "slurm-gres"):
            link = xdg / "snakemake" / name
            assert link.is_symlink() and link.resolve() == (REPO / "profiles" / name).resolve()
    assert "already installed" in res.stdout
    # someone else's profile of the same name: refused, nothing changed
    own = tmp_path / "xdg2" / "snakemake" / "slurm"
    own.mkdir(parents=True)
    (own / "config.yaml").write_text("executor: slurm\n")
    res = _install(tmp_path / "xdg2")
    assert res.returncode == 1 and "not replacing" in res.stderr, res.stderr
    assert not own.is_symlink() and (own / "config.yaml").read_text() == "executor: slurm\n"
    assert not (tmp_path / "xdg2" / "snakemake" / "slurm-gres").exists()
    # a link to another checkout: refused too
    other = tmp_path / "other"
    other.mkdir()
    (xdg / "snakemake" / "slurm-gres").unlink()
    (xdg / "snakemake" / "slurm-gres").symlink_to(other)
    res = _install(xdg)
    assert res.returncode == 1 and "already links to" in res.stderr, res.stderr
    assert (xdg / "snakemake" / "slurm-gres").resolve() == other.resolve()


def test_bare_profile_name_works_from_any_directory_after_install(tmp_path):
    """`snakemake --profile slurm -n`, as facility staff type it, in a directory that is not
    the repository, after `bash profiles/install.sh`."""
    from test_workflow import _write_config

    xdg = tmp_path / "xdg"
    assert _install(xdg).returncode == 0
    work = tmp_path / "elsewhere"
    work.mkdir()
    cfg = _write_config(REPO, work / "tiny.yaml")
    env = {k: v for k, v in os.environ.items() if k != "SNAKEMAKE_PROFILE"}
    env["XDG_CONFIG_HOME"] = str(xdg)
    cmd = ["--snakefile", str(REPO / "Snakefile"), "--configfile", str(cfg)]
    for name in ("slurm", "slurm-gres"):
        res = subprocess.run([str(SNAKEMAKE), "--profile", name, "-n", *cmd], cwd=work,
                             env=env, capture_output=True, text=True, timeout=300)
        out = res.stdout + res.stderr
        assert res.returncode == 0, out[-3000:]
        assert f"Using profiles {name} " in out, out[-3000:]  # the bare name, found
        assert "Job stats" in out, out[-3000:]
    # without the link the bare name is not found (what the install step fixes)
    res = subprocess.run([str(SNAKEMAKE), "--profile", "slurm", "-n", *cmd], cwd=work,
                         env={**env, "XDG_CONFIG_HOME": str(tmp_path / "none")},
                         capture_output=True, text=True, timeout=300)
    assert res.returncode != 0


# ---------------------------------------------------------------------------- real cluster
def _run(cmd: list[str], env: dict, timeout: float, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, env=env, timeout=timeout, text=True, capture_output=True, **kw)


@pytest.fixture(scope="module")
def slurm_cluster():
    """A running single-node SLURM; its daemons are stopped even if starting it failed."""
    if shutil.which("apt-get") is None and shutil.which("slurmctld") is None:
        pytest.skip("needs Debian/Ubuntu (apt-get) or an installed SLURM")
    if os.geteuid() != 0:
        pytest.skip("the test cluster runs its daemons as root")
    state = Path(os.environ.get("TOMOCLUST_SLURM_DIR", "/tmp/tomoclust-slurm"))
    env = {**os.environ, "TOMOCLUST_SLURM_DIR": str(state), "TOMOCLUST_SLURM_TIMEOUT": "60"}
    env.pop("SLURM_CONF", None)
    # daemons left by a test run that was killed before its teardown (their recorded PIDs only)
    _run(["bash", str(CLUSTER / "stop_cluster.sh")], env, timeout=120)
    try:
        res = _run(["bash", str(CLUSTER / "start_cluster.sh")], env, timeout=600)
        assert res.returncode == 0, f"start_cluster.sh failed:\n{res.stderr[-4000:]}"
        yield state
    finally:
        _run(["bash", str(CLUSTER / "stop_cluster.sh")], env, timeout=120)


def _gpu_rules_declared() -> dict[str, int]:
    """{rule: gpu} for rules in rules/*.smk whose `resources:` ask for a GPU."""
    out = {}
    for smk in sorted((REPO / "rules").glob("*.smk")):
        blocks = re.split(r"^(?:rule|checkpoint)\s+(\w+)\s*:", smk.read_text(), flags=re.M)
        for name, body in zip(blocks[1::2], blocks[2::2], strict=True):
            m = re.search(r"^\s+resources:\s*\n((?:\s{8,}.*\n)+)", body, flags=re.M)
            g = re.search(r"\bgpu\s*=\s*(\d+)", m.group(1)) if m else None
            if g and int(g.group(1)) > 0:
                out[name] = int(g.group(1))
    return out


def _job_stats(text: str) -> Counter:
    """The 'Job stats' table snakemake prints before running: {rule: count}."""
    m = re.search(r"^Job stats:\n.*\n-+\s+-+\n((?:\S+\s+\d+\n)+)", text, flags=re.M)
    assert m, "no 'Job stats' table in the snakemake output"
    rows = (line.split() for line in m.group(1).splitlines())
    return Counter({r: int(n) for r, n in rows if r != "total"})


def _scheduled_jobs(text: str) -> Counter:
    """{rule: count} of the jobs snakemake announced (``rule X:`` / ``checkpoint X:`` blocks),
    including those it added after a checkpoint, which the 'Job stats' table cannot know."""
    return Counter(re.findall(r"^(?:rule|checkpoint) (\w+):$", text, flags=re.M))


def _sbatch_calls(text: str) -> dict[str, list[str]]:
    """{rule: [sbatch call without the --wrap payload]} from snakemake --verbose output."""
    calls = defaultdict(list)
    for line in text.splitlines():
        if "sbatch call: sbatch " not in line:
            continue
        call = line.split("sbatch call: ", 1)[1].split(" --wrap=", 1)[0]
        m = re.search(r"--comment '?rule_(\w+?)(?:_wildcards_\S*)?'?(?:\s|$)", call)
        assert m, f"no rule comment in sbatch call: {call}"
        calls[m.group(1)].append(call)
    return calls


def _gpus_requested(call: str) -> int:
    m = re.search(r"--gpus[= ](?:[\w.]+:)?(\d+)", call)
    return int(m.group(1)) if m else 0


@pytest.mark.slurm
@pytest.mark.slow
@pytest.mark.skipif(not SLURM_ALLOWED, reason="real SLURM only on CI=true or TOMOCLUST_SLURM=1")
def test_tiny_workflow_on_slurm(slurm_cluster, tmp_path):
    state = slurm_cluster
    cfg = yaml.safe_load((CLUSTER / "tiny.yaml").read_text())
    cfg["templates"] = {k: str(REPO / v) for k, v in cfg["templates"].items()}
    work = tmp_path / "run"
    work.mkdir()
    (work / "tiny.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))

    env = {k: v for k, v in os.environ.items() if k != "SLURM_CONF"}
    # exactly the users' command line (in a scratch directory)
    users = [str(SNAKEMAKE), "--snakefile", str(REPO / "Snakefile"), "--directory", str(work),
             "--profile", str(PROFILE), "--configfile", str(work / "tiny.yaml")]

    dry = _run([*users, "--dry-run"], env, timeout=120, cwd=work)
    assert dry.returncode == 0, dry.stdout[-3000:] + dry.stderr[-3000:]
    declared_gpu = _gpu_rules_declared()
    overrides = {}
    if not set(_job_stats(dry.stdout + dry.stderr)) & set(declared_gpu):
        overrides = {FALLBACK_GPU_RULE: 1}

    cmd = [
        # --foreground: SIGINT reaches snakemake only, so its scancel of the jobs is not
        # interrupted; -k: SIGKILL if it has not stopped a minute later
        "timeout", "--foreground", "-s", "INT", "-k", "60", str(RUN_LIMIT_S), *users,
        *(["--set-resources", *(f"{r}:gpu={n}" for r, n in overrides.items())]
          if overrides else []),
        "--verbose",  # logs the sbatch calls
    ]
    res = _run(cmd, env, timeout=RUN_LIMIT_S + 90, cwd=work)
    out = res.stdout + res.stderr
    (tmp_path / "snakemake.log").write_text(out)
    assert res.returncode != 124, f"snakemake timed out after {RUN_LIMIT_S} s:\n{out[-6000:]}"
    assert res.returncode == 0, f"snakemake failed ({res.returncode}):\n{out[-6000:]}"

    # the workflow's outputs
    for rel in ["results/particles/particles.star", "results/particles/particles.mrcs",
                "results/evaluation/picking/metrics.tsv", "results/evaluation/picking/picking.png",
                *(f"results/picks/sim{i:02d}.star" for i in range(1, cfg["simulation"]
                                                                ["n_tomograms"] + 1))]:
        assert (work / rel).stat().st_size > 0, rel

    # every job except the target rule went through sbatch, once: those planned at the start
    # and those the clustering checkpoint added (one class average per method and class)
    planned = _job_stats(out)
    planned.pop("all")
    expected = _scheduled_jobs(out)
    expected.pop("all", None)
    assert not planned - expected, (planned, expected)
    # per method and class: the average, and (simulated data) the true map it is compared to
    assert set(expected - planned) == {"average_class", "truth_map"}, (expected, planned)
    calls = _sbatch_calls(out)
    assert Counter({r: len(c) for r, c in calls.items()}) == expected

    # GPU flags exactly where a GPU is asked for (rule definitions + the test's override)
    want_gpu = {**declared_gpu, **overrides}
    assert set(want_gpu) & set(calls), "no job asked for a GPU"
    for rule, rule_calls in calls.items():
        for call in rule_calls:
            if want_gpu.get(rule, 0) > 0:
                assert _gpus_requested(call) == want_gpu[rule], call
            else:
                assert "--gpus" not in call and "--gres" not in call, call

    # SLURM's view: the jobs of this run, their rules, states and GPU TRES
    run_uuid = re.search(r"--job-name '?([\w-]+)", calls[next(iter(calls))][0]).group(1)
    sq = _run(["squeue", "--states=all", "--noheader", "--name", run_uuid,
               "-O", "JobID:20,Comment:100,tres-per-job:40,State:20"], env, timeout=30)
    assert sq.returncode == 0, sq.stderr
    jobs = {}
    for line in sq.stdout.splitlines():
        jobid, comment, tres, st = line.split()
        rule = re.match(r"rule_(\w+?)(?:_wildcards_.*)?$", comment).group(1)
        jobs[jobid] = rule
        assert st == "COMPLETED", line
        assert ("gpu" in tres) == (want_gpu.get(rule, 0) > 0), line
    assert Counter(jobs.values()) == expected

    # inside the jobs (TaskProlog records): GPU jobs saw a GPU, CPU jobs none
    seen = defaultdict(list)
    for line in (state / "task_env.log").read_text().splitlines():
        jobid, *kv = line.split()
        seen[jobid].append(dict(x.split("=", 1) for x in kv))
    for jobid, rule in jobs.items():
        assert seen[jobid], f"no task environment recorded for job {jobid} ({rule})"
        if want_gpu.get(rule, 0) > 0:
            assert any(e["CUDA_VISIBLE_DEVICES"] != "unset" for e in seen[jobid]), seen[jobid]
        else:
            assert all(e["SLURM_JOB_GPUS"] == "unset" for e in seen[jobid]), seen[jobid]

    # GPU jobs ran (device: auto) although the fake GPU is /dev/null: they fell back to the CPU
    # (their success above); pick says so in its log
    for log in sorted((work / "logs" / "pick").glob("*.log")):
        assert re.search(r"backend (numpy|torch/cpu)", log.read_text()), log.read_text()

    # ------------------------------------------------------------------------------------
    # the other request form: profiles/slurm-gres (sites that reject --gpus) on the same
    # cluster, one GPU job rerun in the same working directory
    gres = [str(SNAKEMAKE), "--snakefile", str(REPO / "Snakefile"), "--directory", str(work),
            "--profile", str(REPO / "profiles" / "slurm-gres"), "--configfile",
            str(work / "tiny.yaml")]
    gpu_rule, target = "features_autoencoder", "results/features/autoencoder/features.npy"
    res = _run(["timeout", "--foreground", "-s", "INT", "-k", "60", str(RUN_LIMIT_S), *gres,
                "--forcerun", gpu_rule, "--verbose", target], env, timeout=RUN_LIMIT_S + 90,
               cwd=work)
    out = res.stdout + res.stderr
    (tmp_path / "snakemake_gres.log").write_text(out)
    assert res.returncode == 0, f"slurm-gres run failed ({res.returncode}):\n{out[-6000:]}"
    calls = _sbatch_calls(out)
    assert set(calls) == {gpu_rule}, calls
    for call in calls[gpu_rule]:
        assert "--gres=gpu:1" in call and "--gpus" not in call, call
    run_uuid = re.search(r"--job-name '?([\w-]+)", calls[gpu_rule][0]).group(1)
    sq = _run(["squeue", "--states=all", "--noheader", "--name", run_uuid,
               "-O", "JobID:20,tres-per-node:40,State:20"], env, timeout=30)
    assert sq.returncode == 0, sq.stderr
    rows = [line.split() for line in sq.stdout.splitlines()]
    assert rows and all(st == "COMPLETED" and "gpu" in tres for _, tres, st in rows), sq.stdout
    seen = {line.split()[0]: line for line in (state / "task_env.log").read_text().splitlines()}
    for jobid, _, _ in rows:
        assert "CUDA_VISIBLE_DEVICES=unset" not in seen[jobid], seen.get(jobid)
