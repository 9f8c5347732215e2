"""SPair-71k as published (Min et al., 2019): 70,958 image pairs of 18 PASCAL categories with
corresponding keypoints and per-pair difficulty flags, for semantic correspondence.

Layout under the root: ``JPEGImages/<category>/<name>.jpg``, ``ImageAnnotation/<category>/
<name>.json`` and ``PairAnnotation/{trn,val,test}/<pair>.json``; each pair file names its
images (``src_imname``, ``trg_imname``, ``category``) and holds ``src_kps`` and ``trg_kps``
(one [x, y] per keypoint annotated on both, in the same order), ``src_bndbox`` and
``trg_bndbox`` ([x0, y0, x1, y1]) and the flags ``viewpoint_variation``,
``scale_variation``, ``truncation`` and ``occlusion``. A split's samples are the images its
pairs name, in the order the sorted pair files first name them, so ``--limit n`` keeps the
pairs among the first n images. Self-contained: the layout, the reader and its checks."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from partbench.datasets.base import Dataset, LazySamples, Sample
from partbench.datasets.declaration import real_dataset
from partbench.datasets.fingerprints import fingerprint
from partbench.datasets.image_files import load_rgb
from partbench.datasets.layouts import Layout, default_root
from partbench.errors import DataError

if TYPE_CHECKING:  # registering the dataset imports this module: numpy only where it reads
    import numpy as np

    from partbench.datasets.pairs import KeypointPair

LAYOUT = Layout(
    dataset="spair71k",
    source="https://cvlab.postech.ac.kr/research/SPair-71k/ (SPair-71k.tar.gz)",
    describe=(
        "JPEGImages/<category>/*.jpg, ImageAnnotation/<category>/*.json, PairAnnotation/{trn,val,test}/*.json"
    ),
    required=("JPEGImages", "ImageAnnotation", "PairAnnotation/test"),
    nests=("", "SPair-71k"),
)
SPLITS = {"train": "trn", "val": "val", "test": "test"}  # partbench's split -> the release's folder
FLAGS = ("viewpoint_variation", "scale_variation", "truncation", "occlusion")
REQUIRED = ("src_imname", "trg_imname", "category", "src_kps", "trg_kps", "src_bndbox", "trg_bndbox", *FLAGS)


@dataclass
class _Split:
    images: list[tuple[str, str]]  # (category, file name)
    pairs: list[KeypointPair]


class SPair71k(Dataset):
    name = "spair71k"
    capabilities = frozenset({"keypoint-pairs"})
    splits: ClassVar[dict[str, str]] = {"retrieval": "test", "train": "train", "test": "test"}

    def __init__(self, root: Path | str | None = None):
        self.base = LAYOUT.resolve(default_root(self.name, root))
        folder = self.base / "JPEGImages"
        self.object_classes = tuple(sorted(p.name for p in folder.iterdir() if p.is_dir()))
        if not self.object_classes:
            raise DataError(f"{folder}: holds no category folders")
        self._splits: dict[str, _Split] = {}
        self._sizes: dict[tuple[str, str], tuple[int, int]] = {}
        self._fingerprint: str | None = None

    def _pair_files(self, split: str) -> list[Path]:
        if split not in SPLITS:
            raise KeyError(f"spair71k has splits {sorted(SPLITS)}, not '{split}'")
        folder = self.base / "PairAnnotation" / SPLITS[split]
        if not folder.is_dir():
            raise DataError(f"{folder}: missing (the {split} split's pair annotations)")
        return sorted(folder.glob("*.json"))

    def _size(self, category: str, name: str, path: Path, key: str) -> tuple[int, int]:
        if (category, name) not in self._sizes:
            image = self.base / "JPEGImages" / category / name
            if not image.is_file():
                raise DataError(f"{path}: '{key}' names {image}, which does not exist")
            from PIL import Image

            try:
                with Image.open(image) as im:
                    self._sizes[(category, name)] = im.size
            except OSError as exc:
                raise DataError(f"{image}: unreadable image ({exc}), named by {path}") from None
        return self._sizes[(category, name)]

    def _read(self, split: str) -> _Split:
        if split in self._splits:
            return self._splits[split]
        import numpy as np

        from partbench.datasets.pairs import KeypointPair

        images: list[tuple[str, str]] = []
        where: dict[tuple[str, str], int] = {}
        pairs = []
        for path in self._pair_files(split):
            try:
                data = json.loads(path.read_text())
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise DataError(f"{path}: not readable JSON ({exc})") from None
            if not isinstance(data, dict):
                raise DataError(f"{path}: expected a JSON object")
            missing = [k for k in REQUIRED if k not in data]
            if missing:
                raise DataError(
                    f"{path}: missing key '{missing[0]}'" + (f" (and {missing[1:]})" if missing[1:] else "")
                )
            category = _text(data, "category", path)
            if category not in self.object_classes:
                raise DataError(
                    f"{path}: 'category' {category!r} has no folder in {self.base / 'JPEGImages'}"
                )
            ends = {}
            for side in ("src", "trg"):
                name = _text(data, f"{side}_imname", path)
                size = self._size(category, name, path, f"{side}_imname")
                kps = _points(data, f"{side}_kps", path)
                outside = ~((kps >= 0) & (kps <= np.asarray(size))).all(axis=1)
                if outside.any():
                    k = int(np.flatnonzero(outside)[0])
                    raise DataError(
                        f"{path}: '{side}_kps' keypoint {k} at {kps[k].tolist()} lies outside the "
                        f"{size[0]} x {size[1]} image {name}"
                    )
                box = _box(data, f"{side}_bndbox", path)
                if (category, name) not in where:
                    where[(category, name)] = len(images)
                    images.append((category, name))
                ends[side] = (where[(category, name)], size, kps, box)
            n_src, n_trg = len(ends["src"][2]), len(ends["trg"][2])
            if n_src != n_trg:
                raise DataError(f"{path}: 'src_kps' has {n_src} keypoints and 'trg_kps' {n_trg}")
            flags = {}
            for f in FLAGS:
                value = data[f]
                if isinstance(value, bool) or not isinstance(value, int):
                    raise DataError(f"{path}: '{f}' must be a whole number, got {value!r}")
                flags[f] = value
            ids = data.get("kps_ids")
            pairs.append(
                KeypointPair(
                    source=ends["src"][0],
                    target=ends["trg"][0],
                    source_xy=ends["src"][2],
                    target_xy=ends["trg"][2],
                    source_size=ends["src"][1],
                    target_size=ends["trg"][1],
                    target_box=ends["trg"][3],
                    label=self.object_classes.index(category),
                    keypoint_ids=np.asarray(ids, dtype=np.int64) if isinstance(ids, list) else None,
                    flags=flags,
                    key=str(path),
                )
            )
        if not pairs:
            raise DataError(f"{self.base / 'PairAnnotation' / SPLITS[split]}: holds no pair files")
        self._splits[split] = _Split(images, pairs)
        return self._splits[split]

    # --- the Dataset interface --------------------------------------------------------

    def keypoint_pairs(self, split: str, within: int | None = None) -> list[KeypointPair]:
        pairs = self._read(split).pairs
        if within is None:
            return list(pairs)
        return [p for p in pairs if p.source < within and p.target < within]

    def samples(self, split: str) -> LazySamples[Sample]:
        images = self._read(split).images

        def get(i: int) -> Sample:
            category, name = images[i]
            path = self.base / "JPEGImages" / category / name
            return Sample(
                image=load_rgb(path, f"named by a {split} pair"),
                key=f"JPEGImages/{category}/{name}",
                label=self.object_classes.index(category),
            )

        return LazySamples(len(images), get)

    def fingerprint(self) -> str:
        if self._fingerprint is None:
            files = [p for s in SPLITS for p in self._pair_files_present(s)]
            self._fingerprint = fingerprint(self.base, files, [self.base / "JPEGImages"], "spair71k")
        return self._fingerprint

    def _pair_files_present(self, split: str) -> list[Path]:
        folder = self.base / "PairAnnotation" / SPLITS[split]
        return sorted(folder.glob("*.json")) if folder.is_dir() else []


def _text(data: dict[str, Any], key: str, path: Path) -> str:
    value = data[key]
    if not isinstance(value, str) or not value or "/" in value or value in (".", ".."):
        raise DataError(f"{path}: '{key}' must be a file or category name, got {value!r}")
    return value


def _points(data: dict[str, Any], key: str, path: Path) -> np.ndarray:
    import numpy as np

    try:
        kps = np.asarray(data[key], dtype=np.float64)
    except (TypeError, ValueError):
        raise DataError(f"{path}: '{key}' must be a list of [x, y] points") from None
    if kps.ndim != 2 or kps.shape[1] != 2 or len(kps) == 0 or not np.isfinite(kps).all():
        raise DataError(f"{path}: '{key}' must be a non-empty list of finite [x, y] points")
    return kps


def _box(data: dict[str, Any], key: str, path: Path) -> tuple[float, float, float, float]:
    try:
        box = [float(v) for v in data[key]]
    except (TypeError, ValueError):
        raise DataError(f"{path}: '{key}' must be [x0, y0, x1, y1]") from None
    if len(box) != 4 or not (box[2] > box[0] and box[3] > box[1]):
        raise DataError(
            f"{path}: '{key}' must be [x0, y0, x1, y1] with x1 > x0 and y1 > y0, got {data[key]!r}"
        )
    return (box[0], box[1], box[2], box[3])


def load(root: Path | str | None = None, **options: object) -> SPair71k:
    if options:
        raise DataError(f"spair71k takes no options, got {sorted(options)}")
    return SPair71k(root)


DATASETS = (
    real_dataset(
        "spair71k",
        load,
        capabilities={"keypoint-pairs"},
        description="SPair-71k: keypoint pairs of 18 categories with difficulty flags",
        layouts=(LAYOUT,),
        order=15,
        suites={"parts": ("part-correspondence",)},
    ),
)
