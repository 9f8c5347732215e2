"""Dataset fingerprints: a short hash that tells two copies or versions of the data apart."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path

_CHUNK = 1 << 20


def fingerprint(
    base: Path, annotation_files: Iterable[Path], image_dirs: Iterable[Path] = (), extra: str = ""
) -> str:
    """sha256 over the annotation files' bytes and the image folders' listing with sizes.

    Image contents are not read (too slow for a run's start-up); a re-encoded or swapped
    image almost always changes a size, and any change to the annotations is caught.
    """
    digest = hashlib.sha256(extra.encode())
    for path in sorted(Path(p) for p in annotation_files):
        digest.update(b"\0file\0" + _relative(path, base).encode())
        with open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                digest.update(chunk)
    for folder in sorted(Path(d) for d in image_dirs):
        entries = []
        for dirpath, dirnames, filenames in os.walk(folder):
            dirnames.sort()
            for name in filenames:
                path = Path(dirpath) / name
                entries.append(f"{_relative(path, base)}\t{path.stat().st_size}")
        digest.update(b"\0dir\0" + "\n".join(sorted(entries)).encode())
    return digest.hexdigest()[:16]


def _relative(path: Path, base: Path) -> str:
    try:
        return path.relative_to(base).as_posix()
    except ValueError:
        return path.name
