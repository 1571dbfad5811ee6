"""The report's first page: the answer (how many kinds of particle, how many of each, what they
look like, how well defined and how reproducible), one block per method, the recommended
method first.

It is an HTML fragment (no scripts; images as small PNG data URIs) that the report's
description (report/workflow.rst) includes, so it shows on the page the report opens on.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from .. import TomoclustError
from .tables import read_cluster_summary


def central_slices_png(volume: np.ndarray, dark: bool = True) -> bytes:
    """A strip of the central xy, xz and yz slices of a ``(z, y, x)`` cube as an 8-bit
    greyscale PNG (one pixel per voxel, a 2-pixel gap), contrast-stretched over the three
    slices (1st-99th percentile); dark density is shown dark, as in the tomogram."""
    from matplotlib import image

    v = np.asarray(volume, np.float32)
    if v.ndim != 3:
        raise TomoclustError(f"expected a 3D map, got shape {v.shape}")
    cz, cy, cx = (s // 2 for s in v.shape)
    slices = [v[cz], v[:, cy, :], v[:, :, cx]]
    lo, hi = np.percentile(np.concatenate([s.ravel() for s in slices]), [1, 99])
    hi = hi if hi > lo else lo + 1
    h = max(s.shape[0] for s in slices)
    gap = 2
    strip = np.ones((h, sum(s.shape[1] for s in slices) + gap * 2), np.float32)
    x = 0
    for s in slices:
        strip[: s.shape[0], x: x + s.shape[1]] = np.clip((s - lo) / (hi - lo), 0, 1)
        x += s.shape[1] + gap
    buf = io.BytesIO()
    image.imsave(buf, strip, cmap="gray", vmin=0, vmax=1, format="png")
    return buf.getvalue()


def recommend(methods: pd.DataFrame) -> tuple[str | None, str]:
    """The method to look at first and why. With ground truth (an ``accuracy`` column with a
    value): the most accurate. Without: among methods with at least two classes, the most
    reproducible across seeds (``stability`` ARI), then the most confident
    (``mean_probability``). Returns ``(method or None, reason)``."""
    if len(methods) == 0:
        return None, "no method ran"
    if "accuracy" in methods and methods["accuracy"].notna().any():
        best = methods.loc[methods["accuracy"].idxmax()]
        return str(best["method"]), (f"highest accuracy against the ground truth "
                                     f"({best['accuracy']:.2f})")
    cand = methods[methods["k"] >= 2]
    if len(cand) == 0:
        return None, "every method found a single class"
    keys = cand.assign(_s=cand["stability"].fillna(-1), _p=cand["mean_probability"].fillna(-1))
    best = keys.sort_values(["_s", "_p"], ascending=False).iloc[0]
    return str(best["method"]), (
        f"no ground truth: the most reproducible classes across clustering seeds "
        f"(stability ARI {best['stability']:.2f}) among methods with two or more classes")


def method_rows(summaries: Sequence[str | Path], classification: str | Path | None = None
                ) -> pd.DataFrame:
    """One row per method from the cluster rule's ``summary.json`` files (``method``, ``k``,
    ``class_sizes``, ``stability``, ``mean_probability``) and, with ground truth, the
    classification table's ``accuracy``."""
    rows = []
    for path in summaries:
        s = read_cluster_summary(path)
        rows.append({"method": s["method"], "k": int(s["k"]),
                     "class_sizes": [int(n) for n in s["class_sizes"]],
                     "stability": s.get("stability_ari", np.nan),
                     "mean_probability": s.get("mean_probability", np.nan)})
    df = pd.DataFrame(rows, columns=["method", "k", "class_sizes", "stability",
                                     "mean_probability"])
    df["accuracy"] = np.nan
    if classification is not None:
        acc = pd.read_csv(classification, sep="\t").set_index("method")["accuracy"]
        df["accuracy"] = df["method"].map(acc).astype(float)
    return df


def _fmt(v: float, fmt: str, none: str = "–") -> str:
    return none if v is None or not np.isfinite(v) else format(v, fmt)


def overview_html(methods: pd.DataFrame, classes: Mapping[str, pd.DataFrame],
                  slices: Mapping[tuple[str, int], bytes], recommended: str | None,
                  reason: str) -> str:
    """The fragment: per method (recommended first) a heading line (K, stability, accuracy)
    and a table of its classes (particles, central slices of the average, FSC 0.143)."""
    order = list(methods["method"])
    if recommended in order:
        order.remove(recommended)
        order.insert(0, recommended)
    by = methods.set_index("method")
    has_truth = methods["accuracy"].notna().any()
    out = ['<div class="tomoclust-overview" id="tomoclust-overview">']
    if recommended:
        out.append(f'<p class="tc-lead"><b>Recommended: {html.escape(recommended)}</b> '
                   f"({html.escape(reason)}).</p>")
    else:
        out.append(f'<p class="tc-lead">No recommendation: {html.escape(reason)}.</p>')
    for m in order:
        r = by.loc[m]
        sizes = r["class_sizes"]
        head = (f"{html.escape(m)}: <b>{int(r['k'])} class{'es' if r['k'] != 1 else ''}</b>, "
                f"{sum(sizes)} particles; stability ARI {_fmt(r['stability'], '.2f')}")
        if has_truth:
            head += f"; accuracy {_fmt(r['accuracy'], '.2f')}"
        tag = " (recommended)" if m == recommended else ""
        out.append(f'<div class="tc-method" data-method="{html.escape(m)}">'
                   f'<h3 class="tc-head">{head}{html.escape(tag)}</h3>')
        cls = classes.get(m)
        out.append('<table class="tc-classes"><thead><tr><th>class</th><th>particles</th>'
                   "<th>central slices (xy, xz, yz)</th><th>FSC 0.143</th></tr></thead><tbody>")
        for k, n in enumerate(sizes, start=1):
            row = None if cls is None else cls[cls["class"] == k]
            res = (float(row["resolution_0143_angst"].iloc[0])
                   if row is not None and len(row) and "resolution_0143_angst" in row
                   else np.nan)
            status = (str(row["status"].iloc[0]) if row is not None and len(row)
                      else "not averaged")
            png = slices.get((m, k))
            img = (f'<img class="tc-slices" alt="{html.escape(m)} class {k} central slices" '
                   f'src="data:image/png;base64,{base64.b64encode(png).decode()}">'
                   if png else f'<span class="tc-none">{html.escape(status)}</span>')
            out.append(f"<tr><td>{k}</td><td>{n}</td><td>{img}</td>"
                       f"<td>{_fmt(res, '.0f')}{' Å' if np.isfinite(res) else ''}</td></tr>")
        out.append("</tbody></table></div>")
    out.append("</div>")
    style = ("<style>.tomoclust-overview table{border-collapse:collapse;margin:2px 0 10px 0}"
             ".tomoclust-overview th,.tomoclust-overview td{border:1px solid #ccc;"
             "padding:2px 6px;text-align:right}.tomoclust-overview th{background:#f2f2f2}"
             ".tomoclust-overview h3.tc-head{font-size:1em;margin:10px 0 2px 0;font-weight:"
             "normal}.tomoclust-overview img.tc-slices{height:48px;image-rendering:pixelated;"
             "margin:0}.tomoclust-overview .tc-lead{margin:4px 0}"
             # Snakemake's report centres its landing page vertically in a scrolling box, so
             # a page taller than the window loses its top (title and this overview) out of
             # reach of the scroll bar; start it at the top instead
             ".overflow-auto.items-center:has(#tomoclust-overview){align-items:flex-start}"
             "</style>")
    return style + "\n".join(out) + "\n"
