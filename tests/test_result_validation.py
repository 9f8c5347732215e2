"""Every result the store takes is checked by one validator (partbench/store/validate.py),
wherever it comes from: a task's result (built-in or a plugin's), ``partbench db import``,
a pending-result file. A refusal names the file, the line and the field; a refused import
changes nothing; no bad file stops the store from opening; opening a file changes nothing in it
until it is known to be partbench's; files that are not regular files are refused by name."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import re
import sqlite3
import threading
import zipfile
from pathlib import Path

import dataset_trees as trees
import numpy as np
import pytest
import sqlalchemy as sa
from export_lines import edit, put

from partbench.datasets import coco, cub
from partbench.errors import DataError, PartbenchError
from partbench.exchange import export_runs, import_runs
from partbench.specs import MetricValue, TaskSpec
from partbench.store import Store

AP = np.array([0.25, np.nan, 1.0, 0.95])  # class means 25 and 97.5: mAP 61.25 over 3 queries
LABELS = np.array([0, 0, 1, 1], dtype=np.int64)


def _fields(task: str = "part-retrieval", **over):
    fields = dict(
        encoder="mini-mae",
        encoder_plugin="partbench",
        family="masked-image-modeling",
        weights_id="sha256:abc",
        task=task,
        task_plugin="partbench",
        level="part",
        dataset="synparts",
        dataset_fingerprint="436e",
        config={"task": task},
        headline_metric="mAP",
        device="cpu",
        versions={"partbench": "0.1.0"},
        seed=3,
    )
    fields.update(over)
    return fields


def _store(path: Path, **kw) -> Store:
    return Store(f"sqlite:///{path}", pending_dir=path.parent / "pending", **kw)


def _finish_good(store: Store, config_hash: str, **over) -> int:
    run_id = store.claim(config_hash, **_fields(**over))
    assert run_id is not None
    store.finish(
        run_id,
        {"mAP": MetricValue(61.25, 59.5, 63.0), "AP": MetricValue(58.0)},
        n_items=3,
        items={"ap": AP, "label": LABELS},
        chance={"mAP": 51.0},
    )
    return run_id


@pytest.fixture
def exported(tmp_path) -> list[str]:
    """A file of two done runs (lines 2 and 3), the first with per-item results."""
    source = _store(tmp_path / "src" / "src.db")
    _finish_good(source, "h1")
    second = source.claim("h2", **_fields(encoder="mini-dino"))
    source.finish(second, {"mAP": MetricValue(70.0, 65.0, 75.0)}, n_items=4)
    file = tmp_path / "good.jsonl"
    export_runs(source, file)
    return file.read_text().splitlines()


def _items(n: int) -> dict:
    from partbench.exchange import _check_items  # the npz a line carries, as the store keeps it
    from partbench.store.values import encode_items

    blob, summary = encode_items({"ap": np.full(n, 0.5), "label": np.zeros(n, dtype=np.int64)})
    import base64

    raw = {"summary": summary, "npz": base64.b64encode(blob).decode("ascii")}
    _check_items(raw)
    return raw


def _twice(line):
    line["metrics"].append(dict(line["metrics"][0], value=10.0, ci_low=None, ci_high=None))


HOSTILE_IMPORTS = [
    (
        "map-1e308",
        put("metrics.0.value", 1e308),
        r"line 2: key 'metrics\[0\]\.value': 1e\+308 is outside",
    ),
    ("map-250", put("metrics.0.value", 250.0), r"line 2: key 'metrics\[0\]\.value': 250 is outside"),
    (
        "map-minus-50",
        put("metrics.0.value", -50.0),
        r"line 2: key 'metrics\[0\]\.value': -50 is outside",
    ),
    (
        "ci-low-above-high",
        put("metrics.0.ci_low", 64.0),
        r"line 2: key 'metrics\[0\]\.ci_low': .* above",
    ),
    (
        "ci-not-containing",
        lambda line: (put("metrics.1.ci_low", 60.0)(line), put("metrics.1.ci_high", 62.0)(line)),
        r"line 2: key 'metrics\[1\]\.value': 58 lies outside its own interval",
    ),
    ("metric-twice", _twice, r"line 2: key 'metrics\[2\]\.name': metric 'mAP' is listed twice"),
    (
        "items-5-for-26",
        lambda line: (put("items", _items(5))(line), put("run.n_items", 26)(line)),
        r"line 2: key 'run\.n_items': is 26, but the per-item results hold 5",
    ),
    ("n-items-negative", put("run.n_items", -5), r"line 2: key 'run\.n_items': -5 is below 0"),
    ("level-banana", put("run.level", "banana"), r"line 2: key 'run\.level': 'banana' is not a level"),
    (
        "year-9999",
        put("run.finished_at", "9999-01-01T00:00:00+00:00"),
        r"line 2: key 'run\.finished_at': 9999-01-01.* is in the future",
    ),
    (
        "chance-1e308",
        put("run.chance", {"mAP": 1e308}),
        r"line 2: key 'run\.chance\['mAP'\]': 1e\+308 is outside",
    ),
    (
        "chance-high",
        put("run.chance", {"mAP": "high"}),
        r"line 2: key 'run\.chance\['mAP'\]': expected a number",
    ),
    (
        "seed-2-70",
        put("run.seed", 2**70),
        r"line 2: key 'run\.seed': 1180591620717411303424 does not fit",
    ),
    (
        "score-not-from-items",
        lambda line: put("metrics.0.value", 62.0)(line),
        r"line 2: key 'metrics\[0\]\.value': is 62, but its per-item results give 61.25",
    ),
    (
        "headline-missing",
        lambda line: line["metrics"].pop(0),
        r"line 2: key 'metrics': .*headline metric 'mAP'",
    ),
]


@pytest.mark.parametrize(
    ("change", "message"), [c[1:] for c in HOSTILE_IMPORTS], ids=[c[0] for c in HOSTILE_IMPORTS]
)
def test_a_hostile_import_is_refused_naming_file_line_and_field_and_nothing_is_imported(
    tmp_path, exported, change, message
):
    bad = tmp_path / "bad.jsonl"
    # Line 3 (the second run) is valid: a refused file must not leave it imported either.
    bad.write_text("\n".join([exported[0], exported[2], *edit(exported, 2, change)[1:2]]) + "\n")
    target = _store(tmp_path / "target.db")
    with pytest.raises(PartbenchError, match=message.replace("line 2", "line 3")) as caught:
        import_runs(target, bad)
    assert str(caught.value).startswith(str(bad))
    assert target.runs() == []


def test_a_line_of_deeply_nested_arrays_is_named_by_file_and_line(tmp_path, exported):
    bad = tmp_path / "deep.jsonl"
    bad.write_text("\n".join([exported[0], exported[1], "[" * 200_000 + "]" * 200_000]) + "\n")
    target = _store(tmp_path / "target.db")
    with pytest.raises(PartbenchError, match=r"deep\.jsonl line 3: JSON nested too deeply"):
        import_runs(target, bad)
    assert target.runs() == []


def test_a_known_task_keeps_its_level_and_headline(tmp_path, exported):
    tasks = {"part-retrieval": TaskSpec("part-retrieval", "part", "mAP", "keypoints", lambda o: None)}
    target = _store(tmp_path / "target.db")
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(edit(exported, 2, put("run.level", "object"))) + "\n")
    with pytest.raises(
        PartbenchError, match=r"line 2: key 'run\.level': is 'object', but task 'part-retrieval'"
    ):
        import_runs(target, bad, tasks=tasks)
    good = tmp_path / "good.jsonl"
    good.write_text("\n".join(exported) + "\n")
    assert import_runs(target, good, tasks=tasks).total_imported == 2


def test_an_import_is_one_transaction_even_after_the_first_writes(tmp_path, exported):
    """The file is checked as it is read, inside one transaction: a bad last line undoes the
    runs adopted before it, in a store that already held runs."""
    target = _store(tmp_path / "target.db")
    mine = _finish_good(target, "mine", encoder="mine")
    lines = edit(exported, 3, put("metrics.0.value", 250.0))
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(lines) + "\n")
    with pytest.raises(PartbenchError, match=r"line 3"):
        import_runs(target, bad)
    assert [r.id for r in target.runs()] == [mine]


def test_the_largest_seed_the_runner_takes_round_trips(tmp_path, exported):
    from partbench.runner.plan import SEED_RANGE

    big = SEED_RANGE[1]
    target = _store(tmp_path / "target.db")
    file = tmp_path / "big.jsonl"
    file.write_text("\n".join(edit(exported, 2, put("run.seed", big))) + "\n")
    assert import_runs(target, file).total_imported == 2
    assert {r.seed for r in target.runs()} == {big, 3}


def _raised_without_blocking(call) -> BaseException | None:
    """What ``call`` raised, run in a thread given 20 s: a read that opens a FIFO blocks until a
    writer comes, which no test would ever see end."""
    caught: list[BaseException] = []

    def attempt() -> None:
        try:
            call()
        except BaseException as exc:  # handed to the test thread
            caught.append(exc)

    worker = threading.Thread(target=attempt, daemon=True)
    worker.start()
    worker.join(timeout=20)
    assert not worker.is_alive(), "blocked on a FIFO"
    return caught[0] if caught else None


def test_a_fifo_given_to_import_is_refused_by_name_without_blocking(tmp_path):
    fifo = tmp_path / "runs.jsonl"
    os.mkfifo(fifo)
    target = _store(tmp_path / "target.db")
    error = _raised_without_blocking(lambda: import_runs(target, fifo))
    assert isinstance(error, PartbenchError)
    assert str(fifo) in str(error) and "named pipe" in str(error)


# --- results of tasks (built-in or a plugin's) ------------------------------------------------


@pytest.mark.parametrize(
    ("metrics", "extra", "named"),
    [
        ({"top1": MetricValue(250.0)}, {}, r"metric 'top1': 250 is outside the range"),
        ({"top1": MetricValue(-50.0)}, {}, r"metric 'top1': -50 is outside the range"),
        ({"top1": MetricValue(1e300)}, {}, r"metric 'top1': 1e\+300 is outside the range"),
        ({"top1": MetricValue(50.0, 60.0, 40.0)}, {}, r"lower bound of metric 'top1': .* above its upper"),
        ({"top1": MetricValue(50.0, 55.0, 60.0)}, {}, r"metric 'top1': 50 lies outside its own interval"),
        ({"top1": MetricValue(50.0)}, {"chance": {"top1": 1e308}}, r"chance level of 'top1': 1e\+308"),
        ({"top1": MetricValue(50.0)}, {"n_items": -5}, r"n_items: -5 is below 0"),
        ({"accuracy": MetricValue(50.0)}, {}, r"headline metric 'top1' is not among them \(accuracy\)"),
        (
            {"top1": MetricValue(50.0)},
            {"n_items": 4, "items": {"correct": np.array([1.0, 1.0, 1.0, 0.0])}},
            r"metric 'top1': is 50, but its per-item results give 75",
        ),
    ],
)
def test_a_task_result_the_store_cannot_stand_behind_fails_its_run(tmp_path, metrics, extra, named):
    store = _store(tmp_path / "r.db")
    run_id = store.claim("p", **_fields(task="plugin-probe", headline_metric="top1", task_plugin="plug"))
    kwargs = {"n_items": 4, **extra}
    with pytest.raises(PartbenchError, match=named):
        store.finish(run_id, metrics, **kwargs)
    run = store.run(run_id)
    assert run.status == "running" and run.metrics == []  # nothing written; the runner fails it


def test_a_chance_corrected_secondary_metric_may_be_negative_and_no_headline_may():
    from partbench.store.validate import ResultError, check_result

    # part-discovery's ARI: random clusters score about 0, and a poor image below it.
    metrics = {"mIoU": MetricValue(30.0, 28.0, 32.0), "ARI": MetricValue(-4.0, -6.0, -2.0)}
    rows = check_result(metrics, headline="mIoU", n_items=3, chance=None, items={}, details={})
    assert ("ARI", -4.0, -6.0, -2.0) in rows
    with pytest.raises(ResultError, match=r"-150 is outside the range of metric 'ARI' \(-100 to 100"):
        check_result({**metrics, "ARI": MetricValue(-150.0)}, headline="mIoU", n_items=3, chance=None,
                     items={}, details={})  # fmt: skip
    with pytest.raises(ResultError, match=r"-4 is outside the range of metric 'ARI'"):
        check_result({"ARI": MetricValue(-4.0)}, headline="ARI", n_items=3, chance=None, items={}, details={})


def test_correspondence_items_are_keypoints_counted_by_their_pairs():
    from partbench.store.validate import ResultError, check_result

    # Three pairs with 3, 2 and 2 keypoints; 4 of 7 matched: PCK 57.14 over 3 items.
    items = {"correct": np.array([1.0, 1, 0, 1, 0, 1, 0]), "pair": np.array([0, 0, 0, 1, 1, 2, 2])}
    pck = {"PCK@0.10": MetricValue(400 / 7)}
    check_result(pck, headline="PCK@0.10", n_items=3, chance=None, items=items)
    with pytest.raises(ResultError, match=r"distinct values of 'pair'"):
        check_result(pck, headline="PCK@0.10", n_items=7, chance=None, items=items)


def test_a_result_trained_several_times_is_checked_against_the_mean_of_its_repeats():
    from partbench.store.validate import ResultError, check_result

    inter = np.array([[3.0, 1.0], [1.0, 3.0]])
    union = np.array([[4.0, 4.0], [2.0, 4.0]])
    items = {"intersection": inter, "union": union}  # mIoU of the summed counts: 58.33...
    # Each repeat's mIoU, and the headline their mean: not the mIoU of the items' mean counts.
    repeats = {"mIoU_repeats": [55.0, 57.0]}
    rows = check_result(
        {"mIoU": MetricValue(56.0, 50.0, 55.5)}, headline="mIoU", n_items=2, chance=None, items=items,
        details=repeats,
    )  # fmt: skip
    assert rows == [("mIoU", 56.0, 50.0, 55.5)]
    with pytest.raises(ResultError, match=r"metric 'mIoU': is 60, but the mean of its repeats is 56"):
        check_result(
            {"mIoU": MetricValue(60.0)}, headline="mIoU", n_items=2, chance=None, items=items, details=repeats
        )
    with pytest.raises(ResultError, match=r"is 56, but its per-item results give 58.33"):
        check_result({"mIoU": MetricValue(56.0)}, headline="mIoU", n_items=2, chance=None, items=items)


# --- pending files -----------------------------------------------------------------------------


def _pending_file(folder: Path, key: str, run_id: int, meta) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{key}-{len(list(folder.glob('*.zip'))):020d}-1-{run_id}-finish.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("meta.json", meta if isinstance(meta, str) else json.dumps(meta))
    return path


def test_bad_pending_files_are_set_aside_and_the_rest_applied(tmp_path):
    db = tmp_path / "r.db"
    store = _store(db)
    ids = [store.claim(f"c{i}", **_fields()) for i in range(4)]
    key, folder = store.pending.key, store.pending.folder
    good_record = {
        "metrics": [["mAP", 61.25, 59.5, 63.0]],
        "n_items": 3,
        "items_per_class": None,
        "timing": None,
        "details": None,
        "chance": {"mAP": 51.0},
        "finished_at": dt.datetime.now(dt.timezone.utc).isoformat(),
    }
    no_record = _pending_file(folder, key, ids[0], {"op": "finish", "run_id": ids[0]})
    a_list = _pending_file(folder, key, ids[1], [1, 2, 3])
    nan = _pending_file(folder, key, ids[2], '{"record": ' + json.dumps(good_record)[:-1]
                        .replace('"metrics": [["mAP", 61.25', '"metrics": [["mAP", NaN') + "}}")  # fmt: skip
    good = _pending_file(folder, key, ids[3], {"record": good_record})
    store.close()

    reopened = _store(db)  # every command opens the store: it must open
    problems = "\n".join(reopened.problems)
    for path in (no_record, a_list, nan):
        assert path.name in problems and not path.exists()
        assert (folder / "unstored" / path.name).exists()
    assert "NaN" in problems or "nan" in problems
    assert not good.exists()
    runs = {r.id: r for r in reopened.runs()}
    assert runs[ids[3]].status == "done" and runs[ids[3]].headline.value == 61.25
    assert runs[ids[2]].status == "failed" and "could not be stored" in runs[ids[2]].error


# --- opening a database ------------------------------------------------------------------------


def test_another_applications_sqlite_file_is_refused_unchanged(tmp_path):
    other = tmp_path / "app.db"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE contacts (name TEXT)")
        conn.execute("INSERT INTO contacts VALUES ('ada')")
    conn.close()
    before = other.read_bytes()
    with pytest.raises(PartbenchError, match="another application's database"):
        Store(f"sqlite:///{other}", pending_dir=tmp_path / "pending")
    assert other.read_bytes() == before
    assert not (tmp_path / "app.db-wal").exists()
    with sqlite3.connect(other) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    conn.close()


def test_a_partbench_store_still_uses_wal(tmp_path):
    store = _store(tmp_path / "r.db")
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("postgresql://me:secret@localhost:abc/db", r"me:\*\*\*@localhost:abc/db' \(its port is not a num"),
        ("postgresql://me@[::1/db", r"not a database URL"),
        ("sqlite:///" + "a\x00b.db", r"not a usable database URL"),
    ],
)  # fmt: skip
def test_a_malformed_database_url_is_a_clear_error(tmp_path, monkeypatch, url, message):
    from click.testing import CliRunner

    from partbench.cli import cli

    with pytest.raises(PartbenchError, match=message) as caught:
        Store(url, pending_dir=tmp_path / "pending")
    assert "secret" not in str(caught.value)
    monkeypatch.setenv("PARTBENCH_HOME", str(tmp_path / "home"))
    result = CliRunner().invoke(cli, ["runs", "--db", url])
    assert result.exit_code == 1 and "not a" in result.output and result.exc_info[0] is SystemExit
    if "\x00" not in url:  # an environment variable cannot hold NUL
        monkeypatch.setenv("PARTBENCH_DB", url)
        result = CliRunner().invoke(cli, ["runs"])
        assert result.exit_code == 1 and "not a" in result.output and result.exc_info[0] is SystemExit


def test_a_disk_io_error_is_named_as_what_it_is(tmp_path):
    store = _store(tmp_path / "r.db", retries=0)

    def broken(_session):
        raise sa.exc.OperationalError("INSERT", {}, sqlite3.OperationalError("disk I/O error"))

    with pytest.raises(PartbenchError, match=r"a disk I/O error") as caught:
        store.write(broken)
    assert "locked" not in str(caught.value)


def test_a_stopped_postgresql_server_is_named_as_such(tmp_path):
    pytest.importorskip("psycopg")
    with pytest.raises(PartbenchError, match="server cannot be reached") as caught:
        Store("postgresql+psycopg://me@127.0.0.1:1/db", pending_dir=tmp_path / "pending", busy_timeout=1)
    assert "locked" not in str(caught.value)


# --- dataset files -----------------------------------------------------------------------------


def test_a_fifo_in_a_dataset_is_refused_by_name(tmp_path):
    root = trees.cub_tree(tmp_path / "CUB_200_2011")
    locs = root / "parts" / "part_locs.txt"
    locs.unlink()
    os.mkfifo(locs)
    error = _raised_without_blocking(lambda: cub.load(root))
    assert isinstance(error, DataError)
    assert str(locs) in str(error) and "named pipe" in str(error)


def test_a_deeply_nested_coco_file_names_the_file(tmp_path):
    root = trees.coco_tree(tmp_path / "coco")
    path = root / "annotations" / "person_keypoints_train2017.json"
    path.write_text("[" * 200_000 + "]" * 200_000)
    with pytest.raises(DataError, match="nested too deeply") as caught:
        coco.load(root).samples("train")
    assert str(caught.value).startswith(str(path))


# --- PostgreSQL (PARTBENCH_TEST_POSTGRES, else a throwaway cluster; skipped without one) -----


@pytest.fixture(scope="module")
def postgres_server():
    import pg_server

    yield from pg_server.server()


@pytest.fixture
def pg_url(postgres_server):
    import pg_server

    yield from pg_server.database(postgres_server)


def test_postgresql_holds_every_seed_the_runner_takes_and_imports_in_one_transaction(
    tmp_path, exported, pg_url
):
    from partbench.runner.plan import SEED_RANGE

    store = Store(pg_url, pending_dir=tmp_path / "pending")
    big = SEED_RANGE[1]  # above 2**31 - 1: a 32-bit column refused it
    run_id = store.claim("big-seed", **_fields(seed=big))
    assert run_id is not None and store.run(run_id).seed == big
    before = [r.id for r in store.runs()]
    lines = edit(edit(exported, 2, put("run.seed", big)), 3, put("run.seed", 2**70))
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(lines) + "\n")
    with pytest.raises(PartbenchError, match=r"line 3: key 'run\.seed': .* does not fit"):
        import_runs(store, bad)
    assert [r.id for r in store.runs()] == before  # line 2 was valid, and is not imported either
    good = tmp_path / "good.jsonl"
    wide = edit(edit(exported, 2, put("run.seed", big)), 2, put("run.pid", 2**40))
    good.write_text("\n".join(wide) + "\n")
    assert import_runs(store, good).total_imported == 2
    assert (big, 2**40) in {(r.seed, r.pid) for r in store.runs()}
    store.close()


# --- through the runner: a plugin's task ------------------------------------------------------


class _Tampered:
    """A plugin's task: a built-in probe whose result is then changed as ``tamper`` says."""

    def __init__(self, inner, tamper):
        self.inner, self.tamper, self.source = inner, tamper, inner.source
        self.options = inner.options

    def views(self, dataset, encoder):
        return self.inner.views(dataset, encoder)

    def evaluate(self, features, dataset, **kw):
        result = self.inner.evaluate(features, dataset, **kw)
        self.tamper(result)
        return result


def _with_metrics(metrics):
    def tamper(result):
        result.metrics = metrics
        result.items = {}

    return tamper


@pytest.mark.parametrize(
    ("tamper", "named"),
    [
        (_with_metrics({"top1": MetricValue(250.0)}), r"metric 'top1': 250 is outside the range"),
        (_with_metrics({"top1": MetricValue(-50.0)}), r"metric 'top1': -50 is outside the range"),
        (_with_metrics({"top1": MetricValue(1e300)}), r"metric 'top1': 1e\+300 is outside the range"),
        (_with_metrics({"top1": MetricValue(50.0, 60.0, 40.0)}), r"above its upper"),
        (_with_metrics({"accuracy": MetricValue(50.0)}), r"headline metric 'top1' is not among them"),
    ],
)
def test_a_plugin_tasks_result_is_checked_and_fails_its_run(tmp_path, tamper, named):
    from test_runner import _opts, _registry_with

    from partbench.runner import run

    reg = _registry_with(("tiny", "ok"))
    base = reg.tasks["part-linear"]
    reg.tasks["plugin-probe"] = dataclasses.replace(
        base, name="plugin-probe", plugin="plug", create=lambda o: _Tampered(base.create(o), tamper)
    )
    store = _store(tmp_path / "runs.db")
    (outcome,) = run(reg, store, ["tiny"], ["plugin-probe"], _opts(cache=False))
    assert outcome.status == "failed" and re.search(named, outcome.error), outcome.error
    (stored,) = store.runs()
    assert stored.status == "failed" and stored.metrics == [] and re.search(named, stored.error)
