"""Tables for the Snakemake HTML report: small self-contained HTML pages made from TSVs.

The report shows an HTML result inline (a TSV would only be offered for download), so each
table the report carries is written once as TSV (for scripts) and once as HTML (for people).
"""

from __future__ import annotations

import html
import json
import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from .. import TomoclustError
from ..formats.atomic import write_text
from ..numerics.class_maps import classes_to_average

log = logging.getLogger(__name__)

_STYLE = """
body { font-family: system-ui, sans-serif; font-size: 14px; margin: 12px; color: #222; }
h1 { font-size: 17px; margin: 0 0 6px 0; }
p.note { color: #555; margin: 0 0 10px 0; max-width: 60em; }
table { border-collapse: collapse; }
th, td { border: 1px solid #ccc; padding: 3px 9px; text-align: right; }
th { background: #f0f0f0; }
td.text { text-align: left; }
tr:nth-child(even) td { background: #fafafa; }
"""


def _cell(value, digits: int) -> tuple[str, bool]:
    """(HTML text, is_numeric) of one table cell."""
    if isinstance(value, (bool, np.bool_)):
        return ("yes" if value else "no"), False
    if isinstance(value, (int, np.integer)):
        return str(int(value)), True
    if isinstance(value, (float, np.floating)):
        if not np.isfinite(value):
            return "–", True
        if float(value).is_integer() and abs(value) < 1e15:
            return str(int(value)), True
        return f"{value:.{digits}f}", True
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "–", False
    return html.escape(str(value)), False


def html_table(df: pd.DataFrame, title: str, note: str = "",
               digits: int | Mapping[str, int] = 3) -> str:
    """A standalone HTML page with ``df`` as a table (numbers right-aligned, ``digits``
    decimals, or per column from a mapping with 3 for the others; NaN shown as a dash; all
    text escaped)."""
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    per_col = [digits.get(c, 3) if isinstance(digits, Mapping) else digits for c in df.columns]
    rows = []
    for rec in df.itertuples(index=False):
        cells = []
        for v, d in zip(rec, per_col, strict=True):
            text, numeric = _cell(v, d)
            cells.append(f"<td>{text}</td>" if numeric else f'<td class="text">{text}</td>')
        rows.append("<tr>" + "".join(cells) + "</tr>")
    note_html = f'<p class="note">{html.escape(note)}</p>' if note else ""
    return (
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">"
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>\n"
        f"<h1>{html.escape(title)}</h1>{note_html}\n"
        f"<table><thead><tr>{head}</tr></thead>\n<tbody>\n" + "\n".join(rows)
        + "\n</tbody></table>\n</body></html>\n"
    )


def write_html_table(path: str | Path, df: pd.DataFrame, title: str, note: str = "",
                     digits: int | Mapping[str, int] = 3) -> None:
    write_text(path, html_table(df, title, note, digits))


def read_tsv(path: str | Path, what: str = "table") -> pd.DataFrame:
    try:
        return pd.read_csv(path, sep="\t")
    except FileNotFoundError:
        raise TomoclustError(f"{path}: {what} not found") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise TomoclustError(f"{path}: not a readable TSV {what} ({exc})") from None


def read_cluster_summary(path: str | Path) -> dict:
    """One clustering rule's ``summary.json``; a clear error naming an unreadable file."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise TomoclustError(f"{path}: cannot read the clustering summary ({exc})") from None


def cluster_summary(paths: list[str | Path]) -> pd.DataFrame:
    """One row per method from the clustering rule's ``summary.json`` files."""
    rows = []
    for path in paths:
        s = read_cluster_summary(path)
        missing = {"method", "algorithm", "k", "class_sizes"} - set(s)
        if missing:
            raise TomoclustError(f"{path}: clustering summary lacks {sorted(missing)}")
        sizes = [int(n) for n in s["class_sizes"]]
        rows.append({
            "method": s["method"], "algorithm": s["algorithm"], "K": int(s["k"]),
            "particles": sum(sizes),
            "class sizes": " / ".join(str(n) for n in sizes),
            "smallest class %": 100.0 * min(sizes) / max(1, sum(sizes)) if sizes else np.nan,
            "stability ARI": s.get("stability_ari", np.nan),
            "mean probability": s.get("mean_probability", np.nan),
            "warning": s.get("collapse_warning") or "",
        })
    return pd.DataFrame(rows)


def picks_summary(tables: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """One row per tomogram, then one for all of them: the number of picks and the spread of
    their DoG z-scores (``tclDogZScore``).

    ``tables``: the pick rule's STAR table of each tomogram, by tomogram name.
    """
    def row(name: str, n: int, z: np.ndarray) -> dict:
        stats = np.percentile(z, [0, 50, 100]) if len(z) else [np.nan] * 3
        return {"tomogram": name, "picks": n, "lowest z-score": stats[0],
                "median z-score": stats[1], "highest z-score": stats[2]}

    rows, all_z = [], []
    for name, df in tables.items():
        z = (df["tclDogZScore"].to_numpy(dtype=float) if "tclDogZScore" in df
             else np.zeros(0))
        all_z.append(z)
        rows.append(row(name, len(df), z))
    if len(rows) > 1:
        rows.append(row(f"all {len(rows)}", sum(r["picks"] for r in rows),
                        np.concatenate(all_z)))
    return pd.DataFrame(rows, columns=["tomogram", "picks", "lowest z-score", "median z-score",
                                       "highest z-score"])


EMBEDDING_COLUMNS = ["rlnTomoName", "rlnCoordinateX", "rlnCoordinateY", "rlnCoordinateZ",
                     "rlnCenteredCoordinateXAngst", "rlnCenteredCoordinateYAngst",
                     "rlnCenteredCoordinateZAngst", "rlnClassNumber", "tclClassProbability",
                     "rlnImageName", "tclStackIndex"]


def embedding_table(clusters: pd.DataFrame, features: np.ndarray) -> pd.DataFrame:
    """One row per particle: where it is (tomogram, voxel and centred Å coordinates), its
    class and class probability, its stack row, then its features ``f0 .. f{d-1}``; rows in
    particles.star order. For pandas (``read_csv(sep="\\t")``) or napari (a points layer from
    ``rlnCoordinateZ/Y/X``, coloured by ``rlnClassNumber``)."""
    features = np.asarray(features)
    if features.ndim != 2 or len(features) != len(clusters):
        raise TomoclustError(f"{features.shape} features for {len(clusters)} particles")
    out = clusters[[c for c in EMBEDDING_COLUMNS if c in clusters.columns]].reset_index(drop=True)
    feats = pd.DataFrame(features.astype(np.float64),
                         columns=[f"f{i}" for i in range(features.shape[1])])
    return pd.concat([out, feats], axis=1)


def averaging_summary(summary: Mapping, infos: list[Mapping], min_particles: int
                      ) -> pd.DataFrame:
    """One row per class of a method's clustering (``summary``: its summary.json): averaged
    (resolution, and the dominant template with its FSC against the truth where known, from
    the class's info.json in ``infos``) or too small to average (fewer than
    ``min_particles``, or under 2 per half set; logged)."""
    k_total = int(summary["k"])
    _, skipped = classes_to_average(summary["class_sizes"], k_total, min_particles)
    by_class = {int(info["class"]): info for info in infos}
    rows = []
    for k in range(1, k_total + 1):
        if k in skipped:
            log.info("class %d: %d particles, too few to average (min_particles %d, 2 per "
                     "half set): no average", k, skipped[k], min_particles)
            rows.append({"class": k, "n_particles": skipped[k], "status": "too few particles"})
            continue
        info = by_class[k]
        rows.append({
            "class": k, "n_particles": info["n_particles"], "status": "averaged",
            "resolution_0143_angst": info["resolution_0143_angst"],
            "template": info.get("template"),
            "template_particles": info.get("template_particles"),
            "fsc_truth_05_angst": info.get("fsc_truth_05_angst"),
            "fsc_truth_0143_angst": info.get("fsc_truth_0143_angst"),
        })
    table = pd.DataFrame(rows)
    if "template_particles" in table:
        table["template_particles"] = pd.array(
            [None if v in ("", None) or v != v else int(v) for v in table["template_particles"]],
            dtype="Int64")
    return table
