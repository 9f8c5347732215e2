"""The on-disk feature cache: what one encoder pass wrote, kept for every later task.

An entry is a folder named by the hash of everything that changes a feature (the encoder's
description with its weights' identity, the dataset's fingerprint, split, inputs, transform,
precision, limit and the extraction code's version). It holds one raw array file per output,
written once and never modified, and ``meta.json``, which lists the outputs whose files are
complete. A file is written under a temporary name and renamed into place before ``meta.json``
names it, so an interrupted write is never read back. Arrays are memory-mapped when read.

Nothing read back is trusted: ``meta.json`` records each file's dtype, shape, byte count and
a BLAKE2b digest of every 8 MiB block, computed while the pass wrote it, and a digest over
that record. A read checks the record, the file's size and a deterministic sample of its
blocks (their digests, and finite values for floating-point arrays); ``partbench cache
verify`` checks every block. An entry that fails is set aside whole in ``<root>/.bad`` with a
warning naming it and why, and is then a cache miss: its pass runs again.

Files and folders are created with the process's umask (no private temporary-file modes), so
a team shares one cache by giving it a common group and a umask such as 002.

PARTBENCH_CACHE moves the cache (default: PARTBENCH_HOME/cache).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import math
import os
import secrets
import shutil
import stat
import tempfile
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

import numpy as np

from partbench.errors import PartbenchError

META = "meta.json"
LOCK = ".lock"
BAD = ".bad"  # entries set aside, under the root
SCALE = ":scale"  # "<array>:scale": the per-item divisors of a float16 map (extraction.fit_float16)
BLOCK = 8 * 2**20  # bytes per recorded digest; a multiple of every item size
# Blocks of an array checked on each read (spread evenly, first and last included); every
# block when an array has no more. See benchmarks/test_cache_costs.py for what this costs.
SAMPLE_BLOCKS = 8
_DIGEST_SIZE = 16
_DISK_FULL = {errno.ENOSPC, errno.EFBIG, getattr(errno, "EDQUOT", errno.ENOSPC)}
_HINT = "point PARTBENCH_CACHE at a folder you can write, or run with --no-cache"


class CacheWarning(UserWarning):
    """A cache entry that failed its checks and was set aside; its features are recomputed."""


def cache_root() -> Path:
    from partbench.paths import home

    env = os.environ.get("PARTBENCH_CACHE")
    return Path(env).expanduser() if env else home() / "cache"


def cache_key(parts: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:32]


def check_root(root: Path) -> None:
    """Refuse a cache root that is not a folder this process can write, before anything loads:
    found later, it fails every pass after its encoder has loaded."""
    if root.exists() and not root.is_dir():
        raise PartbenchError(f"feature cache {root} is not a folder; {_HINT}")
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PartbenchError(
            f"feature cache {root} cannot be created ({exc.strerror or exc}); {_HINT}"
        ) from None
    try:
        fd, probe = _create(root, ".probe-", ".tmp")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise PartbenchError(
            f"feature cache {root} is not writable ({exc.strerror or exc}); {_HINT}"
        ) from None


def disk_error(exc: OSError, path: Path | str) -> PartbenchError | None:
    """A full disk, a file-size limit or a quota, named as what it is; None for other errors."""
    if exc.errno in _DISK_FULL:
        return PartbenchError(
            f"disk full at {Path(path).parent}: {exc.strerror or exc} writing {Path(path).name}; "
            f"free space there, {_HINT}"
        )
    return None


def _create(folder: Path, prefix: str, suffix: str) -> tuple[int, Path]:
    """A new file opened for writing, with the umask's permissions (tempfile.mkstemp's 0600
    would keep every other user of a shared cache out)."""
    while True:
        path = folder / f"{prefix}{secrets.token_hex(8)}{suffix}"
        try:
            return os.open(
                path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666
            ), path
        except FileExistsError:
            continue


class _Blocks:
    """BLAKE2b digests of consecutive BLOCK-byte blocks of a stream, fed as it is written."""

    def __init__(self) -> None:
        self.digests: list[str] = []
        self._h = hashlib.blake2b(digest_size=_DIGEST_SIZE)
        self._n = 0
        self.bytes = 0

    def update(self, data: Any) -> None:
        view = memoryview(data).cast("B")
        self.bytes += len(view)
        while len(view):
            take = min(len(view), BLOCK - self._n)
            self._h.update(view[:take])  # hashlib releases the GIL for large buffers
            self._n += take
            view = view[take:]
            if self._n == BLOCK:
                self.digests.append(self._h.hexdigest())
                self._h, self._n = hashlib.blake2b(digest_size=_DIGEST_SIZE), 0

    def finish(self) -> list[str]:
        if self._n or not self.digests:
            self.digests.append(self._h.hexdigest())
            self._h, self._n = hashlib.blake2b(digest_size=_DIGEST_SIZE), 0
        return self.digests


def _file_blocks(path: Path) -> list[str]:
    blocks = _Blocks()
    with open(path, "rb") as f:
        while chunk := f.read(BLOCK):
            blocks.update(chunk)
    return blocks.finish()


def _record_digest(dtype: str, shape: Sequence[int], nbytes: int, blocks: Sequence[str]) -> str:
    """The digest of an array's record: a dtype or shape edited in ``meta.json`` changes it."""
    text = json.dumps([dtype, list(shape), nbytes, list(blocks)])
    return hashlib.blake2b(text.encode(), digest_size=_DIGEST_SIZE).hexdigest()


def sample_blocks(n: int, count: int = SAMPLE_BLOCKS) -> list[int]:
    """The blocks of an n-block array a read checks: all of them up to ``count``, else
    ``count`` spread evenly from the first to the last. Deterministic, so that every read of
    an entry checks the same blocks and a run never depends on chance."""
    if n <= count:
        return list(range(n))
    return sorted({round(k * (n - 1) / (count - 1)) for k in range(count)})


@dataclass(frozen=True)
class ArrayInfo:
    file: str
    dtype: str
    shape: tuple[int, ...]


class Written(NamedTuple):
    """A finished temporary array file: what ``Entry.commit`` records of it."""

    path: Path
    dtype: np.dtype
    shape: tuple[int, ...]
    blocks: list[str]


class Problem(Exception):
    """Why an entry cannot be read: a short slug for the set-aside folder's name and a sentence."""

    def __init__(self, slug: str, message: str):
        super().__init__(message)
        self.slug = slug


class Entry:
    """One cache entry: arrays by name, all with the same number of items."""

    def __init__(self, folder: Path):
        self.folder = folder
        self._checked: tuple[Any, dict[str, ArrayInfo]] | None = None

    @property
    def meta_path(self) -> Path:
        return self.folder / META

    def meta(self) -> dict[str, Any]:
        """The index as stored, unchecked; an unreadable one reads as empty."""
        try:
            meta = json.loads(self.meta_path.read_text())
        except (OSError, json.JSONDecodeError, UnicodeDecodeError, RecursionError):
            return {"arrays": {}, "info": {}}
        return meta if isinstance(meta, dict) else {"arrays": {}, "info": {}}

    def recorded(self) -> dict[str, ArrayInfo]:
        """The arrays the index names, unchecked (for listing only: never read them from here)."""
        out = {}
        arrays = self.meta().get("arrays", {})
        for k, v in arrays.items() if isinstance(arrays, dict) else ():
            with contextlib.suppress(Exception):
                out[k] = ArrayInfo(str(v["file"]), str(v["dtype"]), tuple(int(s) for s in v["shape"]))
        return out

    def arrays(self, full: bool = False) -> dict[str, ArrayInfo]:
        """The arrays this entry serves, each checked (``full``: every block, else a sample).
        An entry that fails is set aside, with a warning, and serves nothing."""
        try:
            return self.check(full)
        except Problem as problem:
            self.set_aside(problem)
            return {}

    def check(self, full: bool = False) -> dict[str, ArrayInfo]:
        """The checked arrays, or Problem. A sampled check is remembered until the index or a
        file changes, so the many reads of one run check each file once."""
        if not self.folder.exists() and not self.folder.is_symlink():
            return {}
        if self.folder.is_symlink() or not self.folder.is_dir():
            raise Problem("not-a-folder", "is not a folder")
        with self._shared():
            try:
                raw = self.meta_path.read_bytes()
                meta_stat = os.stat(self.meta_path)
            except FileNotFoundError:
                return {}  # no array committed yet (a pass may be writing): a miss
            except OSError as exc:
                raise Problem("unreadable-index", f"{META} cannot be read ({exc.strerror})") from None
            try:
                meta = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
                raise Problem("unreadable-index", f"{META} is not JSON") from None
            arrays = meta.get("arrays") if isinstance(meta, dict) else None
            if not isinstance(arrays, dict):
                raise Problem("unreadable-index", f"{META} lists no arrays")
            files = {}
            for name, record in arrays.items():
                files[name] = _stat_signature(self.folder, record)
            signature = (meta_stat.st_mtime_ns, meta_stat.st_ino, len(raw), tuple(sorted(files.items())))
            if not full and self._checked is not None and self._checked[0] == signature:
                return self._checked[1]
            out = {name: _check_array(self.folder, name, record, full) for name, record in arrays.items()}
            self._checked = (signature, out)
            return out

    def read(self, name: str) -> np.ndarray:
        arrays = self.arrays()
        if name not in arrays:
            raise PartbenchError(
                f"cache entry {self.folder} holds no usable '{name}' (set aside or removed while "
                "this command ran); run the command again"
            )
        info = arrays[name]
        if 0 in info.shape:
            return np.zeros(info.shape, dtype=info.dtype)
        # Copy-on-write: readers may index freely and nothing reaches the file.
        return np.memmap(self.folder / info.file, dtype=info.dtype, mode="c", shape=info.shape)

    def info(self) -> dict[str, Any]:
        info = self.meta().get("info", {})
        return info if isinstance(info, dict) else {}

    def size_bytes(self) -> int:
        return size_of(self.folder)

    def set_aside(self, problem: Problem) -> Path | None:
        """Move the entry into ``<root>/.bad`` (never delete what a user may want to look at),
        with a warning naming it and the reason."""
        bad = self.folder.parent / BAD
        try:
            bad.mkdir(exist_ok=True)
            dest = bad / f"{self.folder.name}-{problem.slug}"
            k = 1
            while dest.exists() or dest.is_symlink():
                k += 1
                dest = bad / f"{self.folder.name}-{problem.slug}-{k}"
            os.rename(self.folder, dest)
        except FileNotFoundError:
            return None  # another process set it aside first
        except OSError as exc:
            raise PartbenchError(
                f"cache entry {self.folder}: {problem}, and it cannot be set aside ({exc.strerror or exc}); "
                "remove it (partbench cache clear) or run with --no-cache"
            ) from None
        self._checked = None
        warnings.warn(
            f"cache entry {self.folder}: {problem}; set aside as {dest}, its features are computed again",
            CacheWarning,
            stacklevel=3,
        )
        return dest

    @contextlib.contextmanager
    def _shared(self) -> Iterator[None]:
        # A check never sees a commit half-way (a file renamed into place, its record not yet
        # written): commits hold the lock exclusively. A reader that cannot open the lock (a
        # read-only shared cache) reads without it: nobody can be writing there either.
        try:
            fd = os.open(self.folder / LOCK, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except OSError:
            yield
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
            yield
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        # Two processes may add arrays to one entry; the index is updated under a lock.
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.folder / LOCK, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def commit(self, written: Mapping[str, tuple], info: Mapping) -> None:
        """Rename finished temporary files into place, then name them in the index. Each value
        is a ``Written`` (path, dtype, shape, block digests); without digests the file is read
        once to compute them."""
        with self._locked():
            meta = self.meta()
            arrays = meta.get("arrays") if isinstance(meta.get("arrays"), dict) else {}
            for name, (tmp, dtype, shape, *rest) in written.items():
                dtype, shape = np.dtype(dtype), tuple(int(s) for s in shape)
                nbytes = math.prod(shape) * dtype.itemsize
                size = os.stat(tmp).st_size
                if size != nbytes:
                    raise PartbenchError(
                        f"cache entry {self.folder}: '{name}' has {size} bytes, its shape {shape} "
                        f"{dtype} needs {nbytes}"
                    )
                blocks = list(rest[0]) if rest and rest[0] is not None else _file_blocks(Path(tmp))
                final = f"{_safe(name)}.bin"
                os.replace(tmp, self.folder / final)
                arrays[name] = {
                    "file": final,
                    "dtype": dtype.str,
                    "shape": list(shape),
                    "bytes": nbytes,
                    "blocks": blocks,
                    "digest": _record_digest(dtype.str, shape, nbytes, blocks),
                }
            meta = {**meta, "arrays": arrays, "info": {**(meta.get("info") or {}), **info}}
            fd, tmp_meta = _create(self.folder, ".meta-", ".tmp")
            try:
                with os.fdopen(fd, "w") as f:
                    json.dump(meta, f, indent=1)
                os.replace(tmp_meta, self.meta_path)
            except OSError as exc:
                tmp_meta.unlink(missing_ok=True)
                raise disk_error(exc, self.meta_path) or exc from None
            self._checked = None


def _stat_signature(folder: Path, record: Any) -> Any:
    try:
        st = os.lstat(folder / str(record["file"]))
        return (str(record.get("digest")), st.st_ino, st.st_size, st.st_mtime_ns)
    except Exception:
        return None


def _check_array(folder: Path, name: str, record: Any, full: bool) -> ArrayInfo:
    """One array's record and file, checked; Problem names what is wrong."""
    what = f"array '{name}'"
    if not isinstance(record, dict):
        raise Problem("bad-record", f"{what}: its record is not an object")
    file, dtype_text, shape = record.get("file"), record.get("dtype"), record.get("shape")
    if (
        not isinstance(file, str)
        or file in ("", ".", "..", META, LOCK)
        or os.path.basename(file) != file
        or "\\" in file
        or "\0" in file
    ):
        raise Problem("foreign-path", f"{what}: file {file!r} is not a name inside the entry")
    try:
        dtype = np.dtype(dtype_text)
    except Exception:
        raise Problem("bad-dtype", f"{what}: dtype {dtype_text!r} is not a dtype") from None
    if dtype.kind not in "fiub" or dtype.hasobject:
        raise Problem("bad-dtype", f"{what}: dtype {dtype_text!r} is not numeric")
    if not isinstance(shape, list) or not all(type(s) is int and s >= 0 for s in shape):
        raise Problem("bad-shape", f"{what}: shape {shape!r} is not a list of sizes")
    nbytes = math.prod(shape) * dtype.itemsize
    blocks, digest = record.get("blocks"), record.get("digest")
    if not isinstance(blocks, list) or not isinstance(digest, str):
        raise Problem("no-digest", f"{what}: {file} has no recorded digest")
    if record.get("bytes") != nbytes or _record_digest(str(dtype_text), shape, nbytes, blocks) != digest:
        raise Problem("record-mismatch", f"{what}: its recorded dtype, shape or size was changed")
    if len(blocks) != max(1, -(-nbytes // BLOCK)):
        raise Problem("record-mismatch", f"{what}: {len(blocks)} block digests for {nbytes} bytes")
    path = folder / file
    try:
        st = os.lstat(path)
    except OSError:
        raise Problem("missing-file", f"{what}: {file} is missing") from None
    if not stat.S_ISREG(st.st_mode):
        raise Problem("foreign-path", f"{what}: {file} is not a regular file")
    if st.st_size != nbytes:
        raise Problem(
            "wrong-size",
            f"{what}: {file} has {st.st_size} bytes, its shape {tuple(shape)} {dtype} needs {nbytes}",
        )
    check_finite = dtype.kind == "f"
    try:
        with open(path, "rb") as f:
            for k in range(len(blocks)) if full else sample_blocks(len(blocks)):
                f.seek(k * BLOCK)
                data = f.read(BLOCK)
                if hashlib.blake2b(data, digest_size=_DIGEST_SIZE).hexdigest() != blocks[k]:
                    raise Problem("digest-mismatch", f"{what}: {file} does not match its recorded digest")
                if check_finite and not _finite(data, dtype):
                    raise Problem("non-finite", f"{what}: {file} holds NaN or infinite values")
    except OSError as exc:
        raise Problem("unreadable-file", f"{what}: {file} cannot be read ({exc.strerror})") from None
    return ArrayInfo(file, dtype.str, tuple(shape))


def _finite(data: bytes, dtype: np.dtype) -> bool:
    if dtype.itemsize == 2 and dtype.kind == "f":
        # float16 through its bits: an exponent of all ones is inf or NaN (twice numpy's
        # isfinite, which converts every value to float32 first).
        bits = np.frombuffer(data, dtype=dtype.str.replace("f", "u"))
        return not len(bits) or int((bits & 0x7FFF).max()) < 0x7C00
    return bool(np.isfinite(np.frombuffer(data, dtype=dtype)).all())


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def size_of(path: Path) -> int:
    """Bytes under ``path`` (a file or a folder), never following links."""
    try:
        st = os.lstat(path)
    except OSError:
        return 0
    if not stat.S_ISDIR(st.st_mode):
        return st.st_size
    total = 0
    for dirpath, _, filenames in os.walk(path):
        for f in filenames:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, f)).st_size
    return total


class ArrayWriter:
    """Appends equal-shaped rows of one array to a temporary file, one batch at a time, so no
    array is ever joined from pieces in memory. The file's block digests are computed as it is
    written; it is locked while open, so that ``cache clear`` leaves a pass's files alone."""

    def __init__(self, folder: Path, name: str):
        folder.mkdir(parents=True, exist_ok=True)
        fd, self.path = _create(folder, f".{_safe(name)}-", ".tmp")
        fcntl.flock(fd, fcntl.LOCK_EX)
        self._file: BinaryIO = os.fdopen(fd, "wb")
        self._blocks = _Blocks()
        self.rows = 0
        self.row_shape: tuple[int, ...] | None = None
        self.dtype: np.dtype | None = None

    def _write(self, data: Any) -> None:
        try:
            self._file.write(data)
        except OSError as exc:
            raise disk_error(exc, self.path) or exc from None
        self._blocks.update(data)

    def append(self, rows: np.ndarray) -> None:
        if self.row_shape is None:
            self.row_shape, self.dtype = tuple(rows.shape[1:]), rows.dtype
        elif tuple(rows.shape[1:]) != self.row_shape or rows.dtype != self.dtype:
            raise ValueError(
                f"rows of shape {tuple(rows.shape[1:])} {rows.dtype} after {self.row_shape} {self.dtype}"
            )
        # A memoryview writes the array's own buffer: no copy, and the GIL is released.
        self._write(memoryview(np.ascontiguousarray(rows)).cast("B"))
        self.rows += len(rows)

    def append_file(self, path: Path, rows: int) -> None:
        """Append another writer's finished rows, streamed (shards of one array, in order)."""
        with open(path, "rb") as src:
            while chunk := src.read(64 * 2**20):
                self._write(chunk)
        self.rows += rows

    def close(self) -> Written:
        try:
            self._file.close()
        except OSError as exc:
            raise disk_error(exc, self.path) or exc from None
        shape = (self.rows, *(self.row_shape or ()))
        return Written(self.path, np.dtype(self.dtype or np.float32), shape, self._blocks.finish())

    def discard(self) -> None:
        with contextlib.suppress(OSError):
            self._file.close()
        self.path.unlink(missing_ok=True)


def _busy(path: Path) -> bool:
    """Whether a live writer holds ``path`` (an ArrayWriter locks its file while it is open)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except OSError:
        return True
    finally:
        os.close(fd)


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
            (
                Entry(p)
                for p in self.root.iterdir()
                if not p.name.startswith(".") and p.is_dir() and (p / META).is_file()
            ),
            key=lambda e: e.folder.name,
        )

    def leftovers(self) -> list[Path]:
        """What no entry serves and no live pass is writing: temporary files a killed pass
        left (in entries, in entry folders it never committed, and at the root), and the
        entries set aside in ``.bad``."""
        if not self.root.is_dir():
            return []
        out: list[Path] = []
        for p in sorted(self.root.iterdir()):
            if p.name == BAD:
                out += sorted(p.iterdir()) if p.is_dir() else [p]
            elif p.is_file() and p.name.endswith(".tmp") and not _busy(p):
                out.append(p)
            elif p.is_dir() and not p.is_symlink():
                temps = [f for f in p.iterdir() if f.name.startswith(".") and f.name.endswith(".tmp")]
                idle = [f for f in temps if not _busy(f)]
                if not (p / META).exists():
                    if len(idle) == len(temps):  # never committed, and nobody writing: all of it
                        out.append(p)
                else:
                    out += idle
        return out

    def clear(self, encoder: str | None = None) -> tuple[int, int]:
        """Remove every entry (or those of one encoder), and with every entry what passes left
        half-written and the entries set aside; returns (entries, bytes) freed."""
        count = freed = 0
        for e in self.entries():
            if encoder is not None and e.info().get("encoder") != encoder:
                continue
            freed += e.size_bytes()
            shutil.rmtree(e.folder, ignore_errors=True)
            count += 1
        if encoder is None:
            for p in self.leftovers():
                freed += size_of(p)
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    p.unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                (self.root / BAD).rmdir()
        return count, freed

    def close(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
