"""The command line end to end, as a user runs it: run, runs, list, leaderboard, mistakes."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from partbench import plugins
from partbench.cli import cli
from partbench.datasets.base import Dataset, LazySamples, Sample
from partbench.hookspecs import hookimpl
from partbench.specs import DatasetSpec

LIMIT = ["--limit", "24"]
QUICK = [*LIMIT, "-o", "epochs=4", "-o", "iterations=10"]


def invoke(*args: str, db: str | None = None):
    extra = ["--db", db] if db else []
    result = CliRunner().invoke(cli, [*args, *extra], catch_exceptions=False)
    return result


@pytest.fixture(scope="module")
def filled_db(tmp_path_factory):
    """One store holding random-vit on every SynParts task, shared by the read-only tests."""
    db = f"sqlite:///{tmp_path_factory.mktemp('db') / 'runs.db'}"
    plugins.reset_registry()
    result = invoke("run", "--encoder", "random-vit", "--task", "all", *QUICK, db=db)
    assert result.exit_code == 0, result.output
    return db


def test_run_stores_every_task_with_provenance(filled_db):
    runs = json.loads(invoke("runs", "--format", "json", db=filled_db).output)
    assert sorted(r["task"] for r in runs) == sorted(
        [
            "part-retrieval",
            "part-linear",
            "part-attentive",
            "part-seg",
            "object-retrieval",
            "object-linear",
            "object-seg",
            "part-correspondence",
            "part-seg-nn",
            "object-seg-nn",
            "part-discovery",
        ]
    )
    for r in runs:
        assert r["status"] == "done" and r["encoder"] == "random-vit" and r["dataset"] == "synparts"
        head = r["metrics"][r["headline"]]
        assert head["ci"][0] <= head["value"] <= head["ci"][1]
        # One batch per split at this size: the warm-up, whose output is kept and whose time
        # is reported apart, so only the end-to-end rate exists.
        assert r["n_items"] > 0 and r["timing"]["end_to_end_images_per_second"] > 0
        assert r["timing"]["warmup_seconds"] > 0
        assert r["timing"]["clock"] == "perf_counter" and r["device"].startswith("cpu")
        assert r["weights_id"] == "random-init:seed=0" and len(r["config_hash"]) == 64


def test_the_same_configuration_is_not_run_twice_unless_forced(filled_db):
    again = invoke("run", "-e", "random-vit", "-t", "part-retrieval", *LIMIT, db=filled_db)
    assert again.exit_code == 0 and "stored" in again.output
    before = len(json.loads(invoke("runs", "--format", "json", db=filled_db).output))
    forced = invoke("run", "-e", "random-vit", "-t", "part-retrieval", *LIMIT, "--force", db=filled_db)
    assert forced.exit_code == 0 and "done" in forced.output
    after = json.loads(invoke("runs", "--format", "json", db=filled_db).output)
    assert len(after) == before + 1
    # A different seed is a different configuration.
    seeded = invoke("run", "-e", "random-vit", "-t", "part-retrieval", *LIMIT, "--seed", "1", db=filled_db)
    assert "done" in seeded.output


def test_leaderboard_formats(filled_db, tmp_path):
    rows = json.loads(invoke("leaderboard", "--format", "json", db=filled_db).output)
    assert rows[0]["rank"] == 1 and rows[0]["encoder"] == "random-vit"
    assert rows[0]["object_score"] is not None and rows[0]["part_score"] is not None
    assert set(rows[0]["tasks"]) >= {"part-retrieval", "object-linear", "part-seg"}
    part = json.loads(invoke("leaderboard", "--level", "part", "--format", "json", db=filled_db).output)
    assert part[0]["level"] == "part" and part[0]["rank"] == 1
    out = tmp_path / "board.md"
    assert invoke("leaderboard", "--output", str(out), db=filled_db).exit_code == 0
    text = out.read_text()
    assert "| rank | encoder |" in text and "random-vit" in text and "part-seg (mIoU)" in text
    csv_text = invoke("leaderboard", "--format", "csv", db=filled_db).output
    assert csv_text.splitlines()[0].startswith("dataset,rank,encoder")
    table = invoke("leaderboard", db=filled_db).output
    assert "random-vit" in table


def test_timm_encoder_from_a_weights_file_joins_the_leaderboard(filled_db, tmp_path):
    import timm
    import torch

    model = timm.create_model("vit_tiny_patch16_224", pretrained=False)
    path = tmp_path / "vit_tiny.pth"
    torch.save(model.state_dict(), path)  # keeps the classifier: the adapter drops it
    result = invoke(
        "run",
        "-e",
        "timm:vit_tiny_patch16_224",
        "--weights",
        str(path),
        "-t",
        "part-retrieval",
        "-t",
        "object-retrieval",
        "--limit",
        "8",
        db=filled_db,
    )
    assert result.exit_code == 0, result.output
    rows = json.loads(invoke("leaderboard", "--format", "json", db=filled_db).output)
    timm_row = next(r for r in rows if r["encoder"] == "timm:vit_tiny_patch16_224")
    assert timm_row["object_score"] is not None and timm_row["part_score"] is not None
    assert "part-linear" in timm_row["missing"]  # marked incomplete, ranked after complete rows
    assert timm_row["rank"] > next(r for r in rows if r["encoder"] == "random-vit")["rank"]
    runs = json.loads(invoke("runs", "--format", "json", db=filled_db).output)
    assert any(r["weights_id"].startswith("sha256:") for r in runs)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "-e", "random-vt", "-t", "all"], "did you mean 'random-vit'"),
        (["run", "-e", "random-vit", "-t", "part-retrievl"], "did you mean 'part-retrieval'"),
        (["run", "-e", "random-vit", "-t", "all", "-d", "synpart"], "did you mean 'synparts'"),
        (["run", "-e", "random-vit", "-t", "all", "-o", "epochs=many"], "expected an int"),
        (["run", "-e", "random-vit", "-t", "all", "-o", "part-linear.feature=pixels"], "not one of"),
        (["run", "-e", "random-vit", "-t", "all", "-o", "colour=red"], "no task has this option"),
        (["run", "-e", "random-vit", "-t", "all", "--device", "tpu"], "expected auto, cpu"),
        (["run", "-e", "timm:no_such_model_xyz", "-t", "part-retrieval"], "timm has no model"),
        (
            ["run", "-e", "random-vit", "-e", "dino", "--weights", "pyproject.toml", "-t", "all"],
            "--weights belongs to one encoder",
        ),
    ],
)
def test_user_mistakes_are_one_line_errors(args, message, tmp_path):
    result = invoke(*args, db=f"sqlite:///{tmp_path / 'x.db'}")
    assert result.exit_code != 0
    assert message in result.output
    assert "Traceback" not in result.output
    assert len([line for line in result.output.splitlines() if line.startswith("Error")]) <= 1


def test_options_of_unselected_tasks_are_ignored_and_stored_options_are_the_used_ones(tmp_path):
    db = f"sqlite:///{tmp_path / 'o.db'}"
    result = invoke(
        "run",
        "-e",
        "random-vit",
        "-t",
        "object-retrieval",
        "--limit",
        "8",
        "-o",
        "epochs=3",
        "-o",
        "part-seg.iterations=5",
        "-o",
        "feature=cls",
        db=db,
    )
    assert result.exit_code == 0, result.output
    (run,) = json.loads(invoke("runs", "--format", "json", db=db).output)
    assert run["task"] == "object-retrieval"
    assert run["config"]["task"]["options"] == {"feature": "cls", "include_self": True}
    assert run["config"]["task"]["default_options"] is False
    assert set(run["versions"]) >= {"torch", "timm", "partbench"}


def test_empty_store_leaderboard_says_what_to_do(tmp_path):
    result = invoke("leaderboard", db=f"sqlite:///{tmp_path / 'empty.db'}")
    assert result.exit_code == 1 and "partbench run" in result.output


def test_list_shows_plugins_levels_and_metrics():
    tasks = {t["name"]: t for t in json.loads(invoke("list", "tasks", "--format", "json").output)}
    assert tasks["part-seg"]["level"] == "part" and tasks["part-seg"]["metric"] == "mIoU"
    assert tasks["part-retrieval"]["options"]["include_self"]["default"] is True
    assert tasks["object-linear"]["plugin"] == "partbench"
    datasets = {d["name"]: d for d in json.loads(invoke("list", "datasets", "--format", "json").output)}
    assert datasets["synparts"]["levels"] == ["object", "part"] and datasets["synparts"]["data_present"]
    encoders = {e["name"]: e for e in json.loads(invoke("list", "encoders", "--format", "json").output)}
    assert encoders["random-vit"]["family"] == "none" and "timm:<model>" in encoders
    assert "random-vit" in invoke("list", "encoders").output


def test_database_url_comes_from_the_environment(monkeypatch, tmp_path):
    db = tmp_path / "env.db"
    monkeypatch.setenv("PARTBENCH_DB", f"sqlite:///{db}")
    invoke("run", "-e", "random-vit", "-t", "object-retrieval", "--limit", "8")
    assert db.exists()
    assert len(json.loads(invoke("runs", "--format", "json").output)) == 1


class Broken(Dataset):
    """Its test split holds an image without the keypoints part tasks need."""

    name = "broken"
    capabilities = frozenset({"images", "keypoints"})
    object_classes = ("x", "y")
    part_classes = ("p", "q")

    def samples(self, split):
        def get(i):
            kps = None if (split == "test" and i == 3) else np.array([[0, 10, 10, 1], [1, 50, 50, 1.0]])
            return Sample(np.full((64, 64, 3), 40 * i, np.uint8), f"{split}/{i}", label=i % 2, keypoints=kps)

        return LazySamples(6, get)

    def fingerprint(self):
        return "broken-1"


def test_a_data_error_fails_its_runs_and_keeps_the_others(tmp_path):
    class Provider:
        @hookimpl
        def register_datasets(self, register):
            register(DatasetSpec("broken", lambda root=None: Broken(), Broken.capabilities))

    pm, problems = plugins.plugin_manager(extra=[("test-broken", Provider())])
    plugins._REGISTRY = plugins.build_registry(pm, problems)
    db = f"sqlite:///{tmp_path / 'b.db'}"
    result = invoke(
        "run", "-e", "random-vit", "-d", "broken", "-t", "part-retrieval", "-t", "object-retrieval", db=db
    )
    assert result.exit_code == 1 and "Traceback" not in result.output
    runs = {r["task"]: r for r in json.loads(invoke("runs", "--format", "json", db=db).output)}
    assert runs["part-retrieval"]["status"] == "failed"
    assert "test/3 has no keypoints" in runs["part-retrieval"]["error"]
    assert runs["object-retrieval"]["status"] == "done"


def test_help_is_fast_because_it_imports_no_torch():
    code = (
        "import sys\nfrom partbench.cli import cli\n"
        "try:\n    cli(['--help'])\nexcept SystemExit:\n    pass\n"
        "print('HEAVY', sorted(m for m in ('torch', 'timm', 'sqlalchemy') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "HEAVY []" in out.stdout


def test_an_interrupt_leaves_no_run_marked_running(tmp_path):
    from partbench.specs import TaskOption, TaskSpec
    from partbench.tasks.retrieval import Retrieval

    class Interrupted(Retrieval):
        def evaluate(self, *args, **kwargs):
            raise KeyboardInterrupt

    class Provider:
        @hookimpl
        def register_tasks(self, register):
            register(
                TaskSpec(
                    "part-interrupted",
                    "part",
                    "mAP",
                    "keypoints",
                    lambda options: Interrupted("keypoints", options),
                    options={"feature": TaskOption("embedding", ""), "include_self": TaskOption(True, "")},
                )
            )

    pm, problems = plugins.plugin_manager(extra=[("test-interrupt", Provider())])
    plugins._REGISTRY = plugins.build_registry(pm, problems)
    db = f"sqlite:///{tmp_path / 'i.db'}"
    result = CliRunner().invoke(
        cli,
        [
            "run",
            "-e",
            "random-vit",
            "-t",
            "part-retrieval",
            "-t",
            "part-interrupted",
            "--limit",
            "8",
            "--db",
            db,
        ],
    )
    assert result.exit_code == 130 and "Interrupted" in result.output
    runs = {r["task"]: r for r in json.loads(invoke("runs", "--format", "json", db=db).output)}
    assert runs["part-retrieval"]["status"] == "done"
    assert runs["part-interrupted"]["status"] == "interrupted"
    assert runs["part-interrupted"]["error"].startswith("interrupted")


def test_sigterm_marks_the_runs_in_flight_interrupted(tmp_path):
    import os
    import signal
    import sqlite3
    import time

    db_file = tmp_path / "t.db"
    env = {**os.environ, "PARTBENCH_HOME": str(tmp_path / "home")}
    args = ["run", "-e", "mini-random", "-t", "part-linear", "--limit", "6", "--workers", "0"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "partbench", *args, "-o", "solver=sgd", "-o", "epochs=1000000", "--db", f"sqlite:///{db_file}"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    status = None
    while time.monotonic() < deadline and status != "running":
        time.sleep(0.5)
        if db_file.exists():
            try:
                row = sqlite3.connect(db_file).execute("select status from runs").fetchone()
            except sqlite3.OperationalError:
                row = None
            status = row[0] if row else None
    assert status == "running", "the run never started"
    time.sleep(3)  # into the probe's training
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert "Terminated." in err
    row = sqlite3.connect(db_file).execute("select status, error from runs").fetchone()
    assert row[0] == "interrupted" and "Terminated" in row[1]


def test_run_over_a_suite_runs_the_pairs_with_data_and_lists_the_missing(tmp_path):
    db = f"sqlite:///{tmp_path / 's.db'}"
    result = CliRunner().invoke(
        cli,
        ["run", "-e", "mini-random", "--suite", "study", "--db", db],
    )
    # No data of the study's datasets is on this machine: each is listed with where to get it.
    assert result.exit_code == 1
    assert "no data for cub200" in result.output and "partbench data fetch cub200" in result.output
    assert "no dataset of it has its data here" in result.output
    result = CliRunner().invoke(
        cli, ["run", "-e", "mini-random", "--suite", "synparts", "--task", "all", "--db", db]
    )
    assert result.exit_code == 1 and "not both" in result.output
