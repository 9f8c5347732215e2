"""The study's segmentation sets: folders of images and single-channel index-map PNGs.

ADE20K-Part, Pascal-Part, LIP and Pascal objects use the mmseg layout the study prepared
(``img/{train,val}``, ``ann/{train,val}``); LIP also reads from its official release, and
ADE20K objects from ``ADEChallengeData2016``. Every one is read with reduce-zero-label, as
the study's configs load them: 0 (background) is ignored, k becomes k - 1, 255 stays ignore.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from partbench.datasets.base import Dataset, LazySamples, Sample
from partbench.datasets.declaration import Declaration, real_dataset
from partbench.datasets.fingerprints import fingerprint
from partbench.datasets.image_files import (
    checked_mask,
    load_index_map,
    load_rgb,
    reduce_zero_label,
)
from partbench.datasets.layouts import Layout, default_root, resolve_any
from partbench.errors import DataError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")

LIP_CLASSES = (
    "hat", "hair", "glove", "sunglasses", "upper clothes", "dress", "coat", "socks", "pants",
    "jumpsuits", "scarf", "skirt", "face", "left arm", "right arm", "left leg", "right leg",
    "left shoe", "right shoe",
)  # fmt: skip
# The 20 VOC classes without boat, chair, dining table and sofa, in VOC order.
PASCAL_OBJECT_CLASSES = (
    "aeroplane", "bicycle", "bird", "bottle", "bus", "car", "cat", "cow", "dog", "horse",
    "motorbike", "person", "pottedplant", "sheep", "train", "tvmonitor",
)  # fmt: skip


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


def _numbered(prefix: str, n: int) -> tuple[str, ...]:
    # The study's configs carry no trustworthy names for these (its own comments say so).
    return tuple(f"{prefix} {i}" for i in range(n))


@dataclass(frozen=True)
class Pair:
    image: Path
    mask: Path


def pair_files(image_dir: Path, mask_dir: Path, mask_suffix: str = ".png") -> list[Pair]:
    """Images and label maps matched by file stem, sorted; a map without its image, or an
    image without its map, is a DataError naming the missing file."""
    images = {p.stem: p for p in image_dir.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES}
    masks = {p.stem: p for p in mask_dir.iterdir() if p.is_file() and p.suffix == mask_suffix}
    for stem in sorted(masks.keys() - images.keys()):
        raise DataError(
            f"{image_dir / (stem + '.jpg')}: image file is missing (its label map {masks[stem]} exists)"
        )
    for stem in sorted(images.keys() - masks.keys()):
        raise DataError(
            f"{mask_dir / (stem + mask_suffix)}: label map is missing (its image {images[stem]} exists)"
        )
    if not images:
        raise DataError(f"{image_dir}: holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return [Pair(images[s], masks[s]) for s in sorted(images)]


@dataclass(frozen=True)
class SegSet:
    name: str
    layouts: tuple[Layout, ...]
    level: str  # "part" or "object": which mask the samples carry
    classes: tuple[str, ...]
    # split -> (image folder, label folder) per accepted layout, "a|b" as in Layout.required
    folders: Callable[[Layout], dict[str, tuple[str, str]]]


def _mmseg_folders(_: Layout) -> dict[str, tuple[str, str]]:
    return {s: (f"img/{s}", f"ann/{s}") for s in ("train", "val")}


def _lip_folders(layout: Layout) -> dict[str, tuple[str, str]]:
    if layout is LIP_OFFICIAL:
        return {s: (layout.required[i], layout.required[2 + i]) for i, s in enumerate(("train", "val"))}
    return _mmseg_folders(layout)


def _ade_folders(_: Layout) -> dict[str, tuple[str, str]]:
    return {
        s: (f"images/{folder}", f"annotations/{folder}")
        for s, folder in (("train", "training"), ("val", "validation"))
    }


SEGSETS = {
    s.name: s
    for s in (
        SegSet("ade20k-part", (ADE20K_PART,), "part", _numbered("part", 209), _mmseg_folders),
        SegSet("pascal-part", (PASCAL_PART,), "part", _numbered("part", 193), _mmseg_folders),
        SegSet("lip", (LIP_OFFICIAL, LIP_MMSEG), "part", LIP_CLASSES, _lip_folders),
        SegSet("ade20k-object", (ADE20K_OBJECT,), "object", _numbered("object", 59), _ade_folders),
        SegSet("pascal-object", (PASCAL_OBJECT,), "object", PASCAL_OBJECT_CLASSES, _mmseg_folders),
    )
}


class SegmentationFolders(Dataset):
    splits = {"retrieval": "val", "train": "train", "test": "val"}  # noqa: RUF012 (declared so in Dataset)

    def __init__(self, config: SegSet, root: Path | str | None = None):
        self.config = config
        self.name = config.name
        if config.level == "part":
            self.capabilities = frozenset({"part-masks"})
            self.part_seg_classes = config.classes
        else:
            self.capabilities = frozenset({"object-masks"})
            self.object_seg_classes = config.classes
        layout, self.base = resolve_any(config.layouts, default_root(config.name, root))
        self.dirs: dict[str, tuple[Path, Path]] = {}
        for split, (image_rel, mask_rel) in config.folders(layout).items():
            image_dir, mask_dir = (
                layout.find(self.base, image_rel),
                layout.find(self.base, mask_rel),
            )
            assert image_dir is not None and mask_dir is not None  # resolve checked them
            self.dirs[split] = (image_dir, mask_dir)
        # Listing is cheap and catches unpaired files now; decoding waits for the sample.
        self.pairs = {split: pair_files(*dirs) for split, dirs in self.dirs.items()}
        self._fingerprint: str | None = None

    def samples(self, split: str) -> LazySamples[Sample]:
        if split not in self.pairs:
            raise KeyError(f"{self.name} has splits {sorted(self.pairs)}, not '{split}'")
        pairs = self.pairs[split]
        return LazySamples(len(pairs), lambda i: self._sample(pairs[i]))

    def _sample(self, pair: Pair) -> Sample:
        image = load_rgb(pair.image)
        labels = reduce_zero_label(load_index_map(pair.mask, f"label map of {pair.image}"))
        mask = checked_mask(labels, len(self.config.classes), pair.mask, image.shape[:2])
        key = pair.image.relative_to(self.base).as_posix()
        if self.config.level == "part":
            return Sample(image=image, key=key, part_mask=mask)
        return Sample(image=image, key=key, object_mask=mask)

    def fingerprint(self) -> str:
        if self._fingerprint is None:
            masks = [p.mask for pairs in self.pairs.values() for p in pairs]
            images = [image_dir for image_dir, _ in self.dirs.values()]
            self._fingerprint = fingerprint(self.base, masks, images, self.name)
        return self._fingerprint


def load(name: str, root: Path | str | None = None, **options: object) -> SegmentationFolders:
    if options:
        raise DataError(f"{name} takes no options, got {sorted(options)}")
    return SegmentationFolders(SEGSETS[name], root)


def _declare(name: str, description: str, order: int) -> Declaration:
    segset = SEGSETS[name]
    return real_dataset(
        name,
        partial(load, name),
        capabilities={f"{segset.level}-masks"},
        description=description,
        layouts=segset.layouts,
        order=order,
        # The study segments every one of them; the field's part measures read the part masks.
        suites={
            "study": (f"{segset.level}-seg",),
            **({"parts": ("part-seg-nn", "part-discovery")} if segset.level == "part" else {}),
        },
    )


DATASETS = (
    _declare("ade20k-part", "ADE20K-Part as the study prepared it: 209 part classes", 40),
    _declare("pascal-part", "Pascal-Part as the study prepared it: 193 part classes", 50),
    _declare("lip", "Look Into Person: 19 human part classes", 60),
    _declare("ade20k-object", "ADE20K objects as the study prepared them: 59 classes", 70),
    _declare("pascal-object", "Pascal VOC classes that Pascal-Part annotates: 16 classes", 80),
)
