"""Re-centring of subtomograms (numerics.centring: arrays; features.centring: tensors)
and noise pre-whitening."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tomoclust.features.centring import (
    align_offsets,
    com_offsets,
    fourier_shift,
    noise_spectrum,
    recentre,
    whiten,
)


def _blob(d, centre_zyx, sigma=2.5, sign=-1.0):
    zz, yy, xx = np.indices((d, d, d), dtype=np.float64)
    c = np.asarray(centre_zyx, dtype=np.float64)
    r2 = (zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2
    return (sign * np.exp(-r2 / (2 * sigma**2))).astype(np.float32)


def test_fourier_shift_moves_content_and_is_inverted_by_the_opposite_shift(rng):
    v = torch.as_tensor(_blob(32, (16, 16, 16))[None])
    s = torch.tensor([[2.0, -1.5, 3.0]])
    moved = fourier_shift(v, s).numpy()[0]
    np.testing.assert_allclose(moved, _blob(32, (18, 14.5, 19)), atol=2e-3)
    back = fourier_shift(fourier_shift(v, s), -s)
    np.testing.assert_allclose(back.numpy(), v.numpy(), atol=1e-5)


@pytest.mark.parametrize("contrast,sign", [("dark", -1.0), ("bright", 1.0)])
def test_com_offsets_find_planted_off_centre_blobs_in_noise(rng, contrast, sign):
    d = 32
    true = rng.uniform(-3, 3, size=(40, 3))
    vols = np.stack([_blob(d, 16 + t, sign=sign) for t in true])
    vols += 0.05 * rng.standard_normal(vols.shape).astype(np.float32)
    est = com_offsets(torch.as_tensor(vols), contrast=contrast).numpy()
    err = np.sqrt(((est - true) ** 2).sum(1))
    assert np.sqrt(np.mean(err**2)) < 0.25, err
    # without a particle to find, the estimate stays put to within the noise
    assert np.abs(est).mean() < np.abs(true).mean()
    with pytest.raises(ValueError, match="contrast"):
        com_offsets(torch.as_tensor(vols), contrast="grey")


def test_align_offsets_find_planted_blobs():
    d = 32
    rng = np.random.default_rng(3)
    true = rng.uniform(-3, 3, size=(30, 3))
    vols = np.stack([_blob(d, 16 + t) for t in true])
    est = align_offsets(torch.as_tensor(vols), iterations=3).numpy()
    # alignment to the average finds positions up to one global offset (the reference's)
    rel = est - true
    rel -= rel.mean(0)
    assert np.sqrt((rel**2).sum(1).mean()) < 0.3


def test_recentre_puts_the_particle_on_the_box_centre(rng):
    true = rng.uniform(-2.5, 2.5, size=(20, 3))
    vols = np.stack([_blob(32, 16 + t) for t in true])
    out, off = recentre(vols, "com")
    assert out.shape == vols.shape and out.dtype == np.float32
    np.testing.assert_allclose(off, true, atol=0.3)
    centred = _blob(32, (16, 16, 16))
    for v in out:
        assert np.corrcoef(v.ravel(), centred.ravel())[0, 1] > 0.99
    with pytest.raises(ValueError, match="centring method"):
        recentre(vols, "mass")


def test_noise_spectrum_from_corners_matches_the_true_spectrum_and_whitening_flattens_it(rng):
    d = 32
    white = rng.standard_normal((200, d, d, d)).astype(np.float32)
    k = np.sqrt(sum(g**2 for g in np.meshgrid(*(np.fft.fftfreq(d),) * 3, indexing="ij")))
    colour = np.exp(-(k / 0.12) ** 2) + 0.05  # strong low-frequency noise, white floor
    noise = np.fft.ifftn(np.fft.fftn(white, axes=(1, 2, 3)) * colour, axes=(1, 2, 3)).real
    noise = noise.astype(np.float32)
    est = noise_spectrum(noise)
    true = noise_spectrum(noise, empty=noise)  # the whole box is noise
    # the masked estimate has the same shape (ratio of low to high frequency) as the truth
    assert est[1] / est[-2] == pytest.approx(true[1] / true[-2], rel=0.3)
    assert true[1] / true[-2] > 50
    flat = noise_spectrum(whiten(noise, est), empty=None)
    assert flat[1:-1].max() / flat[1:-1].min() < 2.0


def test_array_and_tensor_centring_agree_and_extraction_needs_no_torch(rng):
    """The array code (used by extraction, which runs without torch) and the tensor code
    give the same shifts and offsets, to float32 rounding."""
    import subprocess
    import sys

    from tomoclust.numerics import centring as arrays

    true = rng.uniform(-3, 3, size=(12, 3))
    vols = np.stack([_blob(32, 16 + t) for t in true])
    vols += 0.05 * rng.standard_normal(vols.shape).astype(np.float32)
    s = rng.uniform(-2, 2, size=(12, 3)).astype(np.float32)
    np.testing.assert_allclose(arrays.fourier_shift(vols, s),
                               fourier_shift(torch.as_tensor(vols), torch.as_tensor(s)).numpy(),
                               atol=1e-5)
    out, off = recentre(vols, "com")
    out2, off2 = arrays.recentre_com(vols, batch_size=5)
    np.testing.assert_array_equal(off, off2)
    np.testing.assert_array_equal(out, out2)
    np.testing.assert_allclose(off, true, atol=0.3)
    # importing the extraction module (and calling its re-centring) loads no torch
    code = ("import sys, numpy as np; from tomoclust.extract import extract_recentred; "
            "from tomoclust.numerics.centring import recentre_com; "
            "recentre_com(np.zeros((2, 8, 8, 8), np.float32)); "
            "assert 'torch' not in sys.modules, 'torch imported'")
    env_path = str(__import__("pathlib").Path(__file__).parents[1] / "scripts")
    subprocess.run([sys.executable, "-c", code], check=True,
                   env={"PYTHONPATH": env_path, "PATH": "/usr/bin:/bin"})
