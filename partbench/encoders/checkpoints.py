"""Reading weights files safely: weights-only unpickling, identity by sha256, strict loading."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from partbench.errors import CheckpointError


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def read_checkpoint(path: Path, *, allow_namespace: bool = False) -> Any:
    """Load a .pth/.safetensors file without ever running code stored in it.

    ``allow_namespace`` admits ``argparse.Namespace``, which DINO and iBOT full checkpoints
    pickle as their training arguments; nothing else outside tensors and containers is allowed.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: weights file not found")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as exc:
            raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from exc
    import argparse

    safe = [argparse.Namespace] if allow_namespace else []
    try:
        with torch.serialization.safe_globals(safe):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if "weights_only" in str(exc) or "Unsupported global" in str(exc):
            raise CheckpointError(
                f"{path}: refused: the file needs arbitrary code to unpickle ({msg}); "
                "only tensors and plain containers are loaded"
            ) from exc
        raise CheckpointError(f"{path}: not a readable checkpoint ({msg})") from exc


def load_strict(model: nn.Module, state: Mapping[str, torch.Tensor], source: Path | str) -> None:
    """Load every key or fail naming what is missing and what is unexpected."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(
        f"{k} {tuple(state[k].shape)} (expected {tuple(own[k].shape)})"
        for k in set(own) & set(state)
        if tuple(own[k].shape) != tuple(state[k].shape)
    )
    if missing or unexpected or wrong:
        parts = []
        for label, keys in (
            ("missing", missing),
            ("unexpected", unexpected),
            ("wrong shape", wrong),
        ):
            if keys:
                shown = ", ".join(keys[:8]) + (f", ... ({len(keys)} in all)" if len(keys) > 8 else "")
                parts.append(f"{label} keys: {shown}")
        raise CheckpointError(f"{source}: checkpoint does not match the encoder; " + "; ".join(parts))
    model.load_state_dict(state, strict=True)
