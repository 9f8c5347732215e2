"""Tasks consume features from the runner and return metrics with intervals (see base.py).

Import from the submodules: this file stays empty so that plugins load without torch.
"""
