"""Reading weights files safely: weights-only unpickling, identity by sha256, strict loading.

Every message names the file. A file that needs code to unpickle is refused naming the code it
asked for; partbench never suggests turning the weights-only guard off, as torch's own message
does. Weights downloads go through :func:`download_weights`, which keeps a file only once it
loads and passes the encoder's own check.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from partbench.errors import CheckpointError
from partbench.files import download, verify_cached


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    from partbench.files import sha256_of

    return sha256_of(Path(path))


# What torch writes when the weights-only unpickler meets a global it does not allow, across
# versions: "Unsupported global: GLOBAL os.system was not an allowed global by default",
# "Trying to load unsupported GLOBAL posix.system whose module posix is blocked".
_GLOBAL = re.compile(r"GLOBAL\s+([A-Za-z_][\w.]*)")
# Lines of torch's message that are advice rather than a reason; never repeated.
_ADVICE = re.compile(
    r"weights[_ ]only|trusted source|file an issue|documentation|safe_globals|allowlist|"
    r"add_safe_globals|arbitrary code",
    re.IGNORECASE,
)


def _torch_reason(exc: BaseException) -> str:
    """The part of torch's message that says what went wrong, without its advice."""
    for line in str(exc).splitlines():
        line = line.strip()
        if line and not _ADVICE.search(line):
            line = line.removeprefix("WeightsUnpickler error:").strip() or line
            return line if len(line) <= 200 else line[:197] + "..."
    return type(exc).__name__


def _kind_of(head: bytes) -> str:
    """What the first bytes of a file say it is: 'zip', 'pickle', 'safetensors' or a description."""
    if head.startswith(b"PK\x03\x04"):
        return "zip"  # torch.save's format since 1.6
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "pickle"  # torch's legacy format, or a plain pickle
    if len(head) >= 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < (1 << 28):
        return "safetensors"
    if not head:
        return "an empty file"
    start = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if start.startswith((b"<!doctype html", b"<html", b"<head", b"<body")):
        return "an HTML page (a login or error page saved in its place?)"
    if start.startswith((b"<?xml", b"<")):
        return "an XML or HTML document"
    if head.startswith((b"\x1f\x8b", b"BZh", b"\xfd7zXZ")) or head[257:262] == b"ustar":
        return "a compressed or tar archive"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return f"binary data starting with {head[:8].hex(' ')}"
    shown = text.strip().splitlines()[0][:40] if text.strip() else ""
    return f"a text file (starting {shown!r})"


def read_checkpoint(path: Path, *, allow_namespace: bool = False) -> Any:
    """Load a .pth/.safetensors file without ever running code stored in it.

    ``allow_namespace`` admits ``argparse.Namespace``, which DINO and iBOT full checkpoints
    pickle as their training arguments; nothing else outside tensors and containers is allowed.
    What is loaded must be a dict, and every dict holding tensors must be keyed by strings.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: weights file not found")
    try:
        with open(path, "rb") as fh:
            head = fh.read(512)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot be read ({exc})") from None
    kind = _kind_of(head)
    if path.suffix == ".safetensors" or kind == "safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as exc:
            raise CheckpointError(
                f"{path}: not a readable safetensors file ({_torch_reason(exc)})"
                + ("" if kind in ("safetensors", "zip", "pickle") else f"; it is {kind}")
            ) from None
    if kind not in ("zip", "pickle"):
        raise CheckpointError(
            f"{path}: not a checkpoint: it is {kind}, not a PyTorch file (a zip archive or a "
            "pickle) or a safetensors file"
        )
    import argparse
    import warnings

    safe = [argparse.Namespace] if allow_namespace else []
    try:
        with torch.serialization.safe_globals(safe), warnings.catch_warnings():
            # torch warns about a plain pickle's protocol before refusing it; the refusal says more.
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        blocked = _blocked_global(path, kind, exc)
        if blocked is not None:
            raise CheckpointError(
                f"{path}: refused: unpickling it would run or build '{blocked}', and partbench "
                "loads only tensors and plain containers (it never runs code from a weights "
                "file); save the weights as a state dict (or safetensors) to use them"
            ) from None
        if kind == "pickle" and head[1] > 2 and "Unsupported operand" in str(exc):
            raise CheckpointError(
                f"{path}: not a checkpoint: it is a plain pickle (protocol {head[1]}), not a file "
                "written by torch.save"
            ) from None
        raise CheckpointError(f"{path}: not a readable checkpoint ({_torch_reason(exc)})") from None
    check_structure(obj, path)
    return obj


def _blocked_global(path: Path, kind: str, exc: BaseException) -> str | None:
    """The global a refused pickle asked for, from torch's message or by listing the pickle's
    globals (which reads opcodes and runs nothing); None when the failure was something else."""
    found = _GLOBAL.search(str(exc))
    if found:
        return found.group(1)
    names: list[str] = []
    if kind == "pickle":
        names = [n for n in _pickle_globals(path) if not n.startswith(_TORCH_MODULES)]
    elif "Unsupported class" in str(exc) or "Unsupported global" in str(exc):
        lister = getattr(torch.serialization, "get_unsafe_globals_in_checkpoint", None)
        if lister is not None:
            try:
                names = list(lister(path))
            except Exception:
                names = []
        names = names or ["a class outside tensors and containers"]
    return ", ".join(dict.fromkeys(names[:5])) if names else None


# Modules whose globals torch's own legacy files use; anything else in a pickle is someone's code.
_TORCH_MODULES = ("torch.", "torch ", "collections ", "collections.", "_codecs ", "_codecs.")


def _pickle_globals(path: Path, limit: int = 1 << 16) -> list[str]:
    """The globals named by the pickles at the start of ``path`` ("module.name"), read opcode by
    opcode with pickletools, which parses and never executes. Torch's legacy format is several
    pickles in a row, then raw storage bytes, where parsing stops."""
    import pickletools

    names: list[str] = []
    strings: list[str] = []
    try:
        with open(path, "rb") as fh:
            for _ in range(8):
                for opcode, arg, _pos in pickletools.genops(fh):
                    if isinstance(arg, str):
                        strings.append(arg)
                    if opcode.name == "GLOBAL":
                        names.append(str(arg).replace(" ", "."))
                    elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                        names.append(f"{strings[-2]}.{strings[-1]}")
                    if len(names) > limit:
                        return names
    except Exception:  # the end of the pickles, or not a pickle at all
        pass
    return names


def _is_tensor(value: Any) -> bool:
    return isinstance(value, torch.Tensor)


def _key(path: tuple[Any, ...]) -> str:
    return " -> ".join(repr(k) for k in path) if path else "the top level"


def check_structure(obj: Any, source: Path | str) -> None:
    """A weights file holds a dict; every dict in it that holds tensors has string keys.

    A list, a bare tensor or anything else is refused, naming what the file holds instead.
    Dicts without tensors may have other keys (an optimizer's state is keyed by integers).
    """
    if _is_tensor(obj):
        raise CheckpointError(
            f"{source}: holds a single tensor of shape {tuple(obj.shape)}, not weights: a weights "
            "file holds a dict of named tensors (a state dict)"
        )
    if not isinstance(obj, Mapping):
        raise CheckpointError(
            f"{source}: holds a {type(obj).__name__}, not weights: a weights file holds a dict of "
            "named tensors (a state dict)"
        )
    stack: list[tuple[tuple[Any, ...], Mapping]] = [((), obj)]
    while stack:
        where, mapping = stack.pop()
        values = list(mapping.values())
        if any(_is_tensor(v) for v in values):
            for k in mapping:
                if not isinstance(k, str):
                    raise CheckpointError(
                        f"{source}: key {k!r} (of type {type(k).__name__}) at {_key(where)} is not a "
                        "string; tensors in a state dict are named by strings"
                    )
        for k, v in mapping.items():
            if isinstance(v, Mapping):
                stack.append(((*where, k), v))


def check_state_dict(state: Any, source: Path | str) -> Mapping[str, torch.Tensor]:
    """``state`` is a dict of string keys to tensors, or a CheckpointError names the first key
    that is not."""
    if _is_tensor(state) or not isinstance(state, Mapping):
        check_structure(state, source)  # raises, saying what it is instead
    for k, v in state.items():
        if not isinstance(k, str):
            raise CheckpointError(
                f"{source}: key {k!r} (of type {type(k).__name__}) is not a string; tensors in a state "
                "dict are named by strings"
            )
        if not _is_tensor(v):
            raise CheckpointError(
                f"{source}: '{k}' holds a {type(v).__name__}, not a tensor; a state dict maps "
                "names to tensors"
            )
    return state


def load_strict(model: nn.Module, state: Mapping[str, torch.Tensor], source: Path | str) -> None:
    """Load every key or fail naming what is missing and what is unexpected."""
    check_state_dict(state, source)
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


# --- the weights cache --------------------------------------------------------------------


def download_weights(
    url: str,
    dest: Path,
    validate: Callable[[Path], Any],
    *,
    sha256: str | None = None,
    sha256_prefix: str | None = None,
    progress: bool = True,
    timeout: float = 60.0,
) -> str:
    """Download weights into the cache through :func:`partbench.files.download`.

    ``validate(path)`` must load the file the way the encoder will (weights-only, then the
    encoder's strict key check) and raise if it cannot; the file takes its name in the cache
    only after that passed, and its sha256 is recorded beside it for :func:`cached_weights`.
    Returns the sha256. Every failure is a CheckpointError naming the URL.
    """
    return download(
        url,
        dest,
        sha256=sha256,
        sha256_prefix=sha256_prefix,
        validate=validate,
        record_sha256=True,
        error=CheckpointError,
        progress=progress,
        timeout=timeout,
    )


def cached_weights(path: Path) -> str:
    """Check a cached weights file against the sha256 recorded when it was downloaded (a file
    put there by hand has none and is taken as it is); return its sha256."""
    return verify_cached(Path(path), error=CheckpointError)
