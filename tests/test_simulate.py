"""tomoclust.simulate: crowded tomograms and subtomogram sets with ground truth.

The SNR is checked independently of how the simulator computes it: the same simulation is run
twice with the same seed for everything except the noise (a random generator whose
``standard_normal``, the only noise source, draws from a second stream), and the SNR is
estimated from the two realisations ``a = s + n1``, ``b = s + n2`` as
``cov(a, b) / (var(a) - cov(a, b))``.
"""

from __future__ import annotations

import contextlib
import itertools

import numpy as np
import pytest
import tomoclust.simulate.subtomograms as simulate_module
from tomoclust import TomoclustError
from tomoclust.numerics.ctf import ctf_grid
from tomoclust.numerics.fourier import wedge_mask
from tomoclust.numerics.rotations import relion_matrix, rotate_volume
from tomoclust.simulate.density import fit_box
from tomoclust.simulate.subtomograms import simulate_subtomograms
from tomoclust.simulate.tomograms import CtfSettings, Template, TomogramSettings, simulate_tomogram

TRUTH_COLUMNS = [
    "rlnTomoName", "rlnCoordinateX", "rlnCoordinateY", "rlnCoordinateZ",
    "rlnCenteredCoordinateXAngst", "rlnCenteredCoordinateYAngst", "rlnCenteredCoordinateZAngst",
    "rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnClassNumber", "tclTemplateName",
    "tclSnrNominal", "tclSnrMeasured",
]


def _blobs(box, parts):
    """Sum of Gaussian blobs ``(weight, sigma, (x, y, z) offset from d // 2)``."""
    zz, yy, xx = np.indices((box,) * 3, dtype=np.float64) - box // 2
    vol = np.zeros((box,) * 3)
    for w, s, (x, y, z) in parts:
        vol += w * np.exp(-((xx - x) ** 2 + (yy - y) ** 2 + (zz - z) ** 2) / (2 * s * s))
    return vol.astype(np.float32)


def _chiral(box=24):
    """A chiral template: four blobs of different weights on the corners of a tetrahedron
    (its mirror image correlates with it by only ~0.7)."""
    return _blobs(box, [(1.0, 1.3, (-2, -1, -1)), (0.9, 1.3, (4, -1, -1)),
                        (0.7, 1.3, (-2, 4, -1)), (0.5, 1.3, (-2, -1, 3))])


@pytest.fixture(scope="module")
def templates():
    big = Template("big", 1, _chiral(24))
    small = Template("small", 2, _blobs(16, [(1.0, 1.3, (0, 0, 0))]))
    return [big, small]


class _SplitNoise(np.random.Generator):
    """A generator that draws ``standard_normal`` (the simulators' noise) from its own stream."""

    def __init__(self, seed, noise_seed):
        super().__init__(np.random.PCG64(seed))
        self._noise = np.random.Generator(np.random.PCG64(noise_seed))

    def standard_normal(self, *args, **kwargs):
        return self._noise.standard_normal(*args, **kwargs)


@contextlib.contextmanager
def _noise_seed(noise_seed):
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(simulate_module.np.random, "default_rng",
                   lambda seed=None: _SplitNoise(seed, noise_seed))
        yield


def _snr_from_realisations(xs):
    """SNR from realisations ``s + n_k`` of one signal: mean pairwise covariance (the signal
    variance) over mean variance minus it (the noise variance)."""
    xs = [np.asarray(x, dtype=np.float64).ravel() for x in xs]
    xs = [x - x.mean() for x in xs]
    var = np.mean([np.mean(x * x) for x in xs])
    cov = np.mean([np.mean(a * b) for a, b in itertools.combinations(xs, 2)])
    return cov / (var - cov)


def _spec(**kw):
    base = dict(name="t01", shape=(32, 64, 64), voxel_size=10.0, counts={"big": 6, "small": 8},
                snr=0.5, seed=3)
    base.update(kw)
    return TomogramSettings(**base)


# ------------------------------------------------------------------------- tomogram mode
@pytest.mark.parametrize(("snr", "region"), [(0.1, "particles"), (1.0, "particles"),
                                             (0.3, "volume")])
def test_tomogram_snr_from_noise_realisations(templates, snr, region):
    spec = _spec(snr=snr, snr_region=region, shape=(32, 96, 96), counts={"big": 12, "small": 20})
    runs = []
    for noise_seed in range(101, 107):  # six realisations: ~4 % sd of the estimate at SNR 0.1
        with _noise_seed(noise_seed):
            runs.append(simulate_tomogram(templates, spec))
    r1, r2 = runs[:2]
    # the same particles, the same orientations; only the noise differs
    np.testing.assert_array_equal(r1.labels, r2.labels)
    np.testing.assert_allclose(r1.truth[["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]],
                               r2.truth[["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]])
    assert not np.allclose(r1.tomogram, r2.tomogram)
    assert r1.info["snr_measured"] == pytest.approx(snr, rel=1e-4)
    assert r1.info["snr_region"] == region
    if region == "particles":
        sel = (r1.labels >= 1) & (r1.labels <= len(templates))
    else:
        sel = np.ones(r1.labels.shape, dtype=bool)
    est = _snr_from_realisations([r.tomogram[sel] for r in runs])
    assert est == pytest.approx(snr, rel=0.15)


def test_tomogram_snr_region_matters(templates):
    """The SNR over the whole (mostly empty) volume is lower than over the particles."""
    res = simulate_tomogram(templates, _spec(snr=0.5))
    assert res.info["snr_measured_whole_volume"] < res.info["snr_measured"]


def test_tomogram_truth_table_and_counts(templates):
    res = simulate_tomogram(templates, _spec())
    truth = res.truth
    assert list(truth.columns) == TRUTH_COLUMNS
    assert (truth["rlnTomoName"] == "t01").all()
    assert res.info["counts_placed"] == {"big": 6, "small": 8}
    assert truth["rlnClassNumber"].value_counts().to_dict() == {1: 6, 2: 8}
    assert set(truth.loc[truth["rlnClassNumber"] == 1, "tclTemplateName"]) == {"big"}
    assert (truth["tclSnrNominal"] == 0.5).all()
    assert res.tomogram.shape == (32, 64, 64) and res.tomogram.dtype == np.float32
    assert res.labels.shape == (32, 64, 64) and res.labels.dtype == np.uint8
    assert res.info["labels"] == {"big": 1, "small": 2, "membrane": 3, "gold": 4}
    # coordinates: voxels (x, y, z) inside the volume, centred Å consistent with them
    xyz = truth[["rlnCoordinateX", "rlnCoordinateY", "rlnCoordinateZ"]].to_numpy()
    assert np.all(xyz >= 0) and np.all(xyz < np.array([64, 64, 32]))
    cen = truth[[f"rlnCenteredCoordinate{a}Angst" for a in "XYZ"]].to_numpy()
    np.testing.assert_allclose(cen, (xyz - np.array([32, 32, 16])) * 10.0, atol=1e-9)


def test_tomogram_particles_do_not_overlap(templates):
    res = simulate_tomogram(templates, _spec(counts={"big": 8, "small": 12}))
    truth = res.truth
    radius = {t.class_number: t.radius for t in templates}
    xyz = truth[["rlnCoordinateX", "rlnCoordinateY", "rlnCoordinateZ"]].to_numpy()
    r = truth["rlnClassNumber"].map(radius).to_numpy()
    gap = 10.0 / 10.0  # spec.gap_angst / voxel_size
    d = np.linalg.norm(xyz[:, None] - xyz[None], axis=-1)
    need = r[:, None] + r[None] + gap
    off = ~np.eye(len(xyz), dtype=bool)
    assert np.all(d[off] >= need[off] - 1e-9)
    # every labelled voxel lies within its class's radius (+1 voxel) of a particle of that class
    for cls in (1, 2):
        vox = np.argwhere(res.labels == cls)[:, ::-1]  # xyz
        centres = xyz[truth["rlnClassNumber"].to_numpy() == cls]
        nearest = np.linalg.norm(vox[:, None] - centres[None], axis=-1).min(1)
        assert nearest.max() <= radius[cls] + 1.0


def test_tomogram_truth_angles_describe_the_placed_particles(templates):
    """Rotating the template by the truth angles reproduces each particle's label mask.

    The template is chiral, so a reflection (improper rotation) or a transposed convention
    would give a different mask.
    """
    res = simulate_tomogram(templates, _spec(counts={"big": 5}))
    big = templates[0]
    b = big.density.shape[0]
    thr = 0.05 * float(big.density.max())
    mats = relion_matrix(res.truth[["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]].to_numpy())
    assert np.allclose(np.linalg.det(mats), 1.0)
    flip = np.diag([1.0, 1.0, -1.0])
    padded = np.pad(res.labels, b, constant_values=255)  # boxes may reach past the faces
    centres = res.truth[["rlnCoordinateZ", "rlnCoordinateY", "rlnCoordinateX"]].to_numpy(int)
    offsets = np.indices((b, b, b)).reshape(3, -1).T - b // 2
    for i, m in enumerate(mats):
        c = centres[i]
        sl = tuple(slice(ci + b - b // 2, ci + b - b // 2 + b) for ci in c)
        box = padded[sl].ravel()
        # this particle's own voxels: nearer to its centre than to any other particle's
        pos = c + offsets
        d = np.linalg.norm(pos[:, None] - centres[None], axis=-1)
        own = (d.argmin(1) == i) & (box != 255)
        labels = box[own] == 1

        def iou(mat, own=own, labels=labels):
            mask = (rotate_volume(big.density, mat, order=1) > thr).ravel()[own]
            return (mask & labels).sum() / (mask | labels).sum()

        assert iou(m) > 0.95
        assert iou(m @ flip) < 0.85  # a mirror image would not fit
        assert iou(m.T) < 0.85 or np.allclose(m, m.T, atol=0.05)


def test_tomogram_particles_are_dark(templates):
    """Underfocus CTF: protein (positive density) comes out darker than the background."""
    res = simulate_tomogram(templates, _spec(snr=50.0))
    inside = (res.labels >= 1) & (res.labels <= 2)
    assert res.tomogram[inside].mean() < res.tomogram[~inside].mean()


def test_tomogram_is_reproducible_and_seeded(templates):
    a = simulate_tomogram(templates, _spec(seed=7))
    b = simulate_tomogram(templates, _spec(seed=7))
    c = simulate_tomogram(templates, _spec(seed=8))
    np.testing.assert_allclose(a.tomogram, b.tomogram, atol=1e-6)
    assert not np.array_equal(a.labels, c.labels)


def test_tomogram_crowding_and_gold(templates):
    res = simulate_tomogram(templates, _spec(shape=(24, 32, 32), counts={"big": 40, "small": 2},
                                             gold_beads=1, snr=1.0))
    placed = res.info["counts_placed"]
    assert placed["big"] < 40  # no room for all of them
    assert res.info["counts_requested"] == {"big": 40, "small": 2}
    assert (res.truth["rlnClassNumber"] == 1).sum() == placed["big"]
    assert res.info["n_particles"] == len(res.truth)


def test_tomogram_gold_bead_label(templates):
    res = simulate_tomogram(templates, _spec(shape=(32, 64, 64), counts={"small": 2},
                                             gold_beads=1))
    assert (res.labels == 4).any()  # gold label = number of classes + 2
    assert len(res.truth) == 2


def test_tomogram_errors(templates):
    with pytest.raises(TomoclustError, match="unknown templates"):
        simulate_tomogram(templates, _spec(counts={"nope": 1}))
    with pytest.raises(TomoclustError, match="snr_region"):
        simulate_tomogram(templates, _spec(snr_region="everywhere"))
    with pytest.raises(TomoclustError, match="no particle"):
        simulate_tomogram(templates, _spec(counts={"big": 0}))


# ---------------------------------------------------------------------- subtomogram mode
def _subtomo(templates, **kw):
    args = dict(n_per_class=12, box=24, voxel_size=10.0, snr=0.5, convention="variance",
                seed=5, normalise=False)
    args.update(kw)
    return simulate_subtomograms(templates, **args)


def _two_realisations(templates, **kw):
    out = []
    for noise_seed in (11, 22):
        with _noise_seed(noise_seed):
            out.append(_subtomo(templates, **kw))
    a, b = out
    np.testing.assert_array_equal(a.truth["rlnClassNumber"], b.truth["rlnClassNumber"])
    np.testing.assert_allclose(a.truth["rlnAngleRot"], b.truth["rlnAngleRot"])
    return a, b


def _dataset_snr(a, b, has):
    """Mean over boxes of cov(a, b) / mean of (var(a) - cov(a, b)), like the definition."""
    covs, noise = [], []
    for x, y in zip(a[has], b[has]):
        c = np.cov(x.ravel().astype(np.float64), y.ravel().astype(np.float64))
        covs.append(c[0, 1])
        noise.append(0.5 * (c[0, 0] + c[1, 1]) - c[0, 1])
    return np.mean(covs) / np.mean(noise)


@pytest.mark.parametrize("snr", [0.1, 1.0])
def test_subtomograms_variance_convention(templates, snr):
    a, b = _two_realisations(templates, snr=snr, convention="variance")
    assert a.info["snr_measured"] == pytest.approx(snr, rel=0.02)
    assert a.info["convention"] == "variance"
    assert (a.truth["tclSnrMeasured"] == a.info["snr_measured"]).all()
    has = a.truth["rlnClassNumber"].to_numpy() > 0
    assert _dataset_snr(a.stack, b.stack, has) == pytest.approx(snr, rel=0.10)


def test_subtomograms_aitom_convention_measures_below_nominal(templates):
    a, b = _two_realisations(templates, snr=0.5, convention="aitom")
    assert a.info["snr_measured"] < 0.5
    has = a.truth["rlnClassNumber"].to_numpy() > 0
    est = _dataset_snr(a.stack, b.stack, has)
    assert est < 0.5
    assert est == pytest.approx(a.info["snr_measured"], rel=0.15)


def test_subtomograms_truth_and_empty_class(templates):
    res = _subtomo(templates, n_per_class=5, include_empty=True, normalise=True, max_shift_vox=2)
    n = 3 * 5
    assert res.stack.shape == (n, 24, 24, 24) and res.stack.dtype == np.float32
    t = res.truth
    assert len(t) == n and res.info["n"] == n
    assert t["rlnClassNumber"].value_counts().to_dict() == {0: 5, 1: 5, 2: 5}
    assert set(t.loc[t["rlnClassNumber"] == 0, "tclTemplateName"]) == {"empty"}
    assert set(t.loc[t["rlnClassNumber"] == 2, "tclTemplateName"]) == {"small"}
    for col in ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "tclShiftX", "tclShiftY",
                "tclShiftZ", "tclSnrNominal", "tclSnrMeasured"):
        assert col in t.columns
    shifts = t[["tclShiftX", "tclShiftY", "tclShiftZ"]].to_numpy()
    assert np.abs(shifts).max() <= 2.0 and np.abs(shifts).max() > 0.5
    # classes are interleaved, not in blocks
    assert t["rlnClassNumber"].tolist() != sorted(t["rlnClassNumber"].tolist())
    # normalised boxes
    np.testing.assert_allclose(res.stack.mean(axis=(1, 2, 3)), 0.0, atol=1e-4)
    np.testing.assert_allclose(res.stack.std(axis=(1, 2, 3)), 1.0, atol=1e-3)


def test_subtomograms_truth_angles_and_shifts_describe_the_boxes(templates):
    """At high SNR every box is the template rotated by its truth angles, CTF- and
    wedge-filtered: the recorded angles and shifts are the ones applied."""
    box, vs = 24, 10.0
    res = _subtomo(templates, n_per_class=4, snr=1e4, max_shift_vox=1.5, normalise=False)
    ctf = CtfSettings()
    ctf3 = ctf_grid((box,) * 3, vs, rfft=True, **ctf.as_kwargs())
    wedge = wedge_mask((box,) * 3, -60, 60, rfft=True)
    dens = {t.class_number: fit_box(t.density, box) for t in templates}
    mats = relion_matrix(res.truth[["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]].to_numpy())
    shifts = res.truth[["tclShiftX", "tclShiftY", "tclShiftZ"]].to_numpy()

    def expected(cls, m, s):
        rot = rotate_volume(dens[cls], m, order=3, shift_xyz=s)
        return np.fft.irfftn(np.fft.rfftn(rot) * ctf3 * wedge, s=(box,) * 3, axes=(0, 1, 2))

    for i, cls in enumerate(res.truth["rlnClassNumber"]):
        got = res.stack[i].ravel()
        good = np.corrcoef(got, expected(cls, mats[i], shifts[i]).ravel())[0, 1]
        assert good > 0.99
        if cls == 1:  # chiral: the mirror image does not fit
            mirror = mats[i] @ np.diag([1.0, 1.0, -1.0])
            assert np.corrcoef(got, expected(cls, mirror, shifts[i]).ravel())[0, 1] < 0.9


def test_subtomograms_errors(templates):
    with pytest.raises(TomoclustError, match="convention"):
        _subtomo(templates, convention="loud")
    with pytest.raises(TomoclustError, match="SNR"):
        _subtomo(templates, snr=0.0)


def test_tomogram_settings_from_the_simulation_section(repo):
    import yaml

    sim = yaml.safe_load((repo / "tests" / "data" / "tiny.yaml").read_text())["simulation"]
    spec = TomogramSettings.from_config(sim, "sim02", ["3j9i", "4v1w"], seed=7)
    assert spec.name == "sim02" and spec.shape == (48, 96, 96) and spec.voxel_size == 10.0
    assert spec.counts == {"3j9i": 6, "4v1w": 6} and spec.seed == 7
    assert (spec.snr, spec.snr_region) == (0.5, "particles")
    assert (spec.tilt_min, spec.tilt_max, spec.tilt_step) == (-60.0, 60.0, 3.0)
    assert spec.ctf == CtfSettings(defocus_um=5.0, voltage_kv=300.0, cs_mm=2.7,
                                   amplitude_contrast=0.07)
    assert (spec.membranes, spec.gold_beads) == (0, 0)
