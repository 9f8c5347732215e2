"""Tiny copies of the real datasets, each in its exact published layout, for the reader tests.

Every keypoint and label value here is placed by hand; the tests work out the crops,
counts and labels from these numbers.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
from PIL import Image


def gradient_image(width: int, height: int, blue: int) -> np.ndarray:
    """R = x, G = y (mod 256), B constant: a crop's position can be read off its pixels."""
    yy, xx = np.mgrid[0:height, 0:width]
    return np.stack([xx % 256, yy % 256, np.full_like(xx, blue)], axis=-1).astype(np.uint8)


def write_image(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() in (".jpg", ".jpeg"):
        Image.fromarray(array).save(path, format="JPEG", quality=95)
    else:
        Image.fromarray(array).save(path)


def write_mask(path: Path, labels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(labels.astype(np.uint8), mode="L").save(path)


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])


# --- CUB-200-2011 -------------------------------------------------------------------------

CUB_PARTS = (
    "back", "beak", "belly", "breast", "crown", "forehead", "left eye", "left leg",
    "left wing", "nape", "right eye", "right leg", "right wing", "tail", "throat",
)  # fmt: skip
CUB_SIZE = (200, 160)  # width, height of every image
# image id -> (name, is_train, class id, {part id: (x, y)} of visible parts)
CUB_IMAGES = {
    1: ("001.Albatross/Albatross_0001.jpg", 1, 1, {11: (50, 40), 12: (50, 120), 9: (130, 40)}),
    # eye and leg 20 px apart (d = 10, both dropped); the wing 120 px below the leg (d = 60)
    # reaches 20 px past the bottom edge; the beak sits next to the eye but is not selected.
    2: ("002.Sparrow/Sparrow_0002.jpg", 0, 2,
        {11: (30, 30), 12: (50, 30), 9: (50, 150), 2: (31, 31)}),
    3: ("002.Sparrow/Sparrow_0003.jpg", 1, 2, {14: (100, 80)}),  # one keypoint: no crop
    4: ("001.Albatross/Albatross_0004.jpg", 0, 1, {}),
}  # fmt: skip


def cub_tree(root: Path) -> Path:
    """CUB_200_2011 as the archive unpacks: everything directly in ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "parts").mkdir(exist_ok=True)
    (root / "images.txt").write_text("".join(f"{i} {name}\n" for i, (name, *_) in CUB_IMAGES.items()))
    (root / "train_test_split.txt").write_text(
        "".join(f"{i} {t}\n" for i, (_, t, _, _) in CUB_IMAGES.items())
    )
    (root / "image_class_labels.txt").write_text(
        "".join(f"{i} {c}\n" for i, (_, _, c, _) in CUB_IMAGES.items())
    )
    (root / "classes.txt").write_text("1 001.Albatross\n2 002.Sparrow\n")
    (root / "bounding_boxes.txt").write_text("".join(f"{i} 10.0 10.0 100.0 100.0\n" for i in CUB_IMAGES))
    (root / "parts" / "parts.txt").write_text(
        "".join(f"{k} {name}\n" for k, name in enumerate(CUB_PARTS, start=1))
    )
    lines = []
    for i, (name, _, _, visible) in CUB_IMAGES.items():
        for part in range(1, 16):
            if part in visible:
                x, y = visible[part]
                lines.append(f"{i} {part} {x:.1f} {y:.1f} 1\n")
            else:
                lines.append(f"{i} {part} 0.0 0.0 0\n")
        write_image(root / "images" / name, gradient_image(*CUB_SIZE, blue=40 * i))
    (root / "parts" / "part_locs.txt").write_text("".join(lines))
    return root


def cub_line_of(image_id: int, part_id: int) -> int:
    """The line of part_locs.txt that holds (image_id, part_id), 1-based."""
    return (image_id - 1) * 15 + part_id


# --- COCO person keypoints ----------------------------------------------------------------


def _keypoints(points: dict[int, tuple[float, float, int]]) -> list[float]:
    """17 x (x, y, v) from {1-based keypoint: (x, y, v)}; the rest unlabelled."""
    out: list[float] = []
    for k in range(1, 18):
        x, y, v = points.get(k, (0, 0, 0))
        out += [x, y, v]
    return out


COCO_TRAIN = {
    "images": [
        {"id": 10, "file_name": "000000000010.jpg", "height": 200, "width": 200},
        {"id": 11, "file_name": "000000000011.jpg", "height": 200, "width": 200},
        {"id": 12, "file_name": "000000000012.jpg", "height": 200, "width": 200},
    ],
    "annotations": [
        # A: nose and right wrist visible, 60 apart
        {"id": 101, "image_id": 10, "category_id": 1, "iscrowd": 0, "bbox": [0, 0, 1, 1],
         "num_keypoints": 2, "keypoints": _keypoints({1: (60, 50, 2), 11: (60, 110, 2)})},
        # B: nose and left ankle visible, 140 apart; the right wrist is labelled but hidden
        {"id": 102, "image_id": 10, "category_id": 1, "iscrowd": 0, "bbox": [0, 0, 1, 1],
         "num_keypoints": 3,
         "keypoints": _keypoints({1: (150, 50, 2), 11: (150, 90, 1), 16: (150, 190, 2)})},
        # C: one selected keypoint visible (plus a left eye): excluded
        {"id": 103, "image_id": 10, "category_id": 1, "iscrowd": 0, "bbox": [0, 0, 1, 1],
         "num_keypoints": 2, "keypoints": _keypoints({1: (100, 100, 2), 2: (104, 98, 2)})},
        # D: two visible, 5 px apart: a sample without crops
        {"id": 104, "image_id": 11, "category_id": 1, "iscrowd": 0, "bbox": [0, 0, 1, 1],
         "num_keypoints": 2, "keypoints": _keypoints({1: (20, 20, 2), 11: (25, 20, 2)})},
    ],
    "categories": [{"id": 1, "name": "person", "supercategory": "person",
                    "keypoints": ["nose"] * 17, "skeleton": [[1, 2]]}],
}  # fmt: skip
COCO_VAL = {
    "images": [{"id": 20, "file_name": "000000000020.jpg", "height": 150, "width": 120}],
    "annotations": [
        {"id": 201, "image_id": 20, "category_id": 1, "iscrowd": 0, "bbox": [0, 0, 1, 1],
         "num_keypoints": 2, "keypoints": _keypoints({1: (40, 40, 2), 16: (40, 100, 2)})},
    ],
    "categories": COCO_TRAIN["categories"],
}  # fmt: skip


def coco_tree(root: Path, images_level: bool = False) -> Path:
    """``images_level``: the study's extra ``images/`` folder above train2017/val2017."""
    ann = root / "annotations"
    ann.mkdir(parents=True, exist_ok=True)
    (ann / "person_keypoints_train2017.json").write_text(json.dumps(COCO_TRAIN, indent=1))
    (ann / "person_keypoints_val2017.json").write_text(json.dumps(COCO_VAL, indent=1))
    image_base = root / "images" if images_level else root
    for split, data in (("train2017", COCO_TRAIN), ("val2017", COCO_VAL)):
        for k, image in enumerate(data["images"]):
            array = gradient_image(image["width"], image["height"], blue=10 * k)
            write_image(image_base / split / image["file_name"], array)
    return root


# --- segmentation sets --------------------------------------------------------------------


def label_map(values: list[int], width: int = 24, height: int = 16) -> np.ndarray:
    """Vertical bands, one per value, left to right: easy to predict after any mapping."""
    bands = np.array_split(np.arange(width), len(values))
    out = np.zeros((height, width), dtype=np.int64)
    for value, cols in zip(values, bands, strict=True):
        out[:, cols] = value
    return out


def _pairs(image_dir: Path, mask_dir: Path, items: dict[str, list[int]], suffix: str) -> None:
    for k, (stem, values) in enumerate(items.items()):
        write_image(image_dir / f"{stem}{suffix}", gradient_image(24, 16, blue=30 * k))
        write_mask(mask_dir / f"{stem}.png", label_map(values))


# Raw values per file, as they are stored (before reduce-zero-label).
SEG_VALUES = {
    "ade20k-part": {"train": {"a": [0, 1, 209], "b": [5, 255]}, "val": {"c": [2, 0]}},
    "pascal-part": {"train": {"a": [193, 1]}, "val": {"c": [0, 7, 255]}},
    "lip": {"train": {"a": [0, 19, 1], "b": [13]}, "val": {"c": [0, 2]}},
    "ade20k-object": {"train": {"ADE_train_1": [59, 0]}, "val": {"ADE_val_1": [1, 255]}},
    "pascal-object": {"train": {"2008_000001": [16, 12]}, "val": {"2008_000002": [0, 1]}},
}


def mmseg_tree(root: Path, name: str) -> Path:
    for split, items in SEG_VALUES[name].items():
        _pairs(root / "img" / split, root / "ann" / split, items, ".jpg")
    return root


def lip_official_tree(root: Path) -> Path:
    for split, items in SEG_VALUES["lip"].items():
        _pairs(
            root / "TrainVal_images" / f"{split}_images",
            root / "TrainVal_parsing_annotations" / f"{split}_segmentations",
            items,
            ".jpg",
        )
    return root


def ade_object_tree(root: Path) -> Path:
    base = root / "ADEChallengeData2016"
    for split, folder in (("train", "training"), ("val", "validation")):
        items = SEG_VALUES["ade20k-object"][split]
        _pairs(base / "images" / folder, base / "annotations" / folder, items, ".jpg")
    return root


# --- PartImageNet ---------------------------------------------------------------------------

# part ids 0-39, 40 background, 255 ignore. 13, 15: Bird Head, Bird Wing (Bird is super-
# category 3); 24, 25: Car Body, Car Tier (Car is 6); 0: Quadruped Head.
PIN_VALUES = {
    "train": {"n01530575_1": [40, 13, 15, 15]},
    "val": {"n02814533_2": [24, 40, 25, 255]},
    "test": {"n02085620_3": [0, 40]},
}


def partimagenet_tree(root: Path) -> Path:
    for split, items in PIN_VALUES.items():
        _pairs(root / "images" / split, root / "annotations" / split, items, ".JPEG")
    return root


# --- CIFAR-10 -------------------------------------------------------------------------------

CIFAR_NAMES = ["airplane", "automobile", "bird", "cat", "deer",
               "dog", "frog", "horse", "ship", "truck"]  # fmt: skip


def cifar_image(k: int) -> np.ndarray:
    """32 x 32 x 3 with R = k, G = row, B = column."""
    yy, xx = np.mgrid[0:32, 0:32]
    return np.stack([np.full_like(xx, k), yy, xx], axis=-1).astype(np.uint8)


def _batch(path: Path, first: int, n: int) -> None:
    images = np.stack([cifar_image(first + j) for j in range(n)])
    rows = images.transpose(0, 3, 1, 2).reshape(n, 3072)  # the release's channel-major rows
    batch = {
        b"batch_label": b"batch",
        b"labels": [(first + j) % 10 for j in range(n)],
        b"data": rows,
        b"filenames": [f"img_{first + j}.png".encode() for j in range(n)],
    }
    path.write_bytes(pickle.dumps(batch, protocol=2))


def cifar_tree(root: Path) -> Path:
    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True, exist_ok=True)
    for i in range(1, 6):
        _batch(base / f"data_batch_{i}", 2 * (i - 1), 2)
    _batch(base / "test_batch", 100, 3)
    meta = {b"label_names": [n.encode() for n in CIFAR_NAMES], b"num_cases_per_batch": 2}
    (base / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return root
