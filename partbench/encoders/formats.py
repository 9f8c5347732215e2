"""Where one network's tensors sit inside an official checkpoint, and how they become timm keys.

An official file often holds several networks (student and teacher, base and momentum encoder,
encoder and decoder). A :class:`Layout` names one of them: the top-level entry holding its state
dict, the key prefix that marks its tensors, where its projection head sits, and the keys that
are not part of the encoder. :func:`extract` applies a layout and returns the backbone state dict
in timm's key names plus the head's state dict, or fails saying what the file holds instead.

This module imports nothing heavy, so the encoder table in ``official.py`` can use it while
``partbench list`` stays fast.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from partbench.errors import CheckpointError

if TYPE_CHECKING:
    import torch

StateDict = dict[str, "torch.Tensor"]


@dataclass(frozen=True)
class Layout:
    """One network inside an official file."""

    role: str  # in words, for messages: "teacher", "student", "base encoder", ...
    container: str | None = None  # top-level entry holding the state dict; None: the file is one
    prefix: str = ""  # marks (and is stripped from) this network's backbone keys
    head_prefix: str | None = None  # where the projection head sits; None: "head." in the backbone
    drop: tuple[str, ...] = ()  # fnmatch patterns (after stripping) of keys outside the encoder
    rename: Callable[[StateDict], StateDict] | None = None  # last step, on the backbone only

    def describe(self) -> str:
        where = f"'{self.container}'" if self.container else "top level"
        keys = f"'{self.prefix}*'" if self.prefix else "all keys"
        return f"{self.role}: {keys} in {where}"


@dataclass
class Extracted:
    backbone: StateDict
    head: StateDict  # empty when the file has no projection head for this network
    layout: Layout


def _is_tensor(value: Any) -> bool:
    # Avoid importing torch here; every tensor class has these two attributes.
    return hasattr(value, "shape") and hasattr(value, "dtype")


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and all(_is_tensor(v) for v in obj.values())


def _top_level(obj: Any) -> str:
    if not isinstance(obj, Mapping):
        return f"a {type(obj).__name__}, not a dict"
    keys = list(obj)
    shown = ", ".join(repr(k) for k in keys[:10])
    return f"top-level keys: {shown}" + (f", ... ({len(keys)} in all)" if len(keys) > 10 else "")


def choose_layout(obj: Any, layouts: tuple[Layout, ...], source: Path | str) -> Layout:
    """The first layout whose container the file has (a flat state dict matches container None)."""
    for layout in layouts:
        if layout.container is None:
            if _is_state_dict(obj):
                return layout
        elif isinstance(obj, Mapping) and isinstance(obj.get(layout.container), Mapping):
            return layout
    wanted = " or ".join(
        f"a '{lay.container}' entry" if lay.container else "a flat state dict" for lay in layouts
    )
    raise CheckpointError(
        f"{source}: not the expected checkpoint format: expected {wanted} "
        f"(for the {layouts[0].role}); the file has {_top_level(obj)}"
    )


def _strip(state: Mapping[str, Any], prefix: str) -> StateDict:
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def extract(obj: Any, layouts: tuple[Layout, ...], source: Path | str) -> Extracted:
    """Apply the first matching layout: backbone in timm key names, head with its own keys."""
    layout = choose_layout(obj, layouts, source)
    state = obj if layout.container is None else obj[layout.container]
    backbone = _strip(state, layout.prefix)
    if not backbone:
        raise CheckpointError(
            f"{source}: no keys start with '{layout.prefix}' in "
            f"{repr(layout.container) if layout.container else 'the file'} "
            f"(looking for the {layout.role}); {_top_level(state)}"
        )
    not_tensors = sorted(k for k, v in backbone.items() if not _is_tensor(v))
    if not_tensors:
        raise CheckpointError(f"{source}: entries that are not tensors: {', '.join(not_tensors[:8])}")
    # Under the backbone, "head." is the projection (MoCo v3) or the classifier (DeiT): either
    # way it is not part of the encoder.
    head_in_backbone = _strip(backbone, "head.")
    backbone = {k: v for k, v in backbone.items() if not k.startswith("head.")}
    head = _strip(state, layout.head_prefix) if layout.head_prefix is not None else head_in_backbone
    backbone = {k: v for k, v in backbone.items() if not any(fnmatch.fnmatchcase(k, p) for p in layout.drop)}
    if layout.rename is not None:
        backbone = layout.rename(backbone)
    return Extracted(backbone=backbone, head=head, layout=layout)


def dinov2_registers_to_timm(state: StateDict) -> StateDict:
    """DINOv2 with registers: official keys to timm's ``no_embed_class`` layout.

    The official model adds ``pos_embed[:, 0]`` to the class token before inserting the
    registers, which get no position embedding; timm's reg4 model adds position embeddings to
    patch tokens only. Folding the class position into the (constant) class token gives the
    same tokens exactly.
    """
    if "register_tokens" not in state:
        return state
    out = dict(state)
    pos = out.pop("pos_embed")
    out["reg_token"] = out.pop("register_tokens")
    out["cls_token"] = out.pop("cls_token") + pos[:, :1]
    out["pos_embed"] = pos[:, 1:]
    return out
