"""A stranger's plugin: installed from its own pyproject, found through its entry point, run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

PLUGIN = Path(__file__).resolve().parents[1] / "plugins" / "partbench-example-encoder"


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    target = tmp_path_factory.mktemp("site")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--target",
            str(target),
            str(PLUGIN),
        ],
        check=True,
        capture_output=True,
    )
    return target


def _partbench(site: Path, home: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PARTBENCH_LOAD_PLUGINS"}
    env.update(PYTHONPATH=str(site), PARTBENCH_HOME=str(home))
    return subprocess.run([sys.executable, "-m", "partbench", *args], env=env, capture_output=True, text=True)


def test_the_example_plugin_is_listed_and_runs(installed, tmp_path):
    listed = _partbench(installed, tmp_path, "list", "encoders", "--format", "json")
    assert listed.returncode == 0, listed.stderr
    encoders = {e["name"]: e for e in json.loads(listed.stdout)}
    assert encoders["example-hog"]["plugin"] == "partbench-example-encoder"
    assert encoders["random-vit"]["plugin"] == "partbench"

    ran = _partbench(
        installed,
        tmp_path,
        "run",
        "-e",
        "example-hog",
        "-t",
        "part-retrieval",
        "-t",
        "object-seg",
        "--limit",
        "12",
        "-o",
        "iterations=10",
    )
    assert ran.returncode == 0, ran.stderr + ran.stdout
    runs = json.loads(_partbench(installed, tmp_path, "runs", "--format", "json").stdout)
    assert {(r["encoder"], r["task"], r["status"]) for r in runs} == {
        ("example-hog", "part-retrieval", "done"),
        ("example-hog", "object-seg", "done"),
    }
    assert runs[0]["config_hash"] and runs[0]["weights_id"] == "hand-crafted:hog-v1"


def test_without_the_plugin_the_name_is_unknown(tmp_path):
    result = _partbench(tmp_path, tmp_path, "run", "-e", "example-hog", "-t", "part-retrieval")
    assert result.returncode == 1 and "unknown encoder 'example-hog'" in result.stderr
