"""Pretraining the mini ViT with the study's families of methods (see train.py, ship.py)."""

from partbench.pretrain.train import METHODS, PretrainResult, pretrain

__all__ = ["METHODS", "PretrainResult", "pretrain"]
