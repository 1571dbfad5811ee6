"""Figures for people who would rather look than read (matplotlib, Agg backend, PNG)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..formats.atomic import atomic_output


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | Path) -> None:
    """PNG, or JPEG (quality 85) when ``path`` ends in .jpg/.jpeg: images of noisy tomograms
    are several times smaller as JPEG, which keeps a report of many tomograms small."""
    if Path(path).suffix.lower() in (".jpg", ".jpeg"):
        with atomic_output(path) as tmp:
            fig.savefig(tmp, format="jpeg", dpi=110, bbox_inches="tight",
                        pil_kwargs={"quality": 85})
        return
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
    axes[0].set_xlabel("tomogram")
    axes[0].set_ylabel("score (1 = perfect)")
    axes[0].set_title("Picking against ground truth")
    axes[0].legend(loc="lower right", fontsize=8)
    axes[1].bar(np.arange(len(cls)), cls["recall"].to_numpy(dtype=float), color="#DD8452")
    axes[1].set_xticks(np.arange(len(cls)), cls["name"], rotation=45, ha="right")
    axes[1].set_ylim(0, 1.05)
    axes[1].set_xlabel("true class")
    axes[1].set_ylabel("recall")
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
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
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
        ax.set_xlabel("t-SNE 1")
        ax.set_ylabel("t-SNE 2")
        ax.legend(fontsize=7, markerscale=2, loc="best")
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


# ------------------------------------------------------------------ picks on tomogram slabs
_TRUTH_COLOURS = ["#00BFFF", "#FF2D2D", "#39D353", "#C77DFF", "#FF6EC7", "#1E5BFF", "#00E5C0",
                  "#8B4513"]


def slab_bounds(nz: int, thickness: int, n: int) -> list[tuple[int, int]]:
    """``n`` slabs ``[z0, z1)`` of ``thickness`` voxels centred at evenly spaced depths.

    Slabs are clipped to ``[0, nz)`` (by shifting, not shrinking); identical slabs (a thin
    volume) are returned once, so no pick is drawn twice.
    """
    if nz < 1 or n < 1:
        raise ValueError(f"need nz >= 1 and n >= 1, got {nz}, {n}")
    thickness = int(min(max(int(thickness), 1), nz))
    out: list[tuple[int, int]] = []
    for c in (np.arange(n) + 0.5) * nz / n:
        z0 = int(np.clip(int(np.floor(c - thickness / 2 + 0.5)), 0, nz - thickness))
        if (z0, z0 + thickness) not in out:
            out.append((z0, z0 + thickness))
    return out


def in_slab(z: np.ndarray, z0: int, z1: int) -> np.ndarray:
    """Mask of points whose centre ``z`` (voxels; voxel ``i`` spans ``i ± 0.5``) lies in the
    slab of voxels ``z0 .. z1 - 1``."""
    z = np.asarray(z, dtype=np.float64)
    return (z >= z0 - 0.5) & (z < z1 - 0.5)


def _stretch(image: np.ndarray) -> tuple[float, float]:
    lo, hi = np.percentile(image, [1, 99])
    return (float(lo), float(hi)) if hi > lo else (float(lo) - 1, float(lo) + 1)


def plot_picks(tomogram: np.ndarray, voxel_size: float, picks_xyz: np.ndarray,
               radius_vox: float, path: str | Path, title: str = "",
               truth_xyz: np.ndarray | None = None, truth_class: np.ndarray | None = None,
               n_slabs: int = 3, thickness: int | None = None) -> dict[str, int]:
    """Mean projections of ``n_slabs`` slabs of a tomogram with the picks drawn on them.

    ``tomogram`` is indexed ``z, y, x`` (a memory map is fine: only the slabs are read);
    ``picks_xyz`` and ``truth_xyz`` are ``(n, 3)`` voxel coordinates ``x, y, z`` of that
    tomogram. A pick is a circle of the particle radius, a true particle a cross coloured by
    class; each is drawn on the slab holding its centre. Slabs are one particle diameter
    thick unless ``thickness`` (voxels) is given. Returns the counts drawn.
    """
    plt = _pyplot()
    from matplotlib.collections import PatchCollection
    from matplotlib.lines import Line2D
    from matplotlib.patches import Circle

    nz, ny, nx = tomogram.shape
    picks = np.asarray(picks_xyz, dtype=np.float64).reshape(-1, 3)
    truth = None if truth_xyz is None else np.asarray(truth_xyz, dtype=np.float64).reshape(-1, 3)
    if truth is not None:
        truth_class = (np.zeros(len(truth), int) if truth_class is None
                       else np.asarray(truth_class).astype(int))
    if thickness is None:
        thickness = max(1, round(2 * radius_vox))
    slabs = slab_bounds(nz, thickness, n_slabs)
    def colour(c: int) -> str:  # true classes: no yellow or orange, the colour of the picks
        return _TRUTH_COLOURS[(int(c) - 1) % len(_TRUTH_COLOURS)]

    panel_h = 4.2 * min(2.0, max(0.5, ny / nx))
    fig, axes = plt.subplots(1, len(slabs), figsize=(4.4 * len(slabs), panel_h + 0.9),
                             squeeze=False)
    shown = {"picks": 0, "truth": 0, "picks_near": 0}
    classes = [] if truth is None else sorted(set(truth_class.tolist()))
    for ax, (z0, z1) in zip(axes[0], slabs, strict=True):
        image = np.asarray(tomogram[z0:z1], dtype=np.float32).mean(axis=0)
        lo, hi = _stretch(image)
        ax.imshow(image, cmap="gray", vmin=lo, vmax=hi, origin="lower", interpolation="nearest")
        # centre in the slab: full markers; centre outside but within a particle radius of
        # it (the particle still cuts the slab): dashed circles and small crosses
        sel = in_slab(picks[:, 2], z0, z1)
        near = in_slab(picks[:, 2], z0 - radius_vox, z1 + radius_vox) & ~sel
        for m, style, lw in [(sel, "solid", 1.3), (near, "dashed", 0.9)]:
            ax.add_collection(PatchCollection(
                [Circle((x, y), radius_vox) for x, y in picks[m, :2]], facecolor="none",
                edgecolor="#FFC20A", linewidth=lw, linestyle=style))
        shown["picks"] += int(sel.sum())
        shown["picks_near"] += int(near.sum())
        n_truth = 0
        if truth is not None:
            tsel = in_slab(truth[:, 2], z0, z1)
            tnear = in_slab(truth[:, 2], z0 - radius_vox, z1 + radius_vox) & ~tsel
            for c in classes:
                m = truth_class == c
                ax.plot(truth[m & tsel, 0], truth[m & tsel, 1], "+", ms=9, mew=1.6,
                        color=colour(c))
                ax.plot(truth[m & tnear, 0], truth[m & tnear, 1], "+", ms=5, mew=1.0,
                        color=colour(c))
            n_truth = int(tsel.sum())
            shown["truth"] += n_truth
        ax.set_xlim(-0.5, nx - 0.5)
        ax.set_ylim(-0.5, ny - 0.5)
        ax.set_xlabel("x (voxels)")
        ax.set_ylabel("y (voxels)")
        label = f"z {z0}–{z1 - 1}: {int(sel.sum())} picks"
        ax.set_title(label + (f", {n_truth} true" if truth is not None else ""), fontsize=9)
    handles = [Line2D([], [], ls="", marker="o", mfc="none", mec="#FFC20A", ms=9,
                      label="pick (circle: particle radius)"),
               Line2D([], [], ls="--", lw=0.9, color="#FFC20A",
                      label="dashed / small: centre within a radius outside the slab")]
    handles += [Line2D([], [], ls="", marker="+", ms=9, mew=1.6, color=colour(c),
                       label="true particle" + (f", class {c}" if len(classes) > 1 else ""))
                for c in classes]
    fig.legend(handles=handles, loc="lower center", ncol=min(4, len(handles)), fontsize=8,
               frameon=False)
    head = f"{title}: " if title else ""
    fig.suptitle(f"{head}{shown['picks']} of {len(picks)} picks on {len(slabs)} slabs "
                 f"({thickness} voxels of {voxel_size:g} Å, mean projection)", fontsize=10)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    _save(fig, path)
    plt.close(fig)
    return shown


# ------------------------------------------------------------------- central slices of maps
def plot_central_slices(maps: list[tuple[str, np.ndarray, float]], path: str | Path,
                        title: str = "") -> None:
    """One row per map: the three orthogonal central slices (xy, xz, yz) of a ``z, y, x``
    volume, each on its own grey scale (1st–99th percentile). ``maps``: (name, volume,
    voxel size in Å)."""
    plt = _pyplot()
    if not maps:
        raise ValueError("no maps to plot")
    fig, axes = plt.subplots(len(maps), 3, figsize=(8.4, 2.9 * len(maps) + 0.5), squeeze=False)
    for row, (name, vol, vs) in zip(axes, maps, strict=True):
        vol = np.asarray(vol, dtype=np.float32)
        nz, ny, nx = vol.shape
        views = [("xy (central z)", vol[nz // 2], "x", "y", (nx, ny)),
                 ("xz (central y)", vol[:, ny // 2, :], "x", "z", (nx, nz)),
                 ("yz (central x)", vol[:, :, nx // 2], "y", "z", (ny, nz))]
        for ax, (plane, img, xl, yl, (w, h)) in zip(row, views, strict=True):
            lo, hi = _stretch(img)
            ax.imshow(img, cmap="gray", vmin=lo, vmax=hi, origin="lower",
                      extent=(0, w * vs / 10, 0, h * vs / 10))
            ax.set_xlabel(f"{xl} (nm)")
            ax.set_ylabel(f"{yl} (nm)")
            ax.set_title(f"{name}: {plane}", fontsize=9)
    if title:
        fig.suptitle(title, fontsize=11)
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
