"""The results store: lifecycle, lookup by configuration, nothing half-written."""

from __future__ import annotations

import pytest

from partbench.errors import PartbenchError
from partbench.store import MetricValue, Store


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
