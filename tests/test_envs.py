"""Static checks of the per-step conda environments (envs/*.yaml); no conda needed, < 1 s.

On clusters each rule runs in the conda env named by its ``conda:`` directive
(``--software-deployment-method conda``), so every env must provide what its rules import:

* every rule with an action (``script:``, ``shell:``, ``run:`` ...) names a ``conda:`` env that
  exists, uses conda-forge, and pins every dependency (``name =x.y``), python included;
* for a rule's ``script:``, the third-party modules it imports, and transitively those of the
  ``tomoclust`` modules it imports (parsed with ``ast``; imports inside functions count, since
  they run when the function does), map to conda packages the env lists. Standard-library
  modules (``sys.stdlib_module_names``) are ignored;
* an import inside ``try: ... except ImportError`` (or ``ModuleNotFoundError``) is optional
  and need not be in the env: the code has a fallback (e.g. ``logs.resolve_device`` picks the
  CPU when torch is missing). ``GUARDED_IMPORTS`` lists the few lazy imports that are guarded
  by the caller instead, each with its reason;
* a new third-party module must be added to ``MODULE_TO_CONDA`` (its conda-forge name);
* the pins agree with requirements.txt (the venv used locally and in CI) on major.minor, except
  that pytorch may lag by one minor version (conda-forge's CUDA builds follow PyPI later).
"""

from __future__ import annotations

import ast
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "scripts"
PACKAGE = "tomoclust"

# top-level module -> conda-forge package(s) that provide it (any one will do)
MODULE_TO_CONDA: dict[str, tuple[str, ...]] = {
    "numpy": ("numpy",),
    "scipy": ("scipy",),
    "pandas": ("pandas",),
    "mrcfile": ("mrcfile",),
    "starfile": ("starfile",),
    "gemmi": ("gemmi",),
    "skimage": ("scikit-image",),
    "sklearn": ("scikit-learn",),
    "threadpoolctl": ("threadpoolctl",),
    "yaml": ("pyyaml",),
    "torch": ("pytorch",),
    "matplotlib": ("matplotlib-base", "matplotlib"),
    "PIL": ("pillow",),
    "h5py": ("h5py",),
    "numba": ("numba",),
    "umap": ("umap-learn",),
    "tqdm": ("tqdm",),
    "copick": ("copick",),  # from PyPI, in the env's pip section
    "zarr": ("zarr",),
}
# conda package -> PyPI name in requirements.txt, where they differ
CONDA_TO_PYPI = {"pytorch": "torch", "matplotlib-base": "matplotlib"}
# (module, imported module): why the import needs no entry in every env that uses the module
GUARDED_IMPORTS = {
    (f"{PACKAGE}.pick", "torch"): "_dog_torch only runs for a torch device, which "
                                  "logs.resolve_device returns only when torch imports",
}
ACTIONS = ("script", "shell", "run", "notebook", "wrapper", "cwl", "template_engine")
# a version pin: "=2.4", "==2.4.1", ">=1.5,<2", or "2.12.*" with an optional build string
PIN = re.compile(r"^(?:(?:==?|>=|~=)\s*)?\d+(?:\.\d+)*(?:\.\*)?(?:,\s*<\s*\d[\w.]*)?"
                 r"(?:\s+[\w*.]+)?$")


# ------------------------------------------------------------------------------ parsing
@dataclass(frozen=True)
class Rule:
    name: str
    smk: Path
    conda: str | None
    script: str | None
    has_action: bool

    @property
    def env_path(self) -> Path | None:
        return (self.smk.parent / self.conda).resolve() if self.conda else None

    @property
    def script_path(self) -> Path | None:
        return (self.smk.parent / self.script).resolve() if self.script else None


def _directive(body: str, name: str) -> str | None:
    m = re.search(rf"^\s+{name}:\s*(?:\n\s+)?[\"']([^\"']+)[\"']", body, flags=re.M)
    return m.group(1) if m else None


def parse_rules() -> list[Rule]:
    rules = []
    for smk in sorted((REPO / "rules").glob("*.smk")):
        text = smk.read_text()
        starts = list(re.finditer(r"^(?:rule|checkpoint)\s+(\w+)\s*:", text, flags=re.M))
        for m in starts:
            # the rule's body: indented lines up to the next top-level statement
            lines = []
            for line in text[m.end():].splitlines()[1:]:
                if line.strip() and not line[0].isspace() and not line.startswith("#"):
                    break
                lines.append(line)
            body = "\n".join(lines) + "\n"
            has_action = any(re.search(rf"^\s+{a}:", body, flags=re.M) for a in ACTIONS)
            rules.append(Rule(m.group(1), smk, _directive(body, "conda"),
                              _directive(body, "script"), has_action))
    return rules


def _catches_import_error(handler: ast.ExceptHandler) -> bool:
    names = {"ImportError", "ModuleNotFoundError"}
    t = handler.type
    if isinstance(t, ast.Name):
        return t.id in names
    if isinstance(t, ast.Tuple):
        return any(isinstance(e, ast.Name) and e.id in names for e in t.elts)
    return False


def _imports(path: Path, module: str | None) -> list[tuple[str, bool]]:
    """(absolute module name, optional) for every import in a file; relative imports are
    resolved against ``module`` (the file's dotted name; None for a rule script)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module.rsplit(".", 1)[0] if module and "." in module else PACKAGE
    if path.name == "__init__.py":
        package = module or PACKAGE
    out: list[tuple[str, bool]] = []

    def visit(node: ast.AST, optional: bool) -> None:
        if isinstance(node, ast.Try):
            guarded = optional or any(_catches_import_error(h) for h in node.handlers)
            for child in node.body:
                visit(child, guarded)
            for child in [*node.handlers, *node.orelse, *node.finalbody]:
                visit(child, optional)
            return
        if isinstance(node, ast.Import):
            out.extend((alias.name, optional) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                name = ".".join([*base, node.module] if node.module else base)
            else:
                name = node.module or ""
            out.append((name, optional))
            # `from pkg import submodule`
            for alias in node.names:
                out.append((f"{name}.{alias.name}", optional))
        for child in ast.iter_child_nodes(node):
            visit(child, optional)

    visit(tree, False)
    return out


def _module_file(name: str) -> Path | None:
    parts = name.split(".")
    as_file = SCRIPTS.joinpath(*parts).with_suffix(".py")
    if as_file.is_file():
        return as_file
    as_pkg = SCRIPTS.joinpath(*parts, "__init__.py")
    return as_pkg if as_pkg.is_file() else None


def third_party_imports(script: Path) -> dict[str, list[str]]:
    """{top-level third-party module: [where it is imported]} for a script and, transitively,
    the tomoclust modules it imports (optional and guarded imports left out)."""
    found: dict[str, list[str]] = {}
    todo: list[tuple[Path, str | None]] = [(script, None)]
    seen: set[Path] = set()
    while todo:
        path, module = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        where = module or path.name
        for name, optional in _imports(path, module):
            top = name.split(".")[0]
            if top == PACKAGE:
                parts = name.split(".")
                for i in range(1, len(parts) + 1):  # the package, its subpackages, the module
                    sub = ".".join(parts[:i])
                    f = _module_file(sub)
                    if f is not None:
                        todo.append((f, sub))
                continue
            if optional or top in sys.stdlib_module_names or top == "":
                continue
            if (module, top) in GUARDED_IMPORTS:
                continue
            found.setdefault(top, []).append(where)
    return {k: sorted(set(v)) for k, v in found.items()}


def parse_env(path: Path) -> tuple[list[str], dict[str, str]]:
    """(channels, {package: version spec}) of a conda env file (pip entries included)."""
    env = yaml.safe_load(path.read_text())
    deps: dict[str, str] = {}
    for dep in env.get("dependencies", []):
        if isinstance(dep, dict):
            for pip in dep.get("pip", []):
                m = re.match(r"^([A-Za-z0-9_.\-]+)\s*(.*)$", pip)
                deps[m.group(1).lower()] = m.group(2).strip()
            continue
        m = re.match(r"^([A-Za-z0-9_.\-]+)\s*(.*)$", str(dep))
        deps[m.group(1).lower()] = m.group(2).strip()
    return list(env.get("channels", [])), deps


def _requirements() -> dict[str, str]:
    out = {}
    for line in (REPO / "requirements.txt").read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9_.\-]+)==([\d.]+)", line.strip())
        if m:
            out[m.group(1).lower()] = m.group(2)
    return out


RULES = parse_rules()
ACTION_RULES = [r for r in RULES if r.has_action]
ENVS = sorted((REPO / "envs").glob("*.yaml"))


# -------------------------------------------------------------------------------- tests
def test_rules_found():
    assert len(ACTION_RULES) >= 5, [r.name for r in RULES]


@pytest.mark.parametrize("rule", ACTION_RULES, ids=lambda r: r.name)
def test_rule_has_existing_env(rule):
    assert rule.conda, f"rule {rule.name} ({rule.smk.name}) has no conda: env"
    assert rule.env_path.is_file(), f"rule {rule.name}: {rule.conda} does not exist"
    assert rule.env_path.parent == REPO / "envs", f"rule {rule.name}: env outside envs/"


@pytest.mark.parametrize("env", ENVS, ids=lambda p: p.name)
def test_env_pins_everything(env):
    channels, deps = parse_env(env)
    assert "conda-forge" in channels and "defaults" not in channels, channels
    assert "python" in deps, f"{env.name}: python is not pinned"
    unpinned = [f"{name} {spec}".strip() for name, spec in deps.items() if not PIN.match(spec)]
    assert not unpinned, f"{env.name}: pin these with a version (name =x.y): {unpinned}"


@pytest.mark.parametrize("rule", [r for r in ACTION_RULES if r.script], ids=lambda r: r.name)
def test_env_provides_script_imports(rule):
    assert rule.script_path.is_file(), f"rule {rule.name}: {rule.script} does not exist"
    _, deps = parse_env(rule.env_path)
    missing, unknown = [], []
    for module, where in third_party_imports(rule.script_path).items():
        if module not in MODULE_TO_CONDA:
            unknown.append(f"{module} (imported by {', '.join(where)})")
        elif not any(pkg in deps for pkg in MODULE_TO_CONDA[module]):
            missing.append(f"{' or '.join(MODULE_TO_CONDA[module])} "
                           f"(imports {module}: {', '.join(where)})")
    assert not unknown, f"add the conda-forge package of these to MODULE_TO_CONDA: {unknown}"
    assert not missing, f"rule {rule.name}: envs/{rule.env_path.name} lacks {missing}"


@pytest.mark.parametrize("env", ENVS, ids=lambda p: p.name)
def test_env_pins_agree_with_requirements(env):
    req = _requirements()
    _, deps = parse_env(env)
    for pkg, spec in deps.items():
        pypi = CONDA_TO_PYPI.get(pkg, pkg)
        if pypi not in req:
            continue
        want = [int(x) for x in req[pypi].split(".")[:2]]
        got = [int(x) for x in re.findall(r"\d+", spec)[:2]]
        if pkg == "pytorch":
            assert got[0] == want[0] and 0 <= want[1] - got[1] <= 1, \
                f"{env.name}: pytorch {spec} vs torch=={req[pypi]} in requirements.txt"
        else:
            assert got == want, f"{env.name}: {pkg} {spec} vs {pypi}=={req[pypi]}"


# ------------------------------------------------------------------- the checker itself
def test_checker_sees_function_level_and_optional_imports(tmp_path):
    src = tmp_path / "script.py"
    src.write_text(
        "import os\n"
        "import numpy as np\n"
        "from tomoclust.rule import log\n"  # rule.py: torch only behind an ImportError guard
        "def f():\n"
        "    import sklearn.cluster\n"
        "    try:\n"
        "        import h5py\n"
        "    except (ImportError, OSError):\n"
        "        pass\n"
    )
    found = third_party_imports(src)
    # rule.py brings the file formats (mrcfile, starfile, pandas) but not its guarded torch
    assert set(found) == {"numpy", "sklearn", "pandas", "mrcfile", "starfile"}, found
