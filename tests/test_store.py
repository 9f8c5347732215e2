"""The results store: lifecycle, claims across processes, nothing lost, nothing non-finite,
nothing opened that is not a partbench store, and schema migrations."""

from __future__ import annotations

import datetime as dt
import multiprocessing
import os
import signal
import sqlite3
import time
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from partbench.errors import PartbenchError
from partbench.metrics import score_from_items
from partbench.specs import MetricValue
from partbench.store import (
    HEAD_REVISION,
    REVISIONS,
    SCHEMA_VERSION,
    VERSION_TABLE,
    Base,
    Run,
    Store,
)


def _fields(**over):
    fields = dict(
        encoder="random-vit",
        encoder_plugin="partbench",
        family="none",
        weights_id="random-init:seed=0",
        task="part-retrieval",
        task_plugin="partbench",
        level="part",
        dataset="synparts",
        dataset_fingerprint="abc",
        config={"seed": 0},
        config_hash="h1",
        headline_metric="mAP",
        device="cpu",
        versions={"torch": "x"},
        seed=0,
    )
    fields.update(over)
    return fields


def _claim_fields(**over):
    fields = _fields(**over)
    del fields["config_hash"]
    return fields


def _url(path: Path) -> str:
    return f"sqlite:///{path}"


def _ap_items(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Per-item APs without labels: every query counts, and mAP (which needs labels) is not
    recomputed from them, so a test may store any mAP with them."""
    return {"ap": np.random.default_rng(seed).random(n)}


def _items(n: int = 5, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    ap = rng.random(n)
    ap[1] = np.nan  # a query with no positive: per-item results may hold NaN
    return {"ap": ap, "label": rng.integers(0, 3, n).astype(np.int64)}


# --- the lifecycle --------------------------------------------------------------------------


def test_a_run_goes_from_running_to_done_with_its_metrics(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'sub' / 'r.db'}")
    run_id = store.start(**_fields())
    assert store.runs()[0].status == "running"
    assert store.find_done("h1") is None
    store.finish(
        run_id,
        {"mAP": MetricValue(50.0, 45.0, 55.0), "AP": MetricValue(40.0)},
        n_items=12,
        items_per_class={"eye": 12},
        timing={"images_per_second": 3.0},
    )
    run = store.find_done("h1")
    assert run.id == run_id and run.status == "done" and run.n_items == 12
    assert (run.headline.value, run.headline.ci_low, run.headline.ci_high) == (50.0, 45.0, 55.0)
    assert run.metric("AP").ci_low is None
    assert run.finished_at >= run.started_at.replace(tzinfo=run.finished_at.tzinfo)


def test_a_failed_run_keeps_its_error_and_other_runs(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'r.db'}")
    good = store.start(**_fields())
    store.finish(good, {"mAP": MetricValue(1.0)}, n_items=1)
    bad = store.start(**_fields(config_hash="h2"))
    store.fail(bad, "DataError: images.txt line 3: bad id")
    runs = {r.id: r for r in store.runs()}
    assert runs[bad].status == "failed" and "line 3" in runs[bad].error and runs[bad].metrics == []
    assert runs[good].status == "done" and store.find_done("h2") is None
    assert [r.id for r in store.runs(status="done")] == [good]


def test_the_store_reopens_with_its_data(tmp_path):
    url = f"sqlite:///{tmp_path / 'r.db'}"
    run_id = Store(url).start(**_fields())
    assert Store(url).runs()[0].id == run_id


def test_a_bad_url_is_a_clear_error():
    with pytest.raises(PartbenchError, match="not a database URL"):
        Store("no such url")
    with pytest.raises(PartbenchError, match="cannot open"):
        Store("nosuchdialect://x")


def test_a_failure_keeps_its_traceback_and_an_interrupt_is_its_own_status(tmp_path):
    store = Store(_url(tmp_path / "r.db"))
    crashed = store.claim("a", **_claim_fields())
    stopped = store.claim("b", **_claim_fields())
    store.fail(crashed, "ZeroDivisionError: boom", traceback='File "x.py", line 1\nZeroDivisionError: boom')
    store.fail(stopped, "interrupted: KeyboardInterrupt", status="interrupted")
    assert store.run(crashed).status == "failed" and "line 1" in store.run(crashed).traceback
    assert [r.id for r in store.runs(status="interrupted")] == [stopped]
    with pytest.raises(PartbenchError, match="failed, interrupted"):
        store.fail(crashed, "x", status="done")
    with pytest.raises(PartbenchError, match="no run 99"):
        store.run(99)


def test_an_interrupt_after_finish_does_not_hide_the_stored_result(tmp_path):
    store = Store(_url(tmp_path / "r.db"))
    run_id = store.claim("a", **_claim_fields())
    store.finish(run_id, {"mAP": MetricValue(10.0)}, n_items=1)
    store.fail(run_id, "interrupted: KeyboardInterrupt", status="interrupted")
    run = store.run(run_id)
    assert run.status == "done" and run.error is None and run.headline.value == 10.0
    with pytest.raises(PartbenchError, match="already done"):
        store.finish(run_id, {"mAP": MetricValue(11.0)}, n_items=1)
    assert [m.value for m in store.run(run_id).metrics] == [10.0]


# --- per-item results and chance --------------------------------------------------------------


def test_per_item_results_round_trip_exactly_and_listing_never_reads_them(tmp_path):
    store = Store(_url(tmp_path / "r.db"))
    items = {**_items(400), "intersection": np.arange(800, dtype=np.float64).reshape(400, 2)}
    run_id = store.claim("a", **_claim_fields())
    score = score_from_items("mAP", items)  # the store recomputes it, and counts the queries with an AP
    store.finish(
        run_id,
        {"mAP": MetricValue(score, score - 5, score + 5)},
        n_items=int(np.isfinite(items["ap"]).sum()),
        items=items,
        chance={"mAP": 12.5},
    )
    back = store.items(run_id)
    assert set(back) == set(items)
    for name, array in items.items():
        assert back[name].dtype == array.dtype and back[name].shape == array.shape
        np.testing.assert_array_equal(back[name], array)  # NaN where NaN was
    assert store.items_many([run_id, 12345]).keys() == {run_id}
    summary = store.item_summary(run_id)
    assert summary["arrays"]["intersection"] == {"dtype": "float64", "shape": [400, 2]}
    assert summary["stored_bytes"] < sum(a.nbytes for a in items.values())  # compressed
    assert store.run(run_id).chance == {"mAP": 12.5}

    statements: list[str] = []
    sa.event.listen(store.engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
    assert [r.id for r in store.runs()] == [run_id]
    assert statements and not any("run_items" in q for q in statements)

    plain = store.claim("b", **_claim_fields())
    store.finish(plain, {"mAP": MetricValue(1.0)}, n_items=1)
    assert store.items(plain) == {} and store.item_summary(plain) is None
    with pytest.raises(PartbenchError, match="no run 777"):
        store.items(777)


@pytest.mark.parametrize(
    "items, message",
    [
        ({"ap": np.array(["a", "b"])}, "dtype"),
        ({"ap": np.zeros(3), "label": np.zeros(4)}, "number of items"),
        ({"a/b": np.zeros(3)}, "not a valid name"),
        ({"ap": np.float64(1.0)}, "scalar"),
    ],
)
def test_per_item_results_that_cannot_be_paired_are_refused(tmp_path, items, message):
    store = Store(_url(tmp_path / "r.db"))
    run_id = store.claim("a", **_claim_fields())
    with pytest.raises(PartbenchError, match=message):
        store.finish(run_id, {"mAP": MetricValue(1.0)}, n_items=3, items=items)
    assert store.run(run_id).status == "running"


# --- nothing non-finite -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "metrics, extra, named",
    [
        ({"mAP": MetricValue(float("nan"), 1.0, 2.0)}, {}, "metric 'mAP'"),
        ({"top1": MetricValue(50.0, float("-inf"), 60.0)}, {}, "lower bound of metric 'top1'"),
        ({"mAP": MetricValue(50.0, 40.0, float("inf"))}, {}, "upper bound of metric 'mAP'"),
        ({"mAP": MetricValue(50.0)}, {"details": {"per_class": {"eye": float("nan")}}}, "'per_class'"),
        ({"mAP": MetricValue(50.0)}, {"timing": {"images_per_second": np.float32("inf")}}, "timing"),
        ({"mAP": MetricValue(50.0)}, {"chance": {"mAP": float("nan")}}, "chance level of 'mAP'"),
        ({"mAP": MetricValue(50.0)}, {"details": {"curve": np.array([1.0, np.nan])}}, r"'curve'\]\[1\]"),
        ({"mAP": MetricValue(50.0)}, {"details": {"when": dt.date(2024, 1, 1)}}, "JSON cannot hold"),
    ],
)
def test_a_value_that_is_not_finite_is_refused_naming_it(tmp_path, metrics, extra, named):
    store = Store(_url(tmp_path / "r.db"))
    run_id = store.claim("a", **_claim_fields())
    with pytest.raises(PartbenchError, match=named):
        store.finish(run_id, metrics, n_items=3, **extra)
    # Nothing was written: the run is still running, without metrics, and can be failed.
    run = store.run(run_id)
    assert run.status == "running" and run.metrics == []
    store.fail(run_id, "PartbenchError: not finite")
    assert store.run(run_id).status == "failed"


def test_numpy_numbers_are_stored_as_plain_json(tmp_path):
    store = Store(_url(tmp_path / "r.db"))
    run_id = store.claim("a", **_claim_fields())
    details = {"per_class": {"eye": np.float32(0.5)}, "curve": np.array([1, 2]), 3: np.bool_(True)}
    store.finish(run_id, {"mAP": MetricValue(np.float64(50.0))}, n_items=np.int64(4), details=details)
    run = store.run(run_id)
    assert run.details == {"per_class": {"eye": 0.5}, "curve": [1, 2], "3": True} and run.n_items == 4
    with sqlite3.connect(tmp_path / "r.db") as raw:
        stored = raw.execute("SELECT details FROM runs").fetchone()[0]
    assert "NaN" not in stored and "Infinity" not in stored


# --- claims, heartbeats, abandoned runs -----------------------------------------------------


def test_a_claim_records_who_runs_it_and_blocks_a_second_claim(tmp_path):
    store = Store(_url(tmp_path / "r.db"))
    first = store.claim("h", **_claim_fields())
    run = store.run(first)
    assert run.status == "running" and run.pid == os.getpid() and run.host and run.heartbeat_at
    assert store.claim("h", **_claim_fields()) is None  # live and running
    assert store.claim("h", force=True, **_claim_fields()) is None  # force never doubles a live run
    store.finish(first, {"mAP": MetricValue(1.0)}, n_items=1)
    assert store.claim("h", **_claim_fields()) is None  # done
    again = store.claim("h", force=True, **_claim_fields())
    assert again is not None and again != first
    store.fail(again, "RuntimeError: x")
    third = store.claim("h", force=True, **_claim_fields())  # a failed run does not block
    assert third not in (None, first, again)


def test_a_stale_heartbeat_abandons_a_run_and_a_heartbeat_keeps_it(tmp_path):
    store = Store(_url(tmp_path / "r.db"), heartbeat_timeout=60)
    elsewhere = store.claim("h", **_claim_fields())
    here = store.claim("k", **_claim_fields())
    old = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=5)
    with store.session() as s:  # a process on another machine that stopped beating
        s.get(Run, elsewhere).host, s.get(Run, elsewhere).heartbeat_at = "other-host", old
        s.get(Run, here).heartbeat_at = old
    assert [r.id for r in store.runs(status="abandoned")] == [elsewhere, here]
    assert store.heartbeat([here]) is True
    assert [r.id for r in store.runs(status="abandoned")] == [elsewhere]
    assert [r.id for r in store.runs(status="running")] == [here]
    assert {r.id: r.state for r in store.runs()} == {elsewhere: "abandoned", here: "running"}

    taken = store.claim("h", **_claim_fields())  # an abandoned run does not block
    assert taken is not None
    old_run = store.run(elsewhere)
    assert old_run.status == "interrupted" and f"run {taken} took over" in old_run.error


def test_keep_alive_beats_from_a_thread(tmp_path):
    store = Store(_url(tmp_path / "r.db"))
    run_id = store.claim("h", **_claim_fields())
    first = store.run(run_id).heartbeat_at
    with store.keep_alive([run_id], interval=0.05) as live:
        deadline = time.monotonic() + 10
        while store.run(run_id).heartbeat_at == first and time.monotonic() < deadline:
            time.sleep(0.05)
        live.discard(run_id)
    assert store.run(run_id).heartbeat_at > first


def _claim_then_wait(url: str, claimed) -> None:
    store = Store(url)
    store.claim("victim", **_claim_fields())
    claimed.set()
    time.sleep(120)


def test_a_killed_process_leaves_an_abandoned_run_that_prune_removes(tmp_path):
    url = _url(tmp_path / "r.db")
    store = Store(url)
    live = store.claim("mine", **_claim_fields())
    ctx = multiprocessing.get_context("spawn")
    claimed = ctx.Event()
    child = ctx.Process(target=_claim_then_wait, args=(url, claimed))
    child.start()
    try:
        assert claimed.wait(60)
        (victim,) = [r for r in store.runs() if r.config_hash == "victim"]
        assert victim.pid == child.pid and victim.state == "running"
        assert store.claim("victim", **_claim_fields()) is None  # its process still runs
    finally:
        os.kill(child.pid, signal.SIGKILL)  # kill -9: no chance to mark anything
        child.join(30)
    assert [r.id for r in store.runs(status="abandoned")] == [victim.id]
    assert [r.id for r in store.runs(status="running")] == [live]

    result = CliRunner().invoke(_cli(), ["runs", "--status", "abandoned", "--format", "json", "--db", url])
    assert result.exit_code == 0 and '"abandoned"' in result.output and f'"id": {victim.id}' in result.output
    result = CliRunner().invoke(_cli(), ["runs", "--prune", "--db", url])
    assert result.exit_code == 0 and "Removed 1 abandoned" in result.output
    assert [r.id for r in store.runs()] == [live]
    assert store.claim("victim", **_claim_fields()) is not None


# --- several processes at once ---------------------------------------------------------------


def _writer(url: str, index: int, start, results) -> None:
    start.wait()
    store = Store(url)  # three processes open a fresh database at once: one creates the schema
    start.wait()
    won = []
    shared = [f"shared-{k}" for k in range(6)]
    for digest in shared[index * 2 :] + shared[: index * 2]:  # each starts elsewhere, then collides
        run_id = store.claim(digest, **_claim_fields())
        if run_id is not None:
            store.finish(run_id, {"mAP": MetricValue(float(index))}, n_items=3, items=_ap_items(3, index))
            won.append(digest)
    for k in range(3):  # and configurations of its own, written while the others write
        run_id = store.claim(f"own-{index}-{k}", **_claim_fields())
        store.finish(run_id, {"mAP": MetricValue(1.0)}, n_items=3, items=_ap_items(3, k))
    results.put((index, won))


def test_three_processes_store_every_result_exactly_once(tmp_path):
    url = _url(tmp_path / "fresh" / "r.db")
    ctx = multiprocessing.get_context("spawn")
    start, results = ctx.Barrier(3), ctx.Queue()
    workers = [ctx.Process(target=_writer, args=(url, i, start, results)) for i in range(3)]
    for w in workers:
        w.start()
    outcome = dict(results.get(timeout=120) for _ in workers)
    for w in workers:
        w.join(30)
        assert w.exitcode == 0
    won = sorted(d for ds in outcome.values() for d in ds)
    assert won == sorted(f"shared-{k}" for k in range(6))  # each claimed by exactly one
    store = Store(url)
    runs = store.runs()
    assert all(r.status == "done" for r in runs)
    hashes = sorted(r.config_hash for r in runs)
    expected = sorted(
        [f"shared-{k}" for k in range(6)] + [f"own-{i}-{k}" for i in range(3) for k in range(3)]
    )
    assert hashes == expected  # every result stored, none twice
    assert all(len(store.items(r.id)["ap"]) == 3 and len(r.metrics) == 1 for r in runs)


# --- nothing lost ----------------------------------------------------------------------------


def test_sqlite_runs_in_wal_mode_with_a_busy_timeout(tmp_path):
    store = Store(_url(tmp_path / "r.db"), busy_timeout=7.5)
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 7500


def test_a_result_that_cannot_be_written_waits_in_a_pending_file(tmp_path, isolated_home):
    path = tmp_path / "r.db"
    store = Store(_url(path), busy_timeout=0.1, retries=1)
    run_id = store.claim("a", **_claim_fields())
    other = store.claim("b", **_claim_fields())
    items = _ap_items(50)

    blocker = sqlite3.connect(path, isolation_level=None, timeout=0)
    blocker.execute("BEGIN EXCLUSIVE")  # another writer holds the lock past every retry
    try:
        kept = store.finish(
            run_id, {"mAP": MetricValue(42.0, 40.0, 44.0)}, n_items=50, items=items, chance={"mAP": 5.0}
        )
        failed = store.fail(other, "RuntimeError: boom", traceback="Traceback ...")
        assert kept is not None and kept.parent == isolated_home / "pending" and kept.is_file()
        assert failed is not None and failed.is_file()
        assert not list(kept.parent.glob(".*"))  # written atomically: no partial file left
        assert store.run(run_id).status == "running"  # readers still read, nothing half written
        Store(_url(path), busy_timeout=0.1, retries=0)  # still locked: the files stay
        assert kept.is_file() and failed.is_file()
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()

    later = Store(f"sqlite:///{os.path.relpath(path)}")  # the same file, however it is spelled
    run = later.run(run_id)
    assert run.status == "done" and (run.headline.value, run.headline.ci_low) == (42.0, 40.0)
    assert run.chance == {"mAP": 5.0} and run.n_items == 50
    np.testing.assert_array_equal(later.items(run_id)["ap"], items["ap"])
    assert later.run(other).status == "failed" and later.run(other).traceback == "Traceback ..."
    assert not kept.exists() and not failed.exists() and later.problems == []
    assert len(Store(_url(path)).run(run_id).metrics) == 1  # stored once, not again


def test_prune_keeps_a_run_whose_result_is_pending(tmp_path):
    path = tmp_path / "r.db"
    store = Store(_url(path), busy_timeout=0.1, retries=0, heartbeat_timeout=0.2)
    run_id = store.claim("a", **_claim_fields())
    blocker = sqlite3.connect(path, isolation_level=None, timeout=0)
    blocker.execute("BEGIN EXCLUSIVE")
    kept = store.finish(run_id, {"mAP": MetricValue(1.0)}, n_items=1)
    blocker.execute("ROLLBACK")
    blocker.close()
    time.sleep(0.3)  # its heartbeat is now stale
    assert [r.id for r in store.runs(status="abandoned")] == [run_id]
    assert store.prune() == 0 and kept.is_file()
    assert Store(_url(path)).run(run_id).status == "done"


# --- what the store opens ----------------------------------------------------------------------


def test_a_file_that_is_not_sqlite_is_refused_untouched(tmp_path):
    path = tmp_path / "notes.db"
    path.write_text("my thesis notes\n" * 10)
    with pytest.raises(PartbenchError, match=f"{path} is not a SQLite database"):
        Store(_url(path))
    assert path.read_text() == "my thesis notes\n" * 10
    damaged = tmp_path / "damaged.db"
    damaged.write_bytes(b"SQLite format 3\x00" + b"\x07" * 4096)
    with pytest.raises(PartbenchError, match=f"cannot open the results database {damaged}"):
        Store(_url(damaged))
    folder = tmp_path / "folder.db"
    folder.mkdir()
    with pytest.raises(PartbenchError, match="is a folder"):
        Store(_url(folder))


def test_another_applications_database_is_refused_untouched(tmp_path):
    path = tmp_path / "app.db"
    with sqlite3.connect(path) as raw:
        raw.execute("CREATE TABLE runs (id INTEGER PRIMARY KEY, mileage REAL)")
        raw.execute("INSERT INTO runs VALUES (1, 10.5)")
    with pytest.raises(PartbenchError, match=f"{path} is another application's database.*runs"):
        Store(_url(path))
    with sqlite3.connect(path) as raw:
        tables = [r[0] for r in raw.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    assert tables == ["runs"]


def test_a_database_of_a_newer_partbench_is_refused(tmp_path):
    path = tmp_path / "r.db"
    Store(_url(path))
    with sqlite3.connect(path) as raw:
        raw.execute("UPDATE partbench_meta SET value = '99' WHERE key = 'schema_version'")
    with pytest.raises(PartbenchError, match=f"{path} was written by a newer partbench.*99"):
        Store(_url(path))
    with sqlite3.connect(path) as raw:
        raw.execute(f"UPDATE partbench_meta SET value = '{SCHEMA_VERSION}'")
        raw.execute(f"UPDATE {VERSION_TABLE} SET version_num = '0099'")
    with pytest.raises(PartbenchError, match=r"newer partbench.*0099"):
        Store(_url(path))


def test_a_read_only_database_is_read_and_detected_before_any_work(tmp_path, monkeypatch):
    path = tmp_path / "r.db"
    writer = Store(_url(path))
    run_id = writer.claim("a", **_claim_fields())
    writer.finish(run_id, {"mAP": MetricValue(3.0)}, n_items=1)
    writer.engine.dispose()  # the last connection closes: SQLite removes the -wal and -shm files
    monkeypatch.chdir(tmp_path)
    ro = Store(f"sqlite:///file:{path}?mode=ro&uri=true")
    assert [r.id for r in ro.runs(status="done")] == [run_id]
    with pytest.raises(PartbenchError, match=f"{path} is opened read-only"):
        ro.check_writable()
    relative = Store("sqlite:///file:r.db?mode=ro&uri=true")  # relative to the working folder
    assert relative.find_done("a").id == run_id
    assert not any(p.name.startswith("file:") for p in tmp_path.iterdir())  # no folder named "file:"
    with pytest.raises(PartbenchError, match=r"no results database at .*missing\.db"):
        Store(f"sqlite:///file:{tmp_path / 'missing.db'}?mode=ro&uri=true")
    assert not (tmp_path / "missing.db").exists()
    Store(_url(path)).check_writable()  # the same file, writable


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes read-only files")
def test_a_read_only_file_is_detected(tmp_path):
    path = tmp_path / "r.db"
    Store(_url(path)).engine.dispose()
    path.chmod(0o444)
    store = Store(_url(path))
    assert store.runs() == []
    with pytest.raises(PartbenchError, match="read-only"):
        store.check_writable()


# --- schema versions and migrations --------------------------------------------------------


def _release_0_1_0_metadata() -> sa.MetaData:
    """The tables exactly as partbench 0.1.0 created them (before the migrations existed)."""
    md = sa.MetaData()
    sa.Table(
        "runs",
        md,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("status", sa.String(16), nullable=False, index=True),
        sa.Column("encoder", sa.String(200), nullable=False, index=True),
        sa.Column("encoder_plugin", sa.String(200), nullable=False),
        sa.Column("family", sa.String(40), nullable=False),
        sa.Column("weights_id", sa.String(200), nullable=False),
        sa.Column("task", sa.String(100), nullable=False, index=True),
        sa.Column("task_plugin", sa.String(200), nullable=False),
        sa.Column("level", sa.String(16), nullable=False),
        sa.Column("dataset", sa.String(100), nullable=False, index=True),
        sa.Column("dataset_fingerprint", sa.String(100), nullable=False),
        sa.Column("config", sa.JSON, nullable=False),
        sa.Column("config_hash", sa.String(64), nullable=False, index=True),
        sa.Column("headline_metric", sa.String(60), nullable=False),
        sa.Column("n_items", sa.Integer, nullable=True),
        sa.Column("items_per_class", sa.JSON, nullable=True),
        sa.Column("timing", sa.JSON, nullable=True),
        sa.Column("device", sa.String(200), nullable=False),
        sa.Column("versions", sa.JSON, nullable=False),
        sa.Column("seed", sa.Integer, nullable=False),
        sa.Column("details", sa.JSON, nullable=True),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
    )
    sa.Table(
        "metrics",
        md,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column(
            "run_id", sa.Integer, sa.ForeignKey("runs.id", ondelete="CASCADE"), nullable=False, index=True
        ),
        sa.Column("name", sa.String(60), nullable=False),
        sa.Column("value", sa.Float, nullable=False),
        sa.Column("ci_low", sa.Float, nullable=True),
        sa.Column("ci_high", sa.Float, nullable=True),
    )
    sa.Table(
        "partbench_meta",
        md,
        sa.Column("key", sa.String(60), primary_key=True),
        sa.Column("value", sa.String(200), nullable=False),
    )
    return md


def _write_release_0_1_0_database(path: Path) -> None:
    md = _release_0_1_0_metadata()
    engine = sa.create_engine(_url(path))
    md.create_all(engine)
    runs, metrics, meta = md.tables["runs"], md.tables["metrics"], md.tables["partbench_meta"]
    when = dt.datetime(2024, 5, 1, 12, tzinfo=dt.timezone.utc)
    with engine.begin() as conn:
        conn.execute(meta.insert().values(key="schema_version", value="1"))
        row = _fields(config_hash="old-done", started_at=when, finished_at=when, n_items=7)
        conn.execute(runs.insert().values(id=1, status="done", **row))
        conn.execute(metrics.insert().values(run_id=1, name="mAP", value=61.5, ci_low=60.0, ci_high=63.0))
        conn.execute(
            runs.insert().values(id=2, status="running", **_fields(config_hash="old-stuck", started_at=when))
        )
    engine.dispose()


def test_a_database_of_the_previous_release_is_upgraded_with_its_runs(tmp_path):
    path = tmp_path / "r.db"
    _write_release_0_1_0_database(path)
    with pytest.raises(PartbenchError, match=r"needs its schema .* read-only"):
        Store(f"sqlite:///file:{path}?mode=ro&uri=true")
    store = Store(_url(path))
    done = store.find_done("old-done")
    assert done.id == 1 and done.n_items == 7 and done.encoder == "random-vit"
    assert (done.headline.value, done.headline.ci_low, done.headline.ci_high) == (61.5, 60.0, 63.0)
    assert done.host is None and done.chance is None and store.items(1) == {}
    assert store.claim("old-done", **_claim_fields()) is None  # its result still counts
    assert store.run(2).state == "abandoned"  # a running row from before heartbeats
    new = store.claim("fresh", **_claim_fields())
    store.finish(new, {"mAP": MetricValue(1.0)}, n_items=2, items=_ap_items(2))
    with sqlite3.connect(path) as raw:
        assert raw.execute(f"SELECT version_num FROM {VERSION_TABLE}").fetchall() == [(HEAD_REVISION,)]
        assert raw.execute("SELECT value FROM partbench_meta").fetchall() == [(str(SCHEMA_VERSION),)]


def _schema_differences(engine: sa.Engine, metadata: sa.MetaData) -> list:
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        context = MigrationContext.configure(
            conn, opts={"version_table": VERSION_TABLE, "compare_type": True}
        )
        return compare_metadata(context, metadata)


def test_the_migrations_build_exactly_the_models_and_the_first_one_the_old_release(tmp_path):
    from partbench.migrations import revisions, upgrade

    assert revisions() == list(REVISIONS) and REVISIONS[-1] == f"{SCHEMA_VERSION:04d}"
    first = sa.create_engine(_url(tmp_path / "first.db"))
    with first.begin() as conn:
        upgrade(conn, target="0001")
    assert _schema_differences(first, _release_0_1_0_metadata()) == []
    with first.connect() as conn:
        assert conn.exec_driver_sql("SELECT value FROM partbench_meta").scalar() == "1"

    store = Store(_url(tmp_path / "head.db"))
    assert _schema_differences(store.engine, Base.metadata) == []
    with store.session() as s:
        assert s.execute(sa.text("SELECT value FROM partbench_meta")).scalar() == str(SCHEMA_VERSION)


# --- the command line -------------------------------------------------------------------------


def _cli():
    from partbench.cli import cli

    return cli


def test_runs_id_shows_one_run_in_full(tmp_path):
    url = _url(tmp_path / "r.db")
    store = Store(url)
    bad = store.claim("a", **_claim_fields())
    store.fail(bad, "ValueError: [/bold] broke", traceback='Traceback:\n  File "task.py", line 9\nValueError')
    good = store.claim("b", **_claim_fields())
    store.finish(good, {"mAP": MetricValue(5.0)}, n_items=4, items=_ap_items(4), chance={"mAP": 1.0})
    runner = CliRunner()
    result = runner.invoke(_cli(), ["runs", "--id", str(bad), "--db", url])
    assert result.exit_code == 0, result.output
    assert "status: failed" in result.output and "ValueError: [/bold] broke" in result.output
    assert 'File "task.py", line 9' in result.output and f"pid: {os.getpid()}" in result.output
    result = runner.invoke(_cli(), ["runs", "--id", str(good), "--format", "json", "--db", url])
    assert result.exit_code == 0 and '"shape": [\n' in result.output and '"chance"' in result.output
    result = runner.invoke(_cli(), ["runs", "--id", "99", "--db", url])
    assert result.exit_code == 1 and "no run 99" in result.output
