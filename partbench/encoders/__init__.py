"""Encoders: one small interface in front of every backbone (see base.py)."""

from partbench.encoders.base import Encoder, EncoderOutput, TimmEncoder

__all__ = ["Encoder", "EncoderOutput", "TimmEncoder"]
