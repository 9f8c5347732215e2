"""``partbench sweep``: jobs through submitit's local executor (real processes) equal a plain
``partbench run``; what is stored or queued is not submitted again; Slurm options reach the
sbatch file (through stand-in sbatch/sacct commands); ``--status`` tells each job's state."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from partbench.errors import PartbenchError
from partbench.specs import MetricValue
from partbench.store import Store
from partbench.sweep import Launcher, job_states, records

MINI = ["mini-random", "mini-mae", "mini-supervised"]
QUICK = ["-t", "part-retrieval", "-t", "object-retrieval", "--limit", "8", "--workers", "0"]


def _cli():
    from partbench.cli import cli

    return cli


def _invoke(*args: str):
    result = CliRunner().invoke(_cli(), list(args))
    return result


def _runs(url: str) -> dict[tuple[str, str], dict]:
    store = Store(url)
    out = {}
    for run in store.runs():
        assert run.status == "done", (run.encoder, run.task, run.error)
        key = (run.encoder, run.task)
        assert key not in out, f"{key} stored twice"
        out[key] = {
            "hash": run.config_hash,
            "metrics": {m.name: (m.value, m.ci_low, m.ci_high) for m in run.metrics},
            "chance": run.chance,
            "n_items": run.n_items,
            "items": store.items(run.id),
        }
    store.close()
    return out


@pytest.mark.slow
def test_a_local_sweep_equals_a_plain_run_and_is_not_submitted_twice(tmp_path, isolated_home):
    swept = f"sqlite:///{tmp_path / 'swept.db'}"
    encoders = [a for e in MINI for a in ("-e", e)]
    result = _invoke("sweep", *encoders, *QUICK, "--launcher", "local", "--wait", "--db", swept)
    assert result.exit_code == 0, result.output
    (record,) = records()
    assert len(record["jobs"]) == 3 and all(len(j["tasks"]) == 2 for j in record["jobs"])
    assert all(Path(record["folder"], f"{j['job_id']}_0_log.out").exists() for j in record["jobs"])

    plain = f"sqlite:///{tmp_path / 'plain.db'}"
    result = _invoke("run", *encoders, *QUICK, "--no-cache", "--db", plain)
    assert result.exit_code == 0, result.output

    a, b = _runs(swept), _runs(plain)
    assert sorted(a) == sorted(b) and len(a) == 6  # every (encoder, task), each once
    for key in a:
        assert a[key]["hash"] == b[key]["hash"], key  # the same configuration...
        assert a[key]["metrics"] == b[key]["metrics"], key  # ...and the same scores, to the bit
        assert a[key]["chance"] == b[key]["chance"] and a[key]["n_items"] == b[key]["n_items"]
        for name, values in a[key]["items"].items():
            assert np.array_equal(values, b[key]["items"][name], equal_nan=True), (key, name)

    result = _invoke("sweep", "--status", "--format", "json")
    assert result.exit_code == 0, result.output
    (shown,) = json.loads(result.output)
    assert shown["counts"]["done"] == 3 and shown["counts"]["failed"] == 0
    assert all(j["state"] == "done" and j["runs"]["done"] == 2 for j in shown["jobs"])
    table = _invoke("sweep", "--status")
    assert table.exit_code == 0 and "3 done" in table.output and "0 failed" in table.output

    # Everything is stored: nothing is submitted, no job starts.
    again = _invoke("sweep", *encoders, *QUICK, "--launcher", "local", "--wait", "--db", swept)
    assert again.exit_code == 0, again.output
    assert "Nothing to submit: all 6 configuration(s) are stored" in again.output
    assert len(records()) == 1 and len(_runs(swept)) == 6


@pytest.mark.slow
def test_a_job_whose_run_fails_is_shown_failed_with_its_error(tmp_path, isolated_home):
    db = f"sqlite:///{tmp_path / 'r.db'}"
    args = ["sweep", "-e", "mini-random", "-t", "part-retrieval", "-o", "feature=projection"]
    result = _invoke(*args, "--limit", "8", "--workers", "0", "--wait", "--format", "json", "--db", db)
    assert result.exit_code == 1  # --wait: a failed job fails the command
    shown = json.loads(result.output[result.output.index("[") :])
    (job,) = shown[0]["jobs"]
    assert job["state"] == "failed" and job["runs"]["failed"] == 1 and "projection" in job["error"]
    (run,) = Store(db).runs()
    assert run.status == "failed" and "projection" in run.error


# --- Slurm, through stand-in commands ------------------------------------------------------------

FAKE_SBATCH = """#!/bin/sh
n=$(ls "$FAKE_SLURM"/sbatch-*.sh 2>/dev/null | wc -l)
cp "$1" "$FAKE_SLURM/sbatch-$n.sh"
echo "Submitted batch job $((4242 + n))"
"""
FAKE_SACCT = """#!/bin/sh
echo "JobID|State|NodeList"
cat "$FAKE_SLURM/sacct" 2>/dev/null
"""


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "slurm"
    bin_dir = folder / "bin"
    bin_dir.mkdir(parents=True)
    for name, text in (
        ("sbatch", FAKE_SBATCH),
        ("sacct", FAKE_SACCT),
        ("srun", "#!/bin/sh\n"),
        ("scancel", "#!/bin/sh\n"),
    ):
        path = bin_dir / name
        path.write_text(text)
        path.chmod(path.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_SLURM", str(folder))
    return folder


def _store_done(url: str, encoder: str, task: str, **run_options) -> None:
    """A done run whose stored configuration is what a sweep with these options plans."""
    from partbench.plugins import registry
    from partbench.runner import Machine, RunOptions, declared_config, make_plan

    plan = make_plan(registry(), [encoder], [task], RunOptions(**run_options), Machine.elsewhere("cuda"))
    ((name, spec),), (task_spec,) = plan.encoders, plan.tasks
    config = json.loads(json.dumps(declared_config(plan, name, spec, task_spec)))
    config["encoder"]["weights_id"] = "random-init:seed=0"  # and what only loading tells
    store = Store(url)
    fields = dict(
        encoder=encoder, encoder_plugin="partbench", family="none", weights_id="w", task=task,
        task_plugin="partbench", level="part", dataset="synparts", dataset_fingerprint="f", config=config,
        headline_metric="mAP", device="cuda", versions={}, seed=0,
    )  # fmt: skip
    store.finish(store.claim(f"{encoder}-{task}", **fields), {"mAP": MetricValue(50.0)}, n_items=1)
    store.close()


def test_a_slurm_sweep_maps_its_options_onto_sbatch_and_submits_only_what_is_missing(
    tmp_path, isolated_home, fake_slurm
):
    db = f"sqlite:///{tmp_path / 'team.db'}"
    _store_done(db, "mini-mae", "part-retrieval", limit=8)
    args = [
        "sweep", "-e", "mini-random", "-e", "mini-mae", "-t", "part-retrieval", "-t", "object-retrieval",
        "--limit", "8", "--launcher", "slurm", "--partition", "gpu", "--time", "90", "--gpus", "2",
        "--cpus", "8", "--mem", "32", "--account", "vision", "--qos", "high", "--constraint", "a100",
        "--parallel", "1", "--slurm-option", "mail-type=END", "--setup", "module load cuda/12",
        "--name", "nightly", "--db", db,
    ]  # fmt: skip
    result = _invoke(*args)
    assert result.exit_code == 0, result.output
    assert "submitted 2 job(s) (slurm), job ids 4242_0, 4242_1" in result.output

    (script,) = fake_slurm.glob("sbatch-*.sh")
    text = script.read_text()
    for line in (
        "#SBATCH --partition=gpu",
        "#SBATCH --time=90",
        "#SBATCH --gpus-per-node=2",
        "#SBATCH --cpus-per-task=8",
        "#SBATCH --mem=32GB",
        "#SBATCH --account=vision",
        "#SBATCH --qos=high",
        "#SBATCH --constraint=a100",
        "#SBATCH --array=0-1%1",
        "#SBATCH --mail-type=END",
        "#SBATCH --job-name=partbench-nightly",
        "module load cuda/12",
    ):
        assert line in text, line

    (record,) = records()
    jobs = {j["encoder"]: j for j in record["jobs"]}
    assert jobs["mini-random"]["tasks"] == ["part-retrieval", "object-retrieval"]
    assert jobs["mini-mae"]["tasks"] == ["object-retrieval"]  # its part-retrieval is stored
    assert record["skipped"] == [
        {"encoder": "mini-mae", "dataset": "synparts", "task": "part-retrieval", "reason": "stored"}
    ]

    (fake_slurm / "sacct").write_text("4242_0|PENDING|\n4242_1|PENDING|\n")
    assert [s["state"] for s in job_states(record)] == ["queued", "queued"]
    # Queued jobs are not submitted twice either.
    again = _invoke(*args[:-4], "--db", db)
    assert again.exit_code == 0 and "Nothing to submit" in again.output
    assert len(list(fake_slurm.glob("sbatch-*.sh"))) == 1

    # A job that started writes its state; one Slurm stopped is failed with Slurm's word.
    index = jobs["mini-random"]["index"]
    running = {"state": "running", "host": "node7", "pid": 1, "started_at": "2025-01-01T00:00:00+00:00"}
    (Path(record["path"]) / "jobs" / f"{index}.json").write_text(json.dumps(running))
    (fake_slurm / "sacct").write_text("4242_0|TIMEOUT|node7\n4242_1|CANCELLED by 1000|\n")
    result = _invoke("sweep", "--status", "--name", "nightly", "--format", "json")
    assert result.exit_code == 0, result.output
    shown = {j["encoder"]: j for j in json.loads(result.output)[0]["jobs"]}
    assert shown["mini-random"]["state"] == "failed" and "TIMEOUT" in shown["mini-random"]["error"]
    assert shown["mini-mae"]["state"] == "failed" and "CANCELLED" in shown["mini-mae"]["error"]


def test_launcher_options_are_checked_before_anything_is_submitted(tmp_path, isolated_home):
    with pytest.raises(PartbenchError, match="--partition: only with --launcher slurm"):
        Launcher("local", partition="gpu").parameters("x")
    with pytest.raises(PartbenchError, match="--slurm-option 'exclusive': expected KEY=VALUE"):
        Launcher("slurm", slurm_options=["exclusive"]).parameters("x")
    with pytest.raises(PartbenchError, match="--time must be positive"):
        Launcher("slurm", time_min=0).parameters("x")
    import torch

    assert Launcher("local").parameters("x")["gpus_per_node"] == torch.cuda.device_count()
    assert Launcher("slurm").parameters("x")["gpus_per_node"] == 1

    result = _invoke("sweep", "-e", "mini-random", "-t", "part-retrieval", "--partition", "gpu")
    assert result.exit_code == 1 and "only with --launcher slurm" in result.output
    result = _invoke("sweep", "-e", "no-such-encoder", "-t", "part-retrieval")
    assert result.exit_code == 1 and "no-such-encoder" in result.output
    result = _invoke("sweep", "-e", "mini-random", "-t", "part-retrieval", "--launcher", "slurm")
    assert result.exit_code == 1 and "cannot submit to slurm" in result.output  # no Slurm here
    assert records() == []
    result = _invoke("sweep", "--status")
    assert result.exit_code == 0 and "No sweeps recorded" in result.output


def test_local_job_states_from_the_state_file_and_the_process(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    record = {
        "name": "s",
        "launcher": "local",
        "host": socket.gethostname(),
        "path": str(tmp_path),
        "folder": str(tmp_path / "submitit"),
        "jobs": [
            {"job_id": str(os.getpid()), "state_file": "jobs/0.json"},  # alive, not started yet
            {"job_id": str(dead.pid), "state_file": "jobs/1.json"},  # gone without a word
            {"job_id": str(dead.pid), "state_file": "jobs/2.json"},  # gone while running
            {"job_id": str(dead.pid), "state_file": "jobs/3.json"},  # finished
        ],
    }
    (tmp_path / "jobs").mkdir()
    (tmp_path / "jobs" / "2.json").write_text(json.dumps({"state": "running", "pid": dead.pid}))
    (tmp_path / "jobs" / "3.json").write_text(json.dumps({"state": "done", "outcomes": []}))
    states = job_states(record)
    assert [s["state"] for s in states] == ["running", "failed", "failed", "done"]
    assert "before partbench started" in states[1]["error"]
    assert "while running" in states[2]["error"]


@pytest.mark.parametrize(
    "options, message",
    [
        (
            {"account": "vision\n#SBATCH --exclusive"},
            r"--account 'vision\\n#SBATCH --exclusive': contains the control",
        ),
        ({"slurm_options": ["mail-type=END\nrm -rf ~"]}, "--slurm-option 'mail-type=END.*control character"),
        ({"partition": "gpu\r"}, "--partition .*control character"),
        ({"setup": ["module load cuda\x00"]}, "--setup .*control character"),
        ({"parallel": 0}, "--parallel must be at least 1, got 0"),
        ({"mem_gb": float("inf")}, "--mem must be positive and finite, got inf"),
        ({"mem_gb": float("nan")}, "--mem must be positive and finite, got nan"),
        ({"mem_gb": -4.0}, "--mem must be positive and finite, got -4.0"),
        ({"mem_gb": 1e300}, "--mem must be at most"),
    ],
)
def test_values_the_batch_script_cannot_take_are_refused(options, message):
    with pytest.raises(PartbenchError, match=message):
        Launcher("slurm", **options).parameters("x")


def test_a_control_character_never_reaches_sbatch(tmp_path, isolated_home, fake_slurm):
    args = ["sweep", "-e", "mini-random", "-t", "part-retrieval", "--launcher", "slurm"]
    for extra in (["--account", "a\nb"], ["--slurm-option", "comment=x\n#SBATCH --exclusive"]):
        result = _invoke(*args, *extra, "--db", f"sqlite:///{tmp_path / 'r.db'}")
        assert result.exit_code == 1 and "control character" in result.output, result.output
        assert "Traceback" not in result.output
    result = _invoke(*args, "--mem", "inf", "--db", f"sqlite:///{tmp_path / 'r.db'}")
    assert result.exit_code == 1 and "--mem must be positive and finite" in result.output
    assert not list(fake_slurm.glob("sbatch-*.sh")) and records() == []


def test_damaged_sweep_records_are_reported_by_status(tmp_path, isolated_home):
    from partbench.sweep import sweeps_root

    root = sweeps_root()
    (root / "broken").mkdir(parents=True)
    (root / "broken" / "sweep.json").write_text('{"name": "broken", "jobs": [')
    (root / "listy").mkdir()
    (root / "listy" / "sweep.json").write_text("[1, 2]")
    good = root / "good"
    (good / "jobs").mkdir(parents=True)
    record = {
        "name": "good", "launcher": "local", "host": socket.gethostname(), "path": str(good),
        "folder": str(good / "submitit"), "created_at": "2025-01-01T00:00:00",
        "jobs": [
            {"job_id": "1", "encoder": "e", "dataset": "d", "tasks": ["t"], "state_file": f"jobs/{i}.json"}
            for i in range(3)
        ],
    }  # fmt: skip
    (good / "sweep.json").write_text(json.dumps(record))
    (good / "jobs" / "0.json").write_text("[1, 2]")  # a list: no .get
    (good / "jobs" / "1.json").write_text(json.dumps({"state": "done", "outcomes": ["done"]}))
    (good / "jobs" / "2.json").write_text(json.dumps({"state": "done", "outcomes": [{"status": "done"}]}))

    result = _invoke("sweep", "--status", "--format", "json")
    assert result.exit_code == 0, result.output
    shown = {s["name"]: s for s in json.loads(result.output)}
    assert "sweep.json is not JSON" in shown["broken"]["damaged"] and "broken" in shown["broken"]["damaged"]
    assert "not a JSON object" in shown["listy"]["damaged"]
    jobs = shown["good"]["jobs"]
    assert shown["good"]["damaged"] is None
    assert jobs[0]["state"] == "unknown" and "damaged job record" in jobs[0]["error"]
    assert "0.json is not a JSON object" in jobs[0]["error"]
    assert jobs[1]["state"] == "unknown" and "'outcomes'" in jobs[1]["error"]
    assert jobs[2]["state"] == "done" and jobs[2]["runs"]["done"] == 1

    result = _invoke("sweep", "--status")
    assert result.exit_code == 0 and "Traceback" not in result.output
    assert "sweep broken: its record is damaged" in result.output
    assert "sweep listy: its record is damaged" in result.output
    result = _invoke("sweep", "--status", "--name", "broken")
    assert result.exit_code == 0 and "sweep broken: its record is damaged" in result.output
