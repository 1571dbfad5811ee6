"""Simulated cryo-ET data with ground truth: densities from atomic models, crowded tomograms,
subtomogram sets and labelled training sets.
"""
