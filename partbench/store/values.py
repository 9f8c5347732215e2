"""What goes into a results database: times in UTC, finite numbers, JSON that is JSON, text
without NUL, and per-item arrays as one npz with no pickles."""

from __future__ import annotations

import datetime as dt
import io
import json
import math
import re
import zipfile
from collections.abc import Mapping
from typing import Any

import numpy as np

from partbench.errors import PartbenchError

_ITEM_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,59}")


def now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def aware(t: dt.datetime | None) -> dt.datetime | None:
    """In UTC: SQLite gives back naive datetimes (every one the store writes is UTC),
    PostgreSQL aware ones in the session's zone."""
    if t is None:
        return None
    return t.replace(tzinfo=dt.timezone.utc) if t.tzinfo is None else t.astimezone(dt.timezone.utc)


def strict_json(value: Any) -> str:
    # Backstop behind clean_json: the database never receives NaN or Infinity as JSON.
    return json.dumps(value, allow_nan=False)


def clean_json(value: Any, where: str) -> Any:
    """``value`` as plain JSON (numpy scalars and arrays become numbers and lists); a
    non-finite number or anything JSON cannot hold is a PartbenchError naming ``where``."""
    if value is None or isinstance(value, (bool, str)):
        return value.replace("\x00", "\\x00") if isinstance(value, str) else value
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        if not math.isfinite(value):
            raise PartbenchError(f"{where} is {float(value)}, not a finite number")
        return float(value)
    if isinstance(value, np.ndarray):
        return clean_json(value.tolist(), where)
    if isinstance(value, Mapping):
        out = {}
        for key, v in value.items():
            if isinstance(key, (bool, np.bool_)) or not isinstance(key, (str, int, np.integer)):
                raise PartbenchError(f"{where} has a key {key!r} that JSON cannot hold")
            out[str(key)] = clean_json(v, f"{where}[{str(key)!r}]")
        return out
    if isinstance(value, (list, tuple)):
        return [clean_json(v, f"{where}[{i}]") for i, v in enumerate(value)]
    raise PartbenchError(f"{where} holds a {type(value).__name__}, which JSON cannot hold")


def finite(value: Any, where: str, *, optional: bool = False) -> float | None:
    if value is None and optional:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise PartbenchError(f"{where} is {value!r}, not a number") from None
    if not math.isfinite(number):
        raise PartbenchError(f"{where} is {number}, not a finite number")
    return number


def text(value: str | None) -> str | None:
    # PostgreSQL text cannot hold NUL; everything else is kept as it came.
    return None if value is None else str(value).replace("\x00", "\\x00")


def encode_items(items: Mapping[str, Any], where: str = "per-item results") -> tuple[bytes, dict]:
    """Per-item arrays as one deflated npz (no pickles) and a summary of names, dtypes, shapes."""
    arrays: dict[str, np.ndarray] = {}
    for name, value in items.items():
        if not isinstance(name, str) or not _ITEM_NAME.fullmatch(name):
            raise PartbenchError(f"{where}: '{name}' is not a valid name (letters, digits, _ . -)")
        array = np.asarray(value)
        if array.dtype.kind not in "biuf":
            raise PartbenchError(f"{where}: '{name}' has dtype {array.dtype}; only numbers are stored")
        if array.ndim == 0:
            raise PartbenchError(f"{where}: '{name}' is a scalar, not one value per item")
        arrays[name] = np.ascontiguousarray(array)
    lengths = {name: a.shape[0] for name, a in arrays.items()}
    if len(set(lengths.values())) > 1:
        raise PartbenchError(f"{where}: the arrays disagree on the number of items: {lengths}")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, array in arrays.items():
            with archive.open(f"{name}.npy", "w") as member:
                np.lib.format.write_array(member, array, allow_pickle=False)
    summary = {name: {"dtype": str(a.dtype), "shape": list(a.shape)} for name, a in arrays.items()}
    return buffer.getvalue(), summary


def decode_items(data: bytes) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(data), allow_pickle=False) as archive:
        return {name: archive[name] for name in archive.files}
