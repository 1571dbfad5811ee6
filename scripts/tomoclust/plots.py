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


def plot_bic(bic: pd.DataFrame, k_chosen: int, path: str | Path, title: str = "") -> None:
    """BIC against K (lower is better), with the chosen K marked."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.4))
    if len(bic):
        cold = bic[~bic.get("warm_start", pd.Series(False, index=bic.index)).astype(bool)]
        ax.plot(cold["k"], cold["bic"], "o-", color="#4C72B0", label="BIC")
        ax.axvline(k_chosen, color="#C44E52", ls="--", label=f"chosen K = {k_chosen}")
        ax.set_xlabel("number of classes K")
        ax.set_ylabel("BIC (lower is better)")
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, f"fixed K = {k_chosen} (no BIC scan)", ha="center", va="center",
                transform=ax.transAxes)
        ax.set_axis_off()
    ax.set_title(f"{title}: model selection" if title else "model selection")
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def plot_confusion(cm: pd.DataFrame, path: str | Path, title: str = "") -> None:
    """Confusion matrix (true classes × clusters); class 0 = picks matching no particle."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(1.2 + 0.55 * cm.shape[1], 1.0 + 0.5 * cm.shape[0]))
    im = ax.imshow(cm.to_numpy(), cmap="Blues")
    for (i, j), v in np.ndenumerate(cm.to_numpy()):
        ax.text(j, i, str(v), ha="center", va="center", fontsize=8,
                color="white" if v > cm.to_numpy().max() / 2 else "black")
    ax.set_xticks(range(cm.shape[1]), [str(c) for c in cm.columns])
    ax.set_yticks(range(cm.shape[0]), ["junk" if r == 0 else str(r) for r in cm.index])
    ax.set_xlabel("cluster")
    ax.set_ylabel("true class")
    ax.set_title(f"{title}: confusion" if title else "confusion")
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def embed_2d(features: np.ndarray, seed: int = 0, max_points: int = 3000
             ) -> tuple[np.ndarray, np.ndarray]:
    """t-SNE of (at most ``max_points`` of) the standardised, PCA-reduced features.

    Returns the 2D coordinates and the indices of the rows shown.
    """
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    rng = np.random.default_rng(seed)
    idx = np.arange(len(features))
    if len(idx) > max_points:
        idx = np.sort(rng.choice(idx, max_points, replace=False))
    x = np.asarray(features, dtype=np.float64)[idx]
    sd = x.std(axis=0)
    x = (x - x.mean(axis=0)) / np.where(sd > 0, sd, 1)
    x = PCA(n_components=min(16, x.shape[1], len(x) - 1), random_state=seed).fit_transform(x)
    perplexity = float(min(30, max(2, (len(x) - 1) / 3)))
    xy = TSNE(2, perplexity=perplexity, random_state=seed, init="pca").fit_transform(x)
    return xy, idx


def plot_embedding(features: np.ndarray, clusters: np.ndarray, truth: np.ndarray | None,
                   path: str | Path, title: str = "", seed: int = 0) -> None:
    """t-SNE of the features coloured by cluster and (when known) by true class."""
    plt = _pyplot()
    xy, idx = embed_2d(features, seed)
    panels = [("cluster", np.asarray(clusters)[idx])]
    if truth is not None:
        panels.append(("true class (0 = junk)", np.asarray(truth)[idx]))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 4.2), squeeze=False)
    for ax, (name, lab) in zip(axes[0], panels, strict=True):
        for v in np.unique(lab):
            sel = lab == v
            ax.scatter(xy[sel, 0], xy[sel, 1], s=6, label=str(v), alpha=0.8)
        ax.set_title(f"{title}: t-SNE by {name}" if title else f"t-SNE by {name}")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.legend(fontsize=7, markerscale=2, loc="best")
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


# ------------------------------------------------------------------- class averages
def plot_slices(volume: np.ndarray, path: str | Path, title: str = "",
                reference: np.ndarray | None = None, reference_label: str = "truth") -> None:
    """Three orthogonal central slices (z, y, x) of a map, optionally above those of a
    reference map (e.g. the aligned true map)."""
    plt = _pyplot()
    rows = [("average", np.asarray(volume))]
    if reference is not None:
        rows.append((reference_label, np.asarray(reference)))
    fig, axes = plt.subplots(len(rows), 3, figsize=(8, 2.9 * len(rows)), squeeze=False)
    for r, (label, vol) in enumerate(rows):
        c = np.array(vol.shape) // 2
        slices = [("xy (z centre)", vol[c[0]]), ("xz (y centre)", vol[:, c[1], :]),
                  ("yz (x centre)", vol[:, :, c[2]])]
        lo, hi = np.percentile(vol, [1, 99])
        for a, (name, sl) in enumerate(slices):
            ax = axes[r, a]
            ax.imshow(sl, cmap="gray", origin="lower", vmin=lo, vmax=hi)
            ax.set_title(f"{label}: {name}", fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def plot_fsc(table: pd.DataFrame, path: str | Path, title: str = "") -> None:
    """FSC curves of a ``fsc.tsv`` table against resolution, with 0.143 and 0.5 lines."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.2, 3.5))
    x = 1.0 / table["resolution_angst"].to_numpy(dtype=float)
    ax.plot(x, table["fsc_half_maps"], "o-", ms=3, color="#4C72B0", label="half maps")
    if "fsc_truth" in table:
        ax.plot(x, table["fsc_truth"], "s-", ms=3, color="#DD8452", label="average vs truth")
    ax.axhline(0.143, color="grey", ls="--", lw=0.8)
    ax.axhline(0.5, color="grey", ls=":", lw=0.8)
    ax.set_ylim(-0.2, 1.05)
    ax.set_xlabel("spatial frequency (1/Å)")
    ax.set_ylabel("FSC")
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
