"""copick projects in and out: tomograms and picks read from a copick project, classes written
back into it as picks.

copick (the layout of the CryoET Data Portal and of the 2024-25 cryo-ET particle-picking
challenge) keeps, per run, tomograms by voxel spacing and reconstruction type (OME-Zarr,
multiscale level ``0`` at full sampling) and picks as JSON files named by pickable object, user
and session. Positions are Ångström from the centre of the first voxel ("corner origin": voxel
``i`` lies at ``i · voxel spacing``); a pick's particle centre is its location plus its
transform's translation. That is the frame tomoclust calls physical (see
:mod:`tomoclust.external`), so positions convert by the voxel size alone; ingest keeps that
origin when it bins.

In
    Each run of the project (or the configured ones) becomes one tomogram of the workflow, read
    through copick's API at the configured voxel spacing and type and written as an MRC with that
    voxel size, then ingested as a tomogram of the sheet would be. Existing picks of the named
    pickable object(s), user and session become coordinates (the workflow's mode 1: picking is
    skipped; see :func:`tomoclust.external.import_coordinates`). With several objects each gets
    the class number of its place in the list (``rlnClassNumber``; the name is kept as
    ``tclCopickObject``): the ground truth of the classification evaluation.

Out
    Each class of each written method becomes a pickable object (``{method}-{class}`` by default:
    ``invariant-class3``, or ``protonet3d-ribosome`` for a few-shot class name) and, in every
    run, one picks file of that object under the configured user and session, holding the
    particle centres in Å with the class probability as each point's score. Objects are added to
    the project's configuration file (written atomically, the rest of the file unchanged); an
    object that already exists is reused as it is.

Errors (missing configuration file, missing run, no tomogram at the voxel spacing or of the type,
unknown object, ambiguous picks) are :class:`TomoclustError` naming the file and the problem.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .. import TomoclustError

log = logging.getLogger(__name__)

INSTALL_HINT = ("install it with `pip install -r requirements-copick.txt` (or use the conda env "
                "envs/copick.yaml)")
#: run names must also be tomogram names of the workflow (wildcard-safe)
NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.\-]*"
#: relative tolerance when matching a voxel spacing (copick stores it with 3 decimals)
SPACING_RTOL = 1e-4
#: marker in the metadata of pickable objects this module creates
METADATA_KEY = "tomoclust"
PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
           (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]


def import_copick():
    """The ``copick`` package, or a :class:`TomoclustError` saying how to install it.

    copick modules configure the root logger when they are imported
    (``copick.util.log.get_logger`` calls ``logging.basicConfig(..., force=True)``), and many are
    imported lazily, e.g. by ``copick.from_file``: each would replace the rule's log file with a
    console handler (closing the file). So the root logger's handlers are detached while the
    package itself loads (nothing of ours is closed) and put back after it, and that function is
    replaced by a plain ``logging.getLogger`` for the modules copick loads later."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    root.handlers[:] = []
    try:
        import copick.util.log as copick_log

        if not getattr(copick_log.get_logger, "keeps_root_logger", False):
            def get_logger(name: str, debug: bool = False) -> logging.Logger:
                return logging.getLogger(name)

            get_logger.keeps_root_logger = True
            copick_log.get_logger = get_logger
        import copick
    except ImportError as exc:
        raise TomoclustError(f"copick projects need the copick package, which is not installed "
                             f"({exc}); {INSTALL_HINT}") from None
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
    return copick


# ------------------------------------------------------------------------------ settings
@dataclass
class PicksSpec:
    objects: list[str]
    user_id: str | None = None
    session_id: str | None = None

    @property
    def labelled(self) -> bool:
        """Several objects: their picks carry class numbers (ground truth)."""
        return len(self.objects) > 1


@dataclass
class WriteSpec:
    enabled: bool = True
    methods: list[str] = field(default_factory=list)
    object: str = "{method}-{class}"
    user_id: str = "tomoclust"
    session_id: str = "0"


@dataclass
class CopickSettings:
    config: Path
    voxel_spacing: float
    tomo_type: str
    runs: list[str]
    tilt_min: float = -60.0
    tilt_max: float = 60.0
    picks: PicksSpec | None = None
    write: WriteSpec = field(default_factory=WriteSpec)

    @classmethod
    def from_config(cls, section: Mapping) -> CopickSettings:
        """From the workflow config's ``copick`` section (schema defaults filled in)."""
        picks = section.get("picks") or {}
        objects = picks.get("object") or []
        objects = [objects] if isinstance(objects, str) else list(objects)
        spec = None
        if objects:
            user, session = (str(picks.get(k, "")).strip() for k in ("user_id", "session_id"))
            spec = PicksSpec([str(o) for o in objects], user or None, session or None)
            dup = sorted({o for o in spec.objects if spec.objects.count(o) > 1})
            if dup:
                raise TomoclustError(f"config copick.picks.object: {dup} listed twice")
        w = section.get("write") or {}
        write = WriteSpec(bool(w.get("enabled", True)), list(w.get("methods") or []),
                          str(w.get("object", "{method}-{class}")),
                          str(w.get("user_id", "tomoclust")), str(w.get("session_id", "0")))
        return cls(Path(section["config"]), float(section["voxel_spacing"]),
                   str(section["tomo_type"]), [str(r) for r in section.get("runs") or []],
                   float(section.get("tilt_min", -60.0)), float(section.get("tilt_max", 60.0)),
                   spec, write)


# ------------------------------------------------------------------------------- project
def open_project(path: str | Path):
    """Open a copick project from its configuration file (JSON)."""
    p = Path(path)
    where = f"copick config {p}"
    if not p.is_file():
        raise TomoclustError(f"{where}: file does not exist")
    try:
        json.loads(p.read_text())
    except (OSError, ValueError) as exc:
        raise TomoclustError(f"{where}: not a readable JSON file ({exc})") from None
    copick = import_copick()
    try:
        return copick.from_file(str(p))
    except Exception as exc:  # copick raises pydantic, fsspec and OS errors alike
        raise TomoclustError(f"{where}: copick cannot open the project "
                             f"({type(exc).__name__}: {exc})") from None


def _listing(values: Sequence, limit: int = 12) -> str:
    values = list(values)
    shown = ", ".join(repr(v) for v in values[:limit])
    return f"[{shown}{', ...' if len(values) > limit else ''}]" if values else "none"


def run_names(root, requested: Sequence[str], where: str) -> list[str]:
    """The runs to use: ``requested`` (each must exist) or every run of the project."""
    available = sorted(r.name for r in root.runs)
    if not requested:
        if not available:
            raise TomoclustError(f"{where}: the project has no runs")
        names = available
    else:
        dup = sorted({r for r in requested if list(requested).count(r) > 1})
        if dup:
            raise TomoclustError(f"{where}: runs {dup} listed twice in copick.runs")
        missing = [r for r in requested if r not in available]
        if missing:
            raise TomoclustError(f"{where}: run(s) {missing} not in the project (runs: "
                                 f"{_listing(available)})")
        names = list(requested)
    bad = [n for n in names if not re.fullmatch(NAME_PATTERN, n)]
    if bad:
        raise TomoclustError(f"{where}: run name(s) {bad} cannot name tomograms (letters, digits, "
                             "'_', '.', '-', starting with a letter or digit); list the usable "
                             "runs under copick.runs")
    return names


def get_run(root, name: str, where: str):
    run = root.get_run(name)
    if run is None:
        raise TomoclustError(f"{where}: run {name!r} is not in the project (runs: "
                             f"{_listing(sorted(r.name for r in root.runs))})")
    return run


def voxel_spacing_of(run, voxel_size: float, where: str):
    """The run's voxel spacing equal to ``voxel_size`` (Å, within 0.01 %)."""
    spacings = list(run.voxel_spacings)
    for vs in spacings:
        if abs(float(vs.voxel_size) - voxel_size) <= SPACING_RTOL * voxel_size:
            return vs
    have = sorted(float(v.voxel_size) for v in spacings)
    raise TomoclustError(f"{where}: run {run.name!r} has no tomograms at voxel spacing "
                         f"{voxel_size:g} Å (its voxel spacings: {_listing(have)}); set "
                         "copick.voxel_spacing")


def tomogram_of(run, voxel_size: float, tomo_type: str, where: str):
    """The run's tomogram of ``tomo_type`` at ``voxel_size``."""
    vs = voxel_spacing_of(run, voxel_size, where)
    tomos = vs.get_tomograms(tomo_type)
    if not tomos:
        types = sorted({t.tomo_type for t in vs.tomograms})
        raise TomoclustError(f"{where}: run {run.name!r} has no tomogram of type {tomo_type!r} "
                             f"at {float(vs.voxel_size):g} Å (types there: {_listing(types)}); "
                             "set copick.tomo_type")
    if len(tomos) > 1:
        log.warning("%s: run %s has %d tomograms of type %s at %g Å; using the first", where,
                    run.name, len(tomos), tomo_type, float(vs.voxel_size))
    return tomos[0]


def read_tomogram(tomo, where: str) -> tuple[np.ndarray, float]:
    """Level 0 (full sampling) of a copick tomogram's multiscale OME-Zarr as ``(z, y, x)``
    float32, and its voxel spacing (Å)."""
    import zarr

    voxel_size = float(tomo.voxel_spacing.voxel_size)
    try:
        group = zarr.open(tomo.zarr(), mode="r")
        path, scale = "0", None
        multiscales = group.attrs.get("multiscales") or []
        if multiscales and multiscales[0].get("datasets"):
            first = multiscales[0]["datasets"][0]
            path = str(first.get("path", "0"))
            for t in first.get("coordinateTransformations") or []:
                if t.get("type") == "scale":
                    scale = [float(s) for s in t["scale"]]
        data = np.asarray(group[path][...], dtype=np.float32)
    except TomoclustError:
        raise
    except Exception as exc:
        raise TomoclustError(f"{where}: cannot read the tomogram's level 0 "
                             f"({type(exc).__name__}: {exc})") from None
    if data.ndim != 3:
        raise TomoclustError(f"{where}: level {path} has shape {data.shape}, not a 3D volume")
    if scale is not None and any(abs(s - voxel_size) > 1e-3 * voxel_size for s in scale[-3:]):
        log.warning("%s: OME-Zarr scale %s of level %s differs from the voxel spacing %g Å; "
                    "using the voxel spacing (copick's own reading)", where, scale, path,
                    voxel_size)
    return data, voxel_size


# --------------------------------------------------------------------------------- picks
def check_objects(root, names: Sequence[str], where: str) -> None:
    available = [o.name for o in root.pickable_objects]
    unknown = [n for n in names if n not in available]
    if unknown:
        raise TomoclustError(f"{where}: pickable object(s) {unknown} not in the project "
                             f"(objects: {_listing(available)}); set copick.picks.object")


def _describe(picks) -> str:
    return f"{picks.pickable_object_name}:{picks.user_id}/{picks.session_id}"


def find_picks(run, spec: PicksSpec, where: str) -> dict[str, object]:
    """{object: CopickPicks} of one run for the spec's objects (objects without picks left
    out). Several pick sets of one object (more than one user or session) are an error."""
    out = {}
    for name in spec.objects:
        found = run.get_picks(object_name=name, user_id=spec.user_id,
                              session_id=spec.session_id)
        if len(found) > 1:
            raise TomoclustError(f"{where}: run {run.name!r} has {len(found)} pick sets of "
                                 f"{name!r} ({', '.join(_describe(p) for p in found)}); choose "
                                 "one with copick.picks.user_id and copick.picks.session_id")
        if found:
            out[name] = found[0]
    return out


def picks_table(run, spec: PicksSpec, voxel_size: float, where: str) -> pd.DataFrame:
    """The spec's picks of one run as a coordinate table that
    :func:`tomoclust.external.import_coordinates` reads: ``rlnCoordinateX/Y/Z`` in voxels of
    ``voxel_size`` (the copick tomogram's), RELION angles from the transforms (when the picks
    trust their orientation), the copick identity (object, user, session, score, instance id)
    and, with several objects, ``rlnClassNumber`` (the object's place in the list)."""
    import_copick()
    from copick.util.formats import build_relion_particles_df

    tables = []
    for name, picks in find_picks(run, spec, where).items():
        number = spec.objects.index(name) + 1
        points, transforms = picks.numpy()
        if len(points) == 0:
            continue
        # copick's own RELION conversion, with the centre at the origin: the "centred"
        # coordinates are then the particle centres (location + translation) in copick's frame
        rel = build_relion_particles_df(points, transforms, tomogram_center=(0.0, 0.0, 0.0),
                                        coordinates="centered")
        pos = rel[["rlnCenteredCoordinateXAngst", "rlnCenteredCoordinateYAngst",
                   "rlnCenteredCoordinateZAngst"]].to_numpy(dtype=np.float64)
        bad = np.flatnonzero(~np.isfinite(pos).all(axis=1))
        if len(bad):
            raise TomoclustError(f"{where}: run {run.name!r}, picks {_describe(picks)}: point "
                                 f"{int(bad[0]) + 1} has a non-finite position")
        t = pd.DataFrame({"rlnCoordinateX": pos[:, 0] / voxel_size,
                          "rlnCoordinateY": pos[:, 1] / voxel_size,
                          "rlnCoordinateZ": pos[:, 2] / voxel_size})
        if picks.trust_orientation:
            for c in ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"):
                t[c] = rel[c].to_numpy(dtype=np.float64)
        if spec.labelled:
            t["rlnClassNumber"] = number  # the object's name is in tclCopickObject
        t["tclCopickObject"] = name
        t["tclCopickUserId"] = picks.user_id
        t["tclCopickSessionId"] = str(picks.session_id)
        t["tclCopickScore"] = picks.scores()
        t["tclCopickInstanceId"] = picks.instance_ids()
        tables.append(t)
        log.info("%s: run %s, %s: %d picks", where, run.name, _describe(picks), len(t))
    if not tables:
        return pd.DataFrame(columns=["rlnCoordinateX", "rlnCoordinateY", "rlnCoordinateZ"])
    return pd.concat(tables, ignore_index=True)


# ----------------------------------------------------------------------- the workflow's sheet
def tomogram_sheet(settings: CopickSettings, working_voxel_size: float | None = None,
                   tomogram_dir: str = "results/copick/tomograms",
                   picks_dir: str = "results/copick/picks") -> pd.DataFrame:
    """The project as a tomogram sheet (see :mod:`tomoclust.sheet`): one row per run, its
    ``path`` the MRC the ``copick_tomogram`` rule writes, its ``coordinates`` the STAR the
    ``copick_picks`` rule writes (when picks are configured). Checks every run for a tomogram
    of the type at the voxel spacing, and for picks of the objects, so that a bad project stops
    the workflow before any job runs. ``working_voxel_size`` (config ingest.voxel_size) must not
    be finer than the copick tomograms: ingest does not upsample."""
    where = f"copick config {settings.config}"
    if not settings.voxel_spacing > 0:
        raise TomoclustError(f"{where}: copick.voxel_spacing must be > 0")
    if working_voxel_size is not None and \
            working_voxel_size < settings.voxel_spacing * (1 - 1e-6):
        raise TomoclustError(f"config: ingest.voxel_size {working_voxel_size:g} Å is finer than "
                             f"copick.voxel_spacing {settings.voxel_spacing:g} Å and tomoclust "
                             "does not upsample; set ingest.voxel_size to at least "
                             f"{settings.voxel_spacing:g} (or null to keep it)")
    root = open_project(settings.config)
    names = run_names(root, settings.runs, where)
    if settings.picks is not None:
        check_objects(root, settings.picks.objects, where)
    rows = []
    for name in names:
        run = get_run(root, name, where)
        tomogram_of(run, settings.voxel_spacing, settings.tomo_type, where)
        coords = ""
        if settings.picks is not None:
            found = find_picks(run, settings.picks, where)
            if not found:
                have = sorted(_describe(p) for p in run.picks)
                raise TomoclustError(
                    f"{where}: run {name!r} has no picks of {settings.picks.objects} (user "
                    f"{settings.picks.user_id or 'any'}, session "
                    f"{settings.picks.session_id or 'any'}); its picks: {_listing(have)}. "
                    "Leave the run out (copick.runs) or fix copick.picks")
            coords = f"{picks_dir}/{name}.star"
        rows.append({"name": name, "path": f"{tomogram_dir}/{name}.mrc",
                     "voxel_size": settings.voxel_spacing, "tilt_min": settings.tilt_min,
                     "tilt_max": settings.tilt_max, "coordinates": coords,
                     "coordinates_voxel_size": settings.voxel_spacing if coords else None})
    sheet = pd.DataFrame(rows)
    for col in ("voxel_size", "coordinates_voxel_size"):
        sheet[col] = pd.Series(list(sheet[col]), dtype=object)
    return sheet.set_index("name", drop=False)


# ----------------------------------------------------------------------------- writing back
def object_name(template: str, method: str, cls: str) -> str:
    """A copick object name from the template (``{method}``, ``{class}``), made valid for
    copick (no spaces, underscores or path characters: each becomes ``-``)."""
    raw = template.replace("{method}", method).replace("{class}", cls)
    clean = re.sub(r'[<>:"/\\|?*\x00-\x1F\x7F\s_]', "-", raw).strip("-")
    if not clean:
        raise TomoclustError(f"copick object name template {template!r} gives an empty name "
                             f"for method {method!r}, class {cls!r}")
    return clean


def check_write_template(template: str, methods: Sequence[str]) -> None:
    if "{class}" not in template:
        raise TomoclustError(f"config copick.write.object {template!r} must contain '{{class}}'")
    if len(methods) > 1 and "{method}" not in template:
        raise TomoclustError(f"config copick.write.object {template!r}: several methods are "
                             f"written ({list(methods)}), so it must contain '{{method}}'")


@dataclass
class ClassPicks:
    """One class of one method: its object name and, per run, positions (Å) and scores."""
    method: str
    number: int
    label: str  # "class3" or a few-shot class name
    object: str
    runs: dict[str, tuple[np.ndarray, np.ndarray]]


def class_picks(method: str, table: pd.DataFrame, voxel_sizes: Mapping[str, float],
                template: str, runs: Sequence[str], named: bool = False) -> list[ClassPicks]:
    """Split a method's labelled particle table (``rlnTomoName``, ``rlnCoordinateX/Y/Z`` in
    voxels of the ingested tomogram, ``rlnClassNumber``, optional ``tclClassProbability``) into
    per-class picks in Å (copick's frame: voxel × voxel size). ``named``: the classes are named
    by the table's ``rlnClassName`` (few-shot predictions; in a clustering that column, when
    present, is an input column carried through, not the cluster's name)."""
    need = ["rlnTomoName", "rlnCoordinateX", "rlnCoordinateY", "rlnCoordinateZ",
            "rlnClassNumber"]
    missing = [c for c in need if c not in table.columns]
    if missing:
        raise TomoclustError(f"{method}: the class table lacks {missing}")
    tomo = table["rlnTomoName"].astype(str).to_numpy()
    unknown = sorted(set(tomo) - set(voxel_sizes))
    if unknown:
        raise TomoclustError(f"{method}: particles of tomograms {unknown} that are not runs of "
                             "the copick project")
    cls = table["rlnClassNumber"].to_numpy(dtype=np.int64)
    vs = np.array([voxel_sizes[t] for t in tomo], dtype=np.float64)
    pos = table[need[1:4]].to_numpy(dtype=np.float64) * vs[:, None]
    prob = (table["tclClassProbability"].to_numpy(dtype=np.float64)
            if "tclClassProbability" in table.columns else np.ones(len(table)))
    names = {}
    if named and "rlnClassName" in table.columns:
        names = dict(zip(cls, table["rlnClassName"].astype(str), strict=True))
    out, seen = [], {}
    for k in sorted(set(cls.tolist())):
        label = names.get(k, f"class{k}")
        obj = object_name(template, method, label)
        if obj in seen:
            raise TomoclustError(f"{method}: classes {seen[obj]} and {k} both give copick object "
                                 f"name {obj!r}")
        seen[obj] = k
        sel = cls == k
        out.append(ClassPicks(method, int(k), label, obj, {
            r: (pos[sel & (tomo == r)], prob[sel & (tomo == r)]) for r in runs}))
    return out


def _add_objects_to_config(path: Path, metas: Sequence[dict]) -> None:
    """Append pickable objects to a copick configuration file, atomically, leaving the rest of
    the file as it is."""
    data = json.loads(path.read_text())
    data.setdefault("pickable_objects", []).extend(metas)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=4)
            f.write("\n")
        os.chmod(tmp, path.stat().st_mode & 0o777)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_classes(config: str | Path, classes: Sequence[ClassPicks], *, user_id: str,
                  session_id: str, radius: float | None = None) -> pd.DataFrame:
    """Write every class as picks into the project (see the module doc); returns one row per
    (run, object) written. Picks this module wrote earlier under the same user and session for
    a class that no longer exists (a method now finds fewer classes) are removed."""
    config = Path(config)
    where = f"copick config {config}"
    root = open_project(config)
    from copick.models import CopickLocation, CopickPoint

    for what, value in (("user_id", user_id), ("session_id", session_id)):
        if object_name("{class}", "", value) != value:
            raise TomoclustError(f"config copick.write.{what} {value!r}: copick ids may not "
                                 "contain spaces, underscores or path characters")
    existing = {o.name: o for o in root.pickable_objects}
    new_metas = []
    for i, c in enumerate(classes):
        if c.object in existing:
            continue
        color = PALETTE[i % len(PALETTE)]
        obj = root.new_object(c.object, is_particle=True, color=(*color, 255), radius=radius,
                              metadata={METADATA_KEY: {"method": c.method, "class": c.number,
                                                       "label": c.label}})
        existing[c.object] = obj
        new_metas.append(obj.meta.model_dump(mode="json"))
    if new_metas:
        try:
            _add_objects_to_config(config, new_metas)
        except OSError as exc:
            raise TomoclustError(f"{where}: cannot add the classes' pickable objects ({exc}); "
                                 "make the file writable, or set copick.write.enabled: "
                                 "false") from None
        log.info("%s: added %d pickable objects", where, len(new_metas))
    methods = {c.method for c in classes}
    current = {c.object for c in classes}
    stale = {name for name, o in existing.items()
             if (o.metadata or {}).get(METADATA_KEY, {}).get("method") in methods
             and name not in current}
    rows = []
    run_list = sorted({r for c in classes for r in c.runs})
    for run_name in run_list:
        run = get_run(root, run_name, where)
        for p in run.get_picks(user_id=user_id, session_id=session_id):
            if p.pickable_object_name in stale:
                log.info("run %s: removing stale picks %s", run_name, _describe(p))
                p.delete()
        for c in classes:
            pos, score = c.runs.get(run_name, (np.zeros((0, 3)), np.zeros(0)))
            picks = run.new_picks(c.object, session_id=session_id, user_id=user_id,
                                  exist_ok=True)
            picks.meta.trust_orientation = False  # class membership, no orientation
            picks.points = [CopickPoint(location=CopickLocation(x=float(x), y=float(y),
                                                                z=float(z)),
                                        score=float(s))
                            for (x, y, z), s in zip(pos, score, strict=True)]
            try:
                picks.store()
            except OSError as exc:
                raise TomoclustError(f"{where}: run {run_name!r}: cannot write picks of "
                                     f"{c.object!r} ({exc}); is the project's overlay "
                                     "writable?") from None
            rows.append({"run": run_name, "method": c.method, "class": c.number,
                         "label": c.label, "object": c.object, "user_id": user_id,
                         "session_id": session_id, "n_points": len(pos)})
    return pd.DataFrame(rows, columns=["run", "method", "class", "label", "object", "user_id",
                                       "session_id", "n_points"])
