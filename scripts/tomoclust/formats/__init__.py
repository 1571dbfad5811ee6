"""Files: MRC volumes and stacks, STAR and TSV tables, image names, atomic writes.

Imports nothing above it in the library (and no torch).
"""
