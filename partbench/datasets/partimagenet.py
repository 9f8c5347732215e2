"""PartImageNet's segmentation release: 40 part classes of 11 super-categories.

Part maps hold part ids 0-39, 40 for background and 255 for ignore; background becomes
ignore, as reduce-zero-label does for the study's other sets. The object map and the
object label are derived from the part map (every part belongs to one super-category), so
they need no second file whose encoding could disagree with the parts. The release's
splits hold disjoint ImageNet classes, so the object classes are the 11 super-categories,
which every split shares.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

from partbench.datasets.base import IGNORE, Dataset, LazySamples, Sample
from partbench.datasets.declaration import real_dataset
from partbench.datasets.fingerprints import fingerprint
from partbench.datasets.image_files import checked_mask, load_index_map, load_rgb
from partbench.datasets.layouts import Layout, default_root
from partbench.datasets.segsets import Pair, pair_files
from partbench.errors import DataError

if TYPE_CHECKING:
    import numpy as np

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

SUPERCATEGORIES = (
    ("Quadruped", ("Head", "Body", "Foot", "Tail")),
    ("Biped", ("Head", "Body", "Hand", "Foot", "Tail")),
    ("Fish", ("Head", "Body", "Fin", "Tail")),
    ("Bird", ("Head", "Body", "Wing", "Foot", "Tail")),
    ("Snake", ("Head", "Body")),
    ("Reptile", ("Head", "Body", "Foot", "Tail")),
    ("Car", ("Body", "Tier", "Side Mirror")),
    ("Bicycle", ("Body", "Head", "Seat", "Tier")),
    ("Boat", ("Body", "Sail")),
    ("Aeroplane", ("Head", "Body", "Engine", "Wing", "Tail")),
    ("Bottle", ("Body", "Mouth")),
)
PART_CLASSES = tuple(f"{sup} {part}" for sup, parts in SUPERCATEGORIES for part in parts)
OBJECT_CLASSES = tuple(sup for sup, _ in SUPERCATEGORIES)
BACKGROUND = len(PART_CLASSES)  # 40


@cache
def _part_to_object() -> np.ndarray:
    """part id -> super-category id; background and ignore -> ignore"""
    import numpy as np

    table = np.full(256, IGNORE, dtype=np.uint8)
    table[:BACKGROUND] = [s for s, (_, parts) in enumerate(SUPERCATEGORIES) for _ in parts]
    return table


class PartImageNet(Dataset):
    name = "partimagenet"
    capabilities = frozenset({"images", "part-masks", "object-masks"})
    object_classes = OBJECT_CLASSES
    part_seg_classes = PART_CLASSES
    object_seg_classes = OBJECT_CLASSES
    splits = {"retrieval": "test", "train": "train", "test": "test"}  # noqa: RUF012 (declared so in Dataset)

    def __init__(self, root: Path | str | None = None):
        self.base = PARTIMAGENET.resolve(default_root(self.name, root))
        self.pairs = {
            split: pair_files(self.base / "images" / split, self.base / "annotations" / split)
            for split in ("train", "val", "test")
        }
        self._fingerprint: str | None = None

    def samples(self, split: str) -> LazySamples[Sample]:
        if split not in self.pairs:
            raise KeyError(f"partimagenet has splits {sorted(self.pairs)}, not '{split}'")
        pairs = self.pairs[split]
        return LazySamples(len(pairs), lambda i: self._sample(pairs[i]))

    def _sample(self, pair: Pair) -> Sample:
        import numpy as np

        image = load_rgb(pair.image)
        raw = load_index_map(pair.mask, f"part map of {pair.image}")
        raw = np.where(raw == BACKGROUND, IGNORE, raw)
        part_mask = checked_mask(raw, len(PART_CLASSES), pair.mask, image.shape[:2])
        object_mask = _part_to_object()[part_mask]
        counts = np.bincount(object_mask[object_mask != IGNORE], minlength=len(OBJECT_CLASSES))
        if not counts.any():
            raise DataError(f"{pair.mask}: no part pixels, so the image has no object class")
        return Sample(
            image=image,
            key=pair.image.relative_to(self.base).as_posix(),
            label=int(counts.argmax()),
            part_mask=part_mask,
            object_mask=object_mask,
        )

    def fingerprint(self) -> str:
        if self._fingerprint is None:
            masks = [p.mask for pairs in self.pairs.values() for p in pairs]
            images = [self.base / "images" / s for s in self.pairs]
            self._fingerprint = fingerprint(self.base, masks, images, self.name)
        return self._fingerprint


def load(root: Path | str | None = None, **options: object) -> PartImageNet:
    if options:
        raise DataError(f"partimagenet takes no options, got {sorted(options)}")
    return PartImageNet(root)


DATASETS = (
    real_dataset(
        "partimagenet",
        load,
        capabilities={"images", "part-masks", "object-masks"},
        description="PartImageNet: 40 parts of 11 super-categories",
        layouts=(PARTIMAGENET,),
        order=30,
        suites={"parts": ("part-seg-nn", "part-discovery")},
    ),
)
