"""The real-dataset readers, on tiny trees in each published layout (tests/dataset_trees.py).

Expected crops, counts and labels are worked out here from the hand-placed numbers.
"""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import os
import pickle
import shutil
import tarfile
import threading
from pathlib import Path

import dataset_trees as trees
import numpy as np
import pytest
from PIL import Image

from partbench.datasets import cifar, coco, cub, partimagenet, segsets
from partbench.datasets.base import IGNORE, Sample
from partbench.datasets.fetch import fetch
from partbench.datasets.views import crop_box, crop_rule, crop_square, part_crops
from partbench.errors import DataError
from partbench.plugins import build_registry, plugin_manager

REAL = ("cub200", "coco-keypoints", "partimagenet", "ade20k-part", "pascal-part", "lip",
        "ade20k-object", "pascal-object", "cifar10")  # fmt: skip


def decoded(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def expected_crop(image: np.ndarray, x: int, y: int, r: int) -> np.ndarray:
    """The square (x - r, y - r, x + r, y + r), zero outside the image, by plain indexing."""
    h, w = image.shape[:2]
    out = np.zeros((2 * r, 2 * r, 3), np.uint8)
    for row in range(2 * r):
        for col in range(2 * r):
            yy, xx = y - r + row, x - r + col
            if 0 <= yy < h and 0 <= xx < w:
                out[row, col] = image[yy, xx]
    return out


# --- CUB-200-2011 -------------------------------------------------------------------------


@pytest.fixture
def cub_root(tmp_path: Path) -> Path:
    return trees.cub_tree(tmp_path / "cub")


def test_cub_splits_labels_and_classes(cub_root: Path) -> None:
    ds = cub.load(cub_root)
    assert ds.part_classes == ("right eye", "right leg", "left wing", "tail")
    assert ds.object_classes == ("001.Albatross", "002.Sparrow")
    assert ds.split_for("retrieval") == "all"  # the study retrieves over every image
    keys = {s: [x.key for x in ds.samples(s)] for s in ("all", "train", "test")}
    names = {i: f"images/{n}" for i, (n, *_) in trees.CUB_IMAGES.items()}
    assert keys["all"] == [names[1], names[2], names[3], names[4]]
    assert keys["train"] == [names[1], names[3]]
    assert keys["test"] == [names[2], names[4]]
    assert [x.label for x in ds.samples("all")] == [0, 1, 1, 0]
    assert ds.crop_bounds == (20.0, 1000.0)


def test_cub_keypoints_are_the_four_selected_parts(cub_root: Path) -> None:
    ds = cub.load(cub_root)
    second = ds.samples("all")[1]
    # Part classes 0..3 = CUB parts 11, 12, 9, 14; the beak (part 2) is not among them.
    np.testing.assert_array_equal(
        second.keypoints,
        [[0, 30, 30, 1], [1, 50, 30, 1], [2, 50, 150, 1], [3, 0, 0, 0]],
    )


def test_cub_crops_by_the_study_rule(cub_root: Path) -> None:
    ds = cub.load(cub_root)
    first, second, third, fourth = ds.samples("all")
    # Image 1: eye-leg 80, eye-wing 80, leg-wing 113: every d = 40 -> r = 20.
    assert crop_rule(first.keypoints, ds.crop_bounds) == [
        (0, 50.0, 40.0, 20), (1, 50.0, 120.0, 20), (2, 130.0, 40.0, 20),
    ]  # fmt: skip
    # Image 2: eye and leg 20 apart (d = 10 < 20, dropped); wing to leg 120 -> d = 60, r = 30.
    assert crop_rule(second.keypoints, ds.crop_bounds) == [(2, 50.0, 150.0, 30)]
    assert part_crops(third, ds.crop_bounds) == []  # a single visible keypoint
    assert part_crops(fourth, ds.crop_bounds) == []
    crops = part_crops(first, ds.crop_bounds)
    assert [p for _, p in crops] == [0, 1, 2]
    image = decoded(cub_root / "images" / trees.CUB_IMAGES[1][0])
    np.testing.assert_array_equal(crops[0][0], expected_crop(image, 50, 40, 20))
    # The wing crop of image 2 runs 20 px past the bottom edge: zero filled there.
    ((wing, part),) = part_crops(second, ds.crop_bounds)
    assert part == 2 and wing.shape == (60, 60, 3)
    image = decoded(cub_root / "images" / trees.CUB_IMAGES[2][0])
    np.testing.assert_array_equal(wing, expected_crop(image, 50, 150, 30))
    assert not wing[40:].any() and wing[:40].any()
    # Pixels still carry the gradient: R = x, G = y, up to JPEG error.
    assert abs(int(wing[0, 0, 0]) - 20) <= 6 and abs(int(wing[0, 0, 1]) - 120) <= 6


def test_crops_at_half_pixel_keypoints_match_pil_crop_pixel_for_pixel() -> None:
    """The study cuts ``img.crop((x - r, y - r, x + r, y + r))``: PIL rounds each corner, halves to
    even, so a .5 coordinate with an odd r is cut one pixel away from round(x) - r."""
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (150, 170, 3), dtype=np.uint8)
    pil = Image.fromarray(image)
    # Two keypoints 84 apart: d = 42, r = round(21) = 21 (odd); a third far from both is dropped.
    keypoints = np.array([[0, 30.5, 40.5, 1], [1, 114.5, 40.5, 1], [2, 3.5, 148.5, 1]])
    kept = crop_rule(keypoints, (20.0, 50.0))
    assert [(p, r) for p, _, _, r in kept] == [(0, 21), (1, 21)]
    sample = Sample(image=image, key="half", keypoints=keypoints)
    crops = part_crops(sample, (20.0, 50.0))
    for (crop, part), (_, x, y, r) in zip(crops, kept, strict=True):
        expected = np.asarray(pil.crop((x - r, y - r, x + r, y + r)))
        assert crop.shape == expected.shape == (42, 42, 3), part
        np.testing.assert_array_equal(crop, expected)
    # Rounding the centre first is the old rule: it is one pixel left and up of PIL's crop here.
    assert not np.array_equal(crops[0][0], image[40 - 21 : 40 + 21, 30 - 21 : 30 + 21])
    # Every half-pixel centre and both parities of r, partly outside the image (PIL fills zeros).
    for x in (0.5, 1.5, 2.5, 84.5, 168.5, 169.5):
        for y in (0.5, 3.5, 75.5, 148.5):
            for r in (1, 2, 3, 4, 7):
                expected = np.asarray(pil.crop((x - r, y - r, x + r, y + r)))
                np.testing.assert_array_equal(crop_square(image, x, y, r), expected, err_msg=f"{x} {y} {r}")
    assert crop_box(2.5, 2.5, 1) == (2, 2, 4, 4)  # round(1.5) = 2, where round(2.5) - 1 = 1


def test_cub_accepts_the_archive_folder_one_level_down(tmp_path: Path) -> None:
    trees.cub_tree(tmp_path / "data" / "CUB_200_2011")
    assert len(cub.load(tmp_path / "data").samples("all")) == 4


@pytest.mark.parametrize(
    ("file", "line", "replacement", "message"),
    [
        ("parts/part_locs.txt", trees.cub_line_of(1, 11), "1 11 50.0 forty 1",
         "'forty' is not a number"),
        ("parts/part_locs.txt", trees.cub_line_of(2, 3), "2 16 0.0 0.0 0",
         "part id 16 is out of range"),
        ("parts/part_locs.txt", trees.cub_line_of(1, 1), "1 1 0.0 0.0 2",
         "visible 2 is out of range"),
        ("parts/part_locs.txt", trees.cub_line_of(1, 2), "9 2 0.0 0.0 0",
         "image id 9 is not in images.txt"),
        ("parts/part_locs.txt", trees.cub_line_of(1, 4), "1 4 0.0 0.0",
         "expected 5 space-separated fields"),
        ("image_class_labels.txt", 3, "3 3", "class id 3 is out of range 1..2"),
        ("train_test_split.txt", 2, "2 yes", "is_training_image 'yes' is not an integer"),
        ("images.txt", 4, "3 002.Sparrow/x.jpg", "image id 3 repeats line 3"),
        ("parts/parts.txt", 11, "11 left eye", "part 11 should be 'right eye'"),
    ],
)  # fmt: skip
def test_cub_malformed_lines_name_file_and_line(
    cub_root: Path, file: str, line: int, replacement: str, message: str
) -> None:
    path = cub_root / file
    lines = path.read_text().splitlines()
    lines[line - 1] = replacement
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError) as err:
        cub.load(cub_root)
    text = str(err.value)
    assert str(path) in text and message in text
    if "should be" not in message:
        assert f"line {line}" in text


def test_cub_missing_split_line_names_the_image(cub_root: Path) -> None:
    path = cub_root / "train_test_split.txt"
    path.write_text("\n".join(path.read_text().splitlines()[:3]) + "\n")
    with pytest.raises(DataError, match=r"no line for image id 4 \(images.txt line 4\)"):
        cub.load(cub_root)


def test_cub_missing_file_names_it_the_layout_and_the_source(cub_root: Path) -> None:
    (cub_root / "parts" / "part_locs.txt").unlink()
    with pytest.raises(DataError) as err:
        cub.load(cub_root)
    text = str(err.value)
    assert str(cub_root / "parts" / "part_locs.txt") in text
    assert "Expected layout" in text and "caltech.edu" in text


def test_cub_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"does not exist.*Published at"):
        cub.load(tmp_path / "nowhere")


def test_cub_missing_and_truncated_images_fail_lazily_naming_the_file(cub_root: Path) -> None:
    missing = cub_root / "images" / trees.CUB_IMAGES[2][0]
    missing.unlink()
    truncated = cub_root / "images" / trees.CUB_IMAGES[3][0]
    trees.truncate(truncated)
    ds = cub.load(cub_root)  # annotations are fine: loading succeeds
    assert ds.samples("all")[0].image.shape == (160, 200, 3)
    with pytest.raises(DataError) as err:
        ds.samples("all")[1]
    assert str(missing) in str(err.value) and "images.txt, line 2" in str(err.value)
    with pytest.raises(DataError, match="unreadable image") as err:
        ds.samples("all")[2]
    assert str(truncated) in str(err.value)


def test_cub_fingerprint_tells_copies_apart(cub_root: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(cub_root, copy)
    assert cub.load(copy).fingerprint() == cub.load(cub_root).fingerprint()
    path = copy / "parts" / "part_locs.txt"
    path.write_text(path.read_text().replace("1 11 50.0 40.0 1", "1 11 51.0 40.0 1"))
    assert cub.load(copy).fingerprint() != cub.load(cub_root).fingerprint()
    shutil.copytree(cub_root, tmp_path / "copy2")
    with open(tmp_path / "copy2" / "images" / trees.CUB_IMAGES[4][0], "ab") as f:
        f.write(b"\0")  # a different image file, same annotations
    assert cub.load(tmp_path / "copy2").fingerprint() != cub.load(cub_root).fingerprint()


# --- COCO person keypoints ----------------------------------------------------------------


@pytest.mark.parametrize("images_level", [False, True])
def test_coco_people_keypoints_and_splits(tmp_path: Path, images_level: bool) -> None:
    ds = coco.load(trees.coco_tree(tmp_path / "coco", images_level))
    assert ds.part_classes == ("nose", "right wrist", "left ankle")
    assert (ds.split_for("retrieval"), ds.split_for("train"), ds.split_for("test")) == (
        "train", "train", "val",
    )  # fmt: skip
    train = ds.samples("train")
    # Person C has one selected keypoint visible: excluded. B's hidden wrist (v = 1) is left out.
    assert [s.key for s in train] == [
        "train2017/000000000010.jpg#person101",
        "train2017/000000000010.jpg#person102",
        "train2017/000000000011.jpg#person104",
    ]
    np.testing.assert_array_equal(train[1].keypoints, [[0, 150, 50, 1], [2, 150, 190, 1]])
    # A: 60 apart -> d 30, r 15. B: 140 apart -> d 70, r 35. D: 5 apart -> dropped.
    assert crop_rule(train[0].keypoints, ds.crop_bounds) == [
        (0, 60.0, 50.0, 15),
        (1, 60.0, 110.0, 15),
    ]
    assert crop_rule(train[1].keypoints, ds.crop_bounds) == [
        (0, 150.0, 50.0, 35),
        (2, 150.0, 190.0, 35),
    ]
    assert part_crops(train[2], ds.crop_bounds) == []
    folder = tmp_path / "coco" / "images" if images_level else tmp_path / "coco"
    image = decoded(folder / "train2017" / "000000000010.jpg")
    (nose, _), _ = part_crops(train[0], ds.crop_bounds)
    np.testing.assert_array_equal(nose, expected_crop(image, 60, 50, 15))
    (val,) = ds.samples("val")
    assert val.image.shape == (150, 120, 3) and val.label is None
    assert [p for _, p in part_crops(val, ds.crop_bounds)] == [0, 2]


def test_coco_per_image_pools_people(tmp_path: Path) -> None:
    ds = coco.load(trees.coco_tree(tmp_path / "coco"), per="image")
    first, second = ds.samples("train")
    assert first.key == "train2017/000000000010.jpg" and len(first.keypoints) == 4
    # B's nose now has A's nose 90 px away: d 45, r round(22.5) = 22; B's ankle has A's
    # wrist at sqrt(90^2 + 80^2) = 120.4: d 60.2, r 30.
    assert crop_rule(first.keypoints, ds.crop_bounds) == [
        (0, 60.0, 50.0, 15), (1, 60.0, 110.0, 15), (0, 150.0, 50.0, 22), (2, 150.0, 190.0, 30),
    ]  # fmt: skip
    assert part_crops(second, ds.crop_bounds) == []


def _edit_coco(root: Path, edit) -> Path:
    path = root / "annotations" / "person_keypoints_train2017.json"
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data, indent=1))
    return path


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d["annotations"][1]["keypoints"].__setitem__(2, 3),
         r"annotations\[1\] \(id 102\): keypoint 1 has visibility 3"),
        (lambda d: d["annotations"][0].__setitem__("image_id", 99),
         r"annotations\[0\] \(id 101\): image_id 99 is not in 'images'"),
        (lambda d: d["annotations"][2].__setitem__("keypoints", [0] * 50),
         r"annotations\[2\] \(id 103\): 'keypoints' must hold 51 numbers, found 50"),
        (lambda d: d["images"][1].__setitem__("file_name", "../../etc/passwd"),
         r"images\[1\] \(id 11\): file_name '../../etc/passwd' leaves the folder"),
    ],
)  # fmt: skip
def test_coco_malformed_items_name_file_and_item(tmp_path: Path, edit, message: str) -> None:
    root = trees.coco_tree(tmp_path / "coco")
    path = _edit_coco(root, edit)
    ds = coco.load(root)  # the JSON is parsed on first use
    with pytest.raises(DataError, match=message) as err:
        ds.samples("train")
    assert str(path) in str(err.value)


def test_coco_bad_json_names_the_line(tmp_path: Path) -> None:
    root = trees.coco_tree(tmp_path / "coco")
    path = root / "annotations" / "person_keypoints_val2017.json"
    lines = path.read_text().splitlines()
    lines[3] = lines[3] + " ,,"
    path.write_text("\n".join(lines))
    with pytest.raises(DataError, match=r"line 4, column \d+: not valid JSON") as err:
        coco.load(root).samples("val")
    assert str(path) in str(err.value)


def test_coco_missing_image_and_missing_folder(tmp_path: Path) -> None:
    root = trees.coco_tree(tmp_path / "coco")
    (root / "train2017" / "000000000011.jpg").unlink()
    with pytest.raises(DataError) as err:
        coco.load(root).samples("train")[2]
    text = str(err.value)
    assert str(root / "train2017" / "000000000011.jpg") in text and "annotations[3] (id 104)" in text
    shutil.rmtree(root / "val2017")
    with pytest.raises(DataError, match=r"missing .*val2017.*cocodataset.org"):
        coco.load(root)


# --- segmentation sets --------------------------------------------------------------------


def _reduced(values: list[int]) -> np.ndarray:
    raw = trees.label_map(values)
    return np.where((raw == 0) | (raw == 255), 255, raw - 1).astype(np.uint8)


@pytest.mark.parametrize(
    ("name", "build", "classes"),
    [
        ("ade20k-part", lambda r: trees.mmseg_tree(r, "ade20k-part"), 209),
        ("pascal-part", lambda r: trees.mmseg_tree(r, "pascal-part"), 193),
        ("lip", lambda r: trees.mmseg_tree(r, "lip"), 19),
        ("lip", trees.lip_official_tree, 19),
        ("ade20k-object", trees.ade_object_tree, 59),
        ("pascal-object", lambda r: trees.mmseg_tree(r, "pascal-object"), 16),
    ],
)
def test_segmentation_sets_reduce_zero_label(tmp_path: Path, name: str, build, classes: int) -> None:
    ds = segsets.load(name, build(tmp_path / name))
    level = "part" if name in ("ade20k-part", "pascal-part", "lip") else "object"
    assert ds.classes_for("part-masks" if level == "part" else "object-masks") == ds.config.classes
    assert len(ds.config.classes) == classes
    assert ds.split_for("train") == "train" and ds.split_for("test") == "val"
    for split, items in trees.SEG_VALUES[name].items():
        samples = ds.samples(split)
        assert len(samples) == len(items)
        for sample, (stem, values) in zip(samples, sorted(items.items()), strict=True):
            assert Path(sample.key).stem == stem
            mask = sample.part_mask if level == "part" else sample.object_mask
            other = sample.object_mask if level == "part" else sample.part_mask
            assert other is None and mask.dtype == np.uint8
            # 0 -> ignore, k -> k - 1, 255 stays ignore; the top raw value is the last class.
            np.testing.assert_array_equal(mask, _reduced(values))
            assert sample.image.shape == (16, 24, 3)


def test_lip_class_names_and_pascal_object_classes() -> None:
    assert segsets.SEGSETS["lip"].classes[0] == "hat" and len(segsets.LIP_CLASSES) == 19
    assert "boat" not in segsets.PASCAL_OBJECT_CLASSES and "chair" not in segsets.PASCAL_OBJECT_CLASSES
    assert len(segsets.PASCAL_OBJECT_CLASSES) == 16


def test_segmentation_out_of_range_truncated_and_unpaired(tmp_path: Path) -> None:
    root = trees.mmseg_tree(tmp_path / "lip", "lip")
    bad = root / "ann" / "train" / "b.png"
    trees.write_mask(bad, trees.label_map([20]))  # LIP stores 0-19: 20 is one too many
    ds = segsets.load("lip", root)
    ds.samples("train")[0]
    with pytest.raises(DataError, match=r"label values \[19\] are out of range for 19 classes") as err:
        ds.samples("train")[1]
    assert str(bad) in str(err.value)
    trees.truncate(root / "img" / "val" / "c.jpg")
    with pytest.raises(DataError, match="unreadable image") as err:
        ds.samples("val")[0]
    assert str(root / "img" / "val" / "c.jpg") in str(err.value)
    (root / "img" / "train" / "a.jpg").unlink()
    with pytest.raises(DataError, match=r"a.jpg: image file is missing \(its label map .*a.png exists\)"):
        segsets.load("lip", root)


def test_segmentation_mask_of_another_size_or_in_colour(tmp_path: Path) -> None:
    root = trees.mmseg_tree(tmp_path / "pp", "pascal-part")
    trees.write_mask(root / "ann" / "train" / "a.png", np.ones((8, 8)))
    with pytest.raises(DataError, match="label map is 8x8 but its image is 24x16"):
        segsets.load("pascal-part", root).samples("train")[0]
    Image.new("RGB", (24, 16)).save(root / "ann" / "train" / "a.png")
    with pytest.raises(DataError, match="single-channel index map, found image mode RGB"):
        segsets.load("pascal-part", root).samples("train")[0]


def test_segmentation_missing_split_folder(tmp_path: Path) -> None:
    root = trees.mmseg_tree(tmp_path / "ap", "ade20k-part")
    shutil.rmtree(root / "ann" / "val")
    with pytest.raises(DataError) as err:
        segsets.load("ade20k-part", root)
    assert str(root / "ann" / "val") in str(err.value) and "img/{train,val}" in str(err.value)


# --- PartImageNet -------------------------------------------------------------------------


def test_partimagenet_parts_objects_and_labels(tmp_path: Path) -> None:
    ds = partimagenet.load(trees.partimagenet_tree(tmp_path / "pin"))
    assert len(ds.part_seg_classes) == 40 and ds.part_seg_classes[0] == "Quadruped Head"
    assert ds.part_seg_classes[13] == "Bird Head" and ds.part_seg_classes[24] == "Car Body"
    assert len(ds.object_classes) == 11
    (bird,) = ds.samples("train")
    raw = trees.label_map(trees.PIN_VALUES["train"]["n01530575_1"])
    np.testing.assert_array_equal(bird.part_mask, np.where(raw == 40, IGNORE, raw))
    np.testing.assert_array_equal(bird.object_mask, np.where(raw == 40, IGNORE, 3))
    assert bird.label == 3  # Bird
    (car,) = ds.samples("val")
    assert car.label == 6 and set(np.unique(car.object_mask)) == {6, IGNORE}
    (dog,) = ds.samples("test")
    assert dog.label == 0


def test_partimagenet_bad_part_id_and_no_parts(tmp_path: Path) -> None:
    root = trees.partimagenet_tree(tmp_path / "pin")
    path = root / "annotations" / "test" / "n02085620_3.png"
    trees.write_mask(path, trees.label_map([41, 0]))
    with pytest.raises(DataError, match=r"label values \[41\] are out of range for 40") as err:
        partimagenet.load(root).samples("test")[0]
    assert str(path) in str(err.value)
    trees.write_mask(path, trees.label_map([40, 255]))
    with pytest.raises(DataError, match="no part pixels"):
        partimagenet.load(root).samples("test")[0]


# --- CIFAR-10 -------------------------------------------------------------------------------


def test_cifar_images_labels_and_splits(tmp_path: Path) -> None:
    ds = cifar.load(trees.cifar_tree(tmp_path / "cifar"))
    assert ds.object_classes == tuple(trees.CIFAR_NAMES)
    train, test = ds.samples("train"), ds.samples("test")
    assert len(train) == 10 and len(test) == 3 and ds.split_for("retrieval") == "test"
    assert [s.label for s in train] == list(range(10))
    np.testing.assert_array_equal(train[7].image, trees.cifar_image(7))
    assert test[2].label == 102 % 10 and test[2].key == "test_batch/img_102.png"
    np.testing.assert_array_equal(test[2].image, trees.cifar_image(102))


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch pwned-by-pickle",))


def test_cifar_refuses_a_pickle_that_calls_os_system(tmp_path: Path, monkeypatch) -> None:
    root = trees.cifar_tree(tmp_path / "cifar")
    monkeypatch.chdir(tmp_path)
    evil = {b"labels": [0], b"data": _Evil()}
    (root / "cifar-10-batches-py" / "data_batch_3").write_bytes(pickle.dumps(evil, protocol=2))
    ds = cifar.load(root)
    with pytest.raises(
        DataError, match=r"data_batch_3: not a CIFAR-10 batch: refused global '(posix|os)\.system'"
    ):
        ds.samples("train")
    assert not (tmp_path / "pwned-by-pickle").exists()
    # Nor anything else that is not an array: builtins like eval are refused too.
    payload = pickle.dumps({b"label_names": [eval]}, protocol=2)
    (root / "cifar-10-batches-py" / "batches.meta").write_bytes(payload)
    with pytest.raises(DataError, match=r"refused global '(__builtin__|builtins)\.eval'"):
        cifar.load(root)


def test_cifar_truncated_batch_and_bad_label(tmp_path: Path) -> None:
    root = trees.cifar_tree(tmp_path / "cifar")
    base = root / "cifar-10-batches-py"
    trees.truncate(base / "test_batch")
    with pytest.raises(DataError, match="test_batch: not a readable pickle"):
        cifar.load(root).samples("test")
    batch = pickle.loads((base / "data_batch_1").read_bytes())
    batch[b"labels"][1] = 10
    (base / "data_batch_1").write_bytes(pickle.dumps(batch, protocol=2))
    with pytest.raises(DataError, match=r"data_batch_1: labels\[1\] = 10 is out of range 0..9"):
        cifar.load(root).samples("train")


# --- registration --------------------------------------------------------------------------


def test_every_dataset_is_registered_with_levels_and_presence(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("PARTBENCH_DATA", str(tmp_path / "data"))
    pm, problems = plugin_manager()
    registry = build_registry(pm, problems)
    for name in REAL:
        spec = registry.datasets[name]
        assert spec.source and spec.data_present is not None and not spec.builtin_data
        assert spec.data_present(None) is False
    assert registry.datasets["cub200"].levels == ("object", "part")
    assert registry.datasets["coco-keypoints"].levels == ("part",)
    assert registry.datasets["pascal-object"].levels == ("object",)
    trees.cub_tree(tmp_path / "data" / "cub200")
    assert registry.datasets["cub200"].data_present(None) is True
    assert registry.datasets["cub200"].data_present(tmp_path / "nowhere") is False
    ds = registry.datasets["cub200"].load(None)  # no --data-root: PARTBENCH_DATA/cub200
    assert len(ds.samples("all")) == 4
    lip = trees.lip_official_tree(tmp_path / "lip")
    assert registry.datasets["lip"].data_present(lip) is True
    assert len(registry.datasets["lip"].load(lip).samples("val")) == 1


# --- fetch ---------------------------------------------------------------------------------


def _tgz(members: dict[str, bytes], links: dict[str, str] | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type = tarfile.SYMTYPE
            info.linkname = target
            tar.addfile(info)
    return buf.getvalue()


def _cub_archive(tmp_path: Path) -> bytes:
    tree = trees.cub_tree(tmp_path / "src" / "CUB_200_2011")
    members = {
        f"CUB_200_2011/{p.relative_to(tree).as_posix()}": p.read_bytes()
        for p in sorted(tree.rglob("*")) if p.is_file()
    }  # fmt: skip
    members["attributes.txt"] = b"1 has_bill_shape::curved\n"  # beside the folder, as published
    return _tgz(members)


@pytest.fixture
def server(tmp_path: Path, monkeypatch):
    """An HTTP server on 127.0.0.1 serving tmp_path/served; yields its base URL."""
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    served = tmp_path / "served"
    served.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(served), **kwargs)

        def log_message(self, *args) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield served, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_fetch_downloads_verifies_and_unpacks(tmp_path: Path, server) -> None:
    served, base = server
    data = _cub_archive(tmp_path)
    (served / "CUB_200_2011.tgz").write_bytes(data)
    dest = tmp_path / "data" / "cub200"
    out = fetch("cub200", dest=dest, url=f"{base}/CUB_200_2011.tgz",
                sha256=hashlib.sha256(data).hexdigest(), progress=True)  # fmt: skip
    assert out == dest and (dest / "images.txt").is_file()
    assert not (dest / "attributes.txt").exists()  # only the dataset folder is kept
    assert len(cub.load(dest).samples("all")) == 4
    assert sorted(p.name for p in dest.parent.iterdir()) == ["cub200"]  # no temporaries left
    # Already complete: returned as is, without a download.
    assert fetch("cub200", dest=dest, url=f"{base}/gone.tgz", sha256="0" * 64) == dest


def test_fetch_refuses_a_sha256_mismatch(tmp_path: Path, server) -> None:
    served, base = server
    (served / "CUB_200_2011.tgz").write_bytes(_cub_archive(tmp_path))
    dest = tmp_path / "data" / "cub200"
    with pytest.raises(DataError, match=r"sha256 mismatch .*discarded"):
        fetch("cub200", dest=dest, url=f"{base}/CUB_200_2011.tgz", sha256="ab" * 32,
              progress=False)  # fmt: skip
    assert not dest.exists() and list(dest.parent.iterdir()) == []
    # A mirror without its own sha256 is held to the official one (and size).
    with pytest.raises(DataError, match=r"received .* bytes, expected 1150585339"):
        fetch("cub200", dest=dest, url=f"{base}/CUB_200_2011.tgz", progress=False)
    assert list(dest.parent.iterdir()) == []


@pytest.mark.parametrize(
    ("members", "links"),
    [
        ({"CUB_200_2011/images.txt": b"x", "../escaped.txt": b"gotcha"}, None),
        ({"CUB_200_2011/../../escaped.txt": b"gotcha"}, None),
        ({"/tmp/escaped-absolute.txt": b"gotcha"}, None),
        ({"CUB_200_2011/images.txt": b"x"}, {"CUB_200_2011/link": "/etc"}),
    ],
)
def test_fetch_refuses_path_traversal(tmp_path: Path, server, members, links) -> None:
    served, base = server
    data = _tgz(members, links)
    (served / "evil.tgz").write_bytes(data)
    dest = tmp_path / "deep" / "data" / "cub200"
    with pytest.raises(DataError, match=r"outside the destination|link or special file"):
        fetch("cub200", dest=dest, url=f"{base}/evil.tgz",
              sha256=hashlib.sha256(data).hexdigest(), progress=False)  # fmt: skip
    assert not (tmp_path / "deep" / "escaped.txt").exists()
    assert not (tmp_path / "deep" / "data" / "escaped.txt").exists()
    assert not Path("/tmp/escaped-absolute.txt").exists()
    assert list(dest.parent.iterdir()) == []


def test_fetch_wrong_archive_and_unknown_dataset(tmp_path: Path, server) -> None:
    served, base = server
    data = _tgz({"CUB_200_2011/README": b"not the data"})
    (served / "wrong.tgz").write_bytes(data)
    dest = tmp_path / "data" / "cub200"
    with pytest.raises(DataError, match=r"incomplete folder .* missing .*images.txt"):
        fetch("cub200", dest=dest, url=f"{base}/wrong.tgz",
              sha256=hashlib.sha256(data).hexdigest(), progress=False)  # fmt: skip
    assert list(dest.parent.iterdir()) == []
    with pytest.raises(DataError, match="no stable public archive"):
        fetch("coco-keypoints", dest=tmp_path / "coco")
    with pytest.raises(DataError, match="download failed"):
        fetch("cub200", dest=dest, url=f"{base}/absent.tgz", sha256="0" * 64, progress=False)


def test_cli_data_fetch(tmp_path: Path, server) -> None:
    from click.testing import CliRunner

    from partbench.cli import cli

    served, base = server
    data = _cub_archive(tmp_path)
    (served / "cub.tgz").write_bytes(data)
    dest = tmp_path / "data" / "cub200"
    args = ["data", "fetch", "cub200", "--dest", str(dest), "--url", f"{base}/cub.tgz"]
    result = CliRunner().invoke(cli, [*args, "--sha256", "0" * 64])
    assert result.exit_code == 1 and "sha256 mismatch" in result.output
    assert not dest.exists()
    result = CliRunner().invoke(cli, [*args, "--sha256", hashlib.sha256(data).hexdigest()])
    assert result.exit_code == 0, result.output
    assert (dest / "parts" / "part_locs.txt").is_file()


# --- a dataset is one module ---------------------------------------------------------------

_TOY_MODULE = """
from partbench.datasets.declaration import Archive, real_dataset
from partbench.datasets.layouts import Layout

LAYOUT = Layout(dataset="toyset", source="https://example.org/toyset", describe="labels.txt",
                required=("labels.txt",), nests=("", "toyset"))


def load(root=None, **options):
    return ("toyset", root, options)


DATASETS = (
    real_dataset("toyset", load, capabilities={{"images"}}, description="a toy", layouts=(LAYOUT,),
                 order=1000, archive=Archive(url="{url}", sha256="{sha256}", top="toyset"),
                 suites={{"study": ("object-retrieval",)}}),
)
"""


@pytest.fixture
def extra_module(tmp_path: Path, monkeypatch):
    """write(name, source): a module added to partbench.datasets, as a new file there would be."""
    import importlib
    import sys

    import partbench.datasets
    from partbench.datasets import builtin

    folder = tmp_path / "more_datasets"
    folder.mkdir()
    monkeypatch.setattr(partbench.datasets, "__path__", [*partbench.datasets.__path__, str(folder)])
    written: list[str] = []

    def write(name: str, source: str) -> None:
        (folder / f"{name}.py").write_text(source)
        written.append(f"partbench.datasets.{name}")
        importlib.invalidate_caches()
        builtin._declarations.cache_clear()

    yield write
    for module in written:
        sys.modules.pop(module, None)
    builtin._declarations.cache_clear()


def test_a_new_dataset_module_is_all_a_dataset_needs(tmp_path: Path, monkeypatch, server, extra_module):
    from partbench import suites
    from partbench.datasets.builtin import declared

    monkeypatch.setenv("PARTBENCH_DATA", str(tmp_path / "data"))
    served, base = server
    data = _tgz({"toyset/labels.txt": b"0\n1\n"})
    (served / "toyset.tgz").write_bytes(data)
    extra_module(
        "toyset", _TOY_MODULE.format(url=f"{base}/toyset.tgz", sha256=hashlib.sha256(data).hexdigest())
    )

    # registered through the built-in plugin, listed after the built-in datasets
    registry = build_registry(*plugin_manager())
    assert list(registry.datasets)[-2:] == ["cifar10", "toyset"]
    spec = registry.datasets["toyset"]
    assert spec.plugin == "partbench" and spec.source == "https://example.org/toyset"
    assert spec.load(None, k="v") == ("toyset", None, {"k": "v"})
    assert spec.data_present(None) is False
    # in the suite it names, after the datasets listed before it
    study = suites._built_in("study", "1", "")
    assert [d for t, d in study.pairs if t == "object-retrieval"] == ["cub200", "cifar10", "toyset"]
    assert len(study.pairs) == len(suites.STUDY.pairs) + 1
    where = dict(suites.missing_data(registry, study))["toyset"]
    assert where.startswith("partbench data fetch toyset;")
    # fetched from the archive it declares, checked against the layout it declares
    assert declared()["toyset"].archive is not None
    dest = fetch("toyset", progress=False)
    assert dest == tmp_path / "data" / "toyset" and (dest / "labels.txt").read_text() == "0\n1\n"
    assert spec.data_present(None) is True
    (served / "toyset.tgz").unlink()
    assert fetch("toyset", progress=False) == dest  # complete already: nothing downloaded
    with pytest.raises(DataError, match=r"it can fetch: cub200, toyset"):
        fetch("lip", dest=tmp_path / "lip")


def test_a_module_that_declares_nothing_is_named(extra_module) -> None:
    extra_module("helpers", "VALUE = 1\n")
    registry = build_registry(*plugin_manager())
    assert any("partbench.datasets.helpers declares no DATASETS" in p for p in registry.problems)


def test_registering_the_datasets_imports_no_numpy() -> None:
    import subprocess
    import sys

    code = (
        "import sys; from partbench.plugins import registry; from partbench import suites; "
        "r = registry(); assert 'cub200' in r.datasets and suites.STUDY.pairs; "
        "print(sorted(m for m in ('numpy', 'PIL', 'torch') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_built_in_suites_are_the_pairs_the_datasets_declare() -> None:
    from partbench import suites
    from partbench.datasets.builtin import declared

    # every declared membership is a pair of its suite, and nothing else is
    for suite in (suites.SYNPARTS, suites.STUDY, suites.PARTS):
        members = {(t, d.name) for d in declared().values() for t in d.suites.get(suite.name, ())}
        assert set(suite.pairs) == members
        tasks = [suites.BUILTIN_TASKS.index(t) for t, _ in suite.pairs]
        assert tasks == sorted(tasks)  # task by task, as the leaderboard shows them
    # version 1 of the study, as leaderboards ranked over it
    assert suites.STUDY.version == "1" and suites.STUDY.pairs == (
        ("part-retrieval", "cub200"), ("part-retrieval", "coco-keypoints"), ("part-linear", "cub200"),
        ("part-attentive", "cub200"), ("part-seg", "ade20k-part"), ("part-seg", "pascal-part"),
        ("part-seg", "lip"), ("object-retrieval", "cub200"), ("object-retrieval", "cifar10"),
        ("object-linear", "cub200"), ("object-linear", "cifar10"), ("object-seg", "ade20k-object"),
        ("object-seg", "pascal-object"),
    )  # fmt: skip
    # the field's part measures, each on every real dataset that has what it reads
    parts = {"part-correspondence": {"spair71k", "cub200"}}
    masks = {"ade20k-part", "pascal-part", "lip", "partimagenet"}
    parts |= {"part-seg-nn": masks, "part-discovery": masks}
    assert {t: {d for task, d in suites.PARTS.pairs if task == t} for t in parts} == parts
    assert {t for t, _ in suites.PARTS.pairs} == set(parts)
