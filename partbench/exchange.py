"""``partbench db export`` / ``partbench db import``: runs moved between results stores (a
laptop's SQLite into a team's PostgreSQL), provenance and all, deduplicated by configuration.

The file format, ``partbench-runs`` version 1: JSON lines in UTF-8, gzip-compressed when the
file name ends in ``.gz``. Nothing in it is ever unpickled.

Line 1, the header::

    {"format": "partbench-runs", "version": 1, "partbench": "0.1.0", "schema_version": 2,
     "exported_at": "2025-01-31T12:00:00+00:00", "source": "/home/me/partbench.db", "runs": 12}

``runs`` is the number of run lines that follow (a shorter file is refused as truncated).
Then one line per run::

    {"source_id": 7,
     "run": {"status": "done", "encoder": ..., "config": {...}, "config_hash": ..., ...},
     "metrics": [{"name": "mAP", "value": 61.5, "ci_low": 60.1, "ci_high": 63.0}],
     "items": {"summary": {"ap": {"dtype": "float64", "shape": [26]}}, "npz": "<base64>"} or null}

``run`` holds every column of the runs table but its id (RUN_FIELDS below): the status (done,
failed or interrupted; running runs are not exported), the encoder, task and dataset with their
plugins and fingerprint, the configuration and its hash, library versions, device, seed, timings,
item counts, details, chance levels, the error and traceback, host, pid and the times (ISO 8601,
UTC). ``items`` is the per-item npz exactly as the store keeps it (arrays of numbers only, read
with ``allow_pickle=False``). Metrics and every JSON value are finite numbers; NaN may occur only
inside the npz. Unknown keys are an error: a later writer that adds any bumps ``version``.

Every run is checked by ``partbench.store.validate`` as it is read (ranges, intervals, one value
per metric, per-item results against ``n_items`` and the headline, level, times, whole numbers),
and the whole import is one transaction: a refused line, named by file, line and key, leaves the
target as it was. docs/export-format.md is the format's full reference, with its schema.

Import deduplicates by configuration hash: a done run whose configuration is already done in
the target (or held by a live run there) is skipped; a failed or interrupted run is skipped when
the very same run (configuration, status, start, host, pid) is already there, so importing a
file twice changes nothing.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import datetime as dt
import gzip
import io
import json
import os
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from partbench.store import AdoptedRun

from partbench import __version__
from partbench.errors import PartbenchError
from partbench.files import open_regular
from partbench.store.validate import ResultError, check_result, check_run_fields
from partbench.store.values import clean_json

FORMAT = "partbench-runs"
VERSION = 1
EXPORTED_STATUSES = ("done", "failed", "interrupted")

# name -> (kind, nullable). Kinds: str, int, json (an object), time (ISO 8601).
RUN_FIELDS: dict[str, tuple[str, bool]] = {
    "status": ("str", False),
    "encoder": ("str", False),
    "encoder_plugin": ("str", False),
    "family": ("str", False),
    "weights_id": ("str", False),
    "task": ("str", False),
    "task_plugin": ("str", False),
    "level": ("str", False),
    "dataset": ("str", False),
    "dataset_fingerprint": ("str", False),
    "config": ("json", False),
    "config_hash": ("str", False),
    "headline_metric": ("str", False),
    "n_items": ("int", True),
    "items_per_class": ("json", True),
    "timing": ("json", True),
    "device": ("str", False),
    "versions": ("json", False),
    "seed": ("int", False),
    "details": ("json", True),
    "error": ("str", True),
    "started_at": ("time", False),
    "finished_at": ("time", True),
    "host": ("str", True),
    "pid": ("int", True),
    "heartbeat_at": ("time", True),
    "traceback": ("str", True),
    "chance": ("json", True),
}
LINE_KEYS = ("source_id", "run", "metrics", "items")
METRIC_KEYS = ("name", "value", "ci_low", "ci_high")
MAX_ITEMS_BYTES = 1 << 30  # uncompressed per run: a guard against a zip bomb in a hostile file


@dataclass
class ExportReport:
    file: Path
    runs: int
    by_status: dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        parts = ", ".join(f"{n} {s}" for s, n in sorted(self.by_status.items()))
        return f"Exported {self.runs} run(s) to {self.file}" + (f" ({parts})" if parts else "") + "."


@dataclass
class ImportReport:
    file: Path
    target: str
    imported: dict[str, int] = field(default_factory=dict)  # status -> count
    done_here: int = 0
    running_here: int = 0
    present: int = 0

    @property
    def total_imported(self) -> int:
        return sum(self.imported.values())

    @property
    def skipped(self) -> int:
        return self.done_here + self.running_here + self.present

    def summary(self) -> str:
        parts = ", ".join(f"{n} {s}" for s, n in sorted(self.imported.items()))
        lines = [
            f"Imported {self.total_imported} run(s) from {self.file} into {self.target}"
            + (f" ({parts})" if parts else "")
            + "."
        ]
        if self.skipped:
            why = [
                f"{self.done_here} already done there (same configuration hash)" if self.done_here else "",
                f"{self.running_here} being run there now" if self.running_here else "",
                f"{self.present} already imported" if self.present else "",
            ]
            lines.append(f"Skipped {self.skipped}: " + "; ".join(w for w in why if w) + ".")
        return "\n".join(lines)


# --- export ------------------------------------------------------------------------------------


def _time(value: dt.datetime | None) -> str | None:
    if value is None:
        return None
    aware = value.replace(tzinfo=dt.timezone.utc) if value.tzinfo is None else value
    return aware.astimezone(dt.timezone.utc).isoformat()


def _open_write(path: Path, compress: bool) -> IO[str]:
    if compress:
        return io.TextIOWrapper(gzip.open(path, "wb"), encoding="utf-8", newline="\n")
    return open(path, "w", encoding="utf-8", newline="\n")


def _open_read(path: Path) -> IO[str]:
    """The file as text, gunzipped when it starts as gzip does; a folder, FIFO or device is
    refused by name before anything reads it (a FIFO would block)."""
    try:
        raw = open_regular(path, "a partbench runs file")
    except IsADirectoryError:
        raise PartbenchError(f"{path} is a folder, not a partbench runs file") from None
    except OSError as exc:
        raise PartbenchError(f"cannot read {path}: {exc.strerror or exc}") from exc
    try:
        gz = raw.read(2) == b"\x1f\x8b"
        raw.seek(0)
    except OSError as exc:
        raw.close()
        raise PartbenchError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if gz:
        raw.close()
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8")
    return io.TextIOWrapper(raw, encoding="utf-8")


def export_runs(
    store: Any,
    path: str | Path,
    *,
    statuses: Sequence[str] = EXPORTED_STATUSES,
    dataset: str | None = None,
    encoders: Sequence[str] = (),
    batch: int = 100,
) -> ExportReport:
    """Write the store's settled runs (optionally only some statuses, one dataset, some
    encoders) to ``path``, atomically: a failed export leaves no partial file behind."""
    from sqlalchemy import func, select

    from partbench.store import SCHEMA_VERSION, Run, RunItems

    path = Path(path)
    for status in statuses:
        if status not in EXPORTED_STATUSES:
            raise PartbenchError(f"runs are exported as {', '.join(EXPORTED_STATUSES)}, not '{status}'")
    where = [Run.status.in_(list(statuses or EXPORTED_STATUSES))]
    if dataset:
        where.append(Run.dataset == dataset)
    if encoders:
        where.append(Run.encoder.in_(list(encoders)))
    with store.session() as s:
        count = s.scalar(select(func.count(Run.id)).where(*where)) or 0
        ids = list(s.scalars(select(Run.id).where(*where).order_by(Run.id)))
    report = ExportReport(path, 0)
    partial = path.with_name(f".{path.name}.partial")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with _open_write(partial, path.name.endswith(".gz")) as out:
            header = {
                "format": FORMAT,
                "version": VERSION,
                "partbench": __version__,
                "schema_version": SCHEMA_VERSION,
                "exported_at": _time(dt.datetime.now(dt.timezone.utc)),
                "source": store.where,  # never the password
                "runs": count,
            }
            out.write(json.dumps(header, allow_nan=False) + "\n")
            for start in range(0, len(ids), batch):
                chunk = ids[start : start + batch]
                with store.session() as s:
                    runs = list(s.scalars(select(Run).where(Run.id.in_(chunk)).order_by(Run.id)))
                    items = {
                        r.run_id: (r.summary, r.data)
                        for r in s.scalars(select(RunItems).where(RunItems.run_id.in_(chunk)))
                    }
                for run in runs:
                    out.write(json.dumps(_run_line(run, items.get(run.id)), allow_nan=False) + "\n")
                    report.runs += 1
                    report.by_status[run.status] = report.by_status.get(run.status, 0) + 1
        os.replace(partial, path)
    except OSError as exc:
        _remove(partial)
        raise PartbenchError(f"cannot write {path}: {exc.strerror or exc}") from exc
    except BaseException:
        _remove(partial)
        raise
    return report


def _remove(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink(missing_ok=True)


def _run_line(run: Any, items: tuple[dict, bytes] | None) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for name, (kind, _) in RUN_FIELDS.items():
        value = getattr(run, name)
        fields[name] = _time(value) if kind == "time" else value
    return {
        "source_id": run.id,
        "run": fields,
        "metrics": [
            {"name": m.name, "value": m.value, "ci_low": m.ci_low, "ci_high": m.ci_high}
            for m in sorted(run.metrics, key=lambda m: m.id)
        ],
        "items": None
        if items is None
        else {"summary": items[0], "npz": base64.b64encode(items[1]).decode("ascii")},
    }


# --- import ------------------------------------------------------------------------------------


class _Bad(Exception):
    """A problem in one line of the file; the caller adds the file and line."""


def _reject_constant(name: str) -> float:
    raise _Bad(f"holds {name}, which is not a finite number")


def _check_value(key: str, value: Any, kind: str, nullable: bool) -> Any:
    where = f"key 'run.{key}'"
    if value is None:
        if nullable:
            return None
        raise _Bad(f"{where} is null; it must be set")
    if kind == "str":
        if not isinstance(value, str):
            raise _Bad(f"{where}: expected a string, got {type(value).__name__}")
        return value
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise _Bad(f"{where}: expected a whole number, got {value!r}")
        return value
    if kind == "json":
        if not isinstance(value, dict):
            raise _Bad(f"{where}: expected an object, got {type(value).__name__}")
        return clean_json(value, where)
    if kind == "time":
        if not isinstance(value, str):
            raise _Bad(f"{where}: expected an ISO 8601 time, got {value!r}")
        try:
            when = dt.datetime.fromisoformat(value)
        except ValueError:
            raise _Bad(f"{where}: expected an ISO 8601 time, got {value!r}") from None
        return when.replace(tzinfo=dt.timezone.utc) if when.tzinfo is None else when
    raise AssertionError(kind)


def _check_items(raw: Any) -> tuple[bytes, dict, dict] | tuple[None, None, None]:
    from partbench.store import decode_items

    if raw is None:
        return None, None, None
    if not isinstance(raw, dict) or set(raw) != {"summary", "npz"}:
        raise _Bad("key 'items': expected null or an object with 'summary' and 'npz'")
    if not isinstance(raw["npz"], str):
        raise _Bad("key 'items.npz': expected base64 text")
    try:
        blob = base64.b64decode(raw["npz"], validate=True)
    except (binascii.Error, ValueError):
        raise _Bad("key 'items.npz' is not valid base64") from None
    try:
        with zipfile.ZipFile(io.BytesIO(blob)) as archive:
            if sum(info.file_size for info in archive.infolist()) > MAX_ITEMS_BYTES:
                raise _Bad(f"key 'items.npz' unpacks to more than {MAX_ITEMS_BYTES} bytes")
        arrays = decode_items(blob)  # allow_pickle=False: an object array is refused, never run
    except _Bad:
        raise
    except Exception as exc:
        raise _Bad(f"key 'items.npz' is not a readable npz of number arrays ({exc})") from None
    summary = {name: {"dtype": str(a.dtype), "shape": list(a.shape)} for name, a in arrays.items()}
    for name, a in arrays.items():
        if a.dtype.kind not in "biuf":
            raise _Bad(f"key 'items.npz': array '{name}' has dtype {a.dtype}; only numbers are stored")
    if raw["summary"] != summary:
        raise _Bad(f"key 'items.summary' does not describe the npz it comes with (the npz holds {summary})")
    return blob, summary, arrays


def _parse_line(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise _Bad(f"not JSON ({exc.msg} at column {exc.colno})") from None
    except RecursionError:
        raise _Bad("JSON nested too deeply to be a partbench run") from None
    if not isinstance(value, dict):
        raise _Bad(f"expected a JSON object, got {type(value).__name__}")
    return value


def _check_run(line: dict[str, Any], tasks: Mapping[str, Any] | None) -> AdoptedRun:
    from partbench.store import AdoptedRun, Run

    unknown = sorted(set(line) - set(LINE_KEYS))
    if unknown:
        raise _Bad(f"unknown key '{unknown[0]}' (this partbench reads format version {VERSION})")
    for key in ("run", "metrics"):
        if key not in line:
            raise _Bad(f"key '{key}' is missing")
    run = line["run"]
    if not isinstance(run, dict):
        raise _Bad("key 'run': expected an object")
    unknown = sorted(set(run) - set(RUN_FIELDS))
    if unknown:
        raise _Bad(f"unknown key 'run.{unknown[0]}' (this partbench reads format version {VERSION})")
    columns = Run.__table__.columns
    fields = {}
    for key, (kind, nullable) in RUN_FIELDS.items():
        if key not in run:
            raise _Bad(f"key 'run.{key}' is missing")
        fields[key] = _check_value(key, run[key], kind, nullable)
        length = getattr(columns[key].type, "length", None)
        if length is not None and isinstance(fields[key], str) and len(fields[key]) > length:
            raise _Bad(f"key 'run.{key}' is {len(fields[key])} characters long; at most {length} are kept")
    if fields["status"] not in EXPORTED_STATUSES:
        raise _Bad(
            f"key 'run.status' is '{fields['status']}'; expected one of {', '.join(EXPORTED_STATUSES)}"
        )
    metrics_raw = line["metrics"]
    if not isinstance(metrics_raw, list):
        raise _Bad("key 'metrics': expected a list")
    raw_rows = []
    for i, m in enumerate(metrics_raw):
        if not isinstance(m, dict) or set(m) != set(METRIC_KEYS):
            raise _Bad(f"key 'metrics[{i}]': expected an object with {', '.join(METRIC_KEYS)}")
        raw_rows.append(tuple(m[k] for k in METRIC_KEYS))
    blob, summary, arrays = _check_items(line.get("items"))
    try:
        check_run_fields(fields, tasks=tasks)
        metrics = check_result(
            raw_rows,
            headline=fields["headline_metric"],
            n_items=fields["n_items"],
            chance=fields["chance"],
            items=arrays,
            details=fields["details"],
            status=fields["status"],
        )
    except ResultError as exc:
        field = exc.field if exc.field.startswith(("run.", "metrics", "items")) else f"run.{exc.field}"
        raise _Bad(f"key '{field}': {str(exc)[len(exc.field) + 2 :]}") from None
    return AdoptedRun(fields, metrics, blob, summary)


def _check_header(text: str) -> dict[str, Any]:
    header = _parse_line(text)
    if header.get("format") != FORMAT:
        raise _Bad(
            f"not a partbench runs file (key 'format' is {header.get('format')!r}, expected '{FORMAT}')"
        )
    version = header.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise _Bad(f"key 'version' is {version!r}, expected a whole number")
    if version > VERSION:
        raise _Bad(
            f"written in format version {version} by partbench {header.get('partbench', '?')}; "
            f"this partbench reads up to version {VERSION}: upgrade partbench"
        )
    runs = header.get("runs")
    if isinstance(runs, bool) or not isinstance(runs, int) or runs < 0:
        raise _Bad(f"key 'runs' is {runs!r}, expected the number of runs that follow")
    return header


def read_runs(path: str | Path, tasks: Mapping[str, Any] | None = None) -> Iterator[AdoptedRun]:
    """Every run of the file, checked by ``partbench.store.validate`` (``tasks``: the installed
    tasks by name, whose level and headline a run of them must have); a problem is a
    PartbenchError naming the file, the line and the key."""
    path = Path(path)
    with _open_read(path) as f:
        number = 0
        try:
            try:
                first = f.readline()
            except (UnicodeDecodeError, OSError, EOFError) as exc:
                raise PartbenchError(f"{path}: cannot be read as UTF-8 JSON lines ({exc})") from None
            number = 1
            if not first.strip():
                raise _Bad("empty file; expected a partbench runs header")
            header = _check_header(first)
            seen = 0
            for text in f:
                number += 1  # the line a problem is reported at
                if not text.strip():
                    continue
                record = _check_run(_parse_line(text), tasks)
                seen += 1
                yield record
        except _Bad as exc:
            raise PartbenchError(f"{path} line {number}: {exc}") from None
        except (UnicodeDecodeError, OSError, EOFError, gzip.BadGzipFile) as exc:
            raise PartbenchError(f"{path} line {number + 1}: cannot be read ({exc})") from None
        except RecursionError:
            raise PartbenchError(
                f"{path} line {number}: JSON nested too deeply to be a partbench run"
            ) from None
    if seen != header["runs"]:
        raise PartbenchError(
            f"{path}: the header promises {header['runs']} run(s) but the file holds {seen}"
            + (" (truncated?)" if seen < header["runs"] else "")
        )


def import_runs(store: Any, path: str | Path, *, tasks: Mapping[str, Any] | None = None) -> ImportReport:
    """Add the file's runs to ``store`` in one transaction: every run is checked as it is
    read, and a bad one (named by file, line and key) leaves the store as it was.
    ``tasks``: the installed tasks by name (``Registry.tasks``)."""
    path = Path(path)
    store.check_writable()
    statuses: list[str] = []

    def records() -> Iterator[Any]:
        statuses.clear()  # a locked database tries the whole transaction again
        for record in read_runs(path, tasks):
            statuses.append(record.fields["status"])
            yield record

    outcomes = store.adopt_all(records)
    report = ImportReport(path, store.where)
    for status, (outcome, _) in zip(statuses, outcomes, strict=True):
        if outcome == "imported":
            report.imported[status] = report.imported.get(status, 0) + 1
        elif outcome == "done-here":
            report.done_here += 1
        elif outcome == "running-here":
            report.running_here += 1
        else:
            report.present += 1
    return report
