"""Labelled simulated subtomogram sets for few-shot training and simulated support sets."""

from __future__ import annotations

import numpy as np
import pandas as pd

from .subtomograms import simulate_subtomograms


def simulate_labelled_set(templates, n_per_class: int, box: int, voxel_size: float,
                          snrs, ctf=None, tilt_min: float = -60.0, tilt_max: float = 60.0,
                          convention: str = "aitom", seed: int = 0):
    """Labelled subtomograms of ``templates`` (subtomogram mode: uniform proper rotations,
    3D CTF, missing wedge, noise), ``n_per_class`` per class at *each* SNR of ``snrs``.

    Returns ``(stack, truth)``: the truth table has ``rlnClassNumber`` (the templates'
    numbers), ``tclTemplateName`` and ``tclSnrNominal``; rows of all SNRs are concatenated.
    """
    stacks, tables = [], []
    for i, snr in enumerate(snrs):
        res = simulate_subtomograms(templates, n_per_class, box, voxel_size, float(snr),
                                    convention, tilt_min=tilt_min, tilt_max=tilt_max, ctf=ctf,
                                    seed=seed + 7919 * i)
        stacks.append(res.stack)
        tables.append(res.truth)
    return np.concatenate(stacks), pd.concat(tables, ignore_index=True)
