"""Encoders: one small interface in front of every backbone (see base.py); timm models through
timm_adapter.py, the study's official files through official.py, the mini ViTs through mini.py.

Plugins import the interface from ``partbench.api``. This file stays empty so that importing a
submodule does not import torch.
"""
