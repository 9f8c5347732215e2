"""``partbench db export`` / ``db import``: runs move between stores (SQLite to PostgreSQL
and back) with their whole provenance, deduplicated by configuration hash; a bad file is a
clear error naming the file, the line and the key, and changes nothing."""

from __future__ import annotations

import base64
import gzip
import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pg_server
import pytest
from click.testing import CliRunner
from export_lines import edit, put

from partbench.errors import PartbenchError
from partbench.exchange import FORMAT, RUN_FIELDS, VERSION, export_runs, import_runs
from partbench.specs import MetricValue
from partbench.store import Run, Store


@pytest.fixture(scope="module")
def postgres_server():
    yield from pg_server.server()


@pytest.fixture
def pg_url(postgres_server):
    yield from pg_server.database(postgres_server)


def _fields(encoder="mini-mae", task="part-retrieval", **over):
    fields = dict(
        encoder=encoder,
        encoder_plugin="partbench",
        family="masked-image-modeling",
        weights_id="sha256:abc",
        task=task,
        task_plugin="partbench",
        level="part",
        dataset="synparts",
        dataset_fingerprint="436e",
        config={"encoder": {"name": encoder}, "task": {"name": task}, "limit": 8, "note": "ünï ✓"},
        headline_metric="mAP",
        device="cpu (x86_64, 2 threads)",
        versions={"torch": "2.4", "partbench": "0.1.0"},
        seed=3,
    )
    fields.update(over)
    return fields


def _fill(store: Store) -> dict[str, int]:
    """A store with a run of every kind: done (with items, chance, timing, details), failed
    (with a traceback), interrupted, and one still running."""
    ids = {}
    ids["done"] = store.claim("hash-done", **_fields())
    ap = np.array([0.25, np.nan, 1.0, 0.95])  # class means 25 and 97.5: mAP 61.25 over 3 queries
    store.finish(
        ids["done"],
        {"mAP": MetricValue(61.25, 59.5, 63.0), "AP": MetricValue(58.0)},
        n_items=3,
        items_per_class={"eye": 2, "leg": 2},
        timing={"images_per_second": 12.5, "peak_rss_mb": 800.0},
        details={"per_class_ap": {"eye": 50.0, "leg": 72.5}},
        items={"ap": ap, "label": np.array([0, 0, 1, 1], dtype=np.int64)},
        chance={"mAP": 51.0},
    )
    ids["other"] = store.claim("hash-other", **_fields(encoder="mini-dino"))
    store.finish(ids["other"], {"mAP": MetricValue(70.0)}, n_items=4)
    ids["failed"] = store.claim("hash-failed", **_fields(task="part-linear"))
    store.fail(
        ids["failed"], "ValueError: bad", traceback='Traceback:\n  File "x.py", line 3\nValueError: bad'
    )
    ids["interrupted"] = store.claim("hash-int", **_fields(task="object-linear"))
    store.fail(ids["interrupted"], "interrupted: KeyboardInterrupt", status="interrupted")
    ids["running"] = store.claim("hash-running", **_fields(task="part-seg"))
    return ids


def _provenance(store: Store, run_id: int) -> dict:
    detail = store.detail(run_id)
    detail.pop("id")
    detail["items"] = {k: v.tolist() for k, v in store.items(run_id).items()}
    return json.loads(json.dumps(detail, default=str).replace("NaN", '"nan"'))


def _by_hash(store: Store) -> dict[str, int]:
    return {r.config_hash: r.id for r in store.runs()}


def test_the_format_carries_every_column_of_a_run():
    columns = {c.name for c in Run.__table__.columns} - {"id"}
    assert set(RUN_FIELDS) == columns


def test_runs_move_between_sqlite_stores_with_their_provenance(tmp_path):
    source = Store(f"sqlite:///{tmp_path / 'laptop.db'}")
    ids = _fill(source)
    file = tmp_path / "runs.jsonl"
    report = export_runs(source, file)
    assert report.runs == 4 and report.by_status == {"done": 2, "failed": 1, "interrupted": 1}
    lines = file.read_text().splitlines()
    header = json.loads(lines[0])
    assert (header["format"], header["version"], header["runs"]) == (FORMAT, VERSION, 4)
    assert len(lines) == 5 and "hash-running" not in file.read_text()  # a run in flight stays

    target = Store(f"sqlite:///{tmp_path / 'team.db'}")
    result = import_runs(target, file)
    assert result.imported == {"done": 2, "failed": 1, "interrupted": 1} and result.skipped == 0
    here = _by_hash(target)
    for key, digest in (("done", "hash-done"), ("failed", "hash-failed"), ("interrupted", "hash-int")):
        assert _provenance(target, here[digest]) == _provenance(source, ids[key])
    items = target.items(here["hash-done"])
    assert np.isnan(items["ap"][1]) and items["label"].dtype == np.int64
    assert target.claim("hash-done", **_fields()) is None  # an imported result counts as stored

    again = import_runs(target, file)  # importing twice changes nothing
    assert again.total_imported == 0 and again.done_here == 2 and again.present == 2
    assert len(target.runs()) == 4


def test_a_configuration_already_done_in_the_target_is_skipped_and_counted(tmp_path):
    source = Store(f"sqlite:///{tmp_path / 'a.db'}")
    _fill(source)
    file = tmp_path / "runs.jsonl.gz"
    export_runs(source, file, statuses=["done"])
    with gzip.open(file, "rt") as f:  # .gz compresses
        assert json.loads(f.readline())["runs"] == 2

    target = Store(f"sqlite:///{tmp_path / 'b.db'}")
    mine = target.claim("hash-done", **_fields())
    target.finish(mine, {"mAP": MetricValue(1.0)}, n_items=1)
    busy = target.claim("hash-other", **_fields(encoder="mini-dino"))  # being run there now
    report = import_runs(target, file)
    assert (report.total_imported, report.done_here, report.running_here) == (0, 1, 1)
    assert "1 already done there" in report.summary() and "1 being run there now" in report.summary()
    assert target.find_done("hash-done").id == mine and target.run(busy).status == "running"


def test_a_laptop_sqlite_moves_into_postgresql_and_back(tmp_path, pg_url):
    laptop = Store(f"sqlite:///{tmp_path / 'laptop.db'}")
    ids = _fill(laptop)
    to_team = tmp_path / "to-team.jsonl"
    export_runs(laptop, to_team)

    team = Store(pg_url, pending_dir=tmp_path / "pending")
    theirs = team.claim("hash-theirs", **_fields(encoder="mini-ibot"))
    team.finish(theirs, {"mAP": MetricValue(55.0, 50.0, 60.0)}, n_items=3, items={"ap": np.ones(3)})
    assert import_runs(team, to_team).total_imported == 4
    here = _by_hash(team)
    assert _provenance(team, here["hash-done"]) == _provenance(laptop, ids["done"])
    assert _provenance(team, here["hash-failed"]) == _provenance(laptop, ids["failed"])

    back = tmp_path / "from-team.jsonl"
    assert export_runs(team, back, encoders=["mini-ibot", "mini-mae"]).runs == 4
    fresh = Store(f"sqlite:///{tmp_path / 'fresh.db'}")
    assert import_runs(fresh, back).imported == {"done": 2, "failed": 1, "interrupted": 1}
    again = _by_hash(fresh)
    assert _provenance(fresh, again["hash-theirs"]) == _provenance(team, theirs)
    assert _provenance(fresh, again["hash-done"]) == _provenance(laptop, ids["done"])
    team.close()


def test_the_cli_exports_and_imports_with_counts(tmp_path):
    from partbench.cli import cli

    source, target = f"sqlite:///{tmp_path / 'a.db'}", f"sqlite:///{tmp_path / 'b.db'}"
    _fill(Store(source))
    file = tmp_path / "out" / "runs.jsonl"
    runner = CliRunner()
    result = runner.invoke(
        cli, ["db", "export", str(file), "--db", source, "--status", "done", "-e", "mini-mae"]
    )
    assert result.exit_code == 0, result.output
    assert "Exported 1 run(s)" in result.output
    result = runner.invoke(cli, ["db", "import", str(file), "--db", target])
    assert result.exit_code == 0 and "Imported 1 run(s)" in result.output and "(1 done)" in result.output
    result = runner.invoke(cli, ["db", "import", str(file), "--db", target])
    assert result.exit_code == 0 and "Imported 0 run(s)" in result.output
    assert "Skipped 1: 1 already done there (same configuration hash)" in result.output
    result = runner.invoke(cli, ["db", "import", str(tmp_path / "missing.jsonl"), "--db", target])
    assert result.exit_code == 1 and "missing.jsonl" in result.output and "Traceback" not in result.output


# --- bad files ---------------------------------------------------------------------------------


@pytest.fixture
def exported(tmp_path) -> list[str]:
    source = Store(f"sqlite:///{tmp_path / 'src.db'}")
    _fill(source)
    file = tmp_path / "good.jsonl"
    export_runs(source, file)
    return file.read_text().splitlines()


def _pickled_npz() -> str:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive, archive.open("ap.npy", "w") as member:
        np.lib.format.write_array(member, np.array([{"x": 1}], dtype=object), allow_pickle=True)
    return base64.b64encode(buffer.getvalue()).decode()


BAD_FILES = [
    (lambda lines: [*lines[:2], "{not json", *lines[3:]], r"line 3: not JSON"),
    (
        lambda lines: edit(lines, 2, put("run.config_hash", KeyError)),
        r"line 2: key 'run.config_hash' is missing",
    ),
    (
        lambda lines: edit(lines, 3, put("run.seed", "three")),
        r"line 3: key 'run.seed': expected a whole number",
    ),
    (
        lambda lines: edit(lines, 2, put("run.started_at", "yesterday")),
        r"line 2: key 'run.started_at'",
    ),
    (
        lambda lines: edit(lines, 2, put("run.status", "running")),
        r"line 2: key 'run.status' is 'running'",
    ),
    (lambda lines: edit(lines, 2, put("run.colour", "red")), r"line 2: unknown key 'run.colour'"),
    (
        lambda lines: [*lines[:1], lines[1].replace('"value": 61.25', '"value": NaN'), *lines[2:]],
        r"line 2: holds NaN",
    ),
    (
        lambda lines: edit(lines, 2, put("items.npz", "!!!")),
        r"line 2: key 'items.npz' is not valid base64",
    ),
    (
        lambda lines: edit(lines, 2, put("items.npz", _pickled_npz())),
        r"line 2: key 'items.npz' is not a readable npz",
    ),
    (
        lambda lines: edit(lines, 2, put("items.summary", {})),
        r"line 2: key 'items.summary' does not describe",
    ),
    (lambda lines: edit(lines, 1, put("format", "csv")), r"line 1: not a partbench runs file"),
    (
        lambda lines: edit(lines, 1, put("version", 9)),
        r"line 1: written in format version 9 .* upgrade partbench",
    ),
    (lambda lines: lines[:3], r"the header promises 4 run\(s\) but the file holds 2 \(truncated\?\)"),
    (lambda lines: [], r"line 1: empty file"),
    (
        lambda lines: edit(lines, 2, put("run.encoder", "e" * 300)),
        r"line 2: key 'run.encoder' is 300 characters",
    ),
]


@pytest.mark.parametrize(("corrupt", "message"), BAD_FILES)
def test_a_bad_file_is_refused_naming_file_line_and_key_and_nothing_is_imported(
    tmp_path, exported, corrupt, message
):
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(corrupt(exported)) + "\n")
    target = Store(f"sqlite:///{tmp_path / 'target.db'}")
    with pytest.raises(PartbenchError, match=message) as caught:
        import_runs(target, bad)
    assert str(bad) in str(caught.value)
    assert target.runs() == []  # the whole file is checked before anything is written


def test_a_binary_or_missing_file_is_a_clear_error(tmp_path):
    target = Store(f"sqlite:///{tmp_path / 'target.db'}")
    junk = tmp_path / "junk.jsonl"
    junk.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(PartbenchError, match=r"junk\.jsonl"):
        import_runs(target, junk)
    with pytest.raises(PartbenchError, match=r"cannot read .*nothere"):
        import_runs(target, tmp_path / "nothere.jsonl")
    with pytest.raises(PartbenchError, match="is a folder"):
        import_runs(target, tmp_path)


def test_a_failed_export_leaves_no_partial_file(tmp_path, monkeypatch):
    import partbench.exchange as exchange

    source = Store(f"sqlite:///{tmp_path / 'src.db'}")
    _fill(source)
    real, calls = exchange._run_line, []

    def breaks_on_the_second(*args):
        calls.append(1)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real(*args)

    monkeypatch.setattr(exchange, "_run_line", breaks_on_the_second)
    with pytest.raises(PartbenchError, match=r"cannot write .*No space left"):
        export_runs(source, tmp_path / "runs.jsonl")
    monkeypatch.undo()
    blocked = tmp_path / "file-not-folder"
    blocked.write_text("x")
    with pytest.raises(PartbenchError, match="cannot write"):
        export_runs(source, blocked / "runs.jsonl")
    assert sorted(p.name for p in Path(tmp_path).iterdir()) == [
        "file-not-folder",
        "src.db",
        "src.db-shm",
        "src.db-wal",
    ]
