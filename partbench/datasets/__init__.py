"""Datasets: one interface for the built-in SynParts and every real dataset (see base.py).

Import from the submodules: this file stays empty so that plugins load without torch.
"""
