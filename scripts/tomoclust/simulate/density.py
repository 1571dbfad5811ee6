"""Density maps from atomic models (PDB/mmCIF via gemmi) or from MRC maps, at a voxel size.

At the 6–15 Å voxel sizes of cryo-ET the exact scattering model barely matters: each atom
contributes its atomic number (an estimate of its electron count), spread by trilinear
interpolation and a Gaussian low-pass to the requested resolution (default twice the voxel
size). Hydrogens and waters are left out.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import ndimage

from .. import TomoclustError
from ..formats.mrc import read_mrc
from ..numerics.fourier import fourier_resample

MODEL_SUFFIXES = (".pdb", ".ent", ".cif", ".mmcif")
MAP_SUFFIXES = (".mrc", ".map", ".rec")


def _suffix(path: Path) -> str:
    s = path.name.lower()
    return Path(s[:-3]).suffix if s.endswith(".gz") else Path(s).suffix


def load_atoms(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Atom positions ``(n, 3)`` (xyz, Å) and weights (atomic numbers) of the first model.

    Raises :class:`TomoclustError` for a file gemmi cannot read or that has no atoms.
    """
    import gemmi  # imported here: only steps that read atomic models need it

    p = Path(path)
    if not p.is_file():
        raise TomoclustError(f"atomic model {p}: file does not exist")
    try:
        st = gemmi.read_structure(str(p))
    except Exception as exc:
        raise TomoclustError(f"atomic model {p}: gemmi cannot read it ({exc})") from exc
    st.remove_hydrogens()
    st.remove_waters()
    if len(st) == 0:
        raise TomoclustError(f"atomic model {p}: contains no model")
    pos, wts = [], []
    for chain in st[0]:
        for res in chain:
            for atom in res:
                pos.append((atom.pos.x, atom.pos.y, atom.pos.z))
                wts.append(atom.element.atomic_number * atom.occ)
    if not pos:
        raise TomoclustError(f"atomic model {p}: contains no atoms")
    return np.asarray(pos, dtype=np.float64), np.asarray(wts, dtype=np.float64)


def atoms_to_density(positions: np.ndarray, weights: np.ndarray, voxel_size: float,
                     box: int | None = None, resolution: float | None = None) -> np.ndarray:
    """Rasterise atoms into a cubic ``(z, y, x)`` density, centred on the centre of mass.

    Parameters
    ----------
    positions
        ``(n, 3)`` xyz coordinates in Å.
    weights
        Per-atom weights (electrons).
    voxel_size
        Å per voxel.
    box
        Side of the cube in voxels; default fits the model with a margin (even size).
    resolution
        Low-pass resolution in Å (Gaussian whose amplitude is 1/2 there); default
        ``2 * voxel_size``.
    """
    pos = np.asarray(positions, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    com = (pos * w[:, None]).sum(0) / w.sum()
    rel = (pos - com) / voxel_size
    if box is None:
        extent = 2.0 * np.abs(rel).max() + 6
        box = int(np.ceil(extent / 2.0) * 2)
    centre = box // 2
    idx = rel + centre  # xyz voxel coordinates
    inside = np.all((idx >= 0) & (idx <= box - 1.000001), axis=1)
    idx, w = idx[inside], w[inside]
    base = np.floor(idx).astype(np.int64)
    frac = idx - base
    vol = np.zeros((box, box, box), dtype=np.float64)
    for dx in (0, 1):
        for dy in (0, 1):
            for dz in (0, 1):
                ww = (w * np.where(dx, frac[:, 0], 1 - frac[:, 0])
                      * np.where(dy, frac[:, 1], 1 - frac[:, 1])
                      * np.where(dz, frac[:, 2], 1 - frac[:, 2]))
                np.add.at(vol, (base[:, 2] + dz, base[:, 1] + dy, base[:, 0] + dx), ww)
    res = 2.0 * voxel_size if resolution is None else float(resolution)
    sigma_vox = res * np.sqrt(np.log(2.0) / 2.0) / np.pi / voxel_size
    vol = ndimage.gaussian_filter(vol, sigma_vox, mode="constant")
    return vol.astype(np.float32)


def map_to_density(path: str | Path, voxel_size: float, box: int | None = None) -> np.ndarray:
    """Read an MRC map and Fourier-resample it to ``voxel_size``, as a cube of side ``box``.

    The map is padded to a cube first (with its edge median), resampled, then centre-cropped
    or zero-padded to ``box``. The map's header voxel size is required.
    """
    data, vs = read_mrc(path, what="template map")
    n = max(data.shape)
    cube = np.full((n, n, n), np.median(data), dtype=np.float32)
    off = [(n - s) // 2 for s in data.shape]
    cube[off[0]:off[0] + data.shape[0], off[1]:off[1] + data.shape[1],
         off[2]:off[2] + data.shape[2]] = data
    n_out = max(2, round(n * vs / voxel_size))
    vol = fourier_resample(cube, (n_out,) * 3)
    return fit_box(vol, box) if box is not None else vol


def fit_box(volume: np.ndarray, box: int) -> np.ndarray:
    """Centre-crop or zero-pad a cube to side ``box`` keeping voxel ``d // 2`` at the centre."""
    n = volume.shape[0]
    out = np.zeros((box, box, box), dtype=np.float32)
    c_in, c_out = n // 2, box // 2
    lo = min(c_in, c_out)
    hi = min(n - c_in, box - c_out)
    sl_in = slice(c_in - lo, c_in + hi)
    sl_out = slice(c_out - lo, c_out + hi)
    out[sl_out, sl_out, sl_out] = volume[sl_in, sl_in, sl_in]
    return out


def template_density(path: str | Path, voxel_size: float, box: int | None = None,
                     resolution: float | None = None) -> np.ndarray:
    """Density of a template file (atomic model or MRC map) at ``voxel_size``."""
    p = Path(path)
    suf = _suffix(p)
    if suf in MODEL_SUFFIXES:
        pos, w = load_atoms(p)
        return atoms_to_density(pos, w, voxel_size, box=box, resolution=resolution)
    if suf in MAP_SUFFIXES:
        return map_to_density(p, voxel_size, box=box)
    raise TomoclustError(
        f"template {p}: unknown file type '{suf}' (expected an atomic model "
        f"{', '.join(MODEL_SUFFIXES)} or a map {', '.join(MAP_SUFFIXES)}, optionally .gz)"
    )


def bounding_radius(density: np.ndarray, fraction: float = 0.98) -> float:
    """Radius (voxels, about the centre ``d // 2``) enclosing ``fraction`` of the mass."""
    vol = np.clip(np.asarray(density, dtype=np.float64), 0, None)
    centre = np.array(vol.shape) // 2
    zz, yy, xx = np.indices(vol.shape)
    r = np.sqrt((zz - centre[0]) ** 2 + (yy - centre[1]) ** 2 + (xx - centre[2]) ** 2).ravel()
    order = np.argsort(r)
    cum = np.cumsum(vol.ravel()[order])
    if cum[-1] <= 0:
        return 0.0
    i = int(np.searchsorted(cum, fraction * cum[-1]))
    return float(r[order][min(i, r.size - 1)])
