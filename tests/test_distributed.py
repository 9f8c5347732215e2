"""torchrun: two processes on a CPU (gloo) store exactly what one process stores."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
from click.testing import CliRunner

from partbench.cli import cli
from partbench.distributed import World

ARGS = ["-e", "mini-random", "-t", "part-retrieval", "-t", "object-linear", "-t", "part-seg"]
ARGS += ["--limit", "12", "--workers", "0", "-o", "epochs=3", "-o", "iterations=10"]


def _runs(db: str) -> list[dict]:
    # Reading the stores needs no process of its own: the runs are the processes under test.
    out = CliRunner().invoke(cli, ["runs", "--format", "json", "--db", db], catch_exceptions=False)
    assert out.exit_code == 0, out.output
    return json.loads(out.stdout)


@pytest.mark.slow
def test_torchrun_with_two_processes_stores_one_run_per_task_with_the_single_process_metrics(tmp_path):
    torchrun = shutil.which("torchrun") or os.path.join(os.path.dirname(sys.executable), "torchrun")
    env = {**os.environ, "PARTBENCH_LOAD_PLUGINS": "partbench", "OMP_NUM_THREADS": "1"}
    single_db, multi_db = f"sqlite:///{tmp_path / 'one.db'}", f"sqlite:///{tmp_path / 'two.db'}"
    one = subprocess.run(
        [sys.executable, "-m", "partbench", "run", *ARGS, "--db", single_db],
        env={**env, "PARTBENCH_HOME": str(tmp_path / "h1")}, capture_output=True, text=True,
    )  # fmt: skip
    assert one.returncode == 0, one.stdout + one.stderr
    two = subprocess.run(
        [torchrun, "--nproc-per-node", "2", "--master-port", "29517", "-m", "partbench", "run", *ARGS,
         "--db", multi_db],
        env={**env, "PARTBENCH_HOME": str(tmp_path / "h2")}, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert two.returncode == 0, two.stdout + two.stderr
    single, multi = _runs(single_db), _runs(multi_db)
    assert sorted(r["task"] for r in multi) == sorted(r["task"] for r in single)  # one row per task
    for a, b in zip(
        sorted(single, key=lambda r: r["task"]), sorted(multi, key=lambda r: r["task"]), strict=True
    ):
        assert b["status"] == "done"
        assert a["metrics"] == b["metrics"], a["task"]
        assert a["config_hash"] == b["config_hash"]
    # The passes really were shared between two processes.
    assert all(r["timing"]["world_size"] == 2 for r in multi if r["timing"]["encoder_passes"])
    assert any(r["timing"]["encoder_passes"] for r in multi)


def test_each_rank_takes_a_contiguous_block_and_the_blocks_cover_every_item():
    for n in (0, 1, 7, 100):
        blocks = [World(r, 3).block(n) for r in range(3)]
        assert [i for b in blocks for i in b] == list(range(n))
