"""Dataset fingerprints: a short hash that tells two copies or versions of the data apart.

Annotation files are hashed whole. Image files are hashed by content too, so an image edited
in place (same name, same size) changes the fingerprint, hence every run's configuration hash
and cache key on that data. Hashing 11,788 CUB images at every start would be slow, so, as
git's index does, each data root keeps a small index of what it found (size, mtime_ns, ctime_ns,
inode and the content digest per file) in PARTBENCH_HOME/fingerprints: a file whose stat is
unchanged is not read again. benchmarks/test_fingerprint_cost.py measures both paths.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
from collections.abc import Iterable
from pathlib import Path

_CHUNK = 1 << 20
INDEX_VERSION = 1


def fingerprint(
    base: Path, annotation_files: Iterable[Path], image_dirs: Iterable[Path] = (), extra: str = ""
) -> str:
    """sha256 over the annotation files' bytes and the image folders' listing with each file's
    size and content digest."""
    digest = hashlib.sha256(extra.encode())
    for path in sorted(Path(p) for p in annotation_files):
        digest.update(b"\0file\0" + _relative(path, base).encode())
        with open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                digest.update(chunk)
    index = StatIndex(base)
    for folder in sorted(Path(d) for d in image_dirs):
        entries = []
        # Plain strings, not Paths: a CUB-size tree has 11,788 files and this runs at every start.
        prefix = _relative(folder, base)
        prefix = "" if prefix == "." else prefix + "/"
        top = str(folder)
        for dirpath, dirnames, filenames in os.walk(folder):
            dirnames.sort()
            inner = os.path.relpath(dirpath, top).replace(os.sep, "/")
            inner = prefix if inner == "." else f"{prefix}{inner}/"
            for name in filenames:
                rel = inner + name
                size, content = index.digest(os.path.join(dirpath, name), rel)
                entries.append(f"{rel}\t{size}\t{content}")
        digest.update(b"\0dir\0" + "\n".join(sorted(entries)).encode())
    index.save()
    return digest.hexdigest()[:16]


class StatIndex:
    """Content digests of one data root's files, reused while a file's stat is unchanged."""

    def __init__(self, base: Path):
        from partbench.paths import home

        root = str(Path(base).resolve())
        name = hashlib.sha256(root.encode()).hexdigest()[:24]
        self.path = home() / "fingerprints" / f"{name}.json"
        self.root = root
        self.files: dict[str, list] = {}
        self.changed = False
        self.hashed = 0  # files read this time: the cost a warm start avoids
        with contextlib.suppress(OSError, ValueError, RecursionError):
            stored = json.loads(self.path.read_text())
            if (
                isinstance(stored, dict)
                and stored.get("version") == INDEX_VERSION
                and stored.get("root") == root
                and isinstance(stored.get("files"), dict)
            ):
                self.files = stored["files"]
        self.seen: set[str] = set()

    def digest(self, path: Path | str, rel: str) -> tuple[int, str]:
        """(size, content digest) of a file; a file that is not a regular one is not read
        (a FIFO would block), and stands in the fingerprint as what it is."""
        self.seen.add(rel)
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            return st.st_size, f"not-a-regular-file:{stat.S_IFMT(st.st_mode):o}"
        key = [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]
        known = self.files.get(rel)
        if isinstance(known, list) and len(known) == 5 and known[:4] == key:
            return st.st_size, str(known[4])
        h = hashlib.blake2b(digest_size=16)
        with open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
        self.files[rel] = [*key, h.hexdigest()]
        self.changed = True
        self.hashed += 1
        return st.st_size, h.hexdigest()

    def save(self) -> None:
        """Keep the index (files gone from the root dropped); one that cannot be written costs
        only the next start's hashing."""
        gone = set(self.files) - self.seen
        if not self.changed and not gone:
            return
        from partbench.files import write_atomic

        for rel in gone:
            del self.files[rel]
        text = json.dumps({"version": INDEX_VERSION, "root": self.root, "files": self.files})
        with contextlib.suppress(Exception):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(self.path, text)


def _relative(path: Path, base: Path) -> str:
    try:
        return path.relative_to(base).as_posix()
    except ValueError:
        return path.name
