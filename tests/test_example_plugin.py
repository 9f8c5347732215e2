"""A stranger's plugin: installed from its own pyproject, found through its entry point, run.

The example plugin imports only ``partbench.api`` and registers an encoder, a task, a dataset
and a suite; each is run through ``partbench run`` beside the built-in ones. The install and the
import check are real processes (what they test is a fresh interpreter's view); the commands run
in this process, with the install's folder on ``sys.path`` so the entry point is found as an
installed one is.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from partbench.cli import cli
from partbench.plugins import reset_registry

PLUGIN = Path(__file__).resolve().parents[1] / "plugins" / "partbench-example-encoder"
PACKAGE = PLUGIN / "partbench_example_encoder"


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    # Built from a copy, as a stranger's checkout: the build writes nothing into this tree.
    source = tmp_path_factory.mktemp("src") / PLUGIN.name
    shutil.copytree(PLUGIN, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
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
            str(source),
        ],
        check=True,
        capture_output=True,
    )
    return target


def _env(site: Path, home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PARTBENCH_LOAD_PLUGINS"}
    env.update(PYTHONPATH=str(site), PARTBENCH_HOME=str(home), OMP_NUM_THREADS="1")
    return env


@pytest.fixture
def on_path(monkeypatch: pytest.MonkeyPatch) -> Callable[[Path], None]:
    """Put a site folder on sys.path and load every plugin found there, as a process started
    with that PYTHONPATH and no PARTBENCH_LOAD_PLUGINS would."""

    def put(site: Path) -> None:
        monkeypatch.syspath_prepend(str(site))
        monkeypatch.delenv("PARTBENCH_LOAD_PLUGINS", raising=False)
        reset_registry()

    return put


def _partbench(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args))


def _listed(what: str) -> dict[str, dict]:
    result = _partbench("list", what, "--format", "json")
    assert result.exit_code == 0, result.stderr
    return {e["name"]: e for e in json.loads(result.stdout)}


def test_the_plugin_imports_partbench_api_only() -> None:
    for path in sorted(PACKAGE.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("partbench"):
                assert node.module in ("partbench.api",) or node.module.startswith(
                    "partbench_example_encoder"
                ), f"{path.name} imports {node.module}"
            if isinstance(node, ast.Import):
                assert not any(a.name.startswith("partbench.") for a in node.names), path.name


def test_importing_the_api_and_the_plugin_loads_no_torch(installed: Path) -> None:
    # One fresh interpreter: first what importing loads, then every public name resolves.
    code = (
        "import sys, partbench.api as a, partbench_example_encoder; "
        "print(sorted(m for m in ('torch', 'numpy', 'timm') if m in sys.modules)); "
        "[getattr(a, n) for n in a.__all__]; print(sorted(a.__all__) == dir(a))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        env=_env(installed, installed),
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout.splitlines() == ["[]", "True"]


def test_encoder_task_dataset_and_suite_are_listed(installed: Path, on_path) -> None:
    on_path(installed)
    plugin = "partbench-example-encoder"
    assert _listed("encoders")["example-hog"]["plugin"] == plugin
    assert _listed("encoders")["random-vit"]["plugin"] == "partbench"
    task = _listed("tasks")["example-ncm"]
    assert task["plugin"] == plugin and task["level"] == "object" and task["metric"] == "top1"
    assert task["options"]["feature"]["choices"] == ["cls", "embedding"]
    assert _listed("datasets")["example-shapes"]["plugin"] == plugin
    plugins = {p["name"]: p for p in json.loads(_partbench("list", "plugins", "--format", "json").stdout)}
    assert plugins[plugin]["suites"] == ["example"] and plugins[plugin]["problems"] == []


def test_plugin_encoder_task_and_dataset_run_beside_builtin_ones(installed: Path, on_path) -> None:
    on_path(installed)
    quick = ("--limit", "12", "-o", "iterations=10", "-o", "epochs=3")
    # The plugin's task and a built-in one on the plugin's dataset, with the plugin's encoder and
    # a built-in one; then the plugin's encoder on the built-in SynParts.
    ran = _partbench(
        "run",
        *("-e", "example-hog", "-e", "random-vit", "-d", "example-shapes"),
        *("-t", "example-ncm", "-t", "object-retrieval", "-t", "object-seg"),
        *quick,
    )
    assert ran.exit_code == 0, ran.output
    ran = _partbench("run", "-e", "example-hog", "-t", "part-retrieval", *quick)
    assert ran.exit_code == 0, ran.output

    runs = json.loads(_partbench("runs", "--format", "json").stdout)
    got = {(r["encoder"], r["task"], r["dataset"]): r for r in runs}
    assert {k for k, r in got.items() if r["status"] == "done"} == {
        (e, t, "example-shapes")
        for e in ("example-hog", "random-vit")
        for t in ("example-ncm", "object-retrieval", "object-seg")
    } | {("example-hog", "part-retrieval", "synparts")}
    ncm = got[("example-hog", "example-ncm", "example-shapes")]
    assert ncm["weights_id"] == "hand-crafted:hog-v2" and ncm["n_items"] == 12
    assert ncm["items_per_class"] == {"disc": 3, "square": 3, "triangle": 3, "cross": 3}
    encoder = ncm["config"]["encoder"]
    assert encoder["stages"] == [["cells4", 12, 4], ["cells8", 12, 8]] and encoder["pooled_kind"] == "avgpool"
    assert ncm["config"]["task"]["options"] == {"feature": "embedding"}
    assert ncm["headline"] == "top1" and 0 <= ncm["metrics"]["top1"]["value"] <= 100


def test_the_task_scores_what_it_should(installed: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The nearest-class-mean task on features built to a known answer."""
    monkeypatch.syspath_prepend(str(installed))
    import numpy as np
    import torch
    from partbench_example_encoder import ncm, shapes

    from partbench.api import Features

    rng = np.random.default_rng(0)
    train_labels, test_labels = np.arange(40) % 4, np.array([0, 1, 2, 3, 3, 3])
    centres = torch.eye(4) * 5

    def features(labels: np.ndarray, shift: int = 0) -> Features:
        x = centres[(labels + shift) % 4] + torch.from_numpy(rng.normal(0, 0.5, (len(labels), 4))).float()
        return Features(arrays={"embedding": x}, labels=labels, grid=(1, 1))

    task = ncm.NearestClassMean({"feature": "embedding"})
    dataset = shapes.Shapes(train=40, test=6)
    assert {v.role: v.outputs for v in task.views(dataset, None).values()} == {
        "train": frozenset({"embedding"}),
        "test": frozenset({"embedding"}),
    }
    right = task.evaluate(
        {"train": features(train_labels), "test": features(test_labels)},
        dataset,
        device=torch.device("cpu"),
        seed=0,
    )
    assert right.metrics["top1"].value == 100 and right.items["correct"].tolist() == [1.0] * 6
    assert right.chance == {"top1": 25.0} and right.items_per_class == {
        "disc": 1,
        "square": 1,
        "triangle": 1,
        "cross": 3,
    }
    # Test vectors one class along: every prediction is the next class, so none is right.
    wrong = task.evaluate(
        {"train": features(train_labels), "test": features(test_labels, 1)},
        dataset,
        device=torch.device("cpu"),
        seed=0,
    )
    assert wrong.metrics["top1"].value == 0 and wrong.items["label"].tolist() == test_labels.tolist()


def test_a_bad_dataset_option_is_one_line(installed: Path, on_path) -> None:
    on_path(installed)
    result = _partbench(
        "run",
        "-e",
        "example-hog",
        "-d",
        "example-shapes",
        "-t",
        "example-ncm",
        "--dataset-option",
        "colour=red",
    )
    assert result.exit_code != 0 and "example-shapes: unknown option colour" in result.stderr
    assert "Traceback" not in result.stderr


def test_without_the_plugin_the_name_is_unknown(tmp_path: Path, on_path) -> None:
    on_path(tmp_path)
    result = _partbench("run", "-e", "example-hog", "-t", "part-retrieval")
    assert result.exit_code == 1 and "unknown encoder 'example-hog'" in result.stderr


def test_the_plugin_page_points_at_every_file_of_the_example_and_names_only_the_api() -> None:
    """docs/plugins.md links each of the example's modules (rather than copying them), every
    link it makes into plugins/ resolves, and every spec or base class it tells a plugin to
    build is a name ``partbench.api`` exports: the page cannot drift from the tested plugin."""
    import re

    from partbench import api

    root = PLUGIN.parents[1]
    page = (root / "docs" / "plugins.md").read_text()
    links = re.findall(r"\]\((\.\./plugins/[^)#]+)\)", page)
    for link in links:
        assert (root / "docs" / link).resolve().exists(), f"docs/plugins.md links {link}, which is absent"
    linked = {Path(link).name for link in links if link.endswith(".py")}
    assert linked == {p.name for p in PACKAGE.glob("*.py")}, linked
    assert "```python" not in page, "the page copies code instead of pointing at the plugin"
    built = set(re.findall(r"`([A-Z][A-Za-z]+)\(", page))
    assert {"EncoderSpec", "TaskSpec", "DatasetSpec", "SuiteSpec", "TaskOption"} <= built, built
    assert built <= set(api.__all__), built - set(api.__all__)
