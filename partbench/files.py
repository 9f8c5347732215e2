"""Writing and downloading files so that nobody ever sees half of one.

write_atomic   text to a temporary file beside the target, renamed into place
download       the one verified download: weights and dataset archives both come through it
verify_cached  check a downloaded file against the sha256 recorded beside it
cleanup_on_sigterm  a SIGTERM raises, so the ``finally`` blocks that remove temporaries run

This module imports nothing heavy; urllib and http are imported by ``download`` itself.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import stat
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from partbench.errors import PartbenchError

_CHUNK = 1 << 20
SHA256_SUFFIX = ".sha256"  # "<file>.sha256" beside a downloaded file: "<hex digest>  <name>\n"


def _reason(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


_NOT_REGULAR = (
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISFIFO, "a named pipe (FIFO)"),
    (stat.S_ISCHR, "a device"),
    (stat.S_ISBLK, "a device"),
    (stat.S_ISSOCK, "a socket"),
)


def open_regular(path: Path, what: str, *, error: type[PartbenchError] = PartbenchError) -> BinaryIO:
    """``path`` opened for reading in binary, once it is known to be a regular file: a folder,
    FIFO, socket or device is refused naming ``path`` and ``what`` it should be. Opened without
    blocking first, so a FIFO with no writer never hangs the reader. A file that cannot be
    opened is the OSError itself, for the caller to word."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = next((name for test, name in _NOT_REGULAR if test(mode)), "not a regular file")
            raise error(f"{path} is {kind}, not {what}; give a regular file")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_regular_text(path: Path, what: str, *, error: type[PartbenchError] = PartbenchError) -> str:
    """The UTF-8 text of ``path``, a regular file (see ``open_regular``); OSError as it is."""
    with open_regular(path, what, error=error) as f:
        data = f.read()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"{path}: not UTF-8 text ({exc})") from None


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file renamed into place.

    An existing file keeps its permission bits; a new one gets the usual ones (0666 less the
    umask), not the 0600 of a temporary file. A path that cannot be written is a
    PartbenchError naming it, never a traceback.
    """
    path = Path(path)
    if path.is_dir():
        raise PartbenchError(f"{path}: is a folder; give a file name to write to")
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        mode = 0o666 & ~_umask()
    except OSError as exc:
        raise PartbenchError(f"{path}: cannot be written ({_reason(exc)})") from None
    if path.exists() and not os.access(path, os.W_OK):
        raise PartbenchError(f"{path}: cannot be written (the file is read-only)")
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
        tmp = None
    except OSError as exc:
        raise PartbenchError(f"{path}: cannot be written ({_reason(exc)})") from None
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)


def _umask() -> int:
    # Linux reports the umask; elsewhere it can only be read by setting it (briefly, under a
    # lock, so that two threads of ours do not race on it).
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    with _UMASK_LOCK:
        current = os.umask(0o022)
        os.umask(current)
    return current


_UMASK_LOCK = threading.Lock()


# --- SIGTERM ----------------------------------------------------------------------------


class Terminated(SystemExit):
    """Raised in the main thread when SIGTERM arrives inside :func:`cleanup_on_sigterm`."""

    def __init__(self) -> None:
        super().__init__(128 + signal.SIGTERM)


@contextlib.contextmanager
def cleanup_on_sigterm() -> Iterator[None]:
    """Turn SIGTERM into an exception for the duration, so that ``finally`` blocks remove
    temporary files before the process ends (with status 143, as if killed by the signal).

    Only where SIGTERM still has its default action, and only in the main thread (the only
    one Python delivers signals to): a handler someone else installed (the runner's, which
    marks runs interrupted) is left in charge, and is expected to raise as well.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)
    if previous is not signal.SIG_DFL:
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        # Later SIGTERMs while cleaning up are ignored rather than killing the cleanup.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise Terminated()

    signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# --- downloads --------------------------------------------------------------------------


def _looks_like_html(head: bytes, content_type: str) -> bool:
    if content_type.split(";")[0].strip().lower() in ("text/html", "application/xhtml+xml"):
        return True
    start = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    return start.startswith((b"<!doctype html", b"<html", b"<head", b"<body", b"<?xml"))


@dataclass
class _Received:
    """What streaming a response body to a file measured."""

    sha256: str
    received: int
    announced: str | None  # the Content-Length header, as sent
    content_type: str
    head: bytes  # the body's first 512 bytes, to tell an HTML page


def _receive(
    url: str, part: Path, *, size: int | None, progress: bool, timeout: float, error: type[PartbenchError]
) -> _Received:
    """Stream ``url``'s body into ``part``, hashing it as it comes; a failed request raises
    ``error`` naming the URL."""
    import http.client
    import urllib.error
    import urllib.request
    from urllib.parse import urlparse

    digest, received = hashlib.sha256(), 0
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(part, "wb") as out:
            announced = response.headers.get("Content-Length")
            content_type = response.headers.get("Content-Type") or ""
            total = int(announced) if announced and announced.isdigit() else size
            head = b""
            with progress_bar(progress, total, Path(urlparse(url).path).name or url) as advance:
                while chunk := response.read(_CHUNK):
                    if len(head) < 512:
                        head += chunk[: 512 - len(head)]
                    out.write(chunk)
                    digest.update(chunk)
                    received += len(chunk)
                    advance(len(chunk))
    except urllib.error.HTTPError as exc:
        raise error(f"{url}: download failed (HTTP {exc.code} {exc.reason})") from None
    except (OSError, http.client.HTTPException, ValueError) as exc:
        # URLError, timeouts, a connection cut mid-body, a full disk, a malformed URL
        raise error(f"{url}: download failed ({_reason(exc)})") from None
    return _Received(digest.hexdigest(), received, announced, content_type, head)


def _check_received(
    url: str,
    got: _Received,
    *,
    size: int | None,
    expected: str | None,
    sha256_prefix: str | None,
    error: type[PartbenchError],
) -> None:
    """Raise ``error`` unless the body is whole, not an HTML page, and of the size and digest
    asked for."""
    announced, received, hexdigest = got.announced, got.received, got.sha256
    if announced and announced.isdigit() and received != int(announced):
        raise error(
            f"{url}: the connection closed after {received} of {announced} bytes; "
            "the partial download was discarded"
        )
    if _looks_like_html(got.head, got.content_type):
        raise error(
            f"{url}: the server sent an HTML page, not the file (a login, quota or error "
            "page?); the download was discarded"
        )
    if size is not None and received != size:
        raise error(f"{url}: received {received} bytes, expected {size}; the download was discarded")
    if expected is not None and hexdigest != expected:
        raise error(
            f"{url}: sha256 mismatch (expected {expected}, got {hexdigest}); the download was discarded"
        )
    if sha256_prefix is not None and not hexdigest.startswith(sha256_prefix.lower()):
        raise error(
            f"{url}: sha256 {hexdigest[:16]}... does not match the {sha256_prefix} in the "
            "file name; the download was discarded"
        )


def _run_validate(
    url: str, validate: Callable[[Path], Any], part: Path, dest: Path, error: type[PartbenchError]
) -> None:
    try:
        validate(part)
    except Exception as exc:
        # The check names the temporary path; the user knows the file by its URL.
        message = str(exc) if isinstance(exc, PartbenchError) else _reason(exc)
        message = message.replace(str(part), dest.name)
        raise error(f"{url}: the download was discarded: {message}") from None


def download(
    url: str,
    dest: Path | str,
    *,
    sha256: str | None = None,
    sha256_prefix: str | None = None,
    size: int | None = None,
    validate: Callable[[Path], Any] | None = None,
    record_sha256: bool = False,
    error: type[PartbenchError] = PartbenchError,
    progress: bool = False,
    timeout: float = 60.0,
) -> str:
    """Download ``url`` to ``dest``; return the sha256 of what was stored.

    The body streams into a temporary folder beside ``dest`` (the file keeps its own name
    there, so ``validate`` sees the right suffix). It takes the final name only when all of
    these hold: the server's Content-Length and ``size`` (when given) match the bytes
    received, the body is not an HTML page, its sha256 equals ``sha256`` or starts with
    ``sha256_prefix`` (when given), and ``validate(path)`` returns without raising. Anything
    else raises ``error`` naming the URL, and nothing is left behind, not even on SIGTERM.
    With ``record_sha256`` the digest is also written beside the file (``<name>.sha256``),
    for :func:`verify_cached`.
    """
    from urllib.parse import urlparse

    dest = Path(dest)
    if urlparse(url).scheme not in ("http", "https"):
        raise error(f"{url}: only http and https URLs can be downloaded")
    expected = sha256.lower() if sha256 else None
    with cleanup_on_sigterm():
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            work = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".download", dir=dest.parent))
        except OSError as exc:
            raise error(f"{dest.parent}: cannot be written ({_reason(exc)})") from None
        try:
            part = work / dest.name
            got = _receive(url, part, size=size, progress=progress, timeout=timeout, error=error)
            _check_received(url, got, size=size, expected=expected, sha256_prefix=sha256_prefix, error=error)
            if validate is not None:
                _run_validate(url, validate, part, dest, error)
            if record_sha256:
                # The record goes first: cut off between the two renames, the cache holds an old
                # file with a new record, which verify_cached refuses, never an unrecorded file.
                write_atomic(dest.with_name(dest.name + SHA256_SUFFIX), f"{got.sha256}  {dest.name}\n")
            os.replace(part, dest)
            return got.sha256
        finally:
            shutil.rmtree(work, ignore_errors=True)


def recorded_sha256(path: Path) -> str | None:
    """The digest recorded beside ``path`` by a download, or None when there is none."""
    sidecar = Path(path).with_name(Path(path).name + SHA256_SUFFIX)
    try:
        text = sidecar.read_text(encoding="utf-8")
    except (FileNotFoundError, UnicodeDecodeError):
        return None
    fields = text.split()
    return fields[0].lower() if fields else None


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(_CHUNK):
            digest.update(block)
    return digest.hexdigest()


def verify_cached(path: Path, *, error: type[PartbenchError] = PartbenchError) -> str:
    """Hash ``path`` and compare it with the digest its download recorded; return the hash.

    A file with no record (placed there by hand) is accepted as it is. A mismatch means the
    file changed after it was verified (a half-copied replacement, a disk fault, tampering) and
    is an error naming the file; the file is left for the user to look at.
    """
    path = Path(path)
    actual = sha256_of(path)
    recorded = recorded_sha256(path)
    if recorded is not None and recorded != actual:
        raise error(
            f"{path}: sha256 {actual} differs from the {recorded} recorded when it was downloaded; "
            f"the file changed since: delete it (and {path.name}{SHA256_SUFFIX}) to download it again"
        )
    return actual


class progress_bar:  # lower case: it is used like a function
    """A rich download bar on stderr, or nothing."""

    def __init__(self, enabled: bool, total: int | None, label: str):
        self.enabled, self.total, self.label = enabled, total, label

    def __enter__(self) -> Callable[[int], None]:
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
            TextColumn("{task.description}", markup=False),  # the label is a file name
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
