"""The published on-disk layout of each real dataset: what must exist, and where it comes from.

Pure pathlib, no numpy: ``partbench list datasets`` checks presence through here without
importing any reader.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from partbench.errors import DataError


@dataclass(frozen=True)
class Layout:
    dataset: str
    source: str  # where the data is published
    describe: str  # the expected layout, for error messages
    # Paths relative to the dataset folder; "a|b" accepts either spelling.
    required: tuple[str, ...]
    # Sub-folders the dataset folder may sit in under the root a user names, because the
    # published archives unpack into one (CUB_200_2011/, cifar-10-batches-py/, ...).
    nests: tuple[str, ...] = ("",)

    def find(self, base: Path, entry: str) -> Path | None:
        for alternative in entry.split("|"):
            if (base / alternative).exists():
                return base / alternative
        return None

    def missing(self, base: Path) -> list[str]:
        return [entry for entry in self.required if self.find(base, entry) is None]

    def candidates(self, root: Path) -> list[Path]:
        return [root / nest if nest else root for nest in self.nests]

    def present(self, root: Path | None) -> bool:
        if root is None:
            return False
        return any(not self.missing(base) for base in self.candidates(Path(root)))

    def resolve(self, root: Path) -> Path:
        """The folder holding the dataset under ``root``, or a DataError naming what is missing."""
        root = Path(root).expanduser()
        if not root.is_dir():
            raise DataError(
                f"{self.dataset}: folder {root} does not exist. Expected layout: {self.describe}. "
                f"Published at {self.source}"
            )
        best: tuple[int, Path, list[str]] | None = None
        for base in self.candidates(root):
            missing = self.missing(base)
            if not missing:
                return base
            found = len(self.required) - len(missing)
            if best is None or found > best[0]:
                best = (found, base, missing)
        assert best is not None
        _, base, missing = best
        names = ", ".join(str(base / m.split("|")[0]) for m in missing)
        raise DataError(
            f"{self.dataset}: incomplete folder {root}: missing {names}. "
            f"Expected layout: {self.describe}. Published at {self.source}"
        )


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

PARTIMAGENET = Layout(
    dataset="partimagenet",
    source="https://github.com/TACJu/PartImageNet (PartImageNet_Seg)",
    describe=(
        "images/{train,val,test}/*.JPEG and annotations/{train,val,test}/*.png "
        "(part index maps 0-39, 40 background, 255 ignore)"
    ),
    required=tuple(
        f"{kind}/{split}" for split in ("train", "val", "test") for kind in ("images", "annotations")
    ),
    nests=("", "PartImageNet", "PartImageNet_Seg"),
)


def _mmseg(name: str, source: str, nests: tuple[str, ...] = ("",)) -> Layout:
    return Layout(
        dataset=name,
        source=source,
        describe="img/{train,val}/*.jpg and ann/{train,val}/*.png (the study's mmseg layout)",
        required=("img/train", "img/val", "ann/train", "ann/val"),
        nests=nests,
    )


ADE20K_PART = _mmseg(
    "ade20k-part",
    "the ADE20K full release (https://groups.csail.mit.edu/vision/datasets/ADE20K/), "
    "prepared as in JiePKU/understand-ssl-part-aware",
)
PASCAL_PART = _mmseg(
    "pascal-part",
    "Pascal-Part (http://roozbehm.info/pascal-parts/pascal-parts.html), prepared as in "
    "JiePKU/understand-ssl-part-aware",
)
PASCAL_OBJECT = _mmseg(
    "pascal-object",
    "Pascal VOC 2010 with Pascal-Part (http://roozbehm.info/pascal-parts/pascal-parts.html), "
    "16 classes as prepared in JiePKU/understand-ssl-part-aware",
)
LIP_MMSEG = _mmseg("lip", "http://sysu-hcp.net/lip/ (Look Into Person)")
LIP_OFFICIAL = Layout(
    dataset="lip",
    source="http://sysu-hcp.net/lip/ (Look Into Person)",
    describe=(
        "TrainVal_images/{train,val}_images/*.jpg and "
        "TrainVal_parsing_annotations/{train,val}_segmentations/*.png (official release), "
        "or img/{train,val}/*.jpg and ann/{train,val}/*.png"
    ),
    required=(
        "TrainVal_images/train_images|TrainVal_images/TrainVal_images/train_images",
        "TrainVal_images/val_images|TrainVal_images/TrainVal_images/val_images",
        "TrainVal_parsing_annotations/train_segmentations"
        "|TrainVal_parsing_annotations/TrainVal_parsing_annotations/train_segmentations",
        "TrainVal_parsing_annotations/val_segmentations"
        "|TrainVal_parsing_annotations/TrainVal_parsing_annotations/val_segmentations",
    ),
)
ADE20K_OBJECT = Layout(
    dataset="ade20k-object",
    source="http://sceneparsing.csail.mit.edu/ (ADEChallengeData2016), 59 objects as prepared "
    "in JiePKU/understand-ssl-part-aware",
    describe="ADEChallengeData2016/{images,annotations}/{training,validation}",
    required=(
        "images/training",
        "images/validation",
        "annotations/training",
        "annotations/validation",
    ),
    nests=("ADEChallengeData2016", ""),
)

CIFAR10 = Layout(
    dataset="cifar10",
    source="https://www.cs.toronto.edu/~kriz/cifar.html (cifar-10-python.tar.gz)",
    describe="cifar-10-batches-py/ with data_batch_1..5, test_batch, batches.meta",
    required=(
        *(f"data_batch_{i}" for i in range(1, 6)),
        "test_batch",
        "batches.meta",
    ),
    nests=("cifar-10-batches-py", ""),
)

LAYOUTS: dict[str, tuple[Layout, ...]] = {
    "cub200": (CUB,),
    "coco-keypoints": (COCO,),
    "partimagenet": (PARTIMAGENET,),
    "ade20k-part": (ADE20K_PART,),
    "pascal-part": (PASCAL_PART,),
    "lip": (LIP_OFFICIAL, LIP_MMSEG),
    "ade20k-object": (ADE20K_OBJECT,),
    "pascal-object": (PASCAL_OBJECT,),
    "cifar10": (CIFAR10,),
}


def present(name: str, root: Path | None) -> bool:
    """Whether the data of ``name`` is complete under ``root`` (default: its data folder)."""
    if root is None:
        from partbench.paths import data_root

        root = data_root(name)
    return any(layout.present(root) for layout in LAYOUTS[name])


def resolve_any(layouts: tuple[Layout, ...], root: Path) -> tuple[Layout, Path]:
    """The first of several accepted layouts found complete; else the first one's error."""
    for layout in layouts:
        if layout.present(root):
            return layout, layout.resolve(root)
    layouts[0].resolve(root)  # raises, naming what is missing
    raise AssertionError("unreachable")


def default_root(name: str, root: Path | str | None) -> Path:
    if root is not None:
        return Path(root).expanduser()
    from partbench.paths import data_root

    return data_root(name)
