"""The rerun matrix: change config keys on a completed workflow run and dry-run; the rules
that rerun first must be exactly the ones tomoclust/settings.py declares as reading the key.

Used by the workflow tests, each on the completed run it already has (tiny, methods,
few-shot, transfer, external), so the matrix costs dry runs only.

How keys are checked. Keys are grouped by their declared readers that have jobs in the run (keys
whose readers have none form one group: nothing may rerun); each group is changed at
once on a copy of the run's configuration and dry-run (in one Python process for all groups
of a run, which saves Snakemake's start-up per key). "Rerun first" means a job whose reason
is changed params or a missing output (a cache keyed by the settings); jobs that rerun only
because their input is rerun are downstream (Snakemake does not compare their params).
Every rule that reruns first must be a declared reader, and every declared reader with a job
in the run must rerun (first, or below another reader; below a rerunning clustering
checkpoint a dry run cannot list the averaging jobs, see AFTER_CHECKPOINT). The first check
is exact per key: a key that reruns a rule it does not declare makes that rule appear in its
group. The second holds per key by construction: a rule's params are built from the table
(``section`` and ``param`` in rules/common.smk), so a rule gets exactly the keys it declares.

Keys that decide which jobs exist (``shapes_dag``) are grouped apart; for them only "params
changed" counts (new jobs are the point of changing them), and those rules must be declared
readers. Mode switches (a sheet instead of the simulation, subtomograms in) make
another workflow, not a rerun; they are listed in MODE_SWITCHES and covered by the mode tests.
"""

from __future__ import annotations

import base64
import copy
import json
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import yaml
from snakemake.utils import validate
from tomoclust.settings import leaf_fields, readers, shapes_dag

#: keys that select another workflow (input mode, or which of the three few-shot support
#: sources is used: exactly one may be set), not a rerun of this one
MODE_SWITCHES = {"tomograms", "simulation.enabled", "external.coordinates",
                 "external.subtomograms", "copick.config", "fewshot.support",
                 "fewshot.support_templates"}

#: rules whose jobs are known only from the `cluster` checkpoint's output (the classes to
#: average, rules/average.smk): when the checkpoint itself reruns, a dry run cannot list them
AFTER_CHECKPOINT = {"average_class", "truth_map", "average_summary", "averaging_table",
                    "copick_write"}

#: new values for keys whose generic change would make the configuration invalid or
#: meaningless (dotted key -> value)
ALTERNATIVES = {
    "simulation.shape": [56, 96, 96],
    "methods": ["invariant"],
    "device": "cpu:0",  # set below from the run's own device
    "clustering.algorithm": "kmeans",  # changed with clustering.k (same readers)
    "clustering.k": 3,
    "fewshot.class_names": {1: "first"},
    "clustering.consensus_components": [3, 4],  # null in the tiny configs
    "invariant.noise_whitening": "none",
    "clustering.consensus_unwhitened": False,
    "fewshot.train_snr": [0.5],
    "external.image_root": "elsewhere",
    "transfer.cache": "other_cache",
    "disca.dropout": 0.25,  # null (the preset's) -> a rate within the schema's 0..0.9
    "copick.runs": ["TS_01"],
    "copick.write.methods": ["invariant"],
}

WORKER = r"""
import contextlib, io, json, sys
from snakemake.cli import main
out = {}
for name, cfg in json.loads(sys.argv[1]).items():
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
        try:
            main(["--snakefile", sys.argv[2], "--directory", ".", "--cores", "1", "-n",
                  "--quiet", "reason", "--configfile", cfg])
            rc = 0
        except SystemExit as exc:
            rc = exc.code or 0
    out[name] = [rc, buf.getvalue()]
print(json.dumps(out))
"""


def schema_leaf_keys(repo: Path) -> list[str]:
    """Every leaf key of schemas/config.schema.yaml (deprecated aliases left out)."""
    schema = yaml.safe_load((repo / "schemas" / "config.schema.yaml").read_text())
    keys: list[str] = []

    def walk(node: dict, prefix: str) -> None:
        for name, sub in node.get("properties", {}).items():
            if sub.get("deprecated"):
                continue
            key = f"{prefix}{name}"
            if "properties" in sub:
                walk(sub, key + ".")
            else:
                keys.append(key)
    walk(schema, "")
    return keys


def schema_node(repo: Path, key: str) -> dict:
    node = yaml.safe_load((repo / "schemas" / "config.schema.yaml").read_text())
    for part in key.split("."):
        node = node["properties"][part]
    return node


def _get(cfg: dict, key: str):
    for part in key.split("."):
        cfg = cfg[part]
    return cfg


def _set(cfg: dict, key: str, value) -> None:
    parts = key.split(".")
    for part in parts[:-1]:
        cfg = cfg.setdefault(part, {})
    cfg[parts[-1]] = value


def changed_value(repo: Path, key: str, value, config: dict):
    """Another valid value of ``key`` (``config``: the whole configuration)."""
    if key in ALTERNATIVES:
        return ALTERNATIVES[key]
    if key == "transfer.model":  # retrain <-> the shipped encoder
        return "resources/models/encoder-v1.pt" if value == "retrain" else "retrain"
    if key in ("disca.pretrained", "fewshot.pretrained"):  # shipped weights <-> from scratch
        return None if value else "resources/models/encoder-v1.pt"
    if key == "subtomogram_sets":
        return {**value, "extra": {"n_per_class": 2, "box": 16, "voxel_size": 12.0}}
    if key == "fewshot.train_templates":
        return dict(list(config["templates"].items())[:2]) if not value else {}
    if key in ("templates", "transfer.templates") and not value:
        return {"extra": str(repo / "resources" / "structures" / "1bxn.pdb.gz")}
    if isinstance(value, dict) and value:  # a template library: one class fewer, or one more
        items = list(value.items())
        return dict(items[:-1]) if len(items) > 2 else {**value, "extra": items[0][1]}
    node = schema_node(repo, key)
    types = node.get("type")
    types = types if isinstance(types, list) else [types]
    if "enum" in node:
        return next(v for v in node["enum"] if v != value)
    if isinstance(value, bool):
        return not value
    if value is None:
        if "integer" in types:
            return max(int(node.get("minimum", 1)), 2)
        return float(node.get("exclusiveMinimum", node.get("minimum", 0))) + 1.0
    if isinstance(value, int):
        hi = node.get("maximum")
        return value + 1 if hi is None or value + 1 <= hi else value - 1
    if isinstance(value, float):
        hi = node.get("maximum")
        new = value * 1.5 if value else 0.5
        if (hi is not None and new > hi) or node.get("minimum", -1e300) > new:
            new = value * 0.9 if value else 0.1
        return new
    if isinstance(value, str):
        return value + "_other"
    if isinstance(value, list) and value and isinstance(value[0], (int, float)):
        return [value[0] * 2, *value[1:]]
    raise AssertionError(f"no generic change for {key} = {value!r}; add it to ALTERNATIVES")


def _reasons(text: str) -> dict[str, set[str]]:
    """The dry run's 'Reasons:' summary as {reason: rules}."""
    lines = text.splitlines()
    try:
        start = next(i for i, line in enumerate(lines) if line.strip() == "Reasons:")
    except StopIteration:
        return {}
    out: dict[str, set[str]] = defaultdict(set)
    reason = None
    for line in lines[start + 1:]:
        if not line.startswith("    "):
            break
        if line.startswith("        ") and reason:
            out[reason] |= {r.strip() for r in line.split(",") if r.strip()}
        elif line.strip().endswith(":"):
            reason = line.strip()[:-1]
    return out


def rules_in_run(workdir: Path) -> set[str]:
    """Rules with a recorded job in the completed run (Snakemake's metadata records)."""
    out = set()
    for f in (workdir / ".snakemake" / "metadata").iterdir():
        try:
            out.add(json.loads(f.read_text())["rule"])
        except (ValueError, KeyError):
            continue
    return out


def rules_in_dag(repo: Path, workdir: Path, config: Path) -> set[str]:
    """Rules with a job in this configuration's workflow (a forced dry run's job stats): the
    run's metadata also records jobs of other configurations run in the same directory."""
    proc = subprocess.run([sys.executable, "-m", "snakemake", "--snakefile",
                           str(repo / "Snakefile"), "--directory", ".", "--cores", "1", "-n",
                           "--forceall", "--configfile", str(config)], cwd=workdir,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    lines = (proc.stdout + proc.stderr).splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("Job stats:"))
    out = set()
    for line in lines[start + 3:]:
        parts = line.split()
        if len(parts) != 2 or parts[0] == "total":
            break
        out.add(parts[0])
    return out


def check(repo: Path, workdir: Path, config: Path, keys: list[str], modes: set[str]
          ) -> dict[str, set[str]]:
    """Dry-run every group of ``keys`` changed on the completed run in ``workdir``; return
    {key group: problems} (empty when every key reruns exactly its declared readers)."""
    # the matrix is defined on a completed run: tests before this one may have left it
    # behind (a forced retraining, another configuration), so bring it up to date first
    done = subprocess.run([sys.executable, "-m", "snakemake", "--snakefile",
                           str(repo / "Snakefile"), "--directory", ".", "--cores", "2",
                           "--quiet", "--configfile", str(config)], cwd=workdir,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    base = yaml.safe_load(config.read_text())
    validate(base, str(repo / "schemas" / "config.schema.yaml"))  # fills in the defaults
    # (jobs after the clustering checkpoint are not listed by a dry run: AFTER_CHECKPOINT)
    present = rules_in_run(workdir) & (rules_in_dag(repo, workdir, config) | AFTER_CHECKPOINT)
    groups: dict[tuple, list[str]] = defaultdict(list)
    for key in keys:
        if key in MODE_SWITCHES:
            continue
        declared = frozenset(readers(key, modes)) & present
        groups[(declared, shapes_dag(key))].append(key)
    configs, expected = {}, {}
    tmp = workdir / "rerun_matrix"
    tmp.mkdir(exist_ok=True)
    for i, ((declared, dag), group) in enumerate(sorted(groups.items(), key=str)):
        cfg = copy.deepcopy(base)
        for key in group:
            value = _get(base, key)
            new = changed_value(repo, key, value, base)
            if key == "device":
                new = "cuda" if value == "cpu" else "cpu"
            if key == "relion.tomograms_star":  # a file that exists (read when the job runs)
                new = str(tmp / "tomograms.star")
                Path(new).write_text("data_global\n")
            _set(cfg, key, new)
        path = tmp / f"group{i}.yaml"
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        name = ",".join(group)
        configs[name] = str(path)
        expected[name] = (declared, dag)
    proc = subprocess.run([sys.executable, "-c", WORKER, json.dumps(configs),
                           str(repo / "Snakefile")], cwd=workdir, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout.splitlines()[-1])
    problems = {}
    for name, (rc, text) in results.items():
        want, dag = expected[name]
        if rc != 0:
            problems[name] = {f"dry run failed: {text[-800:]}"}
            continue
        reasons = _reasons(text)
        params = reasons.get("params have changed since last execution", set())
        missing = reasons.get("missing output files", set())
        first = params if dag else params | missing
        rerun = set().union(*reasons.values()) if reasons else set()
        wrong = {f"reruns undeclared {r}" for r in first - want}
        if not dag:
            unseen = AFTER_CHECKPOINT if "cluster" in rerun else set()
            wrong |= {f"does not rerun declared {r}" for r in want - rerun - unseen}
        if wrong:
            problems[name] = wrong
    return problems


def keys_of(repo: Path, sections: list[str]) -> list[str]:
    """Leaf keys of the given sections ('' = the top-level keys)."""
    out = []
    for key in schema_leaf_keys(repo):
        top = key.split(".")[0] if "." in key else ""
        if top in sections:
            out.append(key)
    return out


def metadata_rule(path: Path) -> str:  # pragma: no cover - debugging aid
    return json.loads(path.read_text())["rule"] + " " + base64.b64decode(path.name).decode()


__all__ = ["MODE_SWITCHES", "check", "keys_of", "leaf_fields", "schema_leaf_keys"]
