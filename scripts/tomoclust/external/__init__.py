"""Starting from what other tools wrote: particle coordinates or extracted subtomograms.
"""
