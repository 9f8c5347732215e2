"""A pass over one split cut out of the cached pass over a split that holds it.

CUB's part and object retrieval read all 11,788 images; the probes' test views read 5,794 of
the same images with the same transform. Their features are rows of the larger pass, so they
are copied from its cache entry (in bounded chunks) into the entry the smaller pass would
have written, and the encoder never sees those images twice.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from partbench.cache import SCALE, ArrayWriter, Entry
from partbench.errors import DataError

CHUNK_BYTES = 64 * 2**20  # rows copied at a time: a bounded share of host memory


def subset_rows(sample_index: np.ndarray, positions: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """The parent's rows that belong to the subset, in the subset's order, and the subset's
    sample index of each (``positions[k]`` is where the subset's sample k sits in the parent)."""
    positions = np.asarray(positions, dtype=np.int64)
    span = int(max(positions.max(initial=-1), sample_index.max(initial=-1))) + 1
    new = np.full(span, -1, dtype=np.int64)
    new[positions] = np.arange(len(positions))
    mapped = new[sample_index]
    rows = np.flatnonzero(mapped >= 0)
    # A parent's items come sample by sample; a stable sort keeps each sample's crops in order.
    rows = rows[np.argsort(mapped[rows], kind="stable")]
    return rows, mapped[rows]


def cut(
    parent: Entry,
    child: Entry,
    arrays: Iterable[str],
    masks: Iterable[str],
    positions: Sequence[int],
    info: Mapping[str, Any],
    what: str,
) -> dict[str, Any]:
    """Write ``child``'s arrays (per-item outputs) and label maps (per sample) from ``parent``'s,
    then commit them; returns the timing a run reading the child records."""
    started = time.perf_counter()
    rows, new_index = subset_rows(np.asarray(parent.read("sample_index")), positions)
    if len(rows) == 0:
        raise DataError(what)
    writers: dict[str, ArrayWriter] = {}
    held = parent.arrays()
    arrays = [n for name in arrays for n in (name, name + SCALE) if n == name or n in held]
    try:
        for name in arrays:
            src = parent.read(name)
            w = writers[name] = ArrayWriter(child.folder, name)
            row_bytes = max(1, src[:1].nbytes)
            step = max(1, CHUNK_BYTES // row_bytes)
            for i in range(0, len(rows), step):
                w.append(np.asarray(src[rows[i : i + step]]))
        for name, array in (("labels", np.asarray(parent.read("labels"))[rows]), ("sample_index", new_index)):
            writers[name] = ArrayWriter(child.folder, name)
            writers[name].append(array)
        for name in masks:
            _cut_masks(parent, child, name, positions, writers)
        files = {name: w.close() for name, w in writers.items()}
    except BaseException:
        for w in writers.values():
            w.discard()
        raise
    stored = parent.info()
    child.commit(
        files,
        {
            **info,
            "grid": stored.get("grid"),
            "stages_grid": stored.get("stages_grid"),
            "cut_from": parent.folder.name,
            "cut_from_split": stored.get("split"),
        },
    )
    return {
        "encoder_passes": 0,
        "cached": True,
        "cut_from": parent.folder.name,
        "cut_seconds": time.perf_counter() - started,
    }


def _cut_masks(
    parent: Entry, child: Entry, name: str, positions: Sequence[int], writers: dict[str, ArrayWriter]
) -> None:
    """Label maps are stored one per sample, flat, with their shapes beside them."""
    flat = parent.read(name)
    shapes = np.asarray(parent.read(name + ":shapes")).reshape(-1, 2)
    ends = np.cumsum(shapes[:, 0] * shapes[:, 1])
    starts = ends - shapes[:, 0] * shapes[:, 1]
    w = writers[name] = ArrayWriter(child.folder, name)
    w.append(np.zeros(0, dtype=flat.dtype))
    for k in positions:
        w.append(np.asarray(flat[starts[k] : ends[k]]))
    s = writers[name + ":shapes"] = ArrayWriter(child.folder, name + ":shapes")
    s.append(shapes[np.asarray(positions, dtype=np.int64)].reshape(-1, 2))
