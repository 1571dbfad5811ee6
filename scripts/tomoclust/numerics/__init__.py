"""Numerical building blocks on arrays: Fourier transforms and filters, rotations and SO(3)
grids, CTF, tilt geometry, map comparison, classification metrics.

No files and no torch: arrays in, arrays out. Imports nothing above it in the library.
"""
