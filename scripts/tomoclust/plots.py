"""Figures for people who would rather look than read (matplotlib, Agg backend, PNG)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .io import atomic_output


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | Path) -> None:
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")


def plot_picking(metrics: pd.DataFrame, path: str | Path) -> None:
    """Bar charts: precision/recall/F1 per tomogram and overall, and recall per class."""
    plt = _pyplot()
    tomo = metrics[metrics["scope"].isin(["all", "tomogram"])]
    cls = metrics[metrics["scope"] == "class"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), gridspec_kw={"width_ratios": [3, 2]})
    x = np.arange(len(tomo))
    for i, (col, colour) in enumerate([("precision", "#4C72B0"), ("recall", "#DD8452"),
                                       ("f1", "#55A868")]):
        axes[0].bar(x + (i - 1) * 0.27, tomo[col].to_numpy(dtype=float), 0.27, label=col,
                    color=colour)
    axes[0].set_xticks(x, tomo["name"], rotation=45, ha="right")
    axes[0].set_ylim(0, 1.05)
    axes[0].set_title("Picking against ground truth")
    axes[0].legend(loc="lower right", fontsize=8)
    axes[1].bar(np.arange(len(cls)), cls["recall"].to_numpy(dtype=float), color="#DD8452")
    axes[1].set_xticks(np.arange(len(cls)), cls["name"], rotation=45, ha="right")
    axes[1].set_ylim(0, 1.05)
    axes[1].set_title("Recall per class")
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
