"""CUB-200-2011 as published: 200 bird species, 15 part keypoints per image.

The study crops keypoints 11, 12, 9 and 14 of parts/parts.txt (right eye, right leg, left
wing, tail), visible ones only; part retrieval uses every image, classification the
published train_test_split.txt.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from partbench.datasets.base import Dataset, LazySamples, Sample
from partbench.datasets.declaration import Archive, real_dataset
from partbench.datasets.fingerprints import fingerprint
from partbench.datasets.image_files import load_rgb
from partbench.datasets.layouts import Layout, default_root
from partbench.datasets.text_tables import read_lines
from partbench.errors import DataError

if TYPE_CHECKING:  # registering the dataset imports this module: no numpy at import
    from partbench.datasets.pairs import KeypointPair

# (1-based id in parts/parts.txt, name there); the position is the part class.
SELECTED_PARTS = ((11, "right eye"), (12, "right leg"), (9, "left wing"), (14, "tail"))
N_PARTS = 15

CUB = Layout(
    dataset="cub200",
    source="https://www.vision.caltech.edu/datasets/cub_200_2011/ (CUB_200_2011.tgz)",
    describe=(
        "images.txt, train_test_split.txt, image_class_labels.txt, classes.txt, "
        "parts/parts.txt, parts/part_locs.txt and images/<class folder>/<file>.jpg"
    ),
    required=(
        "images.txt",
        "train_test_split.txt",
        "image_class_labels.txt",
        "classes.txt",
        "parts/parts.txt",
        "parts/part_locs.txt",
        "images",
    ),
    nests=("", "CUB_200_2011"),
)


class CUB200(Dataset):
    name = "cub200"
    capabilities = frozenset({"images", "keypoints"})
    part_classes = tuple(name for _, name in SELECTED_PARTS)
    splits = {"retrieval": "all", "train": "train", "test": "test"}  # noqa: RUF012 (declared so in Dataset)

    def __init__(self, root: Path | str | None = None):
        self.base = CUB.resolve(default_root(self.name, root))
        self._fingerprint: str | None = None
        self._read_images()
        self._read_split()
        self._read_classes()
        self._read_labels()
        self._read_parts()
        self._read_part_locs()

    # --- annotation files, read and checked when the dataset is loaded -------------------

    def _read_images(self) -> None:
        path = self.base / "images.txt"
        self.image_names: dict[int, str] = {}
        self.image_lines: dict[int, int] = {}
        for line in read_lines(path, 2):
            image_id = line.int(0, "image id", low=1)
            if image_id in self.image_names:
                raise line.fail(f"image id {image_id} repeats line {self.image_lines[image_id]}")
            name = line.fields[1]
            if Path(name).is_absolute() or ".." in Path(name).parts:
                raise line.fail(f"image name '{name}' leaves the images/ folder")
            self.image_names[image_id] = name
            self.image_lines[image_id] = line.number
        if not self.image_names:
            raise DataError(f"{path}: lists no images")
        self.image_ids = list(self.image_names)

    def _per_image(self, filename: str, what: str, low: int, high: int | None) -> dict[int, int]:
        """A two-column ``<image_id> <value>`` file, one line for every image."""
        path = self.base / filename
        values: dict[int, int] = {}
        for line in read_lines(path, 2):
            image_id = line.int(0, "image id", low=1)
            if image_id not in self.image_names:
                raise line.fail(f"image id {image_id} is not in images.txt")
            if image_id in values:
                raise line.fail(f"image id {image_id} appears twice")
            values[image_id] = line.int(1, what, low=low, high=high)
        absent = [i for i in self.image_ids if i not in values]
        if absent:
            more = f" and {len(absent) - 1} more" if len(absent) > 1 else ""
            raise DataError(
                f"{path}: no line for image id {absent[0]} (images.txt line "
                f"{self.image_lines[absent[0]]}){more}"
            )
        return values

    def _read_split(self) -> None:
        is_train = self._per_image("train_test_split.txt", "is_training_image", 0, 1)
        self.split_ids = {
            "all": self.image_ids,
            "train": [i for i in self.image_ids if is_train[i] == 1],
            "test": [i for i in self.image_ids if is_train[i] == 0],
        }

    def _read_classes(self) -> None:
        path = self.base / "classes.txt"
        names: dict[int, str] = {}
        for line in read_lines(path, 2):
            class_id = line.int(0, "class id", low=1)
            if class_id in names:
                raise line.fail(f"class id {class_id} appears twice")
            names[class_id] = line.fields[1]
        if sorted(names) != list(range(1, len(names) + 1)):
            raise DataError(f"{path}: class ids must run 1..{len(names)} without gaps")
        self.object_classes = tuple(names[i] for i in range(1, len(names) + 1))

    def _read_labels(self) -> None:
        labels = self._per_image("image_class_labels.txt", "class id", 1, len(self.object_classes))
        self.labels = {i: c - 1 for i, c in labels.items()}

    def _read_parts(self) -> None:
        path = self.base / "parts" / "parts.txt"
        names: dict[int, str] = {}
        for line in read_lines(path, 2, last_has_spaces=True):
            part_id = line.int(0, "part id", low=1, high=N_PARTS)
            names[part_id] = line.fields[1]
        for part_id, expected in SELECTED_PARTS:
            found = names.get(part_id)
            # The study's part ids are positions in this file: a different order would
            # silently crop other parts.
            if found is None or found.lower() != expected:
                raise DataError(
                    f"{path}: part {part_id} should be '{expected}', found "
                    f"{repr(found) if found is not None else 'no such line'}"
                )

    def _read_part_locs(self) -> None:
        import numpy as np

        path = self.base / "parts" / "part_locs.txt"
        slot = {part_id: k for k, (part_id, _) in enumerate(SELECTED_PARTS)}
        keypoints = {
            i: np.array([[k, 0.0, 0.0, 0.0] for k in range(len(SELECTED_PARTS))]) for i in self.image_ids
        }
        # Correspondence reads every part (CUB's 15 keypoints, as the correspondence papers do).
        every = {i: np.array([[k, 0.0, 0.0, 0.0] for k in range(N_PARTS)]) for i in self.image_ids}
        for line in read_lines(path, 5):
            image_id = line.int(0, "image id", low=1)
            if image_id not in keypoints:
                raise line.fail(f"image id {image_id} is not in images.txt")
            part_id = line.int(1, "part id", low=1, high=N_PARTS)
            x, y = line.float(2, "x"), line.float(3, "y")
            visible = line.int(4, "visible", low=0, high=1)
            if visible and (x < 0 or y < 0):
                raise line.fail(f"visible part at negative position ({x}, {y})")
            if part_id in slot:
                keypoints[image_id][slot[part_id], 1:] = (x, y, visible)
            every[image_id][part_id - 1, 1:] = (x, y, visible)
        self.keypoints = keypoints
        self.every_keypoint = every

    # --- the Dataset interface --------------------------------------------------------

    def samples(self, split: str) -> LazySamples[Sample]:
        if split not in self.split_ids:
            raise KeyError(f"cub200 has splits {sorted(self.split_ids)}, not '{split}'")
        ids = self.split_ids[split]
        return LazySamples(len(ids), lambda i: self._sample(ids[i]))

    def positions(self, split: str, within: str) -> list[int] | None:
        if within != "all" or split not in self.split_ids:
            return None
        where = {image_id: k for k, image_id in enumerate(self.split_ids["all"])}
        return [where[i] for i in self.split_ids[split]]

    def _sample(self, image_id: int) -> Sample:
        name = self.image_names[image_id]
        image = load_rgb(
            self.base / "images" / name,
            f"listed in {self.base / 'images.txt'}, line {self.image_lines[image_id]}",
        )
        return Sample(
            image=image,
            key=f"images/{name}",
            label=self.labels[image_id],
            keypoints=self.keypoints[image_id].copy(),
        )

    def keypoint_pairs(self, split: str, within: int | None = None) -> list[KeypointPair]:
        """Same-class pairs of ``split`` (pairs.same_class_pairs) over all 15 parts; the
        target box from bounding_boxes.txt, image sizes from the files' headers."""
        from PIL import Image

        from partbench.datasets.pairs import ImageKeypoints, same_class_pairs

        boxes = self._boxes()
        images = []
        for image_id in self.split_ids[split][:within]:
            path = self.base / "images" / self.image_names[image_id]
            try:
                with Image.open(path) as im:
                    size = im.size
            except OSError as exc:
                raise DataError(
                    f"{path}: unreadable ({exc}); listed in {self.base / 'images.txt'}, "
                    f"line {self.image_lines[image_id]}"
                ) from None
            images.append(
                ImageKeypoints(self.labels[image_id], self.every_keypoint[image_id], size, boxes[image_id])
            )
        return same_class_pairs(images)

    def _boxes(self) -> dict[int, tuple[float, float, float, float]]:
        path = self.base / "bounding_boxes.txt"
        boxes: dict[int, tuple[float, float, float, float]] = {}
        for line in read_lines(path, 5):
            image_id = line.int(0, "image id", low=1)
            if image_id not in self.image_names:
                raise line.fail(f"image id {image_id} is not in images.txt")
            x, y, w, h = (
                line.float(k, name) for k, name in ((1, "x"), (2, "y"), (3, "width"), (4, "height"))
            )
            if w <= 0 or h <= 0:
                raise line.fail(f"box of width {w} and height {h}")
            boxes[image_id] = (x, y, x + w, y + h)
        absent = [i for i in self.image_ids if i not in boxes]
        if absent:
            raise DataError(f"{path}: no box for image id {absent[0]}")
        return boxes

    def fingerprint(self) -> str:
        if self._fingerprint is None:
            files = [
                self.base / f
                for f in (
                    "images.txt",
                    "train_test_split.txt",
                    "image_class_labels.txt",
                    "classes.txt",
                    "parts/parts.txt",
                    "parts/part_locs.txt",
                )
            ]
            self._fingerprint = fingerprint(self.base, files, [self.base / "images"], "cub200")
        return self._fingerprint


def load(root: Path | str | None = None, **options: object) -> CUB200:
    if options:
        raise DataError(f"cub200 takes no options, got {sorted(options)}")
    return CUB200(root)


DATASETS = (
    real_dataset(
        "cub200",
        load,
        capabilities={"images", "keypoints", "keypoint-pairs"},
        description="CUB-200-2011: 200 bird species; right eye, right leg, left wing, tail crops",
        layouts=(CUB,),
        order=10,
        archive=Archive(
            url="https://data.caltech.edu/records/65de6-vp158/files/CUB_200_2011.tgz?download=1",
            sha256="0c685df5597a8b24909f6a7c9db6d11e008733779a671760afef78feb49bf081",
            size=1_150_585_339,
            top="CUB_200_2011",
        ),
        suites={
            "study": ("part-retrieval", "part-linear", "part-attentive", "object-retrieval", "object-linear"),
            "parts": ("part-correspondence",),
        },
    ),
)
