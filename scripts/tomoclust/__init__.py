"""tomoclust: find which macromolecules are in cryo-electron tomograms, without labels.

The library behind the Snakemake workflow. Modules each do one job:

- :mod:`tomoclust.io`        MRC / STAR / TSV reading and atomic writing (the only place
                             where ``zyx`` arrays meet ``xyz`` tables)
- :mod:`tomoclust.fourier`   Fourier cropping/padding, radial grids, filters, missing wedge
- :mod:`tomoclust.rotation`  RELION Euler conventions, uniform proper rotations, volume rotation
- :mod:`tomoclust.ctf`       phase-contrast CTF in 2D and 3D
- :mod:`tomoclust.density`   atomic models (PDB/mmCIF) and maps to density at a voxel size
- :mod:`tomoclust.tomo`      tilt-series projection and weighted back-projection
- :mod:`tomoclust.simulate`  crowded tomograms and subtomogram sets with ground truth
- :mod:`tomoclust.ingest`    validation and normalisation of user tomograms
- :mod:`tomoclust.pick`      difference-of-Gaussians particle picking (numpy and torch)
- :mod:`tomoclust.extract`   subtomogram extraction, resampling and stacking
- :mod:`tomoclust.evaluate`  picking evaluation against ground truth
- :mod:`tomoclust.external`  other tools' coordinates (RELION 3/4/5, pytom-match-pick,
                             TomoTwin) and subtomograms in; their class numbers as truth
- :mod:`tomoclust.starhead`  STAR block and column names without parsing the data

Conventions: arrays are ``(z, y, x)``; tables and files speak ``x, y, z``; lengths in
configuration and tables are in Ångström, voxels only inside functions that say so.
"""

__version__ = "0.1.0"


class TomoclustError(Exception):
    """An error a user can act on: the message names the file and the problem."""
