"""part-correspondence: PCK against a brute-force loop, its chance level, and the SPair-71k
reader on tiny files in the release's layout, malformed ones included."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from dataset_trees import gradient_image, write_image

from partbench.datasets.base import Dataset
from partbench.datasets.pairs import ImageKeypoints, KeypointPair, same_class_pairs
from partbench.datasets.spair import SPair71k
from partbench.errors import DataError
from partbench.features import Features
from partbench.metrics import score_from_items
from partbench.store.values import encode_items
from partbench.tasks.correspondence import Correspondence, chance_hits

CPU = torch.device("cpu")
OPTIONS = {
    "stage": -1, "reference": "bbox", "predict": "argmax", "upsample": 8, "window": 5, "temperature": 0.04,
}  # fmt: skip


def _bilinear(fmap: np.ndarray, fx: float, fy: float) -> np.ndarray:
    """fmap (h, w, C) read at a point given as fractions of the image, cell centres at
    (j + 0.5) / w, clamped at the border: written out by hand."""
    h, w, _ = fmap.shape
    u = min(max(fx * w - 0.5, 0.0), w - 1.0)
    v = min(max(fy * h - 0.5, 0.0), h - 1.0)
    x0, y0 = math.floor(u), math.floor(v)
    x1, y1 = min(x0 + 1, w - 1), min(y0 + 1, h - 1)
    a, b = u - x0, v - y0
    return (
        (1 - a) * (1 - b) * fmap[y0, x0]
        + a * (1 - b) * fmap[y0, x1]
        + (1 - a) * b * fmap[y1, x0]
        + a * b * fmap[y1, x1]
    )


def _brute_pck(
    maps: np.ndarray, pairs: list[KeypointPair], alpha: float, reference: str = "bbox", upsample: int = 8
) -> float:
    """Every point ``upsample`` to a cell between the target's cell centres, its feature
    interpolated by hand, tried one by one."""
    hits = total = 0
    for p in pairs:
        src, trg = maps[p.source], maps[p.target]
        h, w, _ = trg.shape
        for (sx, sy), (tx, ty) in zip(p.source_xy, p.target_xy, strict=True):
            d = _bilinear(src, sx / p.source_size[0], sy / p.source_size[1])
            best, where = -2.0, (0.0, 0.0)
            for r in range((h - 1) * upsample + 1):
                for c in range((w - 1) * upsample + 1):
                    cy, cx = 0.5 + r / upsample, 0.5 + c / upsample  # in cells
                    f = _bilinear(trg, cx / w, cy / h)
                    cos = float(d @ f / (np.linalg.norm(d) * np.linalg.norm(f)))
                    if cos > best:
                        best, where = cos, (cy, cx)
            px = where[1] / w * p.target_size[0]
            py = where[0] / h * p.target_size[1]
            x0, y0, x1, y1 = p.target_box
            ref = max(x1 - x0, y1 - y0) if reference == "bbox" else max(p.target_size)
            hits += math.hypot(px - tx, py - ty) <= alpha * ref
            total += 1
    return 100 * hits / total


class _Pairs(Dataset):
    name = "toy-pairs"
    object_classes = ("a", "b")

    def __init__(self, pairs):
        self.pairs = pairs

    def keypoint_pairs(self, split, within=None):
        return [p for p in self.pairs if within is None or (p.source < within and p.target < within)]


def _toy(seed: int = 0, n_images: int = 6, grid=(4, 5), dim: int = 8):
    rng = np.random.default_rng(seed)
    maps = rng.normal(size=(n_images, *grid, dim))
    pairs = []
    for i in range(n_images - 1):
        k = 1 + i % 3
        size_s, size_t = (80 + 10 * i, 64), (100, 60 + 5 * i)
        pairs.append(
            KeypointPair(
                source=i + 1,
                target=i,
                source_xy=rng.uniform(0, 1, (k, 2)) * size_s,
                target_xy=rng.uniform(0, 1, (k, 2)) * size_t,
                source_size=size_s,
                target_size=size_t,
                target_box=(5.0, 4.0, 5.0 + 40 + 3 * i, 4.0 + 30),
                label=i % 2,
                flags={"occlusion": i % 2},
            )
        )
    # One keypoint of the first pair placed exactly where its own map says: found for sure.
    maps[0, 2, 3] = maps[1, 1, 1] * 5
    pairs[0] = KeypointPair(
        1, 0, np.array([[1.5 / 5 * 90, 1.5 / 4 * 64]]), np.array([[3.5 / 5 * 100, 2.5 / 4 * 60]]),
        (90, 64), (100, 60), (0.0, 0.0, 100.0, 60.0), label=0, flags={"occlusion": 0},
    )  # fmt: skip
    return maps, pairs


def _features(maps: np.ndarray, prefix: int = 1) -> Features:
    n, h, w, c = maps.shape
    tokens = np.concatenate([np.ones((n, prefix, c)), maps.reshape(n, h * w, c)], axis=1)
    return Features(
        arrays={"tokens": torch.as_tensor(tokens, dtype=torch.float16)},
        labels=np.zeros(n, dtype=np.int64),
        grid=(h, w),
        sample_index=np.arange(n),
    )


@pytest.mark.parametrize("reference,upsample", [("bbox", 8), ("image", 8), ("bbox", 1), ("bbox", 3)])
def test_pck_equals_a_brute_force_loop_and_items_rescore_it(reference, upsample):
    maps, pairs = _toy()
    maps = maps.astype(np.float16).astype(np.float64)  # what the cache holds
    res = Correspondence({**OPTIONS, "reference": reference, "upsample": upsample}).evaluate(
        {"test": _features(maps)}, _Pairs(pairs), device=CPU, seed=0
    )
    for a in (0.05, 0.10, 0.15):
        assert res.metrics[f"PCK@{a:.2f}"].value == pytest.approx(
            _brute_pck(maps, pairs, a, reference, upsample), abs=1e-6
        )
    assert res.items["correct"][0] == 1.0  # the planted keypoint
    assert score_from_items("PCK@0.10", res.items) == pytest.approx(res.metrics["PCK@0.10"].value, abs=1e-9)
    assert res.n_items == len(pairs) and len(res.items["pair"]) == sum(len(p.source_xy) for p in pairs)
    assert set(res.items["flag.occlusion"].tolist()) == {0, 1}
    encode_items(res.items)  # the store takes these names and types
    m = res.metrics["PCK@0.10"]
    assert m.ci_low <= m.value <= m.ci_high


def test_a_limited_run_scores_only_the_pairs_of_the_encoded_images():
    maps, pairs = _toy()
    f = _features(maps[:3])
    res = Correspondence(OPTIONS).evaluate({"test": f}, _Pairs(pairs), device=CPU, seed=0)
    assert res.n_items == 2  # pairs (1, 0) and (2, 1)


def test_soft_argmax_in_a_one_cell_window_is_the_argmax():
    maps, pairs = _toy(seed=3)
    ds = _Pairs(pairs)
    cells = {**OPTIONS, "upsample": 1}  # the best cell's centre
    hard = Correspondence(cells).evaluate({"test": _features(maps)}, ds, device=CPU, seed=0)
    soft = Correspondence({**OPTIONS, "predict": "soft-argmax", "window": 1}).evaluate(
        {"test": _features(maps)}, ds, device=CPU, seed=0
    )
    np.testing.assert_allclose(soft.items["ratio"], hard.items["ratio"], atol=1e-6)
    wide = Correspondence({**OPTIONS, "predict": "soft-argmax", "window": 3, "temperature": 10.0}).evaluate(
        {"test": _features(maps)}, ds, device=CPU, seed=0
    )
    assert not np.allclose(wide.items["ratio"], hard.items["ratio"])


def test_chance_is_the_share_of_the_box_within_reach():
    # A keypoint at the centre of a 100 x 100 box, alpha 0.10: a disc of radius 10 inside it.
    hits = chance_hits(np.array([[0.0, 0, 100, 100]]), np.array([[50.0, 50]]), np.array([10.0]))
    assert hits[0] == pytest.approx(math.pi * 100 / 10_000, abs=5e-4)
    # In a corner a quarter of the disc lies in the box.
    corner = chance_hits(np.array([[0.0, 0, 100, 100]]), np.array([[0.0, 0]]), np.array([10.0]))
    assert corner[0] == pytest.approx(math.pi * 100 / 4 / 10_000, abs=5e-4)


def test_same_class_pairs_are_deterministic_and_prefix_stable():
    rng = np.random.default_rng(1)
    images = []
    for i in range(30):
        kps = np.column_stack([np.arange(4), rng.uniform(0, 50, (4, 2)), rng.random(4) > 0.3]).astype(float)
        images.append(ImageKeypoints(i % 3, kps, (50, 50), (0.0, 0.0, 50.0, 50.0)))
    full = same_class_pairs(images)
    assert [(p.source, p.target) for p in full] == [(p.source, p.target) for p in same_class_pairs(images)]
    part = same_class_pairs(images[:12])
    assert [(p.source, p.target) for p in part] == [(p.source, p.target) for p in full if p.source < 12]
    for p in full:
        assert images[p.source].label == images[p.target].label and p.target < p.source
        rows = p.keypoint_ids
        assert (images[p.source].keypoints[rows, 3] > 0).all() and (
            images[p.target].keypoints[rows, 3] > 0
        ).all()
        np.testing.assert_array_equal(p.target_xy, images[p.target].keypoints[rows, 1:3])


# --- SPair-71k ------------------------------------------------------------------------


def _pair(src: str, trg: str, **over) -> dict:
    data = {
        "pair_id": 1,
        "src_imname": src,
        "trg_imname": trg,
        "src_imsize": [40, 30, 3],
        "trg_imsize": [40, 30, 3],
        "category": "cat",
        "src_kps": [[3, 4], [20, 10]],
        "trg_kps": [[5, 6], [30, 20]],
        "kps_ids": [0, 3],
        "src_bndbox": [1, 2, 30, 25],
        "trg_bndbox": [2, 3, 38, 28],
        "viewpoint_variation": 1,
        "scale_variation": 0,
        "truncation": 0,
        "occlusion": 2,
        "mirror": 0,
    }
    data.update(over)
    return data


def _spair(root: Path, pairs: dict[str, dict]) -> Path:
    for name in ("2008_000001.jpg", "2008_000002.jpg", "2008_000003.jpg"):
        write_image(root / "JPEGImages" / "cat" / name, gradient_image(40, 30, 7))
        (root / "ImageAnnotation" / "cat").mkdir(parents=True, exist_ok=True)
        (root / "ImageAnnotation" / "cat" / name.replace(".jpg", ".json")).write_text("{}")
    (root / "JPEGImages" / "dog").mkdir(parents=True, exist_ok=True)
    folder = root / "PairAnnotation" / "test"
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in pairs.items():
        (folder / name).write_text(json.dumps({k: v for k, v in data.items() if v is not None}))
    return root


def test_spair_reads_pairs_images_and_flags(tmp_path):
    root = _spair(
        tmp_path / "SPair-71k",
        {
            "000001-2008_000002-2008_000001:cat.json": _pair("2008_000002.jpg", "2008_000001.jpg"),
            "000002-2008_000003-2008_000002:cat.json": _pair(
                "2008_000003.jpg", "2008_000002.jpg", occlusion=0
            ),
        },
    )
    ds = SPair71k(tmp_path)  # the archive's own folder is found beneath the root
    assert ds.base == root and ds.object_classes == ("cat", "dog")
    samples = ds.samples("test")
    assert [samples[i].key for i in range(len(samples))] == [
        "JPEGImages/cat/2008_000002.jpg",
        "JPEGImages/cat/2008_000001.jpg",
        "JPEGImages/cat/2008_000003.jpg",
    ]
    assert samples[0].image.shape == (30, 40, 3) and samples[0].label == 0
    pairs = ds.keypoint_pairs("test")
    assert [(p.source, p.target) for p in pairs] == [(0, 1), (2, 0)]
    np.testing.assert_array_equal(pairs[0].target_xy, [[5, 6], [30, 20]])
    assert pairs[0].target_box == (2.0, 3.0, 38.0, 28.0) and pairs[0].target_size == (40, 30)
    assert pairs[0].flags == {"viewpoint_variation": 1, "scale_variation": 0, "truncation": 0, "occlusion": 2}
    assert [(p.source, p.target) for p in ds.keypoint_pairs("test", within=2)] == [(0, 1)]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"trg_bndbox": None}, "missing key 'trg_bndbox'"),
        ({"viewpoint_variation": None}, "missing key 'viewpoint_variation'"),
        ({"trg_kps": [[5, 6], [45, 20]]}, "'trg_kps' keypoint 1 at [45.0, 20.0] lies outside"),
        ({"src_kps": [[-1, 4], [20, 10]]}, "'src_kps' keypoint 0"),
        ({"trg_imname": "2008_000009.jpg"}, "'trg_imname' names"),
        ({"trg_kps": [[5, 6]]}, "'src_kps' has 2 keypoints and 'trg_kps' 1"),
        ({"category": "horse"}, "'category' 'horse'"),
        ({"src_bndbox": [5, 5, 2, 9]}, "'src_bndbox' must be"),
    ],
)
def test_malformed_spair_pairs_name_the_file_and_key(tmp_path, change, message):
    name = "000001-2008_000002-2008_000001:cat.json"
    _spair(tmp_path, {name: _pair("2008_000002.jpg", "2008_000001.jpg", **change)})
    ds = SPair71k(tmp_path)
    with pytest.raises(DataError) as err:
        ds.keypoint_pairs("test")
    assert name in str(err.value) and message in str(err.value)


def test_spair_without_its_folders_says_what_is_missing(tmp_path):
    (tmp_path / "JPEGImages").mkdir()
    with pytest.raises(DataError, match="PairAnnotation/test"):
        SPair71k(tmp_path)


# --- CUB-200-2011 -----------------------------------------------------------------------


def test_cub_pairs_same_class_images_over_all_fifteen_parts(tmp_path):
    from dataset_trees import CUB_SIZE, cub_line_of, cub_tree

    from partbench.datasets.cub import CUB200

    root = cub_tree(tmp_path / "cub")
    lines = (root / "parts" / "part_locs.txt").read_text().splitlines(keepends=True)
    lines[cub_line_of(3, 11) - 1] = "3 11 60.0 70.0 1\n"  # image 3 shows its right eye
    lines[cub_line_of(3, 2) - 1] = "3 2 61.0 72.0 1\n"  # and its beak, which crops never read
    (root / "parts" / "part_locs.txt").write_text("".join(lines))
    ds = CUB200(root)
    pairs = ds.keypoint_pairs("all")
    # Images 2 and 3 are sparrows; 4, the second albatross, shows no part.
    assert [(p.source, p.target) for p in pairs] == [(2, 1)]
    (p,) = pairs
    np.testing.assert_array_equal(p.keypoint_ids, [1, 10])  # beak (part 2), right eye (part 11)
    np.testing.assert_array_equal(p.source_xy, [[61, 72], [60, 70]])
    np.testing.assert_array_equal(p.target_xy, [[31, 31], [30, 30]])
    assert p.target_size == CUB_SIZE and p.target_box == (10.0, 10.0, 110.0, 110.0)
    assert ds.keypoint_pairs("all", within=2) == []
    (root / "bounding_boxes.txt").write_text("1 10 10 100 100\n")
    with pytest.raises(DataError, match=r"bounding_boxes\.txt: no box for image id 2"):
        ds.keypoint_pairs("all")
