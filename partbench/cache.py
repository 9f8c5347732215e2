"""The on-disk feature cache: what one encoder pass wrote, kept for every later task.

An entry is a folder named by the hash of everything that changes a feature (the encoder's
description with its weights' identity, the dataset's fingerprint, split, inputs, transform,
precision, limit and the extraction code's version). It holds one raw array file per output,
written once and never modified, and ``meta.json``, which lists the outputs whose files are
complete. A file is written under a temporary name and renamed into place before ``meta.json``
names it, so an interrupted write is never read back. Arrays are memory-mapped when read.

PARTBENCH_CACHE moves the cache (default: PARTBENCH_HOME/cache).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

META = "meta.json"


def cache_root() -> Path:
    from partbench.paths import home

    env = os.environ.get("PARTBENCH_CACHE")
    return Path(env).expanduser() if env else home() / "cache"


def cache_key(parts: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:32]


@dataclass(frozen=True)
class ArrayInfo:
    file: str
    dtype: str
    shape: tuple[int, ...]


class Entry:
    """One cache entry: arrays by name, all with the same number of items."""

    def __init__(self, folder: Path):
        self.folder = folder

    @property
    def meta_path(self) -> Path:
        return self.folder / META

    def meta(self) -> dict[str, Any]:
        try:
            return json.loads(self.meta_path.read_text())
        except FileNotFoundError:
            return {"arrays": {}, "info": {}}
        except (json.JSONDecodeError, UnicodeDecodeError):
            # A damaged index is a cache miss, not an error: the arrays are rebuilt.
            return {"arrays": {}, "info": {}}

    def arrays(self) -> dict[str, ArrayInfo]:
        return {
            k: ArrayInfo(v["file"], v["dtype"], tuple(v["shape"]))
            for k, v in self.meta().get("arrays", {}).items()
            if (self.folder / v["file"]).is_file()
        }

    def read(self, name: str) -> np.ndarray:
        info = self.arrays()[name]
        if 0 in info.shape:
            return np.zeros(info.shape, dtype=info.dtype)
        # Copy-on-write: readers may index freely and nothing reaches the file.
        return np.memmap(self.folder / info.file, dtype=info.dtype, mode="c", shape=info.shape)

    def info(self) -> dict[str, Any]:
        return self.meta().get("info", {})

    def size_bytes(self) -> int:
        return sum(f.stat().st_size for f in self.folder.iterdir() if f.is_file())

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        # Two processes may add arrays to one entry; the index is updated under a lock.
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def commit(self, written: Mapping[str, tuple[Path, np.dtype, tuple[int, ...]]], info: Mapping) -> None:
        """Rename finished temporary files into place, then name them in the index."""
        with self._locked():
            meta = self.meta()
            for name, (tmp, dtype, shape) in written.items():
                final = f"{_safe(name)}.bin"
                os.replace(tmp, self.folder / final)
                meta.setdefault("arrays", {})[name] = {
                    "file": final,
                    "dtype": np.dtype(dtype).str,
                    "shape": list(shape),
                }
            meta["info"] = {**meta.get("info", {}), **info}
            fd, tmp_meta = tempfile.mkstemp(dir=self.folder, prefix=".meta-")
            with os.fdopen(fd, "w") as f:
                json.dump(meta, f, indent=1)
            os.replace(tmp_meta, self.meta_path)


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


class ArrayWriter:
    """Appends equal-shaped rows of one array to a temporary file, one batch at a time, so no
    array is ever joined from pieces in memory."""

    def __init__(self, folder: Path, name: str):
        folder.mkdir(parents=True, exist_ok=True)
        fd, path = tempfile.mkstemp(dir=folder, prefix=f".{_safe(name)}-", suffix=".tmp")
        self.path = Path(path)
        self._file: BinaryIO = os.fdopen(fd, "wb")
        self.rows = 0
        self.row_shape: tuple[int, ...] | None = None
        self.dtype: np.dtype | None = None

    def append(self, rows: np.ndarray) -> None:
        if self.row_shape is None:
            self.row_shape, self.dtype = tuple(rows.shape[1:]), rows.dtype
        elif tuple(rows.shape[1:]) != self.row_shape or rows.dtype != self.dtype:
            raise ValueError(
                f"rows of shape {tuple(rows.shape[1:])} {rows.dtype} after {self.row_shape} {self.dtype}"
            )
        # A memoryview writes the array's own buffer: no copy, and the GIL is released.
        self._file.write(memoryview(np.ascontiguousarray(rows)).cast("B"))
        self.rows += len(rows)

    def append_file(self, path: Path, rows: int) -> None:
        """Append another writer's finished rows, streamed (shards of one array, in order)."""
        with open(path, "rb") as src:
            while chunk := src.read(64 * 2**20):
                self._file.write(chunk)
        self.rows += rows

    def close(self) -> tuple[Path, np.dtype, tuple[int, ...]]:
        self._file.close()
        return self.path, np.dtype(self.dtype or np.float32), (self.rows, *(self.row_shape or ()))

    def discard(self) -> None:
        self._file.close()
        self.path.unlink(missing_ok=True)


class FeatureCache:
    """Entries under one root. ``FeatureCache(None)`` keeps them in a temporary folder that is
    removed with the object (``--no-cache``)."""

    def __init__(self, root: Path | None):
        self._tmp = None
        if root is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="partbench-features-")
            root = Path(self._tmp.name)
        self.root = root
        self.persistent = self._tmp is None

    def entry(self, key: str) -> Entry:
        return Entry(self.root / key)

    def entries(self) -> list[Entry]:
        if not self.root.is_dir():
            return []
        return sorted(
            (Entry(p) for p in self.root.iterdir() if p.is_dir() and (p / META).is_file()),
            key=lambda e: e.folder.name,
        )

    def clear(self, encoder: str | None = None) -> tuple[int, int]:
        """Remove every entry (or those of one encoder); returns (entries, bytes) freed."""
        count = freed = 0
        for e in self.entries():
            if encoder is not None and e.info().get("encoder") != encoder:
                continue
            freed += e.size_bytes()
            shutil.rmtree(e.folder, ignore_errors=True)
            count += 1
        return count, freed

    def close(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
