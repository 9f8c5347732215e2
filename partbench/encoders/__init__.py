"""Encoders: one small interface in front of every backbone (see base.py).

Import from the submodules: this file stays empty so that plugins load without torch.
"""
