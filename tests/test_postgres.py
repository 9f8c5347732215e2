"""The results store on a real PostgreSQL server: the run lifecycle, native column types,
migrations, and several processes writing at once (through the store and through
``partbench run``), next to the same on SQLite.

The server is the one ``.ci/run`` starts (PARTBENCH_TEST_POSTGRES), else a throwaway cluster
started here; without either these tests are skipped with the reason (in CI they fail)."""

from __future__ import annotations

import datetime as dt
import json
import multiprocessing
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pg_server
import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from test_store import _fields as store_fields
from test_store import _release_0_1_0_metadata, _schema_differences

from partbench.errors import PartbenchError
from partbench.specs import MetricValue
from partbench.store import HEAD_REVISION, SCHEMA_VERSION, VERSION_TABLE, Base, Store


@pytest.fixture(scope="session")
def postgres_server():
    yield from pg_server.server()


@pytest.fixture
def pg_url(postgres_server):
    yield from pg_server.database(postgres_server)


@pytest.fixture(params=["sqlite", "postgresql"])
def any_url(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'fresh' / 'r.db'}"
    else:
        yield from pg_server.database(request.getfixturevalue("postgres_server"))


def _fields(**over):
    # The store tests' run fields, with text that PostgreSQL must keep exactly; claim() takes
    # the hash apart.
    fields = store_fields(config={"seed": 0, "name": "ünïcode ✓"}, **over)
    fields.pop("config_hash")
    return fields


def _cli():
    from partbench.cli import cli

    return cli


# --- one process ------------------------------------------------------------------------------


def test_a_run_lives_its_whole_life_on_postgresql(pg_url, tmp_path):
    store = Store(pg_url, pending_dir=tmp_path / "pending")
    run_id = store.claim("h1", **_fields())
    assert run_id is not None and store.claim("h1", **_fields()) is None  # a live claim blocks
    assert store.heartbeat([run_id])
    ap = np.array([0.5, np.nan, 0.725])  # a query with no positive: NaN stays inside the npz
    store.finish(
        run_id,
        {"mAP": MetricValue(61.25, 60.0, 62.5), "AP": MetricValue(np.float64(58.0))},
        n_items=2,
        items_per_class={"eye": 2, "leg": 1},
        timing={"images_per_second": np.float32(3.5)},
        details={"per_class_ap": {"eye": 1.0}, "note": "nul \x00 kept as text"},
        items={"ap": ap, "label": np.array([0, 1, 1])},
        chance={"mAP": 33.3},
    )
    assert store.claim("h1", **_fields()) is None  # a done run blocks
    done = store.find_done("h1")
    assert (done.headline.value, done.headline.ci_low, done.headline.ci_high) == (61.25, 60.0, 62.5)
    assert done.config["name"] == "ünïcode ✓" and done.chance == {"mAP": 33.3}
    assert done.finished_at.utcoffset() == dt.timedelta(0)  # aware, in UTC
    items = store.items(run_id)
    assert np.array_equal(items["ap"], ap, equal_nan=True) and items["label"].dtype == np.int64

    failed = store.claim("h2", **_fields())
    store.fail(failed, "ValueError: bad \x00 byte", traceback='File "x.py", line 1\x00')
    run = store.run(failed)
    assert run.status == "failed" and "\\x00" in run.error and "line 1" in run.traceback
    assert [r.id for r in store.runs(status="done")] == [run_id]

    detail = store.detail(run_id)
    assert detail["started_at"].tzinfo is not None and detail["items"]["arrays"]["ap"]["shape"] == [3]
    store.close()


def test_a_dead_writer_is_abandoned_and_pruned_on_postgresql(pg_url, tmp_path):
    store = Store(pg_url, heartbeat_timeout=0.5, pending_dir=tmp_path / "pending")
    stale = store.claim("h", **_fields())
    with store.engine.begin() as conn:  # as if its process stopped beating a while ago
        conn.execute(
            sa.text("UPDATE runs SET heartbeat_at = now() - interval '1 hour' WHERE id = :id"), {"id": stale}
        )
    assert [r.id for r in store.runs(status="abandoned")] == [stale]
    taken = store.claim("h", **_fields())  # an abandoned run does not block
    assert taken is not None and store.run(stale).status == "interrupted"
    assert "took over" in store.run(stale).error
    orphan = store.claim("other", **_fields())
    with store.engine.begin() as conn:
        conn.execute(sa.text("UPDATE runs SET heartbeat_at = NULL WHERE id = :id"), {"id": orphan})
    assert store.prune() == 1 and [r.id for r in store.runs()] == [stale, taken]
    store.close()


def test_a_result_blocked_by_a_lock_waits_in_a_pending_file_then_is_stored(pg_url, tmp_path):
    pending = tmp_path / "pending"
    store = Store(pg_url, busy_timeout=0.5, retries=0, pending_dir=pending)
    run_id = store.claim("h", **_fields())
    blocker = sa.create_engine(pg_url, poolclass=sa.pool.NullPool)
    with blocker.connect() as conn:
        conn.execute(sa.text("SELECT 1 FROM runs WHERE id = :id FOR UPDATE"), {"id": run_id})  # held
        kept = store.finish(run_id, {"mAP": MetricValue(12.5)}, n_items=2, items={"ap": np.ones(2)})
        assert kept is not None and kept.parent == pending  # lock_timeout, then a pending file
        conn.rollback()
    assert store.run(run_id).status == "running"
    reopened = Store(pg_url, pending_dir=pending)  # the next command stores it
    run = reopened.run(run_id)
    assert run.status == "done" and run.headline.value == 12.5 and len(reopened.items(run_id)["ap"]) == 2
    assert not any(pending.glob("*.zip"))
    blocker.dispose()
    store.close()
    reopened.close()


def test_postgresql_gets_native_types_and_exactly_the_models(pg_url, tmp_path):
    store = Store(pg_url, pending_dir=tmp_path / "pending")
    assert _schema_differences(store.engine, Base.metadata) == []
    with store.engine.connect() as conn:
        types = dict(
            conn.execute(
                sa.text(
                    "SELECT table_name || '.' || column_name, data_type FROM information_schema.columns "
                    "WHERE table_schema = 'public'"
                )
            ).all()
        )
        assert conn.execute(sa.text(f"SELECT version_num FROM {VERSION_TABLE}")).scalar() == HEAD_REVISION
    assert types["runs.config"] == "json" and types["run_items.data"] == "bytea"
    assert types["runs.started_at"] == "timestamp with time zone"
    assert types["metrics.value"] == "double precision"  # a metric keeps every bit
    store.close()


def test_a_0_1_0_database_on_postgresql_is_upgraded_with_its_runs(pg_url, tmp_path):
    engine = sa.create_engine(pg_url, poolclass=sa.pool.NullPool)
    md = _release_0_1_0_metadata()
    md.create_all(engine)
    when = dt.datetime(2024, 5, 1, 12, tzinfo=dt.timezone.utc)
    with engine.begin() as conn:
        conn.execute(md.tables["partbench_meta"].insert().values(key="schema_version", value="1"))
        conn.execute(
            md.tables["runs"]
            .insert()
            .values(id=1, status="done", config_hash="old", started_at=when, finished_at=when, **_fields())
        )
        conn.execute(md.tables["metrics"].insert().values(run_id=1, name="mAP", value=61.5))
        conn.execute(sa.text("SELECT setval('runs_id_seq', 1)"))
    store = Store(pg_url, pending_dir=tmp_path / "pending")
    assert store.find_done("old").headline.value == 61.5 and store.claim("old", **_fields()) is None
    new = store.claim("new", **_fields())
    store.finish(new, {"mAP": MetricValue(1.0)}, n_items=1, items={"ap": np.ones(1)})
    assert new == 2
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT value FROM partbench_meta")).scalar() == str(SCHEMA_VERSION)
        assert conn.execute(sa.text(f"SELECT version_num FROM {VERSION_TABLE}")).scalar() == HEAD_REVISION
    store.close()
    engine.dispose()


def test_a_foreign_or_newer_postgresql_database_is_refused(pg_url, tmp_path):
    engine = sa.create_engine(pg_url, poolclass=sa.pool.NullPool)
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE invoices (id integer primary key)"))
    with pytest.raises(PartbenchError, match="another application's database"):
        Store(pg_url, pending_dir=tmp_path)
    with engine.begin() as conn:
        conn.execute(sa.text("DROP TABLE invoices"))
    Store(pg_url, pending_dir=tmp_path).close()
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE partbench_meta SET value = '99' WHERE key = 'schema_version'"))
    with pytest.raises(PartbenchError, match="newer partbench"):
        Store(pg_url, pending_dir=tmp_path)
    engine.dispose()


def test_a_plain_postgresql_url_works_and_the_cli_reads_it(pg_url, tmp_path):
    plain = pg_url.replace("postgresql+psycopg://", "postgresql://")
    store = Store(plain, pending_dir=tmp_path)
    run_id = store.claim("h", **_fields())
    store.finish(run_id, {"mAP": MetricValue(42.0, 40.0, 44.0)}, n_items=1)
    store.close()
    result = CliRunner().invoke(_cli(), ["runs", "--format", "json", "--db", plain])
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.output)
    assert row["id"] == run_id and row["status"] == "done"


def test_an_unreachable_server_is_one_clear_line_without_the_password(tmp_path):
    url = f"postgresql+psycopg://me:s3cret@/partbench?host={tmp_path / 'nowhere'}"
    with pytest.raises(PartbenchError, match="cannot open the results database") as caught:
        Store(url, pending_dir=tmp_path)
    assert "s3cret" not in str(caught.value)


def test_a_field_too_long_for_its_column_is_refused_on_both(any_url, tmp_path):
    store = Store(any_url, pending_dir=tmp_path / "pending")
    with pytest.raises(PartbenchError, match="encoder is 201 characters long"):
        store.claim("h", **_fields(encoder="e" * 201))
    assert store.runs() == []
    store.close()


# --- several processes at once ----------------------------------------------------------------


def _writer(url: str, index: int, pending: str, start, results) -> None:
    start.wait()
    store = Store(url, pending_dir=pending)  # three processes open a fresh database at once
    start.wait()
    won = []
    shared = [f"shared-{k}" for k in range(6)]
    for digest in shared[index * 2 :] + shared[: index * 2]:  # each starts elsewhere, then collides
        run_id = store.claim(digest, **_fields(encoder="shared-encoder"))
        if run_id is not None:
            store.finish(
                run_id, {"mAP": MetricValue(float(index))}, n_items=2, items={"ap": np.ones(2) * index}
            )
            won.append(digest)
    for k in range(3):  # and encoders of its own, written while the others write
        run_id = store.claim(f"own-{index}-{k}", **_fields(encoder=f"encoder-{index}"))
        store.finish(run_id, {"mAP": MetricValue(1.0)}, n_items=2, items={"ap": np.zeros(2)})
    store.close()
    results.put((index, won))


def test_three_writer_processes_store_every_result_exactly_once(any_url, tmp_path):
    ctx = multiprocessing.get_context("spawn")
    start, results = ctx.Barrier(3), ctx.Queue()
    pending = str(tmp_path / "pending")
    workers = [ctx.Process(target=_writer, args=(any_url, i, pending, start, results)) for i in range(3)]
    for w in workers:
        w.start()
    outcome = dict(results.get(timeout=180) for _ in workers)
    for w in workers:
        w.join(60)
        assert w.exitcode == 0
    won = sorted(d for ds in outcome.values() for d in ds)
    assert won == sorted(f"shared-{k}" for k in range(6))  # each shared configuration won once
    store = Store(any_url, pending_dir=pending)
    runs = store.runs()
    assert all(r.status == "done" for r in runs)
    expected = [f"shared-{k}" for k in range(6)] + [f"own-{i}-{k}" for i in range(3) for k in range(3)]
    assert sorted(r.config_hash for r in runs) == sorted(expected)  # stored, and none twice
    for r in runs:  # each result is whole: its metric from the process whose items it holds
        assert r.metrics[0].value == (store.items(r.id)["ap"][0] if r.encoder == "shared-encoder" else 1.0)
    assert not (tmp_path / "pending").exists() or not any((tmp_path / "pending").iterdir())
    store.close()


def _partbench_run(url: str, home: Path, encoders: list[str]) -> subprocess.Popen:
    args = [
        sys.executable,
        "-m",
        "partbench",
        "run",
        "-t",
        "part-retrieval",
        "--limit",
        "8",
        "--workers",
        "0",
    ]
    for e in encoders:
        args += ["-e", e]
    env = {**os.environ, "PARTBENCH_HOME": str(home), "PARTBENCH_DB": url, "COLUMNS": "200"}
    return subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow
def test_three_partbench_run_processes_share_one_postgresql_store(pg_url, isolated_home):
    # Three `partbench run` at once: two encoders each, every encoder wanted by two processes.
    wanted = [
        ["mini-random", "mini-mae"],
        ["mini-mae", "mini-supervised"],
        ["mini-supervised", "mini-random"],
    ]
    procs = [_partbench_run(pg_url, isolated_home, encoders) for encoders in wanted]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    for p, out in zip(procs, outputs, strict=True):
        assert p.returncode == 0, out
    store = Store(pg_url)
    runs = store.runs()
    assert sorted(r.encoder for r in runs) == ["mini-mae", "mini-random", "mini-supervised"], [
        (r.encoder, r.status, r.error) for r in runs
    ]
    assert all(r.status == "done" and r.n_items and r.host for r in runs)
    assert len({r.config_hash for r in runs}) == 3
    # Each encoder ran in exactly one process; the other process that wanted it skipped it.
    assert {r.pid for r in runs} <= {p.pid for p in procs}
    skipped = sum(out.count("stored (--force reruns)") + out.count("running elsewhere") for out in outputs)
    assert skipped == 3, outputs
    store.close()

    result = CliRunner().invoke(_cli(), ["leaderboard", "--format", "json", "--db", pg_url])
    assert result.exit_code == 0, result.output
    board = json.loads(result.output)
    rows = board if isinstance(board, list) else next(iter(board.values()))
    text = json.dumps(rows)
    assert all(name in text for name in ("mini-random", "mini-mae", "mini-supervised"))
