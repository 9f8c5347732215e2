"""The study in miniature runs its encoders in lanes: one-thread processes that share the
store and the feature cache."""

from __future__ import annotations

import pytest

from partbench.plugins import registry
from partbench.runner import RunOptions
from partbench.store import Store
from partbench.study import MINI_ENCODERS, default_lanes, run_lanes
from partbench.suites import BUILTIN_TASKS

ENCODERS = ["mini-random", "mini-cnn"]


@pytest.mark.slow  # four lane processes, every task twice over
def test_lanes_store_every_task_of_every_encoder_from_one_thread_processes(tmp_path, monkeypatch):
    monkeypatch.setenv("PARTBENCH_HOME", str(tmp_path / "home"))
    store = Store(f"sqlite:///{tmp_path / 'lanes.db'}")
    tasks = list(BUILTIN_TASKS)
    opts = RunOptions(limit=16, workers=0)

    from partbench import study

    started: list[list[str]] = []
    popen = study.subprocess.Popen

    def counted(argv, **kwargs):
        started.append(argv)
        return popen(argv, **kwargs)

    monkeypatch.setattr(study.subprocess, "Popen", counted)
    # A further run that reads what its lane cached, as the study's projection retrievals do.
    then = [(["mini-cnn"], "part-retrieval", "part-retrieval.include_self=false")]
    ran = run_lanes(ENCODERS, 2, opts, store, tasks_each=len(tasks), then=then)
    # One process a lane: the further run shares its lane's process, not a start-up of its own.
    assert len(started) == 2 and all(argv[1:3] == ["-m", "partbench.lane"] for argv in started)
    assert [status for _, status in ran] == [0, 0], [path.read_text()[-3000:] for path, _ in ran]
    assert [path.name for path, _ in ran] == ["lane-1.log", "lane-2.log"]
    assert "mini-random" in ran[0][0].read_text() and "mini-cnn" in ran[1][0].read_text()
    done = store.runs(status="done")
    variant = [r for r in done if r.config["task"]["options"].get("include_self") is False]
    assert [(r.encoder, r.task) for r in variant] == [("mini-cnn", "part-retrieval")]
    assert variant[0].timing["encoder_passes"] == 0  # the lane's own cache: nothing encoded again
    done = [r for r in done if r not in variant]
    assert sorted((r.encoder, r.task) for r in done) == sorted((e, t) for e in ENCODERS for t in tasks)
    assert all(r.config["device"].endswith("1 threads)") for r in done), {r.config["device"] for r in done}
    assert all(r.config["limit"] == 16 for r in done)

    # A second study finds every run stored: the lanes add nothing.
    again = run_lanes(ENCODERS, 2, opts, store, tasks_each=len(tasks), then=then)
    assert [status for _, status in again] == [0, 0]
    assert len(store.runs()) == len(done) + len(variant)


def test_more_lanes_than_encoders_start_one_process_per_encoder(tmp_path, monkeypatch):
    monkeypatch.setenv("PARTBENCH_HOME", str(tmp_path / "home"))
    store = Store(f"sqlite:///{tmp_path / 'lanes.db'}")
    ran = run_lanes(["mini-random"], 3, RunOptions(limit=4, workers=0), store)
    assert [path.name for path, _ in ran] == ["lane-1.log"]


def test_one_lane_per_core_on_a_cpu():
    from partbench.extraction import available_cores

    assert default_lanes("cpu") == max(1, min(available_cores(), len(MINI_ENCODERS)))


def test_the_study_prepares_its_data_once_before_the_lanes_start(tmp_path, monkeypatch):
    from partbench import study
    from partbench.datasets.synparts import SynParts

    class Stop(Exception):
        pass

    calls: list[tuple] = []
    monkeypatch.setattr(SynParts, "prepare", lambda self, workers=1: calls.append(("prepare", workers)))

    def lanes(*args, **kwargs):
        calls.append(("lanes",))
        raise Stop

    monkeypatch.setattr(study, "run_lanes", lanes)
    store = Store(f"sqlite:///{tmp_path / 'lanes.db'}")
    with pytest.raises(Stop):
        study.run_mini_study(registry(), store, RunOptions(), lanes=2)
    assert calls == [("prepare", 2), ("lanes",)]
    calls.clear()
    with pytest.raises(Stop):  # a limited study reads a few samples: each lane draws its own
        study.run_mini_study(registry(), store, RunOptions(limit=4), lanes=2)
    assert calls == [("lanes",)]


def test_a_lane_stops_at_its_first_failing_request_and_returns_its_status(capsys, tmp_path, monkeypatch):
    import json

    from partbench import lane
    from partbench.runner import RunRequest

    monkeypatch.setenv("PARTBENCH_DB", f"sqlite:///{tmp_path / 'lane.db'}")
    opts = RunOptions(limit=4, workers=0)
    bad = RunRequest(("no-such-encoder",), ("all",), opts).to_json()
    good = RunRequest(("mini-random",), ("part-retrieval",), opts).to_json()
    assert lane.main([json.dumps([bad, good])]) == 1
    assert "no-such-encoder" in capsys.readouterr().err
    store = Store(f"sqlite:///{tmp_path / 'lane.db'}")
    assert store.runs() == []  # the second request never ran
    assert lane.main([json.dumps([good])]) == 0
    assert "mini-random" in capsys.readouterr().out  # the outcomes' table, as `partbench run` prints it
    (stored,) = store.runs(status="done")
    assert (stored.encoder, stored.task, stored.config["limit"], stored.config["workers"]) == (
        "mini-random", "part-retrieval", 4, 0
    )  # fmt: skip
    # A request that is not one is one line naming what is wrong.
    assert lane.main([json.dumps([{**good, "options": {**good["options"], "colour": "red"}}])]) == 1
    assert "unknown key(s) colour" in capsys.readouterr().err
