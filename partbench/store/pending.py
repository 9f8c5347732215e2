"""Results that could not be written, kept in files until a store can write them.

A result that still cannot be written after every retry (the database locked or unreachable)
is kept in a pending file under ``PARTBENCH_HOME/pending`` and stored by the next ``Store``
opened on the same database: a computed result is never thrown away. One file a result, named
``KEY-TIME-PID-RUN-OP.zip``: KEY names the database, OP is ``finish`` or ``fail``; it holds
``meta.json`` (the record to apply) and, for a finish with per-item results, ``items.npz``.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from partbench.errors import PartbenchError

if TYPE_CHECKING:
    from partbench.store.engine import Target


@dataclass(frozen=True)
class PendingResult:
    path: Path
    run_id: int
    op: str  # finish or fail
    record: Mapping[str, Any]  # what the store's finish or fail writes
    blob: bytes | None  # the per-item npz of a finish
    summary: dict | None  # its names, dtypes and shapes


def pending_key(target: Target, url: str) -> str:
    # Keyed by the database, not the URL's spelling: a relative path, or the same file
    # opened read-only, finds the same pending results.
    ident = f"sqlite:{os.path.realpath(target.path)}" if target.path else url
    return hashlib.sha256(ident.encode()).hexdigest()[:16]


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return  # not possible on every platform; the rename itself is atomic
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class PendingResults:
    """The pending files of one database (named ``where`` in messages) in ``folder``.
    ``problems`` collects the files that could not be read or applied, for the CLI to show."""

    def __init__(self, folder: Path, key: str, where: str) -> None:
        self.folder, self.key, self.where = folder, key, where
        self.problems: list[str] = []
        self.reasons: dict[Path, str] = {}  # a kept file -> why it could not be written

    def _files(self) -> list[tuple[Path, int, str]]:
        if not self.folder.is_dir():
            return []
        found = []
        for path in sorted(self.folder.glob(f"{self.key}-*.zip")):
            try:
                _, _, _, run_id, op = path.stem.split("-")
                found.append((path, int(run_id), op))
            except ValueError:
                continue
        return found

    def run_ids(self) -> set[int]:
        """The runs whose result waits here: not abandoned, only not yet written."""
        return {run_id for _, run_id, _ in self._files()}

    def keep(
        self,
        op: str,
        run_id: int,
        record: Mapping[str, Any],
        blob: bytes | None,
        summary: dict | None,
        cause: Exception,
    ) -> Path:
        """Write the result where the next Store opened on this database will find it:
        atomically (a temporary file, fsync, rename), so a crash leaves it whole or absent."""
        meta = {
            "url": self.where,  # never the password
            "database": self.where,
            "op": op,
            "run_id": run_id,
            "record": record,
            "summary": summary,
            "error": str(cause),
        }
        name = f"{self.key}-{time.time_ns():020d}-{os.getpid()}-{run_id}-{op}.zip"
        final = self.folder / name
        partial = self.folder / f".{name}.partial"
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            with open(partial, "wb") as f:
                with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_DEFLATED) as archive:
                    archive.writestr("meta.json", json.dumps(meta, allow_nan=False, indent=1))
                    if blob is not None:
                        archive.writestr("items.npz", blob, compress_type=zipfile.ZIP_STORED)
                f.flush()
                os.fsync(f.fileno())
            os.replace(partial, final)
            _fsync_dir(self.folder)
        except OSError as exc:
            partial.unlink(missing_ok=True)
            raise PartbenchError(
                f"the result of run {run_id} could not be stored ({cause}) nor kept in {self.folder} ({exc})"
            ) from exc
        self.reasons[final] = str(cause)
        return final

    def waiting(self) -> Iterator[PendingResult]:
        """The results waiting here, oldest first; a file that cannot be read is skipped and
        named in ``problems``."""
        for path, run_id, op in self._files():
            try:
                with zipfile.ZipFile(path) as archive:
                    meta = json.loads(archive.read("meta.json"))
                    blob = archive.read("items.npz") if "items.npz" in archive.namelist() else None
            except (OSError, KeyError, ValueError, RecursionError, zipfile.BadZipFile) as exc:
                self.set_aside(path, f"it cannot be read: {type(exc).__name__}: {exc}")
                continue
            if not isinstance(meta, dict) or "record" not in meta or op not in ("finish", "fail"):
                self.set_aside(path, "its meta.json is not an object with a 'record'")
                continue
            summary = meta.get("summary")
            yield PendingResult(
                path, run_id, op, meta["record"], blob, summary if isinstance(summary, dict) else None
            )

    def set_aside(self, path: Path, why: Exception | str) -> None:
        """A pending result that can never be applied (its run was settled or deleted
        meanwhile, or the file does not hold a valid result) moves to pending/unstored/: kept
        for the user, not retried on every open."""
        aside = self.folder / "unstored" / path.name
        try:
            aside.parent.mkdir(exist_ok=True)
            path.replace(aside)
        except OSError:
            aside = path
        self.problems.append(f"a pending result could not be stored ({why}); it is kept in {aside}")
