"""COCO 2017 person keypoints: the study's nose, right wrist and left ankle crops.

Only keypoints with v == 2 (labelled and visible) count, and only people with at least two
of the three visible, so that every kept keypoint has a neighbour to measure against.

One sample per person, by default. The study's code pools a whole image's keypoints, but
it measures distances over (x, y, annotation id), so keypoints of different people are
almost never each other's nearest: per person reproduces that, without depending on how
far apart two people's annotation ids happen to be. ``per="image"`` pools by image (the
protocol's wording) instead.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from partbench.datasets.base import Dataset, LazySamples, Sample
from partbench.datasets.declaration import real_dataset
from partbench.datasets.fingerprints import fingerprint
from partbench.datasets.image_files import load_rgb
from partbench.datasets.layouts import Layout, default_root
from partbench.errors import DataError
from partbench.files import open_regular

if TYPE_CHECKING:
    import numpy as np

# (1-based position in COCO's 17-keypoint list, name); the position here is the part class.
SELECTED_KEYPOINTS = ((1, "nose"), (11, "right wrist"), (16, "left ankle"))
N_KEYPOINTS = 17
PERSON = 1
SPLIT_FOLDERS = {"train": "train2017", "val": "val2017"}

COCO = Layout(
    dataset="coco-keypoints",
    source="https://cocodataset.org/#download (2017 train/val images, train/val annotations)",
    describe=(
        "annotations/person_keypoints_{train,val}2017.json with images in "
        "{train,val}2017/ or images/{train,val}2017/"
    ),
    required=(
        "annotations/person_keypoints_train2017.json",
        "annotations/person_keypoints_val2017.json",
        "train2017|images/train2017",
        "val2017|images/val2017",
    ),
)


@dataclass(frozen=True)
class _Item:
    file_name: str
    key: str
    where: str  # the annotation that put this item here, for errors
    keypoints: np.ndarray


def _image_names(images: list, path: Path) -> dict[int, str]:
    """Image id -> file name from a split's ``images`` list, each entry checked."""
    names: dict[int, str] = {}
    for i, image in enumerate(images):
        where = f"{path}: images[{i}]"
        if not isinstance(image, dict):
            raise DataError(f"{where}: expected an object")
        image_id, file_name = image.get("id"), image.get("file_name")
        if not isinstance(image_id, int) or isinstance(image_id, bool):
            raise DataError(f"{where}: 'id' must be an integer, found {image_id!r}")
        if not isinstance(file_name, str) or not file_name:
            raise DataError(f"{where} (id {image_id}): 'file_name' must be a string")
        pure = PurePosixPath(file_name)
        if pure.is_absolute() or ".." in pure.parts or "\\" in file_name:
            raise DataError(f"{where} (id {image_id}): file_name '{file_name}' leaves the folder")
        if image_id in names:
            raise DataError(f"{where}: image id {image_id} appears twice")
        names[image_id] = file_name
    return names


def _selected_rows(ann: dict, where: str, images: dict[int, str]) -> list[list[float]]:
    """Check one person annotation and return its visible selected keypoints as rows of
    (part class, x, y, 1.0)."""
    image_id = ann.get("image_id")
    # Checked by type, not only by lookup: 1.0 and True hash like 1 and would find an
    # image they do not name.
    if "image_id" not in ann:
        raise DataError(f"{where}: 'image_id' is missing")
    if not isinstance(image_id, int) or isinstance(image_id, bool):
        raise DataError(
            f"{where}: 'image_id' must be an integer, found {image_id!r} ({type(image_id).__name__})"
        )
    if image_id not in images:
        raise DataError(f"{where}: image_id {image_id!r} is not in 'images'")
    if ann.get("category_id") != PERSON:
        raise DataError(f"{where}: category_id {ann.get('category_id')!r} is not person ({PERSON})")
    kp = ann.get("keypoints")
    if not isinstance(kp, list) or len(kp) != 3 * N_KEYPOINTS:
        found = len(kp) if isinstance(kp, list) else type(kp).__name__
        raise DataError(f"{where}: 'keypoints' must hold {3 * N_KEYPOINTS} numbers, found {found}")
    for j, value in enumerate(kp):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise DataError(f"{where}: keypoints[{j}] is not a finite number: {value!r}")
    for j in range(N_KEYPOINTS):
        if kp[3 * j + 2] not in (0, 1, 2):
            raise DataError(f"{where}: keypoint {j + 1} has visibility {kp[3 * j + 2]!r}, not 0, 1 or 2")
    return [
        [k, kp[3 * (pos - 1)], kp[3 * (pos - 1) + 1], 1.0]
        for k, (pos, _) in enumerate(SELECTED_KEYPOINTS)
        if kp[3 * (pos - 1) + 2] == 2
    ]


class COCOKeypoints(Dataset):
    name = "coco-keypoints"
    capabilities = frozenset({"keypoints"})
    part_classes = tuple(name for _, name in SELECTED_KEYPOINTS)
    splits = {"retrieval": "train", "train": "train", "test": "val"}  # noqa: RUF012 (declared so in Dataset)

    def __init__(self, root: Path | str | None = None, per: str = "person"):
        if per not in ("person", "image"):
            raise DataError(f"coco-keypoints: per must be 'person' or 'image', not '{per}'")
        self.base = COCO.resolve(default_root(self.name, root))
        self.per = per
        self.image_dirs = {
            split: COCO.find(self.base, f"{folder}|images/{folder}")
            for split, folder in SPLIT_FOLDERS.items()
        }
        self._items: dict[str, list[_Item]] = {}
        self._fingerprint: str | None = None

    def annotation_file(self, split: str) -> Path:
        return self.base / "annotations" / f"person_keypoints_{SPLIT_FOLDERS[split]}.json"

    def _index(self, split: str) -> list[_Item]:
        """Parse and check one split's JSON; done on first use, as train2017's is 240 MB."""
        import numpy as np

        if split in self._items:
            return self._items[split]
        path = self.annotation_file(split)
        try:
            with open_regular(path, "a COCO annotation file", error=DataError) as f:
                data = json.load(f)
        except FileNotFoundError:
            raise DataError(f"{path}: file is missing") from None
        except RecursionError:
            raise DataError(f"{path}: JSON nested too deeply to be a COCO annotation file") from None
        except json.JSONDecodeError as exc:
            raise DataError(
                f"{path}, line {exc.lineno}, column {exc.colno}: not valid JSON ({exc.msg})"
            ) from None
        except (OSError, UnicodeDecodeError) as exc:
            raise DataError(f"{path}: cannot be read ({exc})") from None
        if not isinstance(data, dict) or not all(
            isinstance(data.get(k), list) for k in ("images", "annotations")
        ):
            raise DataError(f"{path}: expected a JSON object with 'images' and 'annotations' lists")

        images = _image_names(data["images"], path)
        folder = SPLIT_FOLDERS[split]
        items: list[_Item] = []
        by_image: dict[int, int] = {}  # image id -> position in items, for per="image"
        for i, ann in enumerate(data["annotations"]):
            where = f"{path}: annotations[{i}]"
            if not isinstance(ann, dict):
                raise DataError(f"{where}: expected an object")
            where += f" (id {ann.get('id')})"
            rows = _selected_rows(ann, where, images)
            if len(rows) < 2:
                continue
            image_id = ann["image_id"]
            file_name = images[image_id]
            if self.per == "image" and image_id in by_image:
                item = items[by_image[image_id]]
                items[by_image[image_id]] = _Item(
                    item.file_name,
                    item.key,
                    item.where,
                    np.concatenate([item.keypoints, np.array(rows, dtype=np.float64)]),
                )
                continue
            key = f"{folder}/{file_name}"
            if self.per == "person":
                key += f"#person{ann.get('id')}"
            else:
                by_image[image_id] = len(items)
            items.append(_Item(file_name, key, where, np.array(rows, dtype=np.float64)))
        self._items[split] = items
        return items

    def samples(self, split: str) -> LazySamples[Sample]:
        if split not in SPLIT_FOLDERS:
            raise KeyError(f"coco-keypoints has splits {sorted(SPLIT_FOLDERS)}, not '{split}'")
        items = self._index(split)
        folder = self.image_dirs[split]
        assert folder is not None  # the layout check found it

        def get(i: int) -> Sample:
            item = items[i]
            image = load_rgb(folder / item.file_name, f"referenced by {item.where}")
            return Sample(image=image, key=item.key, keypoints=item.keypoints.copy())

        return LazySamples(len(items), get)

    def fingerprint(self) -> str:
        if self._fingerprint is None:
            files = [self.annotation_file(s) for s in SPLIT_FOLDERS]
            dirs = [d for d in self.image_dirs.values() if d is not None]
            self._fingerprint = fingerprint(self.base, files, dirs, f"coco-keypoints/{self.per}")
        return self._fingerprint


def load(root: Path | str | None = None, per: str = "person", **options: object) -> COCOKeypoints:
    if options:
        raise DataError(f"coco-keypoints takes only the option 'per', got {sorted(options)}")
    return COCOKeypoints(root, per=per)


DATASETS = (
    real_dataset(
        "coco-keypoints",
        load,
        capabilities={"keypoints"},
        description="COCO 2017 people: nose, right wrist, left ankle crops",
        layouts=(COCO,),
        order=20,
        suites={"study": ("part-retrieval",)},
    ),
)
