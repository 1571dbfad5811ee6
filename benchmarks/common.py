"""Shared helpers for the benchmarks: machine description, timing, JSON + markdown output.

Benchmarks import the library from ``scripts/`` (as the workflow does) and never read the
design documents; every figure they report is measured in the same process, side by side.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO / "scripts") not in sys.path:
    sys.path.insert(0, str(REPO / "scripts"))

#: The five demo classes of config.yaml, in class-number order (1-based).
DEMO_CLASSES = {
    "3jb9": "resources/structures/3jb9.cif.gz",  # spliceosome
    "6s47": "resources/structures/6s47.cif.gz",  # 80S ribosome
    "3j9i": "resources/structures/3j9i.pdb.gz",  # 20S proteasome
    "4v1w": "resources/structures/4v1w.cif.gz",  # apoferritin
    "3cf3": "resources/structures/3cf3.pdb.gz",  # p97/VCP
}


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _mem_total_gb() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024**2, 1)
    except OSError:
        pass
    return None


def _git_commit() -> str | None:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO,
                              capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=REPO, capture_output=True, text=True, check=True).stdout
        return head + ("+dirty" if dirty.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return None


def machine_info() -> dict[str, Any]:
    """CPU model, cores, memory, GPU and library versions of this run."""
    import numpy
    import scipy

    info: dict[str, Any] = {
        "date_utc": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
        else None,
        "memory_gb": _mem_total_gb(),
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "scipy": scipy.__version__,
        "git_commit": _git_commit(),
        "load_average_at_start": list(os.getloadavg()),
    }
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        info["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    except ImportError:
        info["torch"] = None
        info["gpu"] = "unknown (torch not installed)"
    try:
        import skimage

        info["scikit_image"] = skimage.__version__
    except ImportError:
        pass
    try:
        from threadpoolctl import threadpool_info

        info["blas"] = [f"{d.get('internal_api')} {d.get('version')} "
                        f"({d.get('num_threads')} threads)" for d in threadpool_info()
                        if d.get("user_api") == "blas"]
    except ImportError:
        pass
    return info


def machine_line(m: dict[str, Any]) -> str:
    """One markdown line describing the machine of a run."""
    return (f"{m['cpu_model']}, {m['cpu_count']} cores ({m['cpu_affinity']} usable), "
            f"{m['memory_gb']} GB, GPU: {m['gpu']}; Python {m['python']}, numpy {m['numpy']}, "
            f"scipy {m['scipy']}, torch {m['torch']}"
            + (f", scikit-image {m['scikit_image']}" if "scikit_image" in m else "")
            + f"; {m['date_utc']}; commit {m['git_commit']}"
            + ("; load average (1/5/15 min) "
               + "/".join(f"{x:.1f}" for x in m["load_average_at_start"]) + " at the start"
               if "load_average_at_start" in m else "")
            + (" and " + "/".join(f"{x:.1f}" for x in m["load_average_at_end"]) + " at the end"
               if "load_average_at_end" in m else ""))


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    """Wall-clock seconds of one call, and its result."""
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs))


def fmt(x: Any, nd: int = 3) -> str:
    """Compact cell text for markdown tables."""
    if x is None:
        return "–"
    if isinstance(x, float):
        if x != x:  # NaN
            return "–"
        if abs(x) >= 1000:
            return f"{x:,.0f}"
        if abs(x) >= 100:
            return f"{x:.0f}"
        return f"{x:.{nd}f}" if abs(x) <= 1 else f"{x:.{nd}g}"
    return str(x)


def md_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(fmt(c) for c in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def write_outputs(out_json: str | Path, payload: dict[str, Any], markdown: str) -> Path:
    """Write ``payload`` as JSON and ``markdown`` next to it (same stem, ``.md``)."""
    from tomoclust.formats.atomic import write_json, write_text

    out = Path(out_json)
    write_json(out, payload)
    md = out.with_suffix(".md")
    write_text(md, markdown)
    return md


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)
