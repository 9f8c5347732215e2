"""`partbench run` on real dataset layouts and an official checkpoint, as a user would run it."""

from __future__ import annotations

import json

import checkpoint_factory as cf
import dataset_trees as trees
import pytest
import torch
from click.testing import CliRunner

from partbench.cli import cli

QUICK = ["-o", "epochs=3", "-o", "iterations=5"]


def invoke(*args):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def stored(db):
    return {r["task"]: r for r in json.loads(invoke("runs", "--format", "json", "--db", db).output)}


@pytest.mark.parametrize(
    ("dataset", "build", "level", "tasks"),
    [
        ("cub200", trees.cub_tree, "part", {"part-retrieval", "part-linear", "part-attentive"}),
        ("cub200", trees.cub_tree, "object", {"object-retrieval", "object-linear"}),
        ("lip", lambda root: trees.mmseg_tree(root, "lip"), "part", {"part-seg"}),
        ("cifar10", trees.cifar_tree, "object", {"object-retrieval", "object-linear"}),
    ],
)
def test_random_vit_runs_on_a_real_layout(tmp_path, dataset, build, level, tasks):
    root = build(tmp_path / dataset)
    db = f"sqlite:///{tmp_path / 'runs.db'}"
    result = invoke(
        "run", "-e", "random-vit", "-t", level, "-d", dataset, "--data-root", str(root), *QUICK, "--db", db
    )
    assert result.exit_code == 0, result.output
    runs = stored(db)
    assert set(runs) == tasks
    for r in runs.values():
        assert r["status"] == "done" and r["dataset"] == dataset and r["n_items"] > 0


def test_a_missing_dataset_folder_is_a_one_line_error(tmp_path):
    result = invoke(
        "run",
        "-e",
        "random-vit",
        "-t",
        "part",
        "-d",
        "cub200",
        "--data-root",
        str(tmp_path / "nowhere"),
        "--db",
        f"sqlite:///{tmp_path / 'r.db'}",
    )
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "nowhere" in result.output


OFFICIAL_FILES = {
    "deit": cf.deit_file,
    "mocov3": cf.mocov3_file,
    "dino": cf.dino_full_file,
    "ibot": cf.ibot_teacher_file,
    "mae": cf.mae_file,
    "beit": cf.beit_file,
    "cae": cf.cae_file,
    "dinov2": cf.dinov2_file,
}


@pytest.mark.slow
@pytest.mark.parametrize("encoder", sorted(OFFICIAL_FILES))
def test_every_study_encoder_runs_from_a_full_size_official_file(tmp_path, encoder):
    path = tmp_path / f"{encoder}.pth"
    torch.save(OFFICIAL_FILES[encoder](cf.VIT_B), path)
    db = f"sqlite:///{tmp_path / 'runs.db'}"
    feature = "projection" if encoder in ("mocov3", "dino") else "cls"
    result = invoke(
        "run",
        "-e",
        encoder,
        "--weights",
        str(path),
        "-t",
        "part-retrieval",
        "-o",
        f"feature={feature}",
        "--limit",
        "2",
        "--db",
        db,
    )
    assert result.exit_code == 0, result.output
    run = stored(db)["part-retrieval"]
    assert run["status"] == "done" and run["weights_id"].startswith("sha256:")
    stages = run["config"]["encoder"]["stages"]
    assert len(stages) == 12 and {s[1] for s in stages} == {768}
