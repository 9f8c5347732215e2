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


def cub_with_a_test_pair(root):
    """The CUB tree with a fifth image, a test sparrow showing a right eye and a left wing as
    image 2 does: the test split then holds a keypoint pair for part-correspondence."""
    root = trees.cub_tree(root)
    name = "002.Sparrow/Sparrow_0005.jpg"
    for file, line in (
        ("images.txt", f"5 {name}\n"),
        ("train_test_split.txt", "5 0\n"),
        ("image_class_labels.txt", "5 2\n"),
        ("bounding_boxes.txt", "5 20.0 20.0 150.0 120.0\n"),
    ):
        with (root / file).open("a") as f:
            f.write(line)
    shown = {11: (60, 50), 9: (150, 120)}
    with (root / "parts" / "part_locs.txt").open("a") as f:
        for part in range(1, 16):
            x, y = shown.get(part, (0, 0))
            f.write(f"5 {part} {x:.1f} {y:.1f} {int(part in shown)}\n")
    trees.write_image(root / "images" / name, trees.gradient_image(*trees.CUB_SIZE, blue=200))
    return root


@pytest.mark.parametrize(
    ("dataset", "build", "level", "tasks"),
    [
        (
            "cub200",
            cub_with_a_test_pair,
            "part",
            {"part-retrieval", "part-linear", "part-attentive", "part-correspondence"},
        ),
        ("cub200", trees.cub_tree, "object", {"object-retrieval", "object-linear"}),
        (
            "lip",
            lambda root: trees.mmseg_tree(root, "lip"),
            "part",
            {"part-seg", "part-seg-nn", "part-discovery"},
        ),
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
