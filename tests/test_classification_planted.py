"""The invariant method with the shipped defaults on planted subtomogram sets: the number of
classes is neither split nor merged.

Two failure modes of earlier defaults (no re-centring; lowest BIC + merging of touching
mixture components) are pinned here:

* off-centre particles (±2 voxels, as DoG picks are) of five complexes of similar size at
  high SNR: the descriptors, expanded about the box centre, spread every class over several
  lumps, and the mixture split or confused them (K = 2..10 instead of 5); with re-centring
  but a consensus in 6 principal components only, two of them stayed joined (K = 4): they
  differ in the 7th–10th;
* a few hundred picked particles of five very different complexes (the demo's size) at SNR
  0.1: classes were merged (K = 3 or 4).
"""

from __future__ import annotations

import numpy as np
import pytest
import yaml
from tomoclust.cluster import cluster_features
from tomoclust.features.invariant import invariant_features
from tomoclust.numerics.metrics import hungarian_accuracy
from tomoclust.simulate.density import template_density
from tomoclust.simulate.subtomograms import simulate_subtomograms
from tomoclust.simulate.tomograms import Template

SIMILAR = ("1bxn.pdb.gz", "1qvr.pdb.gz", "3cf3.pdb.gz", "1u6g.pdb.gz", "3d2f.pdb.gz")
DIFFERENT = ("3jb9.cif.gz", "6s47.cif.gz", "3j9i.pdb.gz", "4v1w.cif.gz", "3cf3.pdb.gz")


def _defaults(repo, section: str) -> dict:
    """The settings a user gets: config.yaml over the schema's defaults."""
    schema = yaml.safe_load((repo / "schemas/config.schema.yaml").read_text())
    props = schema["properties"][section]["properties"]
    out = {k: v["default"] for k, v in props.items() if "default" in v}
    config = yaml.safe_load((repo / "config.yaml").read_text())
    return out | (config.get(section) or {})


def _classify(repo, stack: np.ndarray):
    inv = _defaults(repo, "invariant")
    cl = _defaults(repo, "clustering")
    feats = invariant_features(stack, inv["l_max"], inv["lowpass_vox"], radial=inv["radial"],
                               spectrum_components=inv["spectrum_components"],
                               centring=inv["centring"], noise_whitening=inv["noise_whitening"])
    return cluster_features(feats, cl["algorithm"], k=cl["k"], k_min=cl["k_min"],
                            k_max=cl["k_max"], pca_components=cl["pca_components"],
                            n_init=cl["n_init"], seed=0, stability_seeds=0,
                            merge_ratio=cl["merge_ratio"], merge_gap=cl["merge_gap"],
                            k_selection=cl["k_selection"],
                            consensus_components=cl["consensus_components"])


def _templates(repo, files):
    return [Template(f.split(".")[0], i + 1,
                     template_density(repo / "resources/structures" / f, 12.0, box=32))
            for i, f in enumerate(files)]


def test_off_centre_similar_sized_classes_at_high_snr_are_not_split(repo):
    data = simulate_subtomograms(_templates(repo, SIMILAR), 150, 32, 12.0, 100.0,
                                 max_shift_vox=2.0, seed=0)
    truth = data.truth["rlnClassNumber"].to_numpy()
    res = _classify(repo, data.stack)
    assert res.k == 5
    assert hungarian_accuracy(truth, res.labels) >= 0.9


@pytest.mark.parametrize("seed", [
    pytest.param(0, marks=pytest.mark.xfail(
        strict=True, reason="K = 4 (spliceosome and p97 joined): the consensus still merges "
        "two of these classes in 3 of 10 seeds at 55 per class (benchmarks/RESULTS.md, "
        "Robustness)")),
    1, 2])
def test_few_picked_particles_of_different_classes_are_not_merged(repo, seed):
    data = simulate_subtomograms(_templates(repo, DIFFERENT), 55, 32, 12.0, 0.1,
                                 max_shift_vox=2.0, seed=seed)
    truth = data.truth["rlnClassNumber"].to_numpy()
    res = _classify(repo, data.stack)
    assert res.k >= 5  # no two true classes share a class
    assert hungarian_accuracy(truth, res.labels) >= 0.6
