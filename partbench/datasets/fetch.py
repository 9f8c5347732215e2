"""``partbench data fetch NAME``: download a dataset's public archive, verify it, unpack it.

Atomic: the archive goes to a temporary file next to the destination, is checked against
its sha256, unpacked into a temporary folder and checked against the dataset's layout;
only then is that folder renamed into place. An interrupted or failed fetch leaves nothing
that looks like data.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import urlparse

from partbench.errors import DataError

_CHUNK = 1 << 20


@dataclass(frozen=True)
class Archive:
    url: str
    sha256: str
    size: int | None = None  # bytes, when known: a short download fails before hashing
    top: str | None = None  # the folder inside the archive that becomes the dataset folder


ARCHIVES = {
    "cub200": Archive(
        url="https://data.caltech.edu/records/65de6-vp158/files/CUB_200_2011.tgz?download=1",
        sha256="0c685df5597a8b24909f6a7c9db6d11e008733779a671760afef78feb49bf081",
        size=1_150_585_339,
        top="CUB_200_2011",
    ),
}


def fetch(
    name: str,
    dest: Path | str | None = None,
    url: str | None = None,
    sha256: str | None = None,
    *,
    progress: bool = True,
) -> Path:
    """Download, verify and unpack ``name``'s archive into ``dest`` (default: its data folder).

    ``url`` points at a mirror; the official sha256 still applies unless ``sha256`` is given.
    Returns the dataset folder. Data already complete at ``dest`` is left as it is.
    """
    from partbench.datasets.layouts import LAYOUTS, default_root, present, resolve_any

    archive = ARCHIVES.get(name)
    if archive is None and url is None:
        known = ", ".join(sorted(ARCHIVES))
        raise DataError(
            f"'{name}' has no stable public archive partbench can fetch (it can fetch: {known}); "
            f"place the data in {default_root(name, dest)} yourself"
        )
    url = url or archive.url  # type: ignore[union-attr]
    expected = (sha256 or (archive.sha256 if archive else "")).lower()
    if len(expected) != 64 or any(c not in "0123456789abcdef" for c in expected):
        raise DataError(
            f"fetching '{name}' from {url} needs the archive's sha256 (64 hex digits), got {sha256!r}"
        )
    if urlparse(url).scheme not in ("http", "https"):
        raise DataError(f"{url}: only http and https URLs can be fetched")

    dest = Path(default_root(name, dest))
    if dest.exists():
        if name in LAYOUTS and present(name, dest):
            return dest
        if not dest.is_dir() or any(dest.iterdir()):
            raise DataError(
                f"{dest} exists and does not hold complete '{name}' data; remove it or fetch "
                f"to another folder"
            )
    dest.parent.mkdir(parents=True, exist_ok=True)

    fd, download = tempfile.mkstemp(prefix=f".{name}-", suffix=".part", dir=dest.parent)
    os.close(fd)
    workdir = Path(tempfile.mkdtemp(prefix=f".{name}-unpack-", dir=dest.parent))
    try:
        digest = _download(url, Path(download), archive.size if archive and not sha256 else None, progress)
        if digest != expected:
            raise DataError(
                f"{url}: sha256 mismatch (expected {expected}, got {digest}); the download was discarded"
            )
        _unpack(Path(download), workdir)
        source = _dataset_folder(workdir, archive.top if archive else None)
        if name in LAYOUTS:
            resolve_any(LAYOUTS[name], source)  # a wrong archive fails here, before dest exists
        if dest.exists():
            dest.rmdir()  # empty, checked above
        os.replace(source, dest)
        return dest
    finally:
        Path(download).unlink(missing_ok=True)
        shutil.rmtree(workdir, ignore_errors=True)


def _download(url: str, target: Path, size: int | None, progress: bool) -> str:
    digest = hashlib.sha256()
    received = 0
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(target, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or size
            with _progress_bar(progress, total, Path(urlparse(url).path).name or url) as advance:
                while chunk := response.read(_CHUNK):
                    out.write(chunk)
                    digest.update(chunk)
                    received += len(chunk)
                    advance(len(chunk))
    except OSError as exc:  # URLError, HTTPError, timeouts, a full disk
        raise DataError(f"{url}: download failed ({exc})") from None
    if size is not None and received != size:
        raise DataError(f"{url}: received {received} bytes, expected {size}")
    return digest.hexdigest()


class _progress_bar:  # lower case: it is used like a function
    """A rich download bar on stderr, or nothing."""

    def __init__(self, enabled: bool, total: int | None, label: str):
        self.enabled, self.total, self.label = enabled, total, label

    def __enter__(self):
        if not self.enabled:
            return lambda n: None
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        self.bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True),
        )
        self.bar.__enter__()
        task = self.bar.add_task(self.label, total=self.total)
        return lambda n: self.bar.advance(task, n)

    def __exit__(self, *exc_info: object) -> None:
        if self.enabled:
            self.bar.__exit__(*exc_info)


def _unpack(archive: Path, into: Path) -> None:
    """Extract regular files and folders only, each strictly inside ``into``."""
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
            for member in members:
                _check_member(member, into)
            if hasattr(tarfile, "data_filter"):
                tar.extractall(into, members=members, filter="data")
            else:  # checked above; the filter is a second guard where Python has it
                tar.extractall(into, members=members)
    except tarfile.TarError as exc:
        raise DataError(f"{archive}: not a readable tar archive ({exc})") from None


def _check_member(member: tarfile.TarInfo, into: Path) -> None:
    name = member.name
    pure = PurePosixPath(name)
    if pure.is_absolute() or ".." in pure.parts or "\\" in name:
        raise DataError(f"archive member '{name}' would be written outside the destination")
    if not (member.isfile() or member.isdir()):
        raise DataError(f"archive member '{name}' is a link or special file; datasets hold only files")
    resolved = (into / name).resolve()
    if resolved != into.resolve() and into.resolve() not in resolved.parents:
        raise DataError(f"archive member '{name}' would be written outside the destination")


def _dataset_folder(workdir: Path, top: str | None) -> Path:
    if top and (workdir / top).is_dir():
        return workdir / top
    entries = list(workdir.iterdir())
    if len(entries) == 1 and entries[0].is_dir():
        return entries[0]
    return workdir
