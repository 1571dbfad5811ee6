"""copick projects in and out (tomoclust.external.copick_project, rules/copick.smk) on tiny projects
built with copick's own API: two runs of 40x64x64 tomograms at 10 Å with planted balls
(object "ball") and dumbbells ("dumbbell") and their picks. The library tests take a few
seconds; the workflow tests (a dry run and one real run with the invariant method) ~30 s."""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from test_workflow import _job_stats, _output, _snakemake
from test_workflow_external import CENTRES, SHAPE, _classes, _tomogram
from tomoclust import TomoclustError
from tomoclust.external.copick_project import (
    ClassPicks,
    CopickSettings,
    PicksSpec,
    class_picks,
    get_run,
    open_project,
    picks_table,
    read_tomogram,
    tomogram_of,
    tomogram_sheet,
    write_classes,
)
from tomoclust.formats.star import read_star

copick = pytest.importorskip("copick")

REPO = Path(__file__).resolve().parents[1]
VS = 10.0
RUNS = ("TS_01", "TS_02")


def _true_angstrom() -> np.ndarray:
    """The planted centres (x, y, z) in Å, copick's frame (voxel i at i * voxel size)."""
    return np.array(CENTRES, dtype=np.float64)[:, ::-1] * VS


def _fine_tomogram(seed: int, voxel_size: float) -> np.ndarray:
    """The planted tomogram of ``_tomogram`` (same extent, same particles in Å) sampled at a
    finer voxel size (10 Å / an integer)."""
    f = round(VS / voxel_size)
    shape = tuple(n * f for n in SHAPE)
    z, y, x = np.indices(shape, dtype=np.float32)
    vol = np.zeros(shape, np.float32)
    for (cz, cy, cx), cls in zip(CENTRES, _classes(), strict=True):
        offsets, sigma = ((0,), 3.0) if cls == 1 else ((-3, 3), 2.0)
        for dx in offsets:
            vol -= np.exp(-((z - f * cz) ** 2 + (y - f * cy) ** 2 + (x - f * (cx + dx)) ** 2)
                          / (2 * (f * sigma) ** 2))
    rng = np.random.default_rng(seed)
    return vol + 0.1 * rng.standard_normal(shape).astype(np.float32)


def make_project(d: Path, runs=RUNS, picks: bool = True, extra_user: bool = False,
                 voxel_size: float = VS) -> Path:
    """A copick project: tomograms (wbp at 10 Å, or finer), picks of ball and dumbbell by
    curator/1."""
    from copick.models import PickableObject

    objects = [PickableObject(name="ball", is_particle=True, label=1, radius=30.0),
               PickableObject(name="dumbbell", is_particle=True, label=2, radius=40.0),
               PickableObject(name="membrane", is_particle=False, label=3)]
    cfg = d / "copick.json"
    root = copick.new_config(str(cfg), overlay_root=str(d / "overlay"), pickable_objects=objects)
    pos, cls = _true_angstrom(), np.array(_classes())
    for i, name in enumerate(runs):
        run = root.new_run(name)
        tomo = run.new_voxel_spacing(voxel_size).new_tomogram("wbp")
        tomo.from_numpy(_tomogram(i) if voxel_size == VS else _fine_tomogram(i, voxel_size),
                        levels=2)
        if not picks:
            continue
        for k, obj in ((1, "ball"), (2, "dumbbell")):
            p = run.new_picks(obj, session_id="1", user_id="curator")
            sel = cls == k
            p.from_numpy(pos[sel], scores=np.linspace(0.5, 1.0, int(sel.sum())))
        if extra_user:
            run.new_picks("ball", session_id="7", user_id="other").from_numpy(pos[:2])
    return cfg


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    return make_project(tmp_path_factory.mktemp("copick"))


def _settings(cfg: Path, **kw) -> CopickSettings:
    section = {"config": str(cfg), "voxel_spacing": VS, "tomo_type": "wbp", "runs": []}
    section.update(kw)
    return CopickSettings.from_config(section)


# ------------------------------------------------------------------------------ reading
def test_sheet_lists_runs_with_tomograms_and_picks(project):
    sheet = tomogram_sheet(_settings(project, picks={"object": ["ball", "dumbbell"],
                                                     "user_id": "curator"}))
    assert list(sheet["name"]) == list(RUNS)
    assert list(sheet["path"]) == [f"results/copick/tomograms/{r}.mrc" for r in RUNS]
    assert list(sheet["coordinates"]) == [f"results/copick/picks/{r}.star" for r in RUNS]
    assert all(v == VS for v in sheet["voxel_size"])
    assert all(v == VS for v in sheet["coordinates_voxel_size"])
    only = tomogram_sheet(_settings(project, runs=["TS_02"]))
    assert list(only["name"]) == ["TS_02"] and list(only["coordinates"]) == [""]


def test_tomogram_level0_is_the_written_volume(project):
    run = get_run(open_project(project), "TS_02", "test")
    data, vs = read_tomogram(tomogram_of(run, VS, "wbp", "test"), "test")
    assert vs == VS and data.shape == SHAPE and data.dtype == np.float32
    np.testing.assert_allclose(data, _tomogram(1), atol=1e-6)


def test_picks_become_voxel_coordinates_with_classes(project):
    run = get_run(open_project(project), "TS_01", "test")
    table = picks_table(run, PicksSpec(["ball", "dumbbell"], "curator"), VS, "test")
    cls = np.array(_classes())
    order = np.concatenate([np.flatnonzero(cls == 1), np.flatnonzero(cls == 2)])
    np.testing.assert_allclose(table[["rlnCoordinateZ", "rlnCoordinateY", "rlnCoordinateX"]],
                               np.array(CENTRES, dtype=float)[order], atol=1e-9)
    assert table["rlnClassNumber"].tolist() == cls[order].tolist()
    assert set(table["tclCopickObject"]) == {"ball", "dumbbell"}
    assert (table["tclCopickUserId"] == "curator").all()
    assert table["tclCopickScore"].between(0.5, 1.0).all()
    one = picks_table(run, PicksSpec(["dumbbell"]), VS, "test")
    assert "rlnClassNumber" not in one and len(one) == int((cls == 2).sum())


# ------------------------------------------------------------------------ bad projects
@pytest.mark.parametrize("kw, pattern", [
    ({"runs": ["TS_01", "TS_09"]}, r"run\(s\) \['TS_09'\] not in the project .*'TS_01', 'TS_02'"),
    ({"voxel_spacing": 7.5}, r"run 'TS_01' has no tomograms at voxel spacing 7.5 Å .*\[10.0\]"),
    ({"tomo_type": "denoised"}, r"no tomogram of type 'denoised' at 10 Å \(types there: \['wbp'\]"),
    ({"picks": {"object": ["ball", "ribosome"]}},
     r"pickable object\(s\) \['ribosome'\] not in the project \(objects: \['ball', 'dumbbell'"),
    ({"picks": {"object": "membrane"}}, r"run 'TS_01' has no picks of \['membrane'\]"),
])
def test_bad_project_errors_name_the_problem(project, kw, pattern):
    with pytest.raises(TomoclustError, match=pattern) as exc:
        tomogram_sheet(_settings(project, **kw))
    assert str(project) in str(exc.value)


def test_working_voxel_size_finer_than_the_project(project):
    with pytest.raises(TomoclustError, match=r"ingest.voxel_size 8 Å is finer than "
                                             r"copick.voxel_spacing 10 Å"):
        tomogram_sheet(_settings(project), working_voxel_size=8.0)
    assert len(tomogram_sheet(_settings(project), working_voxel_size=10.0)) == 2


def test_missing_or_broken_config_file(tmp_path):
    with pytest.raises(TomoclustError, match=r"copick config .*nope\.json: file does not exist"):
        tomogram_sheet(_settings(tmp_path / "nope.json"))
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(TomoclustError, match=r"bad\.json: not a readable JSON file"):
        open_project(bad)
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({"config_type": "filesystem"}))
    with pytest.raises(TomoclustError, match=r"wrong\.json: copick cannot open the project"):
        open_project(wrong)


def test_several_pick_sets_need_a_user(tmp_path):
    cfg = make_project(tmp_path, runs=("TS_01",), extra_user=True)
    with pytest.raises(TomoclustError, match=r"2 pick sets of 'ball' \(.*curator/1.*other/7"):
        tomogram_sheet(_settings(cfg, picks={"object": "ball"}))
    sheet = tomogram_sheet(_settings(cfg, picks={"object": "ball", "user_id": "other"}))
    assert len(sheet) == 1


def test_empty_project_and_bad_run_names(tmp_path):
    cfg = tmp_path / "c.json"
    root = copick.new_config(str(cfg), overlay_root=str(tmp_path / "o"))
    with pytest.raises(TomoclustError, match="the project has no runs"):
        tomogram_sheet(_settings(cfg))
    root.new_run("run 1")  # copick allows it; a workflow wildcard does not
    with pytest.raises(TomoclustError, match=r"run name\(s\) \['run 1'\] cannot name tomograms"):
        tomogram_sheet(_settings(cfg))


def test_settings_and_missing_package(monkeypatch, tmp_path):
    st = _settings(tmp_path / "c.json", picks={"object": "ball", "session_id": 0},
                   write={"session_id": 0})
    assert st.picks.objects == ["ball"] and st.picks.session_id == "0"
    assert st.picks.user_id is None and not st.picks.labelled
    assert st.write.session_id == "0" and st.write.object == "{method}-{class}"
    with pytest.raises(TomoclustError, match=r"\['ball'\] listed twice"):
        _settings(tmp_path / "c.json", picks={"object": ["ball", "ball"]})
    cfg = make_project(tmp_path, runs=("TS_01",), picks=False)
    monkeypatch.setitem(sys.modules, "copick", None)  # as if it were not installed
    with pytest.raises(TomoclustError, match=r"need the copick package.*requirements-copick"):
        open_project(cfg)


# ------------------------------------------------------------------------------ writing
def _relion_export(cfg: Path, obj: str, user: str, session: str, out: Path) -> pd.DataFrame:
    """The written picks through copick's own RELION exporter (centres from the tomograms)."""
    from copick.ops.export import export_relion_particles

    export_relion_particles(str(cfg), f"{obj}:{user}/{session}", str(out), voxel_spacing=VS,
                            tomo_type="wbp")
    return read_star(out)


def test_classes_written_back_read_with_copicks_api_and_relion_exporter(tmp_path):
    cfg = make_project(tmp_path, picks=False)
    before = json.loads(cfg.read_text())
    pos = _true_angstrom()
    cls = np.array(_classes())
    table = pd.DataFrame({
        "rlnTomoName": ["TS_01"] * len(pos) + ["TS_02"] * 2,
        "rlnCoordinateX": np.r_[pos[:, 0], pos[:2, 0]] / 20.0,  # voxels of a 20 Å tomogram
        "rlnCoordinateY": np.r_[pos[:, 1], pos[:2, 1]] / 20.0,
        "rlnCoordinateZ": np.r_[pos[:, 2], pos[:2, 2]] / 20.0,
        "rlnClassNumber": np.r_[cls, [1, 1]],
        "tclClassProbability": np.linspace(0.3, 0.9, len(pos) + 2)})
    classes = class_picks("protonet_ce", table, {"TS_01": 20.0, "TS_02": 20.0},
                          "{method}-{class}", list(RUNS))
    assert [c.object for c in classes] == ["protonet-ce-class1", "protonet-ce-class2"]
    rows = write_classes(cfg, classes, user_id="tomoclust", session_id="0", radius=40.0)
    assert rows["n_points"].tolist() == [int((cls == 1).sum()), int((cls == 2).sum()), 2, 0]
    # the configuration file: the old content kept, two objects added with fresh labels
    after = json.loads(cfg.read_text())
    assert after["pickable_objects"][:3] == before["pickable_objects"]
    added = after["pickable_objects"][3:]
    assert [o["name"] for o in added] == ["protonet-ce-class1", "protonet-ce-class2"]
    assert sorted(o["label"] for o in after["pickable_objects"]) == [1, 2, 3, 4, 5]
    assert added[0]["metadata"]["tomoclust"] == {"method": "protonet_ce", "class": 1,
                                                 "label": "class1"}
    # read back with copick's API from a fresh root
    root = copick.from_file(str(cfg))
    picks = root.get_run("TS_01").get_picks(object_name="protonet-ce-class2",
                                            user_id="tomoclust", session_id="0")
    assert len(picks) == 1
    assert not picks[0].load().trust_orientation  # class membership carries no orientation
    np.testing.assert_allclose(picks[0].full_positions(), pos[cls == 2], atol=1e-9)
    np.testing.assert_allclose(picks[0].scores(),
                               table["tclClassProbability"][:len(pos)][cls == 2], atol=1e-12)
    # copick's RELION exporter: centred Å = position - size / 2 * voxel size
    star = _relion_export(cfg, "protonet-ce-class1", "tomoclust", "0", tmp_path / "c1.star")
    ts1 = star[star["rlnTomoName"] == "TS_01"]
    centre = np.array(SHAPE[::-1]) / 2.0 * VS
    np.testing.assert_allclose(ts1[["rlnCenteredCoordinateXAngst", "rlnCenteredCoordinateYAngst",
                                    "rlnCenteredCoordinateZAngst"]], pos[cls == 1] - centre,
                               atol=1e-6)
    assert (star["rlnTomoName"] == "TS_02").sum() == 2
    # a rerun that finds one class removes the stale class-2 picks, keeps the objects
    one = [ClassPicks("protonet_ce", 1, "class1", "protonet-ce-class1",
                      {r: (pos[:1], np.ones(1)) for r in RUNS})]
    write_classes(cfg, one, user_id="tomoclust", session_id="0")
    root = copick.from_file(str(cfg))
    run = root.get_run("TS_01")
    assert not run.get_picks(object_name="protonet-ce-class2", user_id="tomoclust")
    assert len(run.get_picks(object_name="protonet-ce-class1")[0].points) == 1
    assert len(json.loads(cfg.read_text())["pickable_objects"]) == 5


def test_unwritable_config_is_a_clear_error(tmp_path, monkeypatch):
    cfg = make_project(tmp_path, runs=("TS_01",), picks=False)
    one = [ClassPicks("invariant", 1, "class1", "invariant-class1",
                      {"TS_01": (np.zeros((1, 3)), np.ones(1))})]

    def refuse(src, dst):  # a read-only project directory (chmod does not stop root)
        raise PermissionError(13, "Permission denied", str(dst))

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(TomoclustError, match=r"copick\.json: cannot add the classes' pickable "
                                             r"objects \(.*Permission denied"):
        write_classes(cfg, one, user_id="tomoclust", session_id="0")
    monkeypatch.undo()
    assert "invariant-class1" not in cfg.read_text()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".copick")] == []


def test_fewshot_names_and_template_checks():
    from tomoclust.external.copick_project import check_write_template, object_name

    table = pd.DataFrame({"rlnTomoName": ["a", "a"], "rlnCoordinateX": [1.0, 2.0],
                          "rlnCoordinateY": [1.0, 2.0], "rlnCoordinateZ": [1.0, 2.0],
                          "rlnClassNumber": [1, 2], "rlnClassName": ["80S ribosome", "p97_VCP"]})
    got = class_picks("protonet3d", table, {"a": 10.0}, "{class}", ["a"], named=True)
    assert [c.object for c in got] == ["80S-ribosome", "p97-VCP"]
    clustered = class_picks("invariant", table, {"a": 10.0}, "{class}", ["a"])
    assert [c.object for c in clustered] == ["class1", "class2"]  # the name is an input column
    np.testing.assert_allclose(got[1].runs["a"][0], [[20.0, 20.0, 20.0]])
    assert object_name("{method}-{class}", "protonet_ce", "class3") == "protonet-ce-class3"
    with pytest.raises(TomoclustError, match=r"must contain '\{method\}'"):
        check_write_template("{class}", ["invariant", "disca"])
    with pytest.raises(TomoclustError, match=r"must contain '\{class\}'"):
        check_write_template("{method}", ["invariant"])
    with pytest.raises(TomoclustError, match="not runs of the copick project"):
        class_picks("invariant", table, {"b": 10.0}, "{class}", ["b"])


# --------------------------------------------------------------------- packaging (no copick)
def test_conda_env_repeats_the_pinned_requirements():
    pins = [line.split("#")[0].strip() for line in
            (REPO / "requirements-copick.txt").read_text().splitlines()]
    pins = [p for p in pins if p]
    assert "copick==1.31.0" in pins and any(re.match(r"zarr==2\.", p) for p in pins)
    env = yaml.safe_load((REPO / "envs" / "copick.yaml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert pip == pins
    dev = (REPO / "requirements-dev.txt").read_text().split()
    assert "requirements-copick.txt" in dev  # CI installs it, so these tests run there


# ----------------------------------------------------------------------------- workflow
def _config(cfg_path: Path, copick_cfg: Path, **copick_keys) -> Path:
    cfg = yaml.safe_load((REPO / "tests" / "data" / "tiny_external.yaml").read_text())
    cfg["copick"] = {"config": str(copick_cfg), "voxel_spacing": VS, "tomo_type": "wbp"}
    cfg["copick"].update(copick_keys)
    cfg["averaging"] = {"enabled": False}
    cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return cfg_path


@pytest.mark.slow
def test_workflow_dry_run_without_picks_dog_picks_each_run(project, tmp_path):
    cfg = _config(tmp_path / "c.yaml", project)
    proc = _snakemake(REPO, tmp_path, "-n", "--configfile", str(cfg))
    assert proc.returncode == 0, _output(proc)[-3000:]
    jobs = _job_stats(_output(proc))
    assert jobs["copick_tomogram"] == 2 and jobs["ingest"] == 2 and jobs["pick"] == 2, jobs
    assert jobs["copick_write"] == 1 and "copick_picks" not in jobs, jobs
    bad = _config(tmp_path / "bad.yaml", project, runs=["TS_01", "TS_07"])
    proc = _snakemake(REPO, tmp_path, "-n", "--configfile", str(bad))
    assert proc.returncode != 0
    assert "run(s) ['TS_07'] not in the project" in _output(proc)


@pytest.mark.slow
def test_workflow_round_trip_picks_in_classes_out(tmp_path):
    """Picks of two objects in (mode 1, their object = the truth) on 5 Å tomograms that ingest
    bins to 10 Å, invariant classes out: the written picks sit where the input picks were,
    and copick's RELION exporter reads them."""
    proj = make_project(tmp_path / "project", voxel_size=5.0)
    cfg = _config(tmp_path / "c.yaml", proj, voxel_spacing=5.0,
                  picks={"object": ["ball", "dumbbell"], "user_id": "curator"},
                  write={"user_id": "tomoclust", "session_id": "3"})
    proc = _snakemake(REPO, tmp_path, "results/copick/written.tsv",  # no report figures
                      "results/evaluation/classification.tsv", "--configfile", str(cfg))
    assert proc.returncode == 0, _output(proc)[-5000:]
    jobs = _job_stats(_output(proc))
    assert jobs["copick_picks"] == 2 and "pick" not in jobs, jobs
    for name in ("tomogram/TS_01", "picks/TS_02", "write"):  # copick leaves the logs alone
        text = (tmp_path / "logs" / "copick" / f"{name}.log").read_text()
        assert re.search(r"rule copick_\w+: done in", text), text
    res = tmp_path / "results"
    assert not (res / "copick" / "tomograms" / "TS_01.mrc").exists()  # temporary
    info = json.loads((res / "tomograms" / "TS_01" / "ingest.json").read_text())
    assert info["voxel_size_in"] == 5.0 and info["shape_in_zyx"] == [2 * n for n in SHAPE]
    assert info["voxel_size_out"] == VS and info["shape_out_zyx"] == list(SHAPE)
    # the objects' class numbers are the truth, particle by particle (planted class by place)
    parts = read_star(res / "particles" / "particles.star")
    truth = read_star(res / "truth" / "particles_truth.star")
    assert truth["tclStackIndex"].tolist() == list(range(len(parts))) == list(range(14))
    zyx = parts[["rlnCoordinateZ", "rlnCoordinateY", "rlnCoordinateX"]].to_numpy()
    planted = {tuple(c): k for c, k in zip(CENTRES, _classes(), strict=True)}
    assert truth["rlnClassNumber"].tolist() == [planted[tuple(np.round(c).astype(int))]
                                                for c in zyx]
    assert (parts["tclCopickObject"] == np.where(truth["rlnClassNumber"] == 1, "ball",
                                                 "dumbbell")).all()
    m = pd.read_csv(res / "evaluation" / "classification.tsv", sep="\t").iloc[0]
    assert m["n_unmatched_picks"] == 0, m.to_dict()
    written = pd.read_csv(res / "copick" / "written.tsv", sep="\t")
    assert set(written["run"]) == set(RUNS) and (written["user_id"] == "tomoclust").all()
    assert written["n_points"].sum() == 2 * len(CENTRES)
    root = copick.from_file(str(proj))
    for run_name in RUNS:
        run = root.get_run(run_name)
        got = [p for p in run.get_picks(user_id="tomoclust", session_id="3")]
        assert {p.pickable_object_name for p in got} == set(written["object"])
        pos = np.concatenate([p.full_positions() for p in got if p.points])
        scores = np.concatenate([p.scores() for p in got if p.points])
        assert len(pos) == len(CENTRES) and ((scores > 0) & (scores <= 1)).all()
        order = np.lexsort(pos.T)
        true = _true_angstrom()
        np.testing.assert_allclose(pos[order], true[np.lexsort(true.T)], atol=1e-3)
    obj = written["object"].iloc[0]
    assert re.fullmatch(r"invariant-class\d+", obj)
    from copick.ops.export import export_relion_particles

    export_relion_particles(str(proj), f"{obj}:tomoclust/3", str(tmp_path / "out.star"),
                            voxel_spacing=5.0, tomo_type="wbp")
    star = read_star(tmp_path / "out.star")
    assert set(star["rlnTomoName"]) <= set(RUNS) and len(star) == written.loc[
        written["object"] == obj, "n_points"].sum()
