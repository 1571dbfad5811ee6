"""Density maps from atomic models (PDB/mmCIF via gemmi) or from MRC maps, at a voxel size.

At the 6–15 Å voxel sizes of cryo-ET the exact scattering model barely matters: each atom
contributes its atomic number (an estimate of its electron count), spread by trilinear
interpolation and a Gaussian low-pass to the requested resolution (default twice the voxel
size). Hydrogens and waters are left out.
"""

from __future__ import annotations

from collections.abc import Sequence
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


def _read_model(path: str | Path):
    """The gemmi structure of an atomic model file, hydrogens and waters removed; a clear
    error for a missing or unreadable file or one without a model."""
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
    return st


def load_atoms(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Atom positions ``(n, 3)`` (xyz, Å) and weights (atomic numbers) of the first model.

    Raises :class:`TomoclustError` for a file gemmi cannot read or that has no atoms.
    """
    st = _read_model(path)
    pos, wts = [], []
    for chain in st[0]:
        for res in chain:
            for atom in res:
                pos.append((atom.pos.x, atom.pos.y, atom.pos.z))
                wts.append(atom.element.atomic_number * atom.occ)
    if not pos:
        raise TomoclustError(f"atomic model {Path(path)}: contains no atoms")
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


# ------------------------------------------------------- second convention: electron potential
#: Five-Gaussian fits ``f(s) = Σ a_i exp(-b_i s²)`` (s = sin θ / λ in 1/Å, f in Å) of the elastic
#: electron scattering factors of neutral atoms, for 0 ≤ s ≤ 6 1/Å: Peng, Ren, Dudarev & Whelan
#: (1996), "Robust parameterization of elastic and absorptive electron atomic scattering
#: factors", Acta Cryst. A52, 257–276 (table of neutral-atom parameters). Elements without an
#: entry are scaled from carbon by atomic number (``peng_parameters``).
PENG_1996 = {
    "H": ((0.0088, 0.0449, 0.1481, 0.2356, 0.0914), (0.1152, 1.0867, 4.9755, 16.5591, 43.2743)),
    "C": ((0.0489, 0.2091, 0.7537, 1.1420, 0.3555), (0.1140, 1.0825, 5.4281, 17.8811, 51.1341)),
    "N": ((0.0267, 0.1328, 0.5301, 1.1020, 0.4215), (0.0541, 0.5165, 2.8207, 10.6297, 34.3764)),
    "O": ((0.0365, 0.1729, 0.5805, 0.8814, 0.3121), (0.0652, 0.6184, 2.9449, 9.6298, 28.2194)),
    "S": ((0.0915, 0.4312, 1.0847, 2.4671, 1.0852), (0.0838, 0.7788, 4.3462, 15.5846, 44.6365)),
    "P": ((0.1005, 0.4615, 1.0663, 2.5854, 1.2725), (0.0977, 0.9084, 4.9654, 18.5471, 54.3648)),
    "Na": ((0.1260, 0.6442, 0.8893, 1.8197, 1.2988), (0.1684, 1.7150, 8.8386, 50.8265, 147.2073)),
    "Mg": ((0.1130, 0.5575, 0.9046, 2.1580, 1.4735), (0.1356, 1.3579, 6.9255, 32.3165, 92.1138)),
    "Cl": ((0.0799, 0.3891, 1.0037, 2.3332, 1.0507), (0.0694, 0.6443, 3.5351, 12.5058, 35.8633)),
    "K": ((0.2149, 0.8703, 2.4999, 2.3591, 3.0318), (0.1660, 1.6906, 8.7447, 46.7825, 165.6923)),
}


def peng_parameters(element: str, atomic_number: int) -> tuple[np.ndarray, np.ndarray]:
    """``(a, b)`` five-Gaussian parameters of ``element`` (:data:`PENG_1996`); an element
    without an entry gets carbon's ``b`` and ``a`` scaled by ``atomic_number / 6``."""
    key = element.capitalize()
    if key in PENG_1996:
        a, b = PENG_1996[key]
    else:
        a = tuple(x * atomic_number / 6.0 for x in PENG_1996["C"][0])
        b = PENG_1996["C"][1]
    return np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)


def load_atoms_elements(path: str | Path) -> tuple[np.ndarray, list[str], np.ndarray,
                                                  np.ndarray, np.ndarray]:
    """Positions ``(n, 3)`` (xyz Å), element symbols, atomic numbers, occupancies and
    isotropic B-factors (Å²) of the first model, hydrogens and waters left out."""
    st = _read_model(path)
    pos, el, z, occ, bf = [], [], [], [], []
    for chain in st[0]:
        for res in chain:
            for atom in res:
                pos.append((atom.pos.x, atom.pos.y, atom.pos.z))
                el.append(atom.element.name)
                z.append(atom.element.atomic_number)
                occ.append(atom.occ)
                bf.append(atom.b_iso)
    if not pos:
        raise TomoclustError(f"atomic model {Path(path)}: contains no atoms")
    return (np.asarray(pos, dtype=np.float64), el, np.asarray(z), np.asarray(occ, float),
            np.asarray(bf, float))


def atoms_to_potential(positions: np.ndarray, elements: Sequence[str], atomic_numbers: np.ndarray,
                       voxel_size: float, box: int | None = None,
                       occupancies: np.ndarray | None = None, bfactors: np.ndarray | None = None,
                       bfactor_default: float = 50.0, centre: str = "mass") -> np.ndarray:
    """Projected-free 3-D electron potential of atoms, integrated over every voxel.

    An independent convention beside :func:`atoms_to_density`: each atom is its five-Gaussian
    electron scattering factor (:data:`PENG_1996`), broadened by its B-factor, whose inverse
    Fourier transform is ``Σ_i a_i (4π/(b_i+B))^{3/2} exp(−4π² r²/(b_i+B))``; each Gaussian is
    integrated exactly over every voxel (a product of error-function differences per axis),
    so the map holds the voxel averages of the potential, in units of ``f`` (Å) per voxel,
    and the sum over the map is ``Σ_atoms occupancy · Σ_i a_i`` (for atoms inside the box).
    No low-pass is applied beyond the voxel integration and the B-factors.

    ``bfactors`` of 0 or below (and ``None``) are replaced by ``bfactor_default`` (Å²).
    ``centre="mass"`` puts the centre of mass (weighted by ``Σ a_i``) at voxel ``box // 2``.
    """
    from scipy.special import erf

    pos = np.asarray(positions, dtype=np.float64)
    n = len(pos)
    occ = np.ones(n) if occupancies is None else np.asarray(occupancies, dtype=np.float64)
    bf = np.full(n, float(bfactor_default)) if bfactors is None else \
        np.where(np.asarray(bfactors, float) > 0, np.asarray(bfactors, float), bfactor_default)
    params: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    a = np.empty((n, 5))
    b = np.empty((n, 5))
    for i, (e, zz) in enumerate(zip(elements, atomic_numbers, strict=True)):
        if e not in params:
            params[e] = peng_parameters(e, int(zz))
        a[i], b[i] = params[e]
    a *= occ[:, None]
    weight = a.sum(axis=1)
    if centre != "mass":
        raise ValueError(f"centre must be 'mass', not {centre!r}")
    com = (pos * weight[:, None]).sum(0) / weight.sum()
    rel = (pos - com) / voxel_size  # voxels, relative to the centre
    if box is None:
        box = int(np.ceil((2.0 * np.abs(rel).max() + 6) / 2.0) * 2)
    c = box // 2
    x = rel + c  # voxel coordinates (voxel j covers [j − 0.5, j + 0.5))
    sig = np.sqrt((b + bf[:, None]) / (8.0 * np.pi**2)) / voxel_size  # (n, 5) voxels
    reach = int(np.ceil(4 * sig.max())) + 1
    base = np.round(x).astype(np.int64)  # (n, 3)
    offs = np.arange(-reach, reach + 1)
    vol = np.zeros((box + 2 * reach, box + 2 * reach, box + 2 * reach), dtype=np.float64)
    # per-axis integrals of a unit Gaussian over the voxels near the atom: (n, 5, 3, w)
    edges_lo = (base[:, None, :, None] + offs - 0.5) - x[:, None, :, None]
    s = np.sqrt(2.0) * sig[:, :, None, None]
    w1 = 0.5 * (erf((edges_lo + 1.0) / s) - erf(edges_lo / s))
    wx, wy, wz = w1[:, :, 0], w1[:, :, 1], w1[:, :, 2]  # (n, 5, w)
    kern = np.einsum("ng,ngk,ngj,ngi->nkji", a, wz, wy, wx)  # (n, w, w, w) z, y, x
    w = len(offs)
    zi = base[:, 2, None] + offs + reach
    yi = base[:, 1, None] + offs + reach
    xi = base[:, 0, None] + offs + reach
    ok = np.all((base >= -reach) & (base < box + reach), axis=1)
    for i in np.flatnonzero(ok):
        vol[zi[i, 0]:zi[i, 0] + w, yi[i, 0]:yi[i, 0] + w, xi[i, 0]:xi[i, 0] + w] += kern[i]
    return vol[reach:reach + box, reach:reach + box, reach:reach + box].astype(np.float32)


def template_potential(path: str | Path, voxel_size: float, box: int | None = None,
                       bfactor_default: float = 50.0) -> np.ndarray:
    """:func:`atoms_to_potential` of an atomic model file (B-factors from the file)."""
    pos, el, z, occ, bf = load_atoms_elements(path)
    return atoms_to_potential(pos, el, z, voxel_size, box=box, occupancies=occ, bfactors=bf,
                              bfactor_default=bfactor_default)
