"""Datasets: one interface for the built-in SynParts and every real dataset (see base.py)."""

from partbench.datasets.base import Dataset, Sample

__all__ = ["Dataset", "Sample"]
