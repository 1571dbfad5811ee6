"""tomoclust: find which macromolecules are in cryo-electron tomograms, without labels.

The library behind the Snakemake workflow, in rooms. Lower rooms never import higher ones
(checked by the import-linter contract in pyproject.toml):

- :mod:`tomoclust.formats`    files: ``atomic`` (temp file + rename for every output, JSON/TSV/
                              text/npy), ``mrc`` volumes, ``stacks`` (MRC stacks of subtomograms),
                              ``star`` (RELION 5 tables; where ``zyx`` arrays meet ``xyz``
                              tables), ``starhead`` (STAR block and column names, pure Python),
                              ``image_names`` (``N@stack``), ``sheet`` (the tomogram sheet)
- :mod:`tomoclust.numerics`   arrays in, arrays out (no files, no torch): ``fourier``,
                              ``rotations`` (RELION Euler angles, SO(3) grids), ``ctf``,
                              ``tilt_geometry`` (projection, weighted back-projection),
                              ``class_maps`` (masks, FSC, resolution), ``metrics``,
                              ``centring`` (centre of mass, Fourier shift)
- :mod:`tomoclust.simulate`   ``density`` (atomic models and maps at a voxel size),
                              ``tomograms`` (crowded tomograms with ground truth),
                              ``subtomograms``, ``labelled_sets`` (few-shot training sets)
- stages: :mod:`tomoclust.ingest` (validate and normalise user tomograms),
  :mod:`tomoclust.pick` (difference-of-Gaussians picking), :mod:`tomoclust.extract`
  (extraction, Fourier resampling, stacking), :mod:`tomoclust.cluster` (GMM + BIC, k-means),
  :mod:`tomoclust.evaluate` (picking against ground truth)
- :mod:`tomoclust.external`   other tools' output in: ``names`` (columns, tomogram names,
                              class numbers as truth), ``coordinates`` (RELION 3/4/5,
                              pytom-match-pick, TomoTwin), ``subtomograms``; copick projects
                              in and out: ``copick_project`` (needs the optional copick)
- :mod:`tomoclust.features`   feature learning (torch): ``networks``, ``train``, ``augment``,
                              ``invariant``, ``centring`` (alignment, whitening), ``disca``,
                              ``autoencoder``, ``fewshot`` (+ the
                              torch-free ``fewshot_support``), ``transfer`` (+ the torch-free
                              ``transfer_settings``), ``encoder`` (the shipped pretrained
                              encoder) and ``pretrain`` (its corpus and recipe)
- :mod:`tomoclust.average`    reference-free alignment and averaging with gold-standard FSC
- :mod:`tomoclust.report`     ``plots`` (matplotlib figures), ``tables`` (HTML tables)
- :mod:`tomoclust.rule`       the rule scripts' glue (logging, device, particle loading, run
                              info); library modules never import it

Conventions: arrays are ``(z, y, x)``; tables and files speak ``x, y, z``; lengths in
configuration and tables are in Ångström, voxels only inside functions that say so.
"""

__version__ = "0.1.0"


class TomoclustError(Exception):
    """An error a user can act on: the message names the file and the problem."""
